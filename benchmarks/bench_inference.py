"""Benchmark: inference.py end to end, by stage, for two 3-minute tracks on the CPU.

Two synthetic 3-minute house tracks (124 and 122 BPM, so B is really stretched) go through
`inference.generate_transition` twice with an empty cache directory:

- cold: nothing cached. Stems come from a randomly initialised `HTDemucs` with the hyper-parameters
  of the pretrained `htdemucs` (benchmarks/bench_stems.py: same architecture, same compute, no
  download), on the transition clip only (blend + 2 bars each side, plus 1 s separator margins);
- warm: the same call again: stems, beatmatched stems and analyses come from the cache.

The planner is a randomly initialised model of the default size (`small`, DDIM 50 steps, guidance
2.0: the compute of the real default model) unless `--model rules` or `base` is given. Wall time of
each stage is printed (model, load, analysis, plan, separation, clip = placement, stretching and
drum lock, planner = features + sampling, render = mixer, output = loudness, splice, limiter,
params), then the time to write the files. Figures depend on the machine and its load: run with
`nice` on a shared box and say so when quoting them.

    python benchmarks/bench_inference.py                     # ~3-6 min on 2 CPU cores (cold dominates)
    python benchmarks/bench_inference.py --model rules --threads 2
    python benchmarks/bench_inference.py --candidates 1      # one sample, no scoring stage
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

import inference as I
from data.stems import DemucsSeparator, Separator
from effects.params import SAMPLE_RATE


def htdemucs_random() -> torch.nn.Module:
    """Random-weight HTDemucs with the pretrained htdemucs architecture (as benchmarks/bench_stems.py)."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    return HTDemucs(sources=["drums", "bass", "other", "vocals"], dconv_mode=3, segment=Fraction(39, 5)).eval()


class CountingSeparator(Separator):
    """Delegates and counts the seconds of audio it was asked to separate."""

    def __init__(self, inner: Separator):
        self.inner, self.name, self.cacheable = inner, inner.name, inner.cacheable
        self.audio_seconds = 0.0

    @property
    def cache_key(self) -> str:
        return self.inner.cache_key

    def _separate(self, audio, sample_rate, offset):
        self.audio_seconds += audio.shape[-1] / sample_rate
        return self.inner.separate(audio, sample_rate, offset)


def planner(kind: str):
    if kind == "rules":
        return I.RulePlanner()
    from model import create_model

    torch.manual_seed(0)
    return I.ModelPlanner(create_model(kind).eval(), f"random {kind}")


def run(label: str, tracks, separator, plan, cache: Path, out: Path, args) -> dict[str, float]:
    start = time.perf_counter()
    result = I.generate_transition(
        tracks[0], tracks[1], model=plan, separator=separator, bars=args.bars, context=args.context,
        steps=args.steps, guidance_scale=2.0, seed=0, device="cpu", cache_dir=cache, candidates=args.candidates)
    total = time.perf_counter() - start
    write = time.perf_counter()
    result.save(out / f"{label}.wav", plot_path=out / f"{label}.png" if args.visualize else None,
                summary_path=out / f"{label}.md" if args.visualize else None)
    timings = dict(result.timings)
    timings["write"] = time.perf_counter() - write
    timings["total"] = total + timings["write"]
    timings["audio_s"] = result.audio.shape[-1] / SAMPLE_RATE
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each track (default 180)")
    parser.add_argument("--bars", type=int, default=16, help="blend length in bars (default 16)")
    parser.add_argument("--context", type=float, default=20.0, help="lead-in/tail seconds (default 20)")
    parser.add_argument("--model", default="small", choices=["small", "base", "rules"],
                        help="random model of this size, or the rule planner (default small)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--candidates", type=int, default=I.DEFAULT_CANDIDATES,
                        help=f"K transitions, the best by the composite (the scoring stage; default "
                             f"{I.DEFAULT_CANDIDATES}, inference.py's; 1: no scoring)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--visualize", action="store_true", help="also time the plot and summary")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from data.audio import save_audio
    from data.keys import key_index
    from data.synth import synthesize_track

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        root = Path(tmp)
        print(f"synthesising two {args.seconds:.0f} s tracks ...", file=sys.stderr)
        tracks = []
        for name, seed, bpm, key in (("a", 1, 124.0, "8A"), ("b", 2, 122.0, "9A")):
            track = synthesize_track(seed, style="house", duration=args.seconds, bpm=bpm, key_index=key_index(key))
            tracks.append(save_audio(root / f"{name}.wav", track.mix))
        separator = CountingSeparator(DemucsSeparator(htdemucs_random(), device="cpu"))
        plan = planner(args.model)
        results = {}
        for label in ("cold", "warm"):
            print(f"{label} run ...", file=sys.stderr)
            before = separator.audio_seconds
            results[label] = run(label, tracks, separator, plan, root / "cache", root, args)
            results[label]["separated_s"] = separator.audio_seconds - before

    stages = [k for k in results["cold"] if k not in ("total", "audio_s", "separated_s")]
    print(f"\ninference.py end to end: two {args.seconds:.0f} s tracks, {args.bars}-bar blend, "
          f"{args.context:g} s context, planner {args.model}"
          f"{'' if args.model == 'rules' else f' (random init, {args.steps} DDIM steps, guidance 2)'}"
          f"{f', {args.candidates} candidates' if args.candidates > 1 else ''}, "
          f"CPU, {torch.get_num_threads()} torch threads")
    print(f"{'stage':<12}{'cold (s)':>10}{'warm (s)':>10}")
    for stage in stages + ["total"]:
        print(f"{stage:<12}{results['cold'][stage]:>10.2f}{results['warm'][stage]:>10.2f}")
    cold = results["cold"]
    rtf = cold["separation"] / max(cold["separated_s"], 1e-9)
    print(f"\nseparated {cold['separated_s']:.1f} s of audio (the clip windows) out of {2 * args.seconds:.0f} s of "
          f"tracks in {cold['separation']:.1f} s (real-time factor {rtf:.2f}); "
          f"warm run separated {results['warm']['separated_s']:.1f} s")
    print(f"output: {cold['audio_s']:.1f} s of audio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
