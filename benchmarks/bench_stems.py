"""Benchmark: stem separation of a whole track vs only its two transition windows.

Separating only the windows a transition uses (A's outro, B's intro: `data.stems.separate_windows`)
instead of the whole track is the reason the pipeline is affordable on a CPU. This script times
both on a synthetic stereo track and prints wall seconds and the real-time factor
(RTF = processing seconds / audio seconds; below 1 is faster than real time).

Models (no network needed):
- `htdemucs-random`: a randomly initialised `HTDemucs` with the hyperparameters of the pretrained
  `htdemucs` (class defaults = demucs' htdemucs config, `dconv_mode=3` as in its training grid
  `demucs/grids/mmi.py`, training segment 7.8 s), so it costs exactly what the real model costs;
- `demucs_unittest`: demucs' tiny HDemucs test model;
- `dsp`: the HPSS + band-split fallback (`DSPSeparator`).

Usage:
    python benchmarks/bench_stems.py            # 30 s track, two 5 s windows (~3-4 min, 2 CPU cores)
    python benchmarks/bench_stems.py --full     # 3 min track, two 30 s windows (~15 min on 2 cores)
    python benchmarks/bench_stems.py --models demucs_unittest,dsp --seconds 180 --window 30

On a machine shared with other jobs pass `--threads 1`: a 2-thread OpenMP pool competing with
other processes made small Demucs layers (the LSTMs of demucs_unittest) 10-40x slower here.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import torch

from data.stems import DemucsSeparator, DSPSeparator, Separator, separate_windows
from effects.params import SAMPLE_RATE

MODELS = ("htdemucs-random", "demucs_unittest", "dsp")


def htdemucs_random() -> torch.nn.Module:
    """Random-weight HTDemucs with the pretrained htdemucs architecture (same compute)."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    return HTDemucs(sources=["drums", "bass", "other", "vocals"], dconv_mode=3, segment=Fraction(39, 5)).eval()


def make_separator(name: str, device: str) -> Separator:
    if name == "htdemucs-random":
        return DemucsSeparator(htdemucs_random(), device=device)
    if name == "demucs_unittest":
        return DemucsSeparator("demucs_unittest", device=device)
    if name == "dsp":
        return DSPSeparator()
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="track length (default 30)")
    parser.add_argument("--window", type=float, default=5.0, help="transition window length (default 5)")
    parser.add_argument("--margin", type=float, default=1.0, help="context margin per side, seconds")
    parser.add_argument("--full", action="store_true", help="the real case: --seconds 180 --window 30")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--skip-whole", action="store_true", help="time the windows only")
    args = parser.parse_args()
    if args.full:
        args.seconds, args.window = 180.0, 30.0
    if args.threads:
        torch.set_num_threads(args.threads)
    if 2 * args.window > args.seconds:
        raise SystemExit("two windows must fit in the track: --window <= --seconds / 2")

    n = int(args.seconds * SAMPLE_RATE)
    audio = 0.1 * torch.randn(2, n, generator=torch.Generator().manual_seed(0))  # content does not change cost
    # A track is mixed in over its intro and out over its outro: the two windows of a DJ set.
    windows = [(0.0, args.window), (args.seconds - args.window, args.seconds)]
    window_audio_s = 2 * args.window
    print(f"track {args.seconds:.0f} s stereo @ {SAMPLE_RATE} Hz; windows {windows} (+{args.margin:.0f} s margin); "
          f"device {args.device}, {torch.get_num_threads()} threads")
    print(f"{'model':<16} {'case':<22} {'audio s':>8} {'wall s':>8} {'RTF':>6}")

    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        separator = make_separator(name, args.device)
        # Warm-up (model load, first-call kernel setup) on one second; not counted.
        warm = timed(lambda s=separator: s.separate(audio[:, :SAMPLE_RATE]))
        whole = None
        if not args.skip_whole:
            whole = timed(lambda s=separator: s.separate(audio))
            print(f"{name:<16} {'whole track':<22} {args.seconds:>8.1f} {whole:>8.1f} {whole / args.seconds:>6.2f}")
        part = timed(lambda s=separator: separate_windows(
            audio, windows, s, margin=args.margin, use_cache=False, progress=False))
        label = f"2 x {args.window:.0f} s windows"
        print(f"{name:<16} {label:<22} {window_audio_s:>8.1f} {part:>8.1f} {part / window_audio_s:>6.2f}"
              + (f"   {whole / part:.1f}x faster than whole" if whole else "")
              + f"   (warm-up {warm:.1f} s)")


if __name__ == "__main__":
    main()
