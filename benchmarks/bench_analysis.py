"""Accuracy and speed of data/analysis.py on synthetic tracks with exact ground truth.

Synthesises N tracks across the styles of data/synth.py, analyses each from the mix alone and
from the mix plus its oracle stems, scores against the truth with mir_eval, and prints a table
per style and overall, plus seconds per track:

    python benchmarks/bench_analysis.py --n 40 --duration 120 --seed 0

Columns: tempo = share of tracks within 4 % of the true BPM; beat F / downbeat F = mean
mir_eval F-measure (70 ms window); key = mean mir_eval weighted key score; vocal F = frame
F-measure of vocal activity (stems only); s/track = analysis seconds per track.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import mir_eval
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.analysis import analyze_track  # noqa: E402
from data.keys import key_name  # noqa: E402
from data.synth import STYLES, synthesize_track  # noqa: E402

TEMPO_TOLERANCE = 0.04
METRICS = ("tempo", "beat_f", "downbeat_f", "key", "vocal_f", "seconds")


def score(analysis, truth: dict) -> dict[str, float]:
    """mir_eval scores of one analysis against the synthesiser's truth."""
    ref_beats = np.asarray(truth["beats"], dtype=np.float64)
    ref_downbeats = np.asarray(truth["downbeats"], dtype=np.float64)
    # f_measure scores every beat (mir_eval.beat.evaluate would drop the first 5 s).
    beat_f = mir_eval.beat.f_measure(ref_beats, analysis.beats)
    down_f = mir_eval.beat.f_measure(ref_downbeats, analysis.downbeats)
    out = {
        "tempo": float(abs(analysis.bpm - truth["bpm"]) <= TEMPO_TOLERANCE * truth["bpm"]),
        "beat_f": float(beat_f),
        "downbeat_f": float(down_f),
        "key": float(mir_eval.key.weighted_score(truth["key"], key_name(analysis.key_index))),
    }
    if analysis.vocal_activity is not None:
        out["vocal_f"] = vocal_frame_f(analysis.vocal_activity, truth["vocal_activity"], truth["duration"])
    return out


def vocal_frame_f(estimated, reference, duration: float, rate: float = 10.0) -> float:
    """F-measure of active frames (10 frames/s); 1.0 when neither has any vocals."""
    n = int(np.ceil(duration * rate))

    def mask(intervals) -> np.ndarray:
        m = np.zeros(n, dtype=bool)
        for start, end in intervals:
            m[int(start * rate) : int(np.ceil(end * rate))] = True
        return m

    est, ref = mask(estimated), mask(reference)
    if not est.any() and not ref.any():
        return 1.0
    hits = float((est & ref).sum())
    precision = hits / max(est.sum(), 1)
    recall = hits / max(ref.sum(), 1)
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


def print_table(title: str, rows: dict[str, list[dict]]) -> None:
    print(f"\n{title}")
    names = ("tempo", "beat F", "down F", "key", "vocal F", "s/track")
    header = f"{'style':10s} {'n':>3s} " + " ".join(f"{name:>8s}" for name in names)
    print(header)
    print("-" * len(header))
    everything = [r for style_rows in rows.values() for r in style_rows]
    for name, style_rows in list(rows.items()) + [("overall", everything)]:
        if style_rows:
            cells = " ".join(f"{_mean(style_rows, metric):>8s}" for metric in METRICS)
            print(f"{name:10s} {len(style_rows):3d} {cells}")


def _mean(rows: list[dict], metric: str) -> str:
    values = [r[metric] for r in rows if metric in r]
    return f"{np.mean(values):.3f}" if values else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="number of tracks (styles in turn)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per track")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first track (then +1 each)")
    parser.add_argument("--styles", nargs="*", default=list(STYLES), help="styles to cycle through")
    parser.add_argument("--no-stems", action="store_true", help="only analyse the mixes")
    parser.add_argument("--verbose", action="store_true", help="one line per track")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    modes = ["mix"] if args.no_stems else ["mix", "mix+stems"]
    rows: dict[str, dict[str, list[dict]]] = {m: defaultdict(list) for m in modes}
    synth_seconds = 0.0
    for i in range(args.n):
        style = args.styles[i % len(args.styles)]
        seed = args.seed + i
        start = time.perf_counter()
        track = synthesize_track(seed, style=style, duration=args.duration)
        synth_seconds += time.perf_counter() - start
        for mode in modes:
            start = time.perf_counter()
            stems = track.stems if mode != "mix" else None
            analysis = analyze_track(track.mix, track.sample_rate, stems=stems)
            result = score(analysis, track.truth)
            result["seconds"] = time.perf_counter() - start
            rows[mode][style].append(result)
            if args.verbose:
                print(
                    f"seed {seed:5d} {style:8s} {mode:9s} bpm {track.truth['bpm']:6.1f}->{analysis.bpm:6.1f} "
                    f"beatF {result['beat_f']:.2f} downF {result['downbeat_f']:.2f} "
                    f"key {track.truth['key']}->{analysis.key} ({result['key']:.1f}) "
                    f"{result['seconds']:.1f}s",
                    flush=True,
                )

    print(
        f"{args.n} tracks of {args.duration:.0f} s from seed {args.seed}; "
        f"synthesis {synth_seconds / max(args.n, 1):.1f} s/track"
    )
    for mode in modes:
        print_table(f"analysis from {mode}", rows[mode])


if __name__ == "__main__":
    main()
