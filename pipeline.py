"""pipeline.py: tracks -> processed training pairs (the on-disk layout of DESIGN.md).

    python pipeline.py --synthetic 40 --output processed          # synthesise 40 tracks (oracle stems)
    python pipeline.py --tracks ~/Music/library --output processed --separator htdemucs
    python pipeline.py --transitions ~/mixes/transitions --output processed     # real DJ transitions

Tracks are split into train/val/test *by track* (no track appears in two splits); pairs are drawn
within a split between tempo- and key-compatible tracks. The teacher decides a pair's curves from plain
facts of its music (`--teacher decide`, data.transitions.choose_recipe and TypicalChoices) and rides the master
where the blend would sag (data.transitions.ride_gain); `--teacher
select` keeps the best of a recipe shortlist under evaluate.py's composite on the pair's own stems;
`--teacher sample` draws a recipe. Finished pairs are skipped when the
command runs again (each pair folder appears atomically); unreadable files are reported, skipped
and summarised at the end.

--transitions DIR turns real DJ transitions into pairs (data/real_mixes.py): DIR holds a folder per
transition (mix.*, a.*, b.*, optional cues.json and a_stems/, b_stems/), or a whole mix with
tracklist.csv and its source tracks. Each is aligned, cut, separated and labelled by fitting the
mixer's curves to the excerpt; pairs get "kind": "real" and a fit-quality score (SNR), poor fits are
rejected with their reason, and real_report.json lists every transition's outcome. Pairs of the other
kind already in the output folder stay in its manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data.analysis import TrackAnalysis, analyze_track
from data.audio import AudioError, load_audio, save_audio
from data.cues import MAX_BARS, MIN_BARS, select_cues
from data.pairs import Track, analysis_from_truth, build_pair, pick_pairs
from data.stems import OracleSeparator, get_separator, save_stems
from dataset import FORMAT_VERSION, quality_judge, seed_arg, write_json_atomic
from effects.params import SAMPLE_RATE

log = logging.getLogger("pipeline")

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a"}
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
TARGET_PEAK = 0.99  # a target mix above full scale is stored scaled to this peak (24-bit FLAC clips at 1.0)


@dataclass
class TrackSource:
    """Where a track comes from: a file, or a synth seed (re-rendered on demand, never stored whole)."""

    id: str
    path: str | None = None
    seed: int | None = None
    style: str | None = None
    bpm: float | None = None
    duration: float = 150.0

    def load(self) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
        """(audio [2, N], oracle stems [4, 2, N] or None, ground truth or None)."""
        if self.path is not None:
            return load_audio(self.path), None, None
        from data.synth import synthesize_track

        track = synthesize_track(self.seed, style=self.style, duration=self.duration, bpm=self.bpm)
        stems = torch.from_numpy(track.stems)
        return stems.sum(0), stems, track.truth


def split_of(track_id: str, seed: int) -> str:
    """Deterministic split from a hash of the track id (stable as the library grows)."""
    u = int(hashlib.sha1(f"{seed}:{track_id}".encode()).hexdigest()[:8], 16) / 2**32
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if u < edge:
            return name
    return SPLITS[-1][0]


def synthetic_sources(n: int, seed: int, duration: float = 150.0) -> list[TrackSource]:
    """N synthetic tracks in crates of four that share a style and a tempo within +-3 %, so pairs exist."""
    from data.synth import STYLES

    rng = np.random.default_rng(seed)
    styles = sorted(STYLES)
    sources = []
    for i in range(n):
        if i % 4 == 0:
            style = styles[rng.integers(len(styles))]
            lo, hi = STYLES[style].bpm_range
            inner = (lo * 1.03, hi * 0.97)  # a centre whose +-3 % crate stays inside the style's range
            centre = rng.uniform(*inner) if inner[0] < inner[1] else (lo + hi) / 2
        bpm = float(np.clip(centre * rng.uniform(0.97, 1.03), *STYLES[style].bpm_range))
        sources.append(TrackSource(id=f"synth_{seed}_{i:04d}", seed=int(seed * 100_003 + i), style=style, bpm=bpm,
                                   duration=float(duration * rng.uniform(0.8, 1.2))))
    return sources


def library_sources(folder: Path) -> list[TrackSource]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise SystemExit(f"error: {folder}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return [TrackSource(id=f"{p.stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:6]}", path=str(p)) for p in files]


# -- per-track and per-pair work (module level so worker processes can run it) --------------------------
def _analyse(source: TrackSource) -> tuple[str, dict | None, str | None]:
    torch.set_num_threads(1)
    try:
        audio, stems, truth = source.load()
        # Synthetic tracks are cut on their exact grid; files get the full analysis.
        analysis = analysis_from_truth(truth, audio) if truth is not None else analyze_track(audio, SAMPLE_RATE)
        return source.id, analysis.to_dict(), None
    except (AudioError, ValueError, RuntimeError) as error:
        return source.id, None, str(error)


def _make_pair(job: dict) -> tuple[str, str | None]:
    """Build and write one pair folder; returns (pair id, error or None)."""
    torch.set_num_threads(1)
    out = Path(job["folder"])
    try:
        tracks = []
        for side in ("a", "b"):
            source: TrackSource = job[side]
            audio, stems, _ = source.load()
            separator = OracleSeparator(stems) if stems is not None else get_separator(job["separator"])
            tracks.append(Track(source.id, audio, TrackAnalysis.from_dict(job[f"analysis_{side}"]), separator,
                                source.path or f"synth:{source.seed}"))
        rng = np.random.default_rng(job["seed"])
        bars = int(rng.choice([8, 16, 16, 32])) if job["bars"] is None else job["bars"]
        # Exact grids (synthetic) need no kick-lock; files get the full plan with kick-lock.
        plan = select_cues(tracks[0].analysis, tracks[1].analysis, bars=bars) if job["a"].path is None else None
        select = quality_judge if job["teacher"] == "select" else None
        pair = build_pair(tracks[0], tracks[1], rng, n_frames=job["n_frames"], bars=bars,
                          cache_dir=job["cache_dir"], plan=plan, select=select, decide=job["teacher"] == "decide")
        pair.meta["kind"] = "synthetic"
        pair.meta["format_version"] = FORMAT_VERSION
        write_pair(out, pair)
        return out.name, None
    except (AudioError, ValueError, RuntimeError) as error:
        return out.name, str(error)


def _make_real_pair(job: dict) -> tuple[str, dict]:
    """Align, fit and write one real transition; returns (transition id, its report entry)."""
    import time

    from data.real_mixes import RejectedTransition, process_transition

    torch.set_num_threads(1)
    files, started = job["files"], time.perf_counter()
    entry: dict = {"pair": Path(job["folder"]).name}
    try:
        transition = files.load(use_stems=not job["ignore_stems"])
        needs_separator = transition.a.stems is None or transition.b.stems is None
        separator = get_separator(job["separator"]) if needs_separator else None
        pair = process_transition(transition, separator, job["config"], cache_dir=job["cache_dir"])
        pair.meta["format_version"] = FORMAT_VERSION
        write_pair(Path(job["folder"]), pair)
        entry.update(status="ok", quality=pair.meta["quality"], meta=_report_meta(pair.meta))
    except RejectedTransition as error:
        entry.update(status="rejected", reason=str(error))
        if getattr(error, "meta", None) is not None:
            entry["meta"] = _report_meta(error.meta)
    except (AudioError, ValueError, RuntimeError, OSError) as error:
        entry.update(status="failed", reason=" ".join(str(error).split()))
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return files.id, entry


def _report_meta(meta: dict) -> dict:
    return {k: meta[k] for k in ("clip", "alignment", "fit", "tempo_ratio", "bpm", "quality") if k in meta}


def run_transitions(args: argparse.Namespace) -> int:
    """--transitions: real DJ transitions -> pairs of kind "real" (see the module docstring)."""
    from data.real_mixes import RealFitConfig, find_transitions

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        found = find_transitions(Path(args.transitions))
    except (ValueError, OSError) as error:
        print(f"error: --transitions {args.transitions}: {error}", file=sys.stderr)
        return 2
    config = RealFitConfig(steps=args.fit_steps, min_snr_db=args.min_snr, max_clip=args.max_clip, tie=args.tie,
                           seed=args.seed)
    report_path = out / "real_report.json"
    report = read_json(report_path).get("transitions", {}) if report_path.is_file() else {}
    entries, jobs = [], []
    for files in found:
        key = f"{files.mix.resolve()}|{files.id}|{files.window}"
        pair_id = f"real_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
        entries.append({"id": pair_id, "path": pair_id, "split": split_of(files.id, args.seed), "kind": "real",
                        "transition": files.id})
        if (out / pair_id / "analysis.json").is_file():
            continue  # resumable: finished pairs are kept
        jobs.append({"files": files, "folder": str(out / pair_id), "config": config, "ignore_stems": args.ignore_stems,
                     "separator": args.separator or "htdemucs", "cache_dir": args.cache_dir})
    for transition_id, entry in _map(_make_real_pair, jobs, args.workers, "fitting transitions"):
        report[transition_id] = entry
        if entry["status"] == "ok":
            log.info("%s: SNR %.1f dB (%s)", transition_id, entry["quality"], entry["pair"])
        else:
            log.warning("%s %s: %s", transition_id, entry["status"], entry["reason"])
        write_json_atomic(report_path, {"transitions": report})
    pairs = [e for e in entries if (out / e["path"] / "analysis.json").is_file()]
    for entry in pairs:
        entry["quality"] = read_json(out / entry["path"] / "analysis.json").get("quality")
    write_manifest(out, pairs, "real", None)
    done = {e["transition"] for e in pairs}
    skipped = {t: report.get(t, {}) for t in (f.id for f in found) if t not in done}
    log.info("%d real pairs in %s, %d transition(s) rejected or failed", len(pairs), out, len(skipped))
    for transition_id, entry in sorted(skipped.items()):
        log.warning("  %s: %s: %s", transition_id, entry.get("status", "?"), entry.get("reason", ""))
    return 0 if pairs else 1


def write_manifest(out: Path, pairs: list[dict], kind: str, n_frames: int | None) -> None:
    """manifest.json with `pairs` (of `kind`) and the pairs of other kinds it already listed that still exist."""
    manifest = out / "manifest.json"
    old = read_json(manifest) if manifest.is_file() else {}
    kept = [p for p in old.get("pairs", []) if p.get("kind", "synthetic") != kind and (out / p["path"]).is_dir()]
    pairs = kept + pairs
    write_json_atomic(manifest, {
        "format_version": FORMAT_VERSION, "sample_rate": SAMPLE_RATE, "layout": "full",
        "n_frames": n_frames if n_frames is not None else old.get("n_frames"),
        "pairs": pairs, "splits": {s: sum(p["split"] == s for p in pairs) for s, _ in SPLITS},
    })


def write_pair(folder: Path, pair) -> None:
    """Write a pair folder atomically: everything goes to a temporary sibling that is renamed at the end.

    A target mix (transition.flac) that peaks above full scale would clip in 24-bit FLAC: it is written
    multiplied by target_gain = TARGET_PEAK / peak, which analysis.json records and dataset.py divides out.
    """
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    meta = pair.meta
    try:
        save_stems(tmp / "track_a_stems", pair.stems_a, SAMPLE_RATE)
        save_stems(tmp / "track_b_stems", pair.stems_b, SAMPLE_RATE)
        if pair.transition is not None:
            target, peak = pair.transition, float(pair.transition.abs().max())
            if peak > 1.0:  # a mixer render (or a float mix) can exceed 1; the audio-loss target must not clip
                gain = TARGET_PEAK / peak
                target, meta = target * gain, {**meta, "target_gain": gain}
            save_audio(tmp / "transition.flac", target, SAMPLE_RATE)
        np.save(tmp / "params.npy", pair.curves.astype(np.float32))
        write_json_atomic(tmp / "analysis.json", meta)
        os.chmod(tmp, 0o755)
        if folder.exists():  # a half-written leftover from an older version: replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _map(fn, jobs: list, workers: int, desc: str):
    if workers <= 1:
        for job in tqdm(jobs, desc=desc, unit="item"):
            yield fn(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(fn, jobs), total=len(jobs), desc=desc, unit="item")


class PipelineError(Exception):
    """Settings or an output folder this run cannot use (a one-line error from the CLI)."""


def run(args: argparse.Namespace) -> int:
    if getattr(args, "transitions", None):
        return run_transitions(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.synthetic is not None:
        sources = synthetic_sources(args.synthetic, args.seed, args.duration)
    else:
        sources = library_sources(Path(args.tracks))
    if args.synthetic and args.separator not in (None, "oracle"):
        log.info("synthetic tracks use their oracle stems; --separator %s is not needed", args.separator)
    failures: dict[str, str] = {}

    # 1. analyse every track once (cached in tracks.json so a rerun skips it)
    tracks_file = out / "tracks.json"
    known = read_json(tracks_file).get("tracks", {}) if tracks_file.is_file() else {}
    todo = [s for s in sources if s.id not in known]
    for track_id, analysis, error in _map(_analyse, todo, args.workers, "analysing tracks"):
        if error:
            failures[track_id] = error
            log.warning("skipped %s: %s", track_id, error)
        else:
            known[track_id] = analysis
        write_json_atomic(tracks_file, {"tracks": known})

    # 2. pairs within each split
    by_id = {s.id: s for s in sources}
    jobs, manifest_pairs = [], []
    rng = np.random.default_rng(args.seed)
    for split, _ in SPLITS:
        members = [i for i in by_id if i in known and (args.all_to or split_of(i, args.seed)) == split]
        analyses = {i: TrackAnalysis.from_dict(known[i]) for i in members}
        share = (split == args.all_to) if args.all_to else dict(SPLITS)[split]
        budget = None if args.max is None else (max(1, round(args.max * share)) if share else 0)
        for a_id, b_id in pick_pairs(analyses, rng, budget):
            pair_id = f"pair_{hashlib.sha1(f'{a_id}->{b_id}'.encode()).hexdigest()[:10]}"
            manifest_pairs.append({"id": pair_id, "path": pair_id, "split": split, "kind": "synthetic",
                                   "tracks": [a_id, b_id]})
            if (out / pair_id / "analysis.json").is_file():
                frames = read_json(out / pair_id / "analysis.json").get("n_frames")
                if frames is not None and frames != args.n_frames:  # the manifest would misdescribe it
                    raise PipelineError(f"{out} holds pairs of {frames} curve frames; give --n-frames {frames} to "
                                        f"add to it, or another --output")
                continue  # resumable: finished pairs are kept
            jobs.append({"folder": str(out / pair_id), "a": by_id[a_id], "b": by_id[b_id], "analysis_a": known[a_id],
                         "analysis_b": known[b_id], "seed": int(rng.integers(2**31)), "bars": args.bars,
                         "n_frames": args.n_frames, "separator": args.separator or "htdemucs",
                         "cache_dir": args.cache_dir, "teacher": args.teacher})
    for pair_id, error in _map(_make_pair, jobs, args.workers, "making pairs"):
        if error:
            failures[pair_id] = error
            log.warning("skipped %s: %s", pair_id, error)

    # 3. the manifest lists what exists
    pairs = []
    for entry in manifest_pairs:
        folder = out / entry["path"]
        if (folder / "analysis.json").is_file():
            entry["recipe"] = read_json(folder / "analysis.json").get("recipe")
            pairs.append(entry)
    write_manifest(out, pairs, "synthetic", args.n_frames)
    counts = ", ".join(f"{s} {sum(p['split'] == s for p in pairs)}" for s, _ in SPLITS)
    log.info("%d pairs in %s (%s)", len(pairs), out, counts)
    if failures:
        log.warning("%d item(s) skipped:", len(failures))
        for name, error in sorted(failures.items()):
            log.warning("  %s: %s", name, error)
    if not pairs:
        print(f"error: no pairs made in {out}: pairs need two tempo- and key-compatible tracks in one split "
              f"({len(known)} usable track(s); --all-to train puts them all in one)", file=sys.stderr)
    return 0 if pairs else 1


def read_json(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tracks", help="folder of audio files (a DJ library)")
    source.add_argument("--synthetic", type=int, metavar="N", help="synthesise N tracks with oracle stems")
    source.add_argument("--transitions", metavar="DIR",
                        help="real DJ transitions: a folder per transition, or a mix with tracklist.csv")
    parser.add_argument("--output", required=True, help="processed folder to write")
    parser.add_argument("--max", type=int, default=None, help="at most this many pairs in all")
    parser.add_argument("--workers", type=int, default=1, help="processes for analysis and pair making")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--all-to", choices=[name for name, _ in SPLITS], default=None,
                        help="put every track in this split, e.g. a held-out test set from a --seed no training used")
    parser.add_argument("--separator", default=None, help="htdemucs (default for files), demucs:PATH, dsp")
    parser.add_argument("--bars", type=int, default=None, help="blend length in bars (default: 8/16/32 at random)")
    parser.add_argument("--n-frames", type=int, default=128, help="curve frames per clip")
    parser.add_argument("--duration", type=float, default=150.0, help="mean length of synthetic tracks (s)")
    parser.add_argument("--cache-dir", default=None, help="stem cache (default $DJMIX_CACHE or ~/.cache/djmix)")
    parser.add_argument("--teacher", choices=("decide", "select", "sample"), default="decide",
                        help="teacher curves: 'decide' (default): plain facts of the clips pick the move and every "
                             "detail takes its typical value, so the curves follow the music alone (a model can learn "
                             "them), and the master rides up where the blend would sag; 'select': the best of a "
                             "recipe shortlist (one random draw each) by evaluate.py's composite (4 renders a pair); "
                             "'sample': a recipe and its details drawn at random")
    real = parser.add_argument_group("real transitions (--transitions)")
    real.add_argument("--fit-steps", type=int, default=40, help="Adam steps of each curve fit")
    real.add_argument("--min-snr", type=float, default=10.0, help="reject fits below this SNR against the excerpt (dB)")
    real.add_argument("--max-clip", type=float, default=16.0, help="longest clip (s), cut around the blend")
    real.add_argument("--tie", choices=("track", "stem"), default="track",
                      help="fit per-stem controls together per track (channel EQ, default) or freely per stem")
    real.add_argument("--ignore-stems", action="store_true", help="separate even where stems folders are given")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    for flag, value in (("--tracks", args.tracks), ("--transitions", args.transitions)):
        if value is not None and not Path(value).is_dir():
            print(f"error: {flag} {value}: not a folder", file=sys.stderr)
            return 2
    problems = [  # settings every pair would fail on: refused before any work
        (args.synthetic is not None and args.synthetic < 2, f"--synthetic needs N >= 2 (pairs need two tracks), got "
                                                            f"{args.synthetic}"),
        (args.bars is not None and not MIN_BARS <= args.bars <= MAX_BARS,
         f"--bars must be in {MIN_BARS}..{MAX_BARS}, got {args.bars}"),
        (args.n_frames < 2, f"--n-frames must be >= 2, got {args.n_frames}"),
        (not (args.duration > 0 and np.isfinite(args.duration)),
         f"--duration must be > 0 seconds, got {args.duration}"),
        (args.max is not None and args.max < 1, f"--max must be >= 1, got {args.max}"),
    ]
    for bad, message in problems:
        if bad:
            print(f"error: {message}", file=sys.stderr)
            return 2
    try:
        Path(args.output).mkdir(parents=True, exist_ok=True)  # before any work: an unusable --output fails now
    except OSError as error:
        print(f"error: --output {args.output}: cannot create the folder ({error.strerror or error})", file=sys.stderr)
        return 2
    try:
        return run(args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # writing pairs (disk full, permissions): one line; finished pairs stay in place
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
