"""evaluate.py: every metric on constructed transitions with known answers, the baselines' curves, the public
score_transition API, and the CLI (a hand-made processed folder here; pipeline.py data in the slow test)."""

from __future__ import annotations

import csv
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate as ev
from data.transitions import RECIPES, TransitionContext, bass_handover_time, track_levels
from effects.mixer import DifferentiableDJMixer
from effects.params import EQ_NEUTRAL, FULL

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 44_100
BPM = 120.0
BEAT = 60.0 / BPM
DURATION = 12.0  # s: 3 s of A, a 6 s blend, 3 s of B
BLEND = (3.0, 9.0)
N = int(DURATION * SR)
FRAMES = 121  # one curve frame every 0.1 s


# -- constructed music -----------------------------------------------------------------------------------------------
def music(seed: int, offset: float = 0.0, bpm: float = BPM, pitch: float = 1.0, vocals: bool = True,
          kick: bool = True) -> torch.Tensor:
    """[4, 2, N] beat-based stems: kick + click on every beat from `offset`, a sustained bass line (a note per
    beat), a sung tone (a note per bar) and a chord pad (a chord per bar)."""
    rng = np.random.default_rng(seed)
    t = np.arange(N) / SR
    beat = 60.0 / bpm
    stems = np.zeros((4, N))
    for onset in np.arange(offset, DURATION, beat):
        i = int(round(onset * SR))
        m = min(N - i, int(0.25 * SR))
        tt = np.arange(m) / SR
        hit = 0.3 * rng.standard_normal(m) * np.exp(-tt / 0.004)
        if kick:
            hit += 0.5 * np.sin(2 * np.pi * 60 * tt) * np.exp(-tt / 0.06)
        stems[0, i:i + m] += hit
    pos = (t - offset) / beat
    note = np.floor(pos).astype(int)
    bass_f = np.array([55.0, 65.41, 73.42, 61.74])[note % 4] * pitch
    stems[1] = 0.4 * np.sin(2 * np.pi * np.cumsum(bass_f) / SR) * (0.6 + 0.4 * np.exp(-(pos % 1.0) * beat / 0.15))
    bar = np.floor(pos / 4).astype(int)
    if vocals:
        f0 = np.array([220.0, 246.9, 261.6, 196.0])[bar % 4] * pitch * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
        ph = 2 * np.pi * np.cumsum(f0) / SR
        stems[2] = 0.15 * sum(np.sin(h * ph) / h for h in range(1, 6))
    chords = np.array([[261.6, 329.6, 392.0], [293.7, 349.2, 440.0], [246.9, 311.1, 370.0], [220.0, 277.2, 329.6]])
    freqs = chords[bar % 4] * pitch
    stems[3] = 0.08 * sum(np.sin(2 * np.pi * np.cumsum(freqs[:, j]) / SR) for j in range(3))
    return torch.from_numpy(np.stack([stems, stems], axis=1).astype(np.float32))


def noise_stems(seed: int, level: float = 0.1) -> torch.Tensor:
    """[4, 2, N] independent white noise in the drums, bass and other stems (uncorrelated between calls)."""
    g = torch.Generator().manual_seed(seed)
    stems = level * torch.randn(4, 2, N, generator=g)
    stems[2] = 0.0
    return stems


def levels_curves(la, lb) -> torch.Tensor:
    return ev.curves_from_levels(np.asarray(la, np.float64), np.asarray(lb, np.float64))


def both_full() -> torch.Tensor:
    """Both tracks at unity through the blend (crossfader centre, master +3 dB)."""
    t = ev.clip_frame_times(FRAMES, DURATION)
    return levels_curves(t < BLEND[1], t >= BLEND[0])


def handover(stem: str, eq_low: bool = False) -> torch.Tensor:
    """Both tracks at unity through the blend; `stem` passes from A to B mid-blend (fader, optionally the low EQ
    of every stem too, as a DJ's low swap)."""
    curves = both_full().clone()
    t = ev.clip_frame_times(FRAMES, DURATION)
    mid = 0.5 * (BLEND[0] + BLEND[1])
    b_on = torch.from_numpy((t >= mid).astype(np.float32))
    curves[:, FULL.index(f"a.{stem}.gain")] = 1 - b_on
    curves[:, FULL.index(f"b.{stem}.gain")] = b_on
    if eq_low:
        for s in ("drums", "bass", "vocals", "other"):
            curves[:, FULL.index(f"a.{s}.eq_low")] = torch.where(b_on > 0, 0.0, EQ_NEUTRAL)
            curves[:, FULL.index(f"b.{s}.eq_low")] = torch.where(b_on > 0, EQ_NEUTRAL, 0.0)
    return curves


def context(n_frames: int = FRAMES) -> TransitionContext:
    beats = np.arange(0.0, DURATION, BEAT)
    return TransitionContext(n_frames=n_frames, duration=DURATION, bpm=BPM, beats=beats, downbeats=beats[::4],
                             blend_start=BLEND[0], blend_end=BLEND[1], vocals_a=None, vocals_b=None, phrase_bars=2)


@pytest.fixture(scope="module")
def mixer():
    return DifferentiableDJMixer()


@pytest.fixture(scope="module")
def tracks():
    """Instrumental tracks (no vocal stem: the mixer renders no vocal contributions for them)."""
    return {"a": music(1, vocals=False), "b": music(2, pitch=1.12, vocals=False),
            "late": music(3, offset=0.025, pitch=1.12, vocals=False), "drift": music(4, bpm=131.0, pitch=1.12,
                                                                                    vocals=False)}


def score(mixer, a, b, *curves, bpm=BPM):
    with torch.no_grad():
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return ev.score_curves(mixer, a, b, list(curves), bpm, BLEND)
        finally:
            torch.set_num_threads(old)


# -- metrics: known answers ------------------------------------------------------------------------------------------
def test_loudness_dip_known_answers(mixer):
    a, b, silent = noise_stems(1), noise_stems(2), torch.zeros(4, 2, N)
    equal_power = ev.equal_power_curves(FRAMES, DURATION, BLEND)
    linear = ev.linear_crossfade_curves(FRAMES, DURATION, BLEND)
    cut = ev.hard_cut_curves(FRAMES, DURATION, BLEND)
    ep, lin = score(mixer, a, b, equal_power, linear)
    assert ep["loudness_dip_db"] < 0.5  # equal power keeps uncorrelated noise at the fair level
    assert 2.5 < lin["loudness_dip_db"] < 3.5  # a linear fade of uncorrelated sources: -3 dB mid-way
    (into_silence,) = score(mixer, a, silent, cut)
    assert into_silence["loudness_dip_db"] > 20.0  # the fair level is still sqrt(1/2) A when the music stops


def test_bass_clash_known_answers(mixer, tracks):
    a, b = tracks["a"], tracks["b"]
    full, swapped, ep, cut = score(mixer, a, b, both_full(), handover("bass", eq_low=True),
                                   ev.equal_power_curves(FRAMES, DURATION, BLEND), ev.hard_cut_curves(FRAMES, DURATION,
                                                                                                    BLEND))
    assert full["bass_clash"] > 0.95  # two full basses through the blend
    # a low handover on one instant, and a hard cut, never play two basses: at most one analysis frame counts (a
    # ratio of 0.4 s windowed powers gave the cut 0.019 and the handover 0.012, half the window's width)
    assert swapped["bass_clash"] < 0.006 and cut["bass_clash"] < 0.006
    assert abs(ep["bass_clash"] - 1 / 3) < 0.06  # equal power: both within 6 dB while cos, sin >= 1/2
    (rule,) = score(mixer, a, b, ev.rule_bass_swap_curves(context(), seed=0))
    assert rule["bass_clash"] < 0.05


def test_vocal_clash_known_answers(mixer, tracks):
    a, b = music(1), music(2, pitch=1.12)
    full, handed = score(mixer, a, b, both_full(), handover("vocals"))
    assert full["vocal_clash"] > 0.95 and handed["vocal_clash"] < 0.006
    (one_singer,) = score(mixer, a, tracks["b"], both_full())
    assert one_singer["vocal_clash"] == 0.0  # nobody to clash with


def test_beat_phase_error_recovers_the_offset(mixer, tracks):
    curves = ev.equal_power_curves(FRAMES, DURATION, BLEND)
    (aligned,) = score(mixer, tracks["a"], tracks["b"], curves)
    (late,) = score(mixer, tracks["a"], tracks["late"], curves)
    assert aligned["beat_phase_ms"] < 3.0
    assert abs(late["beat_phase_ms"] - 25.0) < 3.0
    (cut,) = score(mixer, tracks["a"], tracks["late"], ev.hard_cut_curves(FRAMES, DURATION, BLEND))
    assert math.isnan(cut["beat_phase_ms"])  # no overlap, no phase


def test_beat_phase_of_a_double_time_mix_folds_on_the_faster_beat(mixer, tracks):
    """B at twice A's tempo, its backbeat accents on A's off-beats: beat-locked all the same (every B beat on an A
    beat or off-beat). Folded on A's beat the accents read as half a beat late; folded on B's beat they do not."""
    fast = music(5, bpm=2 * BPM, pitch=1.12, vocals=False)
    rng = np.random.default_rng(6)
    for onset in np.arange(BEAT / 2, DURATION, BEAT):  # snare-like bursts on B's beats 2 and 4
        i = int(round(onset * SR))
        m = min(N - i, int(0.1 * SR))
        burst = 0.8 * rng.standard_normal(m) * np.exp(-np.arange(m) / SR / 0.02)
        fast[0, :, i:i + m] += torch.from_numpy(burst).float()
    curves = ev.equal_power_curves(FRAMES, DURATION, BLEND)
    a = tracks["a"]
    (unfolded,) = ev.score_curves(mixer, a, fast, [curves], BPM, BLEND)
    (folded,) = ev.score_curves(mixer, a, fast, [curves], BPM, BLEND, bpm_b=2 * BPM)
    assert unfolded["beat_phase_ms"] > 200.0  # the artefact: half of A's 500 ms beat
    assert folded["beat_phase_ms"] < 5.0
    (same,) = ev.score_curves(mixer, a, tracks["late"], [curves], BPM, BLEND, bpm_b=BPM * 1.03)
    assert abs(same["beat_phase_ms"] - 25.0) < 3.0  # a B tempo that is not half or double changes nothing
    assert ev.double_time_bpm(120.0, 236.0) == 240.0 and ev.double_time_bpm(120.0, 61.0) == 60.0  # snapped
    assert ev.double_time_bpm(120.0, 123.0) is None and ev.double_time_bpm(None, 240.0) is None


def test_phase_lag_sign_and_precision():
    fps = SR / ev.ONSET_HOP
    t = np.arange(int(6 * fps)) / fps
    env = lambda shift: np.exp(-(((t - shift) % BEAT) / 0.01))  # noqa: E731
    assert ev.phase_lag_ms(env(0.0), env(0.017), SR, BEAT) == pytest.approx(17.0, abs=1.5)
    assert ev.phase_lag_ms(env(0.017), env(0.0), SR, BEAT) == pytest.approx(-17.0, abs=1.5)
    assert ev.phase_lag_ms(env(0.0), env(0.017), SR) == pytest.approx(17.0, abs=1.5)  # no tempo: the peak lag
    offbeats = env(0.012) + 0.6 * env(0.012 + BEAT / 2)  # B's pattern differs: off-beats as well
    assert ev.phase_lag_ms(env(0.0), offbeats, SR, BEAT) == pytest.approx(12.0, abs=1.5)
    eighths = env(0.012) + env(0.012 + BEAT / 2)  # 8th-note hats cannot tell on-beat from off-beat: near 0 wins
    assert ev.phase_lag_ms(env(0.0), eighths, SR, BEAT) == pytest.approx(12.0, abs=1.5)
    assert abs(ev.phase_lag_ms(env(0.0), env(BEAT / 2), SR, BEAT)) == pytest.approx(BEAT / 2 * 1000, abs=1.5)


def test_seam_novelty(mixer, tracks):
    a = tracks["a"]
    other = noise_stems(7, 0.05) + music(8, pitch=1.5, kick=False, vocals=False)  # another timbre altogether
    cut, fade = ev.hard_cut_curves(FRAMES, DURATION, BLEND), ev.equal_power_curves(FRAMES, DURATION, BLEND)
    # A into an identical copy of itself: a hard cut is no cut at all, the output is the music itself (whose
    # peak over a few bars sits somewhat above its 95th percentile); a fade's level changes add no novelty
    itself, faded_into_itself = score(mixer, a, a.clone(), cut, fade)
    assert 0.8 < itself["seam_novelty"] < 1.6
    assert faded_into_itself["seam_novelty"] == pytest.approx(itself["seam_novelty"], abs=0.15)
    to_other, faded = score(mixer, a, other, cut, fade)
    assert to_other["seam_novelty"] > itself["seam_novelty"] + 0.4  # an abrupt change of timbre stands out ...
    assert to_other["seam_novelty"] > faded["seam_novelty"] + 0.3  # ... more than a gradual one
    (to_silence,) = score(mixer, a, torch.zeros_like(a), cut)
    assert to_silence["seam_novelty"] > 3.0


def test_rhythmic_consistency(mixer, tracks):
    curves = ev.equal_power_curves(FRAMES, DURATION, BLEND)
    (locked,) = score(mixer, tracks["a"], tracks["b"], curves)
    (drifting,) = score(mixer, tracks["a"], tracks["drift"], curves)
    (gap,) = score(mixer, tracks["a"], torch.zeros(4, 2, N), ev.hard_cut_curves(FRAMES, DURATION, BLEND))
    for result in (locked, drifting, gap):
        parts = [result[f"rhythm_{k}"] for k in ev.RHYTHM_WEIGHTS]
        assert all(0.0 <= p <= 1.0 for p in parts)
        assert result["rhythmic_consistency"] == pytest.approx(
            sum(w * p for w, p in zip(ev.RHYTHM_WEIGHTS.values(), parts)))
    assert locked["rhythmic_consistency"] > 0.85
    assert locked["rhythmic_consistency"] > drifting["rhythmic_consistency"] + 0.1
    assert locked["rhythmic_consistency"] > gap["rhythmic_consistency"] + 0.1
    (unknown,) = score(mixer, tracks["a"], tracks["b"], curves, bpm=None)
    assert math.isnan(unknown["rhythmic_consistency"]) and np.isfinite(unknown["composite"])


def test_curve_metrics():
    flat = FULL.neutral_curves(50)
    assert ev.curve_total_variation(flat, 10.0) == 0.0
    ramp = flat.clone()
    ramp[:, FULL.index("crossfader")] = torch.linspace(0, 1, 50)
    assert ev.curve_total_variation(ramp, 10.0) == pytest.approx(0.1)  # one unit of travel in 10 s
    assert ev.curve_error(ramp, ramp) == 0.0
    coarse = ramp[::7]  # the teacher on another frame grid is resampled
    assert ev.curve_error(ramp, coarse) < 1e-6
    assert ev.curve_error(flat, ramp) == pytest.approx(float(((torch.linspace(0, 1, 50) - 0.5) ** 2).mean()) / 58,
                                                       rel=1e-5)
    with pytest.raises(ValueError, match="full layout"):
        ev.curve_total_variation(torch.zeros(10, 54), 1.0)


def test_composite_score():
    perfect = {"loudness_dip_db": 0.0, "bass_clash": 0.0, "vocal_clash": 0.0, "beat_phase_ms": 0.0,
               "seam_novelty": 0.8, "rhythmic_consistency": 1.0, "curve_tv": 0.0}
    assert ev.composite_score(perfect) == pytest.approx(1.0)
    assert ev.composite_score({**perfect, "beat_phase_ms": float("nan")}) == pytest.approx(1.0)  # drops out
    worse = {**perfect, "bass_clash": 0.5}
    assert ev.composite_score(worse) == pytest.approx(1.0 - 0.5 * ev.COMPOSITE_WEIGHTS["bass_clash"])
    scores = ev.metric_scores({**perfect, "loudness_dip_db": 6.0206, "seam_novelty": 2.0, "beat_phase_ms": 20.0})
    assert scores["loudness_dip_db"] == pytest.approx(0.5, abs=1e-4)
    assert scores["seam_novelty"] == pytest.approx(0.5) and scores["beat_phase_ms"] == pytest.approx(0.5)
    assert sum(ev.COMPOSITE_WEIGHTS.values()) == pytest.approx(1.0)
    assert sum(ev.RHYTHM_WEIGHTS.values()) == pytest.approx(1.0)


def test_summary_means_compare_like_with_like():
    """A method that lacks a metric on a pair (no overlap for the phase) is not averaged over an easier set: every
    compared method's mean is over the pairs where all of them have it; the hard cut's phase (never defined) and
    the teacher do not narrow the set."""
    nan = float("nan")
    row = lambda pair, method, phase, comp: {"pair": pair, "method": method, **{k: 0.1 for k in ev.METRICS},  # noqa: E731
                                             "beat_phase_ms": phase, "composite": comp}
    rows = [row("p1", "hard_cut", nan, 0.8), row("p1", "linear_crossfade", 4.0, 0.8), row("p1", "model", 3.0, 0.9),
            row("p1", "teacher", 2.0, 1.0),
            row("p2", "hard_cut", nan, 0.8), row("p2", "linear_crossfade", 300.0, 0.8), row("p2", "model", nan, 0.9),
            row("p2", "teacher", 300.0, 1.0)]
    summary = ev.summarise(rows, ["hard_cut", "linear_crossfade", "model", "teacher"])
    assert summary["model"]["beat_phase_ms"] == 3.0 and summary["linear_crossfade"]["beat_phase_ms"] == 4.0
    assert summary["teacher"]["beat_phase_ms"] == 2.0 and summary["model"]["n_beat_phase_ms"] == 1
    assert math.isnan(summary["hard_cut"]["beat_phase_ms"])
    assert summary["model"]["composite"] == pytest.approx(0.9) and summary["model"]["n_composite"] == 2
    assert ev.head_to_head(summary, "model")["linear_crossfade"]["metrics"] == ["beat_phase_ms"]
    assert "beat phase over 1 of 2 pairs" in ev.markdown_table(summary, ev.LABELS)


def test_head_to_head_counts_the_metrics_won_against_each_baseline():
    base = {"loudness_dip_db": 2.0, "bass_clash": 0.1, "vocal_clash": 0.0, "beat_phase_ms": 10.0, "seam_novelty": 2.0,
            "rhythmic_consistency": 0.8, "curve_tv": 0.1, "curve_error": 0.05, "composite": 0.80}
    summary = {
        "hard_cut": {**base, "beat_phase_ms": float("nan")},
        "rule_bass_swap": {**base, "rhythmic_consistency": 0.95, "composite": 0.90},
        "model": {**base, "loudness_dip_db": 1.0, "bass_clash": 0.05, "beat_phase_ms": 2.0, "rhythmic_consistency": 0.9,
                  "curve_error": 0.01, "composite": 0.85},
    }
    rows = ev.head_to_head(summary, "model")
    assert list(rows) == ["hard_cut", "rule_bass_swap"]  # the baselines present, in their order
    # ties (vocal clash, seam, TV) and a metric one side lacks (the cut's beat phase) are no wins
    assert rows["hard_cut"] == {"composite": True, "metrics": ["loudness_dip_db", "bass_clash", "rhythmic_consistency",
                                                               "curve_error"]}
    assert rows["rule_bass_swap"] == {"composite": False, "metrics": ["loudness_dip_db", "bass_clash",
                                                                      "beat_phase_ms", "curve_error"]}
    text = ev.head_to_head_table(summary, ev.LABELS)
    assert "**no**" in text and "| rule bass swap | 0.850 vs 0.900 (lost) | 4 of 8 |" in text
    summary["rule_bass_swap"]["composite"] = 0.84
    assert "**yes**" in ev.head_to_head_table(summary, ev.LABELS)
    assert "**no**" in ev.head_to_head_table(summary, ev.LABELS, need=5)


def test_paired_p_value_known_answers():
    """Sign-flip test: n equal positive differences reach |mean| only in 2 of 2^n patterns; a mean carried by one
    outlying pair is not significant; beyond EXACT_FLIPS pairs the random patterns count the observed one."""
    assert ev.paired_p_value([1.0] * 4) == pytest.approx(2 / 16)
    assert ev.paired_p_value([0.5, 1.0, 2.0, 1.5, 0.7, 0.9, 1.1, 3.0, 0.2, 0.4]) == pytest.approx(2 / 1024)
    assert ev.paired_p_value([100.0, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1]) >= 0.4  # the mean rests on one pair of 8
    assert ev.paired_p_value([1.0, -1.0]) == 1.0 and math.isnan(ev.paired_p_value([float("nan")]))
    assert ev.paired_p_value([1.0, float("nan"), 1.0]) == pytest.approx(2 / 4)  # NaN pairs drop out
    n = ev.EXACT_FLIPS + 8
    assert ev.paired_p_value([1.0] * n) == pytest.approx(1 / (ev.RANDOM_FLIPS + 1))
    noise = np.random.default_rng(0).normal(size=n)
    assert 0.05 < ev.paired_p_value(noise - noise.mean()) <= 1.0


def test_head_to_head_marks_the_wins_the_pairs_carry():
    """With the per-pair rows: a loudness-dip win on every pair is significant, a beat-phase win carried by one pair
    (108 ms against 0.4 ms there, the same elsewhere) is a win on the means but not significant, so the strict
    verdict is no while the plain one is yes."""
    rows = []
    for i in range(10):
        for method in ("linear_crossfade", "model"):
            ours = method == "model"
            rows.append({"pair": f"p{i}", "method": method, **{k: 0.5 for k in ev.METRICS},
                         "loudness_dip_db": 1.0 if ours else 2.0 + 0.1 * i, "bass_clash": 0.0,
                         "beat_phase_ms": (0.4 if ours else 108.0) if i == 0 else 2.0 + 0.01 * i,
                         "rhythmic_consistency": 0.9 if ours else 0.8, "curve_error": 0.01 if ours else 0.05,
                         "composite": 0.9 if ours else 0.8})
    summary = ev.summarise(rows, ["linear_crossfade", "model"])
    tests = ev.paired_tests(rows, ["linear_crossfade", "model"], "model")["linear_crossfade"]
    assert tests["loudness_dip_db"] == pytest.approx(2 / 1024) and tests["beat_phase_ms"] > 0.5
    table = ev.head_to_head(summary, "model", {"linear_crossfade": tests})["linear_crossfade"]
    assert table["metrics"] == ["loudness_dip_db", "beat_phase_ms", "rhythmic_consistency", "curve_error"]
    assert table["significant"] == ["loudness_dip_db", "rhythmic_consistency", "curve_error"]
    text = ev.head_to_head_table(summary, ev.LABELS, rows=rows)
    assert "at least 4 individual metrics: **yes**" in text and "(p < 0.05, marked †): **no**" in text
    assert "loudness dip†, beat phase, rhythmic consistency†, curve error† | 3 |" in text
    assert "**yes**" in ev.head_to_head_table(summary, ev.LABELS, need=3, rows=rows).split("marked †)")[1]


# -- the public API --------------------------------------------------------------------------------------------------
def test_score_transition_signature_and_keys(mixer, tracks):
    params = inspect.signature(ev.score_transition).parameters
    assert list(params) == ["mixer", "stems_a", "stems_b", "curves", "bpm", "blend", "sample_rate", "teacher", "bpm_b"]
    assert params["sample_rate"].default == 44100 and params["teacher"].default is None
    curves = ev.equal_power_curves(FRAMES, DURATION, BLEND)
    result = ev.score_transition(mixer, tracks["a"], tracks["b"], curves, BPM, BLEND, teacher=curves)
    assert set(ev.METRICS) <= set(result) and all(isinstance(v, float) for v in result.values())
    assert result["curve_error"] == 0.0 and 0.0 < result["composite"] <= 1.0
    with pytest.raises(ValueError, match="blend"):
        ev.score_transition(mixer, tracks["a"], tracks["b"], curves, BPM, (9.0, 3.0))
    with pytest.raises(ValueError, match=r"\[4, 2, N\]"):
        ev.score_transition(mixer, tracks["a"][0], tracks["b"], curves, BPM, BLEND)


def test_contributions_sum_to_the_mix(mixer):
    a, b = music(1), music(2, pitch=1.12)
    curves = RECIPES["echo_out"](context(), np.random.default_rng(3))
    parts = ev.render_parts(mixer, a, b, curves, BPM, vocals=(True, True))
    with torch.no_grad():
        mix = mixer(a[None], b[None], torch.from_numpy(curves)[None], bpm=BPM)[0]
    assert torch.allclose(parts["out"], mix, atol=1e-5)
    only_vocal = a.clone()
    only_vocal[[0, 1, 3]] = 0
    with torch.no_grad():
        vocal = mixer(only_vocal[None], torch.zeros_like(only_vocal)[None], torch.from_numpy(curves)[None], bpm=BPM)[0]
    assert torch.allclose(parts["vocal_a"], vocal, atol=1e-6)


# -- baselines -------------------------------------------------------------------------------------------------------
def test_baseline_curves_have_the_expected_shape():
    ctx = context()
    curves = ev.baseline_curves(ctx, seed=0)
    assert set(curves) == {"hard_cut", "linear_crossfade", "equal_power", "rule_bass_swap"}
    t = ctx.frame_times
    before, after = t < BLEND[0], t > BLEND[1]
    xf, master = FULL.index("crossfader"), FULL.index("master_gain")
    others = [i for i in range(len(FULL)) if i not in (xf, master)]
    for name, c in curves.items():
        assert c.shape == (FRAMES, len(FULL)) and c.dtype == torch.float32 and 0 <= c.min() and c.max() <= 1
        levels = track_levels(c)
        assert np.allclose(levels[before], [1, 0], atol=1e-4) and np.allclose(levels[after], [0, 1], atol=1e-4), name
    for name in ("hard_cut", "linear_crossfade", "equal_power"):  # only the crossfader and master move
        assert torch.equal(curves[name][:, others], FULL.neutral_curves(FRAMES)[:, others])
    # hard cut: on the downbeat nearest the blend middle (downbeats every 2 s: 6.0 s)
    cut = ev.cut_time(BLEND, ctx.downbeats)
    assert cut == pytest.approx(6.0)
    levels = track_levels(curves["hard_cut"])
    assert np.allclose(levels[t < cut], [1, 0], atol=1e-4) and np.allclose(levels[t >= cut], [0, 1], atol=1e-4)
    assert ev.cut_time((3.0, 9.0)) == 6.0 and ev.cut_time((3.0, 9.0), [], [5.5, 6.25]) == 6.25
    # linear: amplitudes sum to 1 (-6 dB each mid-way); equal power: powers sum to 1, crossfader linear
    inside = (t >= BLEND[0]) & (t <= BLEND[1])
    lin = track_levels(curves["linear_crossfade"])
    assert np.allclose(lin.sum(-1), 1.0, atol=1e-3)
    assert np.all(np.diff(lin[inside, 1]) > 0)
    ep = track_levels(curves["equal_power"])
    assert np.allclose((ep**2).sum(-1), 1.0, atol=1e-3)
    r = np.clip((t - BLEND[0]) / (BLEND[1] - BLEND[0]), 0, 1)
    assert np.allclose(curves["equal_power"][:, xf].numpy(), r, atol=1e-6)
    # the rule planner's bass swap: the recipe itself, its bass handover inside the blend
    expected = RECIPES["bass_swap"](context(), np.random.default_rng(0))
    assert np.array_equal(curves["rule_bass_swap"].numpy(), expected)
    assert BLEND[0] < bass_handover_time(curves["rule_bass_swap"], ctx) < BLEND[1]


# -- the CLI ---------------------------------------------------------------------------------------------------------
def make_processed(root: Path, n_pairs: int = 2, split: str = "test") -> Path:
    """A processed folder in the pipeline's layout, written by hand from the constructed music (fast)."""
    from data.stems import save_stems

    root.mkdir(parents=True, exist_ok=True)
    beats = [round(float(b), 6) for b in np.arange(0.0, DURATION, BEAT)]
    pairs = []
    for i in range(n_pairs):
        folder = root / f"pair_{i}"
        folder.mkdir()
        save_stems(folder / "track_a_stems", music(10 + i, vocals=False), SR, fmt="wav")
        save_stems(folder / "track_b_stems", music(20 + i, pitch=1.12, vocals=False), SR, fmt="wav")
        ctx = context(64)
        recipe = ("equal_power_fade", "bass_swap")[i % 2]
        np.save(folder / "params.npy", RECIPES[recipe](ctx, np.random.default_rng(i)))
        track = {"bpm": BPM, "key_index": 0, "beats": beats, "downbeats": beats[::4],
                 "sections": [{"start": 0.0, "end": DURATION, "label": "drop"}], "valid": [0.0, DURATION],
                 "vocal_activity": None}
        meta = {"kind": "synthetic", "recipe": recipe, "layout": "full", "sample_rate": SR, "n_frames": 64,
                "bpm": BPM, "clip": {"duration": DURATION, "n_samples": N, "blend_start": BLEND[0],
                                     "blend_end": BLEND[1]},
                "tracks": {"a": track, "b": track}, "context": ctx.to_dict()}
        (folder / "analysis.json").write_text(json.dumps(meta))
        pairs.append({"id": f"pair_{i}", "path": f"pair_{i}", "split": split, "kind": "synthetic", "recipe": recipe})
    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "sample_rate": SR, "layout": "full",
                                                    "n_frames": 64, "pairs": pairs}))
    return root


def tiny_model(path: Path) -> Path:
    from model import create_ema, create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("tiny", model__n_mels=32, diffusion__inference_steps=2)
    save_checkpoint(path, model, ema=create_ema(model))
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_end_to_end_on_a_small_folder(tmp_path, capsys):
    data = make_processed(tmp_path / "processed", n_pairs=1)
    model = tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    rc = ev.main(["--data", str(data), "--model", str(model), "--out", str(out), "--device", "cpu"])  # K = 4
    assert rc == 0
    printed = capsys.readouterr().out
    text = (out / "results.md").read_text()
    assert printed.strip() == text.strip()
    for label in ("hard cut (downbeat)", "linear crossfade", "equal-power crossfade", "rule bass swap", "| model |",
                  "model, best of 4", "teacher (reference)", "composite", "wins", "against each baseline"):
        assert label in text
    rows = read_rows(out / "results.csv")
    methods = {"hard_cut", "linear_crossfade", "equal_power", "rule_bass_swap", "model", "model_best", "teacher"}
    assert {r["method"] for r in rows} == methods and len(rows) == len(methods)
    by = {r["method"]: r for r in rows}
    assert float(by["model_best"]["composite"]) >= float(by["model"]["composite"])  # the single sample is one of 4
    assert float(by["teacher"]["curve_error"]) == 0.0
    table = text.split("\n\n")[1].splitlines()[2:]  # the method rows of the main table
    assert sum(int(line.split("|")[-3]) for line in table if "teacher" not in line) >= 1  # wins
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_pair_the_metrics_cannot_score_is_skipped_and_a_manifest_without_n_frames_reads(tmp_path, capsys):
    """A real-mix folder (pipeline.py --transitions) records no n_frames; a hard cut fitted with no blend must
    not stop the run."""
    data = make_processed(tmp_path / "processed", n_pairs=2)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["n_frames"] = None
    (data / "manifest.json").write_text(json.dumps(manifest))
    meta = json.loads((data / "pair_1" / "analysis.json").read_text())
    meta["clip"]["blend_end"] = meta["clip"]["blend_start"]  # a cut: zero-length blend
    meta["context"]["blend_end"] = meta["context"]["blend_start"]
    (data / "pair_1" / "analysis.json").write_text(json.dumps(meta))
    out = tmp_path / "eval"
    assert ev.main(["--data", str(data), "--out", str(out)]) == 0
    assert {r["pair"] for r in read_rows(out / "results.csv")} == {"pair_0"}
    assert "1 pair(s) could not be read or scored and were skipped: pair_1" in (out / "results.md").read_text()


def test_cli_baselines_only_and_bad_input(tmp_path, capsys):
    data = make_processed(tmp_path / "processed", n_pairs=1)
    out = tmp_path / "eval"
    assert ev.main(["--data", str(data), "--out", str(out)]) == 0
    assert "baselines only (no model)" in (out / "results.md").read_text()
    rows = read_rows(out / "results.csv")
    assert {r["method"] for r in rows} == {"hard_cut", "linear_crossfade", "equal_power", "rule_bass_swap", "teacher"}
    capsys.readouterr()

    def error(*argv: str) -> str:
        assert ev.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    assert "not a folder" in error("--data", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "manifest.json" in error("--data", str(tmp_path / "empty"))
    assert "no pairs in split 'val'" in error("--data", str(data), "--split", "val", "--out", str(out))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "bad.pt" in error("--data", str(data), "--model", str(bad), "--out", str(out))
    assert "--candidates" in error("--data", str(data), "--candidates", "0")
    before = (out / "results.csv").read_bytes()
    assert "no such file" in error("--data", str(data), "--model", str(tmp_path / "missing.pt"), "--out", str(out))
    assert "cannot create the folder" in error("--data", str(data), "--out", str(out / "results.csv" / "sub"))
    if not torch.cuda.is_available():
        assert "no CUDA device" in error("--data", str(data), "--device", "cuda", "--out", str(out))
    assert (out / "results.csv").read_bytes() == before  # a failed run leaves the earlier results alone

    # --pool: earlier runs' results.csv re-summarised over all their pairs, each set's ids kept apart
    other = tmp_path / "eval_b"
    other.mkdir()
    (other / "results.csv").write_text((out / "results.csv").read_text())
    pooled = tmp_path / "pooled"
    assert ev.main(["--pool", str(out / "results.csv"), str(other / "results.csv"), "--out", str(pooled)]) == 0
    text = (pooled / "results.md").read_text()
    assert "Pooled evaluation: 2 pair(s) from 2 results file(s)" in text and "rule bass swap" in text
    assert (pooled / "metrics.png").is_file() and capsys.readouterr().out.strip() == text.strip()
    assert "no such results file" in error("--pool", str(tmp_path / "none.csv"))
    assert "appears twice" in error("--pool", str(out / "results.csv"), str(out / "results.csv"))
    (tmp_path / "notes.csv").write_text("pair,method\np1,model\n")
    assert "not an evaluate.py results.csv" in error("--pool", str(tmp_path / "notes.csv"))
    assert "either --data" in error("--out", str(out))


@pytest.mark.slow
def test_cli_on_pipeline_data(tmp_path, capsys):
    import pipeline

    data = tmp_path / "processed"
    assert pipeline.main(["--synthetic", "4", "--output", str(data), "--duration", "30", "--bars", "4", "--max", "1",
                          "--n-frames", "64", "--seed", "1"]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    for pair in manifest["pairs"]:  # a tiny library has no test split of its own: evaluate what it made
        pair["split"] = "test"
    (data / "manifest.json").write_text(json.dumps(manifest))
    model = tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    assert ev.main(["--data", str(data), "--model", str(model), "--candidates", "2", "--limit", "2",
                    "--out", str(out), "--device", "cpu"]) == 0
    rows = read_rows(out / "results.csv")
    assert len({r["pair"] for r in rows}) == min(2, len(manifest["pairs"]))
    assert all(np.isfinite(float(r["composite"])) for r in rows)
    assert (out / "metrics.png").is_file() and "composite" in capsys.readouterr().out
