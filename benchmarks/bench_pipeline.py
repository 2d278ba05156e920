"""Pipeline and dataset throughput on CPU.

    python benchmarks/bench_pipeline.py [--tracks 8] [--duration 90] [--demucs]

Prints: track analysis seconds per track, pairs per minute with oracle stems (synthetic tracks),
pair seconds with a randomly initialised HTDemucs separating the windows (same compute as the
real htdemucs; --demucs, slow), and dataset samples per second (processed layout, cold and with
the feature cache; on-the-fly synthetic).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline  # noqa: E402
from data.cues import select_cues  # noqa: E402
from data.pairs import Track, analysis_from_truth, build_pair  # noqa: E402
from data.stems import DemucsSeparator  # noqa: E402
from data.synth import synthesize_track  # noqa: E402
from dataset import SyntheticDataset, TransitionDataset  # noqa: E402


def random_htdemucs() -> torch.nn.Module:
    """An untrained HTDemucs with htdemucs' sources and default size (weights need no download)."""
    from demucs.htdemucs import HTDemucs

    model = HTDemucs(sources=["drums", "bass", "other", "vocals"])
    model.eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--demucs", action="store_true", help="also time window separation with a random HTDemucs")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "processed"
        start = time.perf_counter()
        pipeline.main(["--synthetic", str(args.tracks), "--output", str(out), "--duration", str(args.duration),
                       "--seed", "7", "--bars", "16", "--n-frames", "128"])
        total = time.perf_counter() - start
        manifest = pipeline.read_json(out / "manifest.json")
        n_pairs = len(manifest["pairs"])
        print(f"pipeline, oracle stems: {args.tracks} tracks of ~{args.duration:.0f} s -> {n_pairs} pairs in "
              f"{total:.1f} s = {60 * n_pairs / total:.2f} pairs/min (analysis and writing included)")

        split = manifest["pairs"][0]["split"]
        ds = TransitionDataset(out, split)
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        cold = (time.perf_counter() - start) / len(ds)
        start = time.perf_counter()
        for _ in range(3):
            for i in range(len(ds)):
                ds[i]
        warm = (time.perf_counter() - start) / (3 * len(ds))
        print(f"TransitionDataset: {1 / cold:.2f} samples/s cold (features computed), {1 / warm:.1f} samples/s cached")

    synthetic = SyntheticDataset(length=4, seed=0, cache=False)
    start = time.perf_counter()
    for i in range(4):
        synthetic[i]
    print(f"SyntheticDataset (on the fly, 40 s tracks): {4 / (time.perf_counter() - start):.2f} samples/s")

    if args.demucs:
        tracks = []
        for seed, bpm in ((1, 124.0), (2, 125.0)):
            synth = synthesize_track(seed, style="house", duration=args.duration, bpm=bpm)
            audio = torch.from_numpy(synth.stems).sum(0)
            tracks.append(Track(f"bench{seed}", audio, analysis_from_truth(synth.truth, audio),
                                DemucsSeparator(random_htdemucs())))
        plan = select_cues(tracks[0].analysis, tracks[1].analysis, bars=16)
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            pair = build_pair(tracks[0], tracks[1], np.random.default_rng(0), plan=plan, cache_dir=cache)
            elapsed = time.perf_counter() - start
        clip = pair.meta["clip"]["duration"]
        print(f"pair with random HTDemucs on the two windows ({clip:.0f} s clip, tracks of {args.duration:.0f} s): "
              f"{elapsed:.1f} s = {60 / elapsed:.2f} pairs/min (separation dominates; only windows are separated)")


if __name__ == "__main__":
    main()
