"""Real pairs from "real-like" DJ transitions: alignment error, tempo-ratio error, fit SNR, STFT distance.

    OMP_NUM_THREADS=1 python benchmarks/bench_real_mixes.py [--n 20] [--steps 40] [--keep DIR]

Each transition is made by an effects chain that shares no code with the mixer (pedalboard):
- two synthetic tracks (data/synth.py, oracle stems); B's own tempo differs from A's by 1-6 %;
- B time-stretched to A's tempo with Rubber Band (pedalboard.time_stretch, standard engine, the whole
  track from its first sample) and placed so its downbeat lands on A's, give or take a few ms (the offset);
- hidden automation in blocks on the mix timeline (beats or bars), per track as on a DJ mixer:
  low-shelf EQ cuts (the bass swap), a high-shelf cut on B, first-order high-pass (A) and low-pass (B)
  filter sweeps, faders in blocks with 10 ms ramps, and a post-fader Freeverb send on A's last bar;
- the mix excerpt starts at a random sample of A, a few seconds before the blend, and ends a few
  seconds after it; half of the transitions get approximate cue times (cues.json, errors up to 1 s).

Every transition folder (mix.wav, a.wav, b.wav, a_stems/, b_stems/ with the oracle stems, cues.json)
goes through `pipeline.py --transitions` as a user's would; the hidden truth (truth.json) is only read
here, to score the result. Printed per transition and in summary: alignment error (ms, at the blend
centre, the worse of A and B), tempo-ratio error (%), the fitted rendition's SNR against the excerpt (dB),
the multi-resolution STFT distance, and failures with their reason. Targets: <= 5 ms, <= 0.2 %, >= 15 dB.

What limits the SNR: the chain's shelves and filters are minimum-phase IIR filters (shelf corners drawn
from 150-300 Hz), the mixer's EQ is zero-phase with fixed corners, so deep cuts leave a phase error in
their transition band; Freeverb's tail is not the mixer's reverb. The stretch is reproducible only
because both sides use Rubber Band's standard engine on the whole track (see data/real_mixes.py).
`--separator dsp` separates the aligned windows with the DSP separator instead of using the oracle stems.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.audio import save_audio  # noqa: E402
from data.stems import save_stems  # noqa: E402
from data.synth import synthesize_track  # noqa: E402
from effects.params import SAMPLE_RATE  # noqa: E402

SR = SAMPLE_RATE
DANCE_STYLES = ("house", "techno", "trance", "disco")
RAMP_S = 0.010  # fader moves between blocks take 10 ms


# -- the hidden chain ------------------------------------------------------------------------------------------
def _blocks(edges: np.ndarray, values: np.ndarray, n: int, ramp: int = 0) -> np.ndarray:
    """Piecewise-constant [n] envelope: values[k] on [edges[k], edges[k + 1]), linear ramps of `ramp` samples."""
    env = np.empty(n, dtype=np.float64)
    for k in range(len(values)):
        env[max(0, edges[k]):min(n, edges[k + 1])] = values[k]
    if ramp > 1:
        kernel = np.ones(ramp) / ramp
        env = np.convolve(np.pad(env, (ramp // 2, ramp - 1 - ramp // 2), mode="edge"), kernel, mode="valid")
    return env


def _automated(x: np.ndarray, plugin, edges: np.ndarray, settings: list[dict | None]) -> np.ndarray:
    """Run x [2, n] through one pedalboard plugin block by block (state kept), `None` blocks bypassed."""
    out = x.copy()
    active = False
    for k, setting in enumerate(settings):
        lo, hi = max(0, int(edges[k])), min(x.shape[1], int(edges[k + 1]))
        if hi <= lo:
            continue
        if setting is None:
            active = False
            continue
        for name, value in setting.items():
            setattr(plugin, name, value)
        out[:, lo:hi] = plugin.process(np.ascontiguousarray(x[:, lo:hi]), SR, reset=not active)
        active = True
    return out


def _fader_moves(rng: np.random.Generator, n: int) -> np.ndarray:
    """n fader levels rising 0 -> 1 in random steps (some of them holds); the first is above 0, the last 1."""
    return np.clip(np.cumsum(rng.dirichlet(np.full(n, 0.7))), 0.0, 1.0)


def make_real_like(seed: int, folder: Path, cues: bool | None = None, margin_s: float = 3.0, blend_s: float = 8.0,
                   duration_a: tuple[float, float] = (34.0, 40.0), duration_b: tuple[float, float] = (28.0, 32.0),
                   min_blend_start: float = 14.0, disable: frozenset[str] = frozenset()) -> dict:
    """Write one real-like transition folder; returns the hidden truth (also in folder/truth.json).

    The excerpt: `margin_s` + 1 bar of A, the blend (`blend_s` rounded to 2..8 bars), 1 bar + `margin_s` of B.
    cues: write cues.json (None: for half of the seeds). disable: effects drawn but not applied (to measure
    what each costs the fit): "low_shelf", "high_shelf", "highpass", "lowpass", "reverb", "stretch".
    """
    import pedalboard

    rng = np.random.default_rng(seed)
    style_a = str(rng.choice(DANCE_STYLES))
    track_a = synthesize_track(int(rng.integers(2**31)), style=style_a, duration=float(rng.uniform(*duration_a)))
    bpm = float(track_a.truth["bpm"])
    ratio = float(rng.choice([-1, 1]) * rng.uniform(0.01, 0.06) + 1.0)  # B's stretch factor: B plays `ratio` x faster
    style_b = str(rng.choice(DANCE_STYLES))
    track_b = synthesize_track(int(rng.integers(2**31)), style=style_b, duration=float(rng.uniform(*duration_b)),
                               bpm=round(bpm / ratio, 2))
    ratio = bpm / float(track_b.truth["bpm"])
    beat = 60.0 / bpm
    bar = 4 * beat
    blend_bars = int(np.clip(round(blend_s / bar), 2, 8))

    # A's blend start: a downbeat late in A that leaves the blend and the tail inside A.
    down_a = np.asarray(track_a.truth["downbeats"])
    dur_a = track_a.stems.shape[-1] / SR
    fits = down_a[(down_a >= min_blend_start) & (down_a + (blend_bars + 1) * bar + margin_s + 0.5 <= dur_a)]
    a_blend = float(rng.choice(fits[-4:]))
    # B comes in at one of its first downbeats, a few ms off A's (the DJ's beatmatch, the offset).
    down_b = np.asarray(track_b.truth["downbeats"])
    b_cue = float(down_b[int(rng.integers(0, 3))])
    dj_error = float(rng.uniform(-0.004, 0.004))
    a0 = a_blend - bar - margin_s - float(rng.uniform(0, beat))  # the excerpt starts anywhere
    a0_sample = int(round(a0 * SR))
    a0 = a0_sample / SR
    n = int(round((a_blend - a0 + (blend_bars + 1) * bar + margin_s) * SR))
    blend = (a_blend - a0, a_blend - a0 + blend_bars * bar)  # mix seconds

    # B stretched as a whole (a deck plays the whole track; Rubber Band's offline output depends on all of its
    # input), then placed: stretched sample k plays at mix sample p_b + k.
    audio_b = track_b.stems.sum(0)
    stretched = pedalboard.time_stretch(np.ascontiguousarray(audio_b), SR, stretch_factor=ratio, high_quality=False)
    p_b = int(round((blend[0] + dj_error - b_cue / ratio) * SR))
    placed_b = np.zeros((2, n), dtype=np.float32)
    lo, hi = max(0, p_b), min(n, p_b + stretched.shape[-1])
    placed_b[:, lo:hi] = stretched[:, lo - p_b:hi - p_b]
    placed_a = track_a.stems.sum(0)[:, a0_sample:a0_sample + n].astype(np.float32)

    # Hidden automation on the mix grid: beat blocks inside the blend.
    edges_s = np.concatenate([[0.0], blend[0] + beat * np.arange(blend_bars * 4 + 1), [n / SR + 1]])
    edges = np.round(edges_s * SR).astype(int)
    n_blocks = len(edges) - 1  # block 0 before the blend, blocks 1..4*bars inside, the last after it
    inside = np.arange(n_blocks)
    in_blend = (inside >= 1) & (inside <= blend_bars * 4)
    swap_bar = int(rng.integers(1, blend_bars))
    swap_block = 1 + 4 * swap_bar  # first block at or after the bass swap
    half_block = 1 + 2 * blend_bars

    truth_fx = {"blend_bars": blend_bars, "swap_bar": swap_bar}
    fader_blocks = int(rng.choice([1, 2, 4]))  # a fader move every beat, 2 beats or bar
    moves = blend_bars * 4 // fader_blocks
    fade_a = np.repeat(np.concatenate([[1.0], 1.0 - _fader_moves(rng, moves)[:-1]]), fader_blocks)  # 1 -> low
    fade_b = np.repeat(np.maximum(_fader_moves(rng, moves), 0.2), fader_blocks)  # B enters audibly, ends at 1
    gains_a = np.concatenate([[1.0], fade_a, [0.0]])
    gains_b = np.concatenate([[0.0], fade_b, [1.0]])

    def fx(name: str, x: np.ndarray, plugin, settings: list[dict | None]) -> np.ndarray:
        return x if name in disable else _automated(x, plugin, edges, settings)

    # A: low-shelf cut from the swap on, maybe a high-pass sweep over the second half, a reverb send at the end.
    low_cut_a = float(rng.uniform(-26, -12))
    shelf_hz_a = float(rng.uniform(150, 300))
    a_chain = fx("low_shelf", placed_a, pedalboard.LowShelfFilter(cutoff_frequency_hz=shelf_hz_a, q=0.7071),
                 [None if k < swap_block else {"gain_db": low_cut_a} for k in range(n_blocks)])
    truth_fx["a_low_shelf"] = {"hz": shelf_hz_a, "db": low_cut_a, "from_block": swap_block}
    if rng.random() < 0.5:
        f_end = float(rng.uniform(300, 1200))
        sweep = max(1, blend_bars * 4 - half_block + 1)
        a_chain = fx("highpass", a_chain, pedalboard.HighpassFilter(cutoff_frequency_hz=60.0),
                     [{"cutoff_frequency_hz": float(60.0 * (f_end / 60.0) ** min(1.0, (k - half_block + 1) / sweep))}
                      if k >= half_block else None for k in range(n_blocks)])
        truth_fx["a_highpass_end_hz"] = f_end
    fader_a = _blocks(edges, gains_a, n, int(RAMP_S * SR)).astype(np.float32)
    dry_a = a_chain * fader_a
    if rng.random() < 0.6:
        send = float(rng.uniform(0.08, 0.25))  # Freeverb's wet is ~ +4 dB over its input: -18..-8 dB of the dry
        room = float(rng.uniform(0.5, 0.85))
        send_env = _blocks(edges, np.where(inside >= 1 + 4 * (blend_bars - 1), send, 0.0) * in_blend, n,
                           int(RAMP_S * SR)).astype(np.float32)
        reverb = pedalboard.Reverb(room_size=room, damping=0.5, wet_level=1.0, dry_level=0.0, width=1.0)
        if "reverb" not in disable:
            dry_a = dry_a + reverb.process(np.ascontiguousarray(dry_a * send_env), SR)
        truth_fx["a_reverb"] = {"send": send, "room_size": room}

    # B: low-shelf cut until the swap, maybe a high-shelf cut and a low-pass opening over the first half.
    low_cut_b = float(rng.uniform(-26, -12))
    shelf_hz_b = float(rng.uniform(150, 300))
    b_chain = fx("low_shelf", placed_b, pedalboard.LowShelfFilter(cutoff_frequency_hz=shelf_hz_b, q=0.7071),
                 [{"gain_db": low_cut_b if k < swap_block else 0.0} for k in range(n_blocks)])
    truth_fx["b_low_shelf"] = {"hz": shelf_hz_b, "db": low_cut_b, "until_block": swap_block}
    if rng.random() < 0.5:
        high_cut = float(rng.uniform(-12, -4))
        b_chain = fx("high_shelf", b_chain, pedalboard.HighShelfFilter(cutoff_frequency_hz=5000.0, q=0.7071),
                     [{"gain_db": high_cut if k < half_block else 0.0} for k in range(n_blocks)])
        truth_fx["b_high_shelf_db"] = high_cut
    if rng.random() < 0.35:
        f0 = float(rng.uniform(800, 3000))
        steps = max(1, half_block - 1)
        b_chain = fx("lowpass", b_chain, pedalboard.LowpassFilter(cutoff_frequency_hz=f0),
                     [{"cutoff_frequency_hz": float(f0 * (18000 / f0) ** ((k - 1) / steps))}
                      if 1 <= k < half_block else None for k in range(n_blocks)])
        truth_fx["b_lowpass_start_hz"] = f0
    dry_b = b_chain * _blocks(edges, gains_b, n, int(RAMP_S * SR)).astype(np.float32)

    mix = dry_a + dry_b
    peak = float(np.abs(mix).max())
    master = 0.95 / peak if peak > 0.95 else 1.0
    mix = (mix * master).astype(np.float32)

    folder.mkdir(parents=True, exist_ok=True)
    save_audio(folder / "mix.wav", mix, SR)
    save_audio(folder / "a.wav", track_a.stems.sum(0), SR)
    save_audio(folder / "b.wav", audio_b, SR)
    import torch

    save_stems(folder / "a_stems", torch.from_numpy(track_a.stems), SR, fmt="wav")
    save_stems(folder / "b_stems", torch.from_numpy(track_b.stems), SR, fmt="wav")
    truth = {
        "seed": seed, "styles": [style_a, style_b], "bpm": bpm, "bpm_b": float(track_b.truth["bpm"]),
        "ratio_a": 1.0, "ratio_b": ratio,
        "offset_a": a0,  # A time at mix time 0
        "offset_b": -p_b / SR * ratio,  # B time at mix time 0 (B time = offset_b + ratio * mix time)
        "blend": list(blend), "b_cue": b_cue, "dj_error_ms": dj_error * 1000, "master": master,
        "effects": truth_fx, "duration": n / SR,
    }
    if cues is None:
        cues = bool(rng.random() < 0.5)
    if cues:
        jitter = rng.uniform(-1.0, 1.0, size=3)
        (folder / "cues.json").write_text(json.dumps({
            "a_time": round(a0 + jitter[0], 2), "b_time": round(b_cue + jitter[1], 2),
            "mix_b_start": round(blend[0] + jitter[2], 2)}, indent=1))
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


# -- scoring ---------------------------------------------------------------------------------------------------
def alignment_error_ms(meta: dict, truth: dict) -> dict:
    """Errors of the pipeline's mapping mix time -> track time, at the blend centre, in ms of mix time."""
    start = meta["clip"]["start_in_mix"]
    centre = 0.5 * (truth["blend"][0] + truth["blend"][1])
    out = {}
    for side in ("a", "b"):
        est = meta["alignment"][side]
        t_est = est["offset"] + est["ratio"] * (centre - start) if "offset" in est else float("nan")
        t_true = truth[f"offset_{side}"] + truth[f"ratio_{side}"] * centre
        out[side] = abs(t_est - t_true) / truth[f"ratio_{side}"] * 1000
        out[f"ratio_{side}"] = abs(est["ratio"] / truth[f"ratio_{side}"] - 1) * 100
    return out


def _effects(truth: dict) -> str:
    """Which hidden effects a transition got: LS low shelf, HP/LP filter sweep, RV reverb, HS high shelf."""
    fx = truth["effects"]
    a = ["LS"] + ["HP"] * ("a_highpass_end_hz" in fx) + ["RV"] * ("a_reverb" in fx)
    b = ["LS"] + ["HS"] * ("b_high_shelf_db" in fx) + ["LP"] * ("b_lowpass_start_hz" in fx)
    return f"{' '.join(a)} | {' '.join(b)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="transitions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="fit steps (default: the pipeline's)")
    parser.add_argument("--separator", default="oracle", help="oracle (the synthetic stems, default) or dsp")
    parser.add_argument("--keep", type=Path, default=None, help="keep the transitions and pairs in this folder")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import torch

    import pipeline

    print(f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        source, out = root / "transitions", root / "processed"
        t0 = time.perf_counter()
        truths = {}
        for i in range(args.n):
            name = f"t{i:02d}"
            truths[name] = make_real_like(args.seed * 1000 + i, source / name)
        made = time.perf_counter() - t0
        print(f"made {args.n} real-like transitions in {made:.0f} s")
        argv = ["--transitions", str(source), "--output", str(out), "--seed", str(args.seed)]
        if args.steps is not None:
            argv += ["--fit-steps", str(args.steps)]
        if args.separator != "oracle":
            argv += ["--separator", args.separator, "--ignore-stems"]
        t0 = time.perf_counter()
        pipeline.main(argv)
        ran = time.perf_counter() - t0
        report = json.loads((out / "real_report.json").read_text())
        rows = []
        print(f"\n{'transition':<11}{'ratio':>7}{'A err ms':>9}{'B err ms':>9}{'ratio err %':>12}{'SNR dB':>8}"
              f"{'init dB':>8}{'STFT':>7}{'sec':>6}  {'hidden effects (A | B)':<24}status")
        for name, truth in truths.items():
            entry = report["transitions"].get(name, {})
            meta = entry.get("meta")
            row = {"name": name, "status": entry.get("status", "missing"), "reason": entry.get("reason", "")}
            if meta is not None and "alignment" in meta:
                errors = alignment_error_ms(meta, truth)
                fit = meta.get("fit", {})
                row.update(a_ms=errors["a"], b_ms=errors["b"], ratio_pct=max(errors["ratio_a"], errors["ratio_b"]),
                           snr=fit.get("snr_db", float("nan")), init=fit.get("init_snr_db", float("nan")),
                           stft=fit.get("stft_distance", float("nan")), seconds=entry.get("seconds", float("nan")))
            rows.append(row)
            effects = _effects(truth)
            if "a_ms" in row:
                print(f"{name:<11}{truth['ratio_b']:>7.4f}{row['a_ms']:>9.3f}{row['b_ms']:>9.3f}{row['ratio_pct']:>12.5f}"
                      f"{row['snr']:>8.1f}{row['init']:>8.1f}{row['stft']:>7.3f}{row['seconds']:>6.0f}  {effects:<24}"
                      f"{row['status']}{': ' + row['reason'] if row['reason'] else ''}")
            else:
                print(f"{name:<11}{truth['ratio_b']:>7.4f}{'':>53}  {effects:<24}{row['status']}: {row['reason']}")
        scored = [r for r in rows if "a_ms" in r]
        offset_ok = [max(r["a_ms"], r["b_ms"]) <= 5.0 for r in scored]
        ratio_ok = [r["ratio_pct"] <= 0.2 for r in scored]
        snr_ok = [r["snr"] >= 15.0 for r in scored]
        print(f"\nsummary over {len(rows)} transitions ({len(scored)} aligned and fitted; pipeline {ran:.0f} s, "
              f"{ran / max(1, len(rows)):.0f} s each):")
        if scored:
            worst = np.array([max(r["a_ms"], r["b_ms"]) for r in scored])
            print(f"  alignment error (ms, worse of A/B): median {np.median(worst):.2f}, max {worst.max():.2f}; "
                  f"<= 5 ms: {sum(offset_ok)}/{len(rows)}")
            ratio = np.array([r["ratio_pct"] for r in scored])
            print(f"  tempo-ratio error (%): median {np.median(ratio):.4f}, max {ratio.max():.4f}; "
                  f"<= 0.2 %: {sum(ratio_ok)}/{len(rows)}")
            snr = np.array([r["snr"] for r in scored])
            print(f"  fit SNR (dB): median {np.median(snr):.1f}, min {snr.min():.1f}, max {snr.max():.1f}; "
                  f">= 15 dB: {sum(snr_ok)}/{len(rows)} (rule-planner init: median "
                  f"{np.median([r['init'] for r in scored]):.1f} dB)")
            stft = np.array([r["stft"] for r in scored])
            print(f"  multi-resolution STFT distance: median {np.median(stft):.3f}, max {stft.max():.3f}")
        failures = [r for r in rows if r["status"] != "ok"]
        print(f"  failures/rejections: {len(failures)}")
        for r in failures:
            print(f"    {r['name']}: {r['status']}: {r['reason']}")


if __name__ == "__main__":
    main()
