"""Real pairs: transitions cut from DJ mixes, aligned to their source tracks, labelled by fitting the mixer.

A real DJ transition carries no parameter labels; the differentiable mixer is how it gets them
(analysis by synthesis). For one transition (a mix excerpt, track A, track B):

1. locate each source in the mix: beat-synchronous chroma + MFCC of the excerpt and of the track give
   candidate beat lags, refined and ranked by two-band onset envelopes read through the tempo ratio; the
   ratio comes from the two tempi and a robust line through per-second onset lags (`locate`);
2. cut aligned windows (`place_source`): the source, time-stretched with Rubber Band (the project's
   `beatmatch`, the whole track as a deck plays it) unless its ratio is within 0.03 % of 1, is placed at
   each candidate; the waveform decides between them (loops repeat by bars, the waveform does not), a
   robust line through 1 s window lags refines the ratio (re-stretching until it converges, ~1e-6) and
   one cross-correlation places the source to the sample;
3. separate stems of the aligned windows (given stems are sliced; for a stretched source their ratio
   masks split the stretched audio, so the stems still sum to it);
4. find the blend (where both sources are in the mix), cut the clip (the blend plus context bars);
5. fit the mixer curves by gradient descent (effects/fit.py) on a multi-resolution STFT loss against the
   excerpt, at a reduced sample rate, from the best rule-planner recipe, with smoothness and
   fader-monotonicity penalties; per-stem controls are tied per track (a DJ's channel EQ acts on the
   whole track) unless asked otherwise;
6. score the fit at 44.1 kHz (SNR and multi-resolution STFT distance against the excerpt) and reject
   poor fits with a reason.

Times: seconds. Mix time t (from the start of the excerpt) plays track time `offset + ratio * t`.
Input forms (see `find_transitions`): a folder per transition, or a whole mix with a tracklist CSV.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import signal

from data.analysis import TrackAnalysis, analyze_track
from data.audio import AudioError, load_audio, resample
from data.cues import _normalised_xcorr, beatmatch, low_band_envelope
from data.pairs import Pair, clip_analysis
from data.pairs import window as _window
from data.stems import Separator, load_stems, separate_windows
from data.transitions import RECIPES, context_from_analyses
from effects.fit import fit_curves
from effects.losses import MultiResolutionSTFTLoss, snr_db
from effects.mixer import DifferentiableDJMixer, MixerConfig
from effects.params import FULL, SAMPLE_RATE, STEMS, ParamLayout

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a")
SR = SAMPLE_RATE
FEATURE_RATE = 22_050  # beat-synchronous features are computed at this rate
FEATURE_HOP = 512
ENV_RATE = 1000.0  # Hz of the onset envelopes used for the fine alignment
ONSET_CUTOFF_HZ = 300.0  # the kick band: sharpest and least disturbed by EQ moves above it
UNSTRETCHED = 3e-4  # |ratio - 1| below this: the source was not time-stretched
STRETCH_FROM_START_S = 90.0  # stretch from the track's first sample when the clip needs it before this
STRETCH_WHOLE_S = 240.0  # ... and the whole track when it is no longer than this (see place_source)


class RejectedTransition(ValueError):
    """A transition that could not be aligned or fitted well enough; the message says why."""


# -- inputs ----------------------------------------------------------------------------------------------------
@dataclass
class SourceTrack:
    """One source track: its audio [2, N] at 44.1 kHz, and optionally its analysis and known stems [4, 2, N]."""

    id: str
    audio: torch.Tensor
    analysis: TrackAnalysis | None = None
    stems: torch.Tensor | None = None
    path: str = ""


@dataclass
class RealTransition:
    """A mix excerpt [2, M] with the two tracks it blends, and optional approximate cues.

    cues (all optional, seconds): `a_time` = A's time at mix time 0, `b_time` = B's time at `mix_b_start`,
    `mix_b_start` = mix time where B comes in, `mix_a_end` = mix time where A is gone.
    """

    id: str
    mix: torch.Tensor
    a: SourceTrack
    b: SourceTrack
    cues: dict = field(default_factory=dict)
    mix_start: float = 0.0  # where the excerpt starts in the whole mix (tracklist input), for the record
    source: str = ""


@dataclass
class TransitionFiles:
    """Where a transition's inputs are on disk (see `find_transitions`)."""

    id: str
    mix: Path
    a: Path
    b: Path
    cues: dict = field(default_factory=dict)
    a_stems: Path | None = None
    b_stems: Path | None = None
    window: tuple[float, float] | None = None  # excerpt of the whole mix (tracklist input), seconds

    def load(self, use_stems: bool = True) -> RealTransition:
        mix = _read_excerpt(self.mix, self.window)
        sources = []
        for side, path, stems_dir in (("a", self.a, self.a_stems), ("b", self.b, self.b_stems)):
            audio = load_audio(path)
            stems = None
            if use_stems and stems_dir is not None:
                stems = load_stems(stems_dir)
                if stems.shape[-1] != audio.shape[-1]:
                    raise AudioError(f"{stems_dir}: stems last {stems.shape[-1]} samples, {path} {audio.shape[-1]}")
            sources.append(SourceTrack(f"{self.id}.{side}", audio, None, stems, str(path)))
        start = self.window[0] if self.window else 0.0
        return RealTransition(self.id, mix, sources[0], sources[1], dict(self.cues), start, str(self.mix))


def _read_excerpt(path: Path, window: tuple[float, float] | None) -> torch.Tensor:
    """A file, or the seconds `window` of it (read without loading the whole mix where the format seeks)."""
    if window is None:
        return load_audio(path)
    import soundfile as sf

    from data.audio import resample as _resample

    try:
        info = sf.info(str(path))
        start, stop = int(max(0.0, window[0]) * info.samplerate), int(window[1] * info.samplerate)
        data, rate = sf.read(str(path), start=start, stop=min(stop, info.frames), dtype="float32", always_2d=True)
    except Exception:  # formats soundfile cannot seek (mp3 on old libsndfile, m4a): load all of it
        audio = load_audio(path)
        return audio[:, int(max(0.0, window[0]) * SR):int(window[1] * SR)].contiguous()
    x = torch.from_numpy(data.T.copy())
    x = x.repeat(2, 1) if x.shape[0] == 1 else x[:2] if x.shape[0] > 2 else x
    if x.shape[-1] == 0:
        raise AudioError(f"{path}: the tracklist window {window[0]:.1f}-{window[1]:.1f} s lies outside the mix")
    return _resample(x, rate, SR).contiguous()


def _audio_in(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for ext in AUDIO_EXTENSIONS:
            if (folder / f"{name}{ext}").is_file():
                return folder / f"{name}{ext}"
    return None


def _stems_next_to(path: Path, extra: tuple[str, ...] = ()) -> Path | None:
    """A stems folder for an audio file: `<name>_stems/` next to it (or one of `extra`), if it holds stems."""
    for candidate in (path.parent / f"{path.stem}_stems", *(path.parent / e for e in extra)):
        if candidate.is_dir() and any(candidate.glob(f"{STEMS[0]}.*")):
            return candidate
    return None


def _read_cues(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        cues = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    known = {"a_time", "b_time", "mix_b_start", "mix_a_end"}
    if not isinstance(cues, dict) or set(cues) - known:
        raise ValueError(f"{path}: cue keys must be among {sorted(known)}, got {cues!r}")
    out = {}
    for key, value in cues.items():
        if value is None:
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = math.nan
        if isinstance(value, bool) or not math.isfinite(out[key]):
            raise ValueError(f"{path}: cue {key!r} must be a number of seconds, got {value!r}")
    return out


def transition_folder(folder: Path) -> TransitionFiles:
    """One transition folder: mix.*, a.* (or track_a.*), b.* (or track_b.*), optional cues.json and stems
    folders (a_stems/ or track_a_stems/, b_stems/ or track_b_stems/, e.g. stems a separator made earlier)."""
    mix = _audio_in(folder, ("mix", "excerpt"))
    a, b = _audio_in(folder, ("a", "track_a")), _audio_in(folder, ("b", "track_b"))
    missing = [n for n, p in (("mix.*", mix), ("a.*", a), ("b.*", b)) if p is None]
    if missing:
        raise ValueError(f"{folder}: missing {', '.join(missing)} (audio: {', '.join(AUDIO_EXTENSIONS)})")
    return TransitionFiles(folder.name, mix, a, b, _read_cues(folder / "cues.json"),
                           _stems_next_to(a, ("track_a_stems",)), _stems_next_to(b, ("track_b_stems",)))


def parse_time(text: str) -> float:
    """'95.5', '1:35.5' or '1:01:35' -> seconds."""
    text = text.strip()
    if not re.fullmatch(r"\d+(\.\d*)?|(\d+:)?\d{1,2}:\d{1,2}(\.\d*)?", text):
        raise ValueError(f"bad timestamp {text!r} (use seconds, mm:ss or hh:mm:ss)")
    parts = text.split(":")
    if any(float(part) >= 60 for part in parts[1:]):  # '1:75' is a typo, not 135 s
        raise ValueError(f"bad timestamp {text!r} (minutes and seconds after a ':' must be below 60)")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def read_tracklist(csv_path: Path, mix: Path, sources: Path | None = None, before: float = 45.0,
                   after: float = 45.0) -> list[TransitionFiles]:
    """Transitions of a whole mix from its tracklist: columns `start` (mix time, seconds or [hh:]mm:ss) and
    `file` (a source track, relative to the CSV's folder or to `sources`). Consecutive rows make a transition;
    its excerpt is the mix from `before` s before the later track's start to `after` s after it."""
    sources = sources or csv_path.parent
    rows = []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        time_key = next((fields[k] for k in ("start", "time", "timestamp") if k in fields), None)
        file_key = next((fields[k] for k in ("file", "path", "track") if k in fields), None)
        if time_key is None or file_key is None:
            raise ValueError(f"{csv_path}: needs a 'start' and a 'file' column, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                start = parse_time(row[time_key] or "")
            except ValueError as error:
                raise ValueError(f"{csv_path}:{line}: {error}") from None
            name = (row[file_key] or "").strip()
            path = next((p for p in (csv_path.parent / name, sources / name) if p.is_file()), None)
            if path is None:
                raise ValueError(f"{csv_path}:{line}: source track {name!r} not found in {csv_path.parent} "
                                 f"or {sources}")
            rows.append((start, path))
    if len(rows) < 2:
        raise ValueError(f"{csv_path}: a tracklist needs at least two rows to hold a transition, got {len(rows)}")
    rows.sort(key=lambda r: r[0])
    out = []
    for i, ((_, a), (start_b, b)) in enumerate(zip(rows[:-1], rows[1:])):
        lo = max(0.0, start_b - before)
        out.append(TransitionFiles(f"{mix.stem}_{i + 1:03d}", mix, a, b, {"mix_b_start": start_b - lo},
                                   _stems_next_to(a), _stems_next_to(b), (lo, start_b + after)))
    return out


def find_transitions(root: Path) -> list[TransitionFiles]:
    """The transitions under `root`, in either input form.

    - whole mix: `root/tracklist.csv` + one audio file in `root` (the mix; `mix.*` if there are several)
      + the source tracks the CSV names (relative to root, or in root/tracks/);
    - a folder per transition (`root` itself, or each sub-folder): see `transition_folder`.
    """
    root = Path(root)
    if (root / "tracklist.csv").is_file():
        mix = _audio_in(root, ("mix",))
        if mix is None:
            audio = [p for p in sorted(root.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
            if len(audio) != 1:
                raise ValueError(f"{root}: a tracklist needs exactly one mix file next to it (or one named mix.*), "
                                 f"found {len(audio)}")
            mix = audio[0]
        return read_tracklist(root / "tracklist.csv", mix, root / "tracks" if (root / "tracks").is_dir() else None)
    if _audio_in(root, ("mix", "excerpt")) is not None:
        return [transition_folder(root)]
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and _audio_in(p, ("mix", "excerpt")) is not None]
    if not folders:
        raise ValueError(f"{root}: no transitions (a folder per transition with mix.*, a.*, b.*, or a tracklist.csv "
                         "with its mix)")
    return [transition_folder(p) for p in folders]


# -- alignment -------------------------------------------------------------------------------------------------
@dataclass
class Alignment:
    """Where one source plays in the mix: track time = offset + ratio * mix time.

    stretched: whether it was time-stretched (then `stretch_from` is the track second the stretch starts at);
    score: waveform correlation with the mix where the source plays (median over 1 s windows);
    candidates: other (offset, ratio, score) hypotheses still open after `locate` (loops repeat by bars);
    coarse: how the beat-level search went.
    """

    offset: float
    ratio: float
    stretched: bool = False
    stretch_from: float = 0.0
    score: float = 0.0
    candidates: list[tuple[float, float, float]] = field(default_factory=list)
    coarse: dict = field(default_factory=dict)

    def track_time(self, t_mix):
        return self.offset + self.ratio * np.asarray(t_mix, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"offset": self.offset, "ratio": self.ratio, "stretched": self.stretched,
                "stretch_from": self.stretch_from, "score": self.score, "coarse": self.coarse}


def _mono(audio) -> np.ndarray:
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    return x.mean(0) if x.ndim == 2 else x


def beat_features(audio, beats: np.ndarray, sample_rate: int = SR) -> np.ndarray:
    """[n_beats - 1, 24]: chroma (12) and MFCC 1..12 averaged over each beat, each half unit-norm."""
    import librosa

    y = signal.resample_poly(_mono(audio), FEATURE_RATE, sample_rate) if sample_rate != FEATURE_RATE else _mono(audio)
    chroma = librosa.feature.chroma_stft(y=y, sr=FEATURE_RATE, n_fft=4096, hop_length=FEATURE_HOP)
    mfcc = librosa.feature.mfcc(y=y, sr=FEATURE_RATE, n_mfcc=13, n_fft=2048, hop_length=FEATURE_HOP)[1:]
    n = chroma.shape[1]
    frames = np.clip(np.round(np.asarray(beats) * FEATURE_RATE / FEATURE_HOP).astype(int), 0, n - 1)
    out = np.zeros((max(0, len(frames) - 1), 24))
    for i, (lo, hi) in enumerate(zip(frames[:-1], frames[1:])):
        hi = max(hi, lo + 1)
        c, m = chroma[:, lo:hi].mean(1), mfcc[:, lo:hi].mean(1)
        out[i, :12] = c / (np.linalg.norm(c) + 1e-9)
        out[i, 12:] = m / (np.linalg.norm(m) + 1e-9)
    return out / math.sqrt(2)


def _beats_inside(beats: np.ndarray, duration: float) -> np.ndarray:
    beats = np.asarray(beats, dtype=np.float64)
    return beats[(beats >= 0) & (beats <= duration)]


def coarse_candidates(mix_beats: np.ndarray, mix_feats: np.ndarray, src_beats: np.ndarray, src_feats: np.ndarray,
                      window: int = 8, top: int = 12, lag_range: tuple[int, int] | None = None) -> list[dict]:
    """Beat lags k (mix beat i <-> track beat i + k) ranked by the best `window`-beat mean similarity.

    Each candidate: {"lag", "score", "mix_beat"} (mix_beat: where its best window starts).
    """
    sim = mix_feats @ src_feats.T
    m, n = sim.shape
    lags = range(-(m - 4), n - 3) if lag_range is None else range(max(-(m - 4), lag_range[0]),
                                                                   min(n - 3, lag_range[1] + 1))
    found = []
    for k in lags:
        i = np.arange(max(0, -k), min(m, n - k))
        if len(i) < 4:
            continue
        d = sim[i, i + k]
        w = min(window, len(d))
        means = np.convolve(d, np.ones(w) / w, mode="valid")
        j = int(np.argmax(means))
        found.append({"lag": int(k), "score": float(means[j]), "mix_beat": int(i[j])})
    found.sort(key=lambda c: -c["score"])
    return found[:top]


class OnsetEnvelope:
    """Onset strength of a whole signal at ENV_RATE in two bands (the kick band below ONSET_CUTOFF_HZ and the
    hats and snares above 2 kHz, each scaled to unit deviation and summed), read at any times.

    Computed once per signal (the mix excerpt, each track): the candidate searches only read it.
    """

    def __init__(self, audio):
        x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        low, rate = low_band_envelope(x, SR, ONSET_CUTOFF_HZ, ENV_RATE)
        sos = signal.butter(4, 2000.0, btype="highpass", fs=SR, output="sos")
        high, _ = low_band_envelope(signal.sosfilt(sos, x.mean(0)), SR, SR / 2 - 1, ENV_RATE)
        total = np.zeros(min(len(low), len(high)))
        for envelope in (low, high):
            onset = np.maximum(np.diff(envelope[:len(total)], prepend=envelope[:1]), 0.0)
            total += onset / max(float(onset.std()), 1e-12)
        self.values = total
        self.times = (np.arange(len(total)) - 0.5) / rate  # a slope sits half a frame early

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.times, self.values, left=0.0, right=0.0)


def _envelope_lag(mix_env: OnsetEnvelope, src_env: OnsetEnvelope, offset: float, ratio: float, lo: float,
                  hi: float, search: float) -> tuple[float, float]:
    """(NCC peak, lag) of the mix's onsets over mix times [lo, hi] against the source's read through the
    mapping; lag > 0: the source must move later by `lag` mix seconds (track time at t -> at t - lag)."""
    step = 1.0 / ENV_RATE
    u = lo + np.arange(int((hi - lo) * ENV_RATE)) * step
    n_lag = int(round(search * ENV_RATE))
    if len(u) < 50:
        return 0.0, 0.0
    v = lo - n_lag * step + np.arange(len(u) + 2 * n_lag) * step
    ncc = _normalised_xcorr(mix_env(u), src_env(offset + ratio * v))
    j, delta = _peak(ncc)
    return float(ncc[j]), float((n_lag - j - delta) * step)


def _overlap(offset: float, ratio: float, src_seconds: float, mix_seconds: float) -> tuple[float, float]:
    """Mix times where the mapped source has audio."""
    lo, hi = -offset / ratio, (src_seconds - offset) / ratio
    return max(0.0, lo), min(mix_seconds, hi)


def _robust_line(t: np.ndarray, y: np.ndarray, w: np.ndarray, tol: float) -> tuple[float, float, np.ndarray]:
    """Weighted least-squares y ~ c0 + c1 t over the inliers (within `tol` of the line), found from the best
    third of the weights outwards: another signal that correlates at another lag (the other track's
    kicks) may hold more points, but not the best ones."""
    live = w > 0
    if not live.any():
        return 0.0, 0.0, live
    keep = live & (w >= np.quantile(w[live], 2 / 3))
    c0, c1 = float(np.median(y[keep])), 0.0
    for _ in range(6):
        if keep.sum() >= 3 and np.ptp(t[keep]) > 0:
            c1, c0 = (float(c) for c in np.polyfit(t[keep], y[keep], 1, w=np.sqrt(w[keep])))
        else:
            c0, c1 = float(np.average(y[keep], weights=w[keep])), 0.0
        new = (np.abs(y - (c0 + c1 * t)) <= tol) & live
        if new.sum() < 1 or np.array_equal(new, keep):
            break
        keep = new
    return c0, c1, keep


def locate(mix: torch.Tensor, src: torch.Tensor, mix_analysis: TrackAnalysis, src_analysis: TrackAnalysis,
           prior: tuple[float, float] | None = None, tolerance: float = 4.0, keep: int = 12,
           mix_env: OnsetEnvelope | None = None) -> Alignment:
    """Candidate placements of the source in the mix, from the beats and the onsets (`place_source` decides).

    Beat-synchronous chroma/MFCC give beat lags, the tempo ratio comes from the two tempi, and each lag is
    refined (and scored) by the onset envelopes over its whole overlap; the best `keep` stay candidates.
    prior: (mix time, track time) that roughly coincide, within `tolerance` seconds (from cues).
    Raises RejectedTransition when nothing matches.
    """
    mix_s, src_s = mix.shape[-1] / SR, src.shape[-1] / SR
    mix_beats = _beats_inside(mix_analysis.beats, mix_s)
    src_beats = _beats_inside(src_analysis.beats, src_s)
    if len(mix_beats) < 6 or len(src_beats) < 6:
        raise RejectedTransition("too few beats to align (beatless material)")
    ratio = mix_analysis.bpm / src_analysis.bpm if src_analysis.bpm > 0 else 1.0
    for fold in (2.0, 0.5):  # the analyses may read one tempo at two octaves
        if abs(math.log(ratio * fold)) < abs(math.log(ratio)):
            ratio *= fold
    if not 0.8 <= ratio <= 1.25:
        raise RejectedTransition(f"tempo ratio {ratio:.3f} out of a DJ's range (mix {mix_analysis.bpm:.1f} BPM, "
                                 f"track {src_analysis.bpm:.1f} BPM)")
    lag_range = None
    if prior is not None:  # beat indices may skip where a grid has gaps: a wide range here, seconds below
        i = int(np.argmin(np.abs(mix_beats - prior[0])))
        j = int(np.argmin(np.abs(src_beats - prior[1])))
        beats_tol = 2 * int(math.ceil(tolerance * mix_analysis.bpm / 60.0)) + 2
        lag_range = (j - i - beats_tol, j - i + beats_tol)
    feats_mix = beat_features(mix, mix_beats)
    feats_src = beat_features(src, src_beats)
    candidates = coarse_candidates(mix_beats, feats_mix, src_beats, feats_src, lag_range=lag_range)
    if not candidates:
        raise RejectedTransition("no beat-level match between the track and the mix")
    beat = 60.0 / mix_analysis.bpm
    mix_env = mix_env or OnsetEnvelope(mix)
    src_env = OnsetEnvelope(src)
    refined = []
    for cand in candidates:
        k = cand["lag"]
        i = np.arange(max(0, -k), min(len(mix_beats), len(src_beats) - k))
        offset = float(np.median(src_beats[i + k] - ratio * mix_beats[i]))
        lo, hi = _overlap(offset, ratio, src_s, mix_s)
        score, lag = _envelope_lag(mix_env, src_env, offset, ratio, lo, hi, 0.5 * beat)
        refined.append((offset - ratio * lag, ratio, score, cand))
    if prior is not None:
        refined = [r for r in refined if abs(r[0] + r[1] * prior[0] - prior[1]) <= tolerance] or refined
    refined.sort(key=lambda r: -r[2])
    distinct = []  # two beat lags may refine to the same placement
    for r in refined:
        if all(abs(r[0] - d[0]) > 0.25 * beat for d in distinct):
            distinct.append(r)
    offset, ratio, score, cand = distinct[0]
    # The tempo ratio from per-second onset lags along the best candidate (a beat-shifted twin has the same
    # slope, so this holds whichever candidate wins later); every candidate keeps its place at its centre.
    lo, hi = _overlap(offset, ratio, src_s, mix_s)
    anchors = np.arange(lo, hi - 2.0, 1.0)
    if len(anchors) >= 3:
        fits = np.array([_envelope_lag(mix_env, src_env, offset, ratio, t, t + 3.0, 0.02) for t in anchors])
        weights = np.where(fits[:, 0] > 0.2, fits[:, 0] ** 2, 0.0)
        if (weights > 0).sum() >= 3:
            c0, c1, _ = _robust_line(anchors + 1.5, fits[:, 1], weights, tol=0.002)
            # lag(t) = c0 + c1 t: the track time at t becomes offset + ratio (t - c0 - c1 t)
            new_ratio = ratio * (1.0 - c1)
            distinct = [(o - ratio * c0 + (ratio - new_ratio) * 0.5 * (lo + hi), new_ratio, sc, cd)
                        for o, _, sc, cd in distinct]
            offset, ratio = distinct[0][0], new_ratio
    return Alignment(offset=offset, ratio=ratio, score=score,
                     candidates=[(o, r, sc) for o, r, sc, _ in distinct[:keep]],
                     coarse={"lag_beats": cand["lag"], "beat_score": cand["score"], "onset_score": score,
                             "beat_candidates": len(candidates)})


# -- placing a source to the sample ----------------------------------------------------------------------------
@dataclass
class Placement:
    """A source on the mix's sample grid: output sample k of the (stretched) source, which starts at track
    sample `start`, plays at mix sample `place + k`. `audio` holds that output ([2, K])."""

    audio: torch.Tensor
    start: int
    place: int
    ratio: float
    stretched: bool

    def window(self, mix_start: int, n: int) -> torch.Tensor:
        """[2, n] of the placed source from mix sample `mix_start`, zeros where it has no audio."""
        return _window(self.audio, mix_start - self.place, n)

    def valid(self, mix_start: int, n: int) -> tuple[float, float]:
        """Seconds of the clip [mix_start, mix_start + n) where the source has audio."""
        lo = max(0, self.place - mix_start)
        hi = min(n, self.place + self.audio.shape[-1] - mix_start)
        return lo / SR, max(lo, hi) / SR

    def alignment(self, align: Alignment, score: float) -> Alignment:
        """The alignment this placement realises (offset and ratio at the sample)."""
        offset = self.start / SR - self.ratio * self.place / SR
        return Alignment(offset=offset, ratio=self.ratio, stretched=self.stretched, stretch_from=self.start / SR,
                         score=score, coarse=align.coarse)


def _stretch(audio: torch.Tensor, ratio: float) -> torch.Tensor:
    """Rubber Band (standard engine: onsets stay within ~1 ms) via the project's beatmatch."""
    out, _ = beatmatch(audio.contiguous(), SR, ratio, dead_zone=0.0, high_quality=False)
    return torch.as_tensor(out, dtype=torch.float32)


def _peak(ncc: np.ndarray) -> tuple[int, float]:
    j = int(np.argmax(ncc))
    delta = 0.0
    if 0 < j < len(ncc) - 1:
        y0, y1, y2 = ncc[j - 1], ncc[j], ncc[j + 1]
        curvature = y0 - 2 * y1 + y2
        delta = 0.5 * (y0 - y2) / curvature if curvature < 0 else 0.0
    return j, float(delta)


def _window_lags(mix: np.ndarray, placed: np.ndarray, lo: int, hi: int, search: int, size: int = SR,
                 hop: int = SR // 2) -> tuple[np.ndarray, float]:
    """Lags of 1 s windows of the mono mix over samples [lo, hi) against the placed source, and a score.

    Returns ([K, 3] rows (centre, lag, NCC peak): placed[m + lag] ~ mix[m] near the centre, lag in samples,
    parabola-refined; score): the score is the windows' NCC *at a robust line through their lags* (the mean
    of the best fifth: the source may be audible in a small part of its overlap), so a placement a bar off,
    whose windows each find some kick to lock to at scattered lags, scores below the true one, whose lags
    line up.
    """
    rows, curves = [], []
    for a in range(max(lo, search), min(hi, len(mix) - search) - size + 1, hop):
        ncc = _normalised_xcorr(mix[a:a + size], placed[a - search:a + size + search])
        j, delta = _peak(ncc)
        rows.append((a + size / 2, j + delta - search, ncc[j]))
        curves.append(ncc)
    rows = np.array(rows).reshape(-1, 3)
    if not len(rows):
        return rows, 0.0
    good = rows[:, 2] >= 0.3 * rows[:, 2].max()
    c0, c1, _ = _robust_line(rows[:, 0], rows[:, 1], np.where(good, rows[:, 2] ** 2, 0.0), tol=2.0)
    at_line = np.array([np.interp(c0 + c1 * centre + search, np.arange(len(ncc)), ncc)
                        for (centre, _, _), ncc in zip(rows, curves)])
    top = max(2, int(math.ceil(0.2 * len(at_line))))
    return rows, float(np.sort(at_line)[-top:].mean())


def place_source(mix: torch.Tensor, src: torch.Tensor, align: Alignment, refine: bool = True,
                 search_ms: float = 25.0, min_score: float = 0.2, max_stretches: int = 6,
                 converged: float = 1e-6) -> tuple[Placement, Alignment]:
    """Cut the source on the mix's grid to the sample; returns the placement and the alignment it realises.

    1. The source, unstretched when the tempo ratio is within 0.2 % of 1 and else stretched with Rubber Band
       (whole, as a deck plays it, see below), is placed at each candidate of `locate`; 1 s windows of the
       mix are cross-correlated with it: the candidate whose windows correlate best along one line wins
       (loops repeat by bars, the waveform does not).
    2. A robust line through that candidate's window lags gives the offset and the ratio; a stretched source
       is stretched again at the corrected ratio and measured again until the correction is below
       `converged` (at most `max_stretches` times; `refine=False`: once): a phase vocoder's output drifts in
       phase with the ratio, so reproducing the DJ's stretch needs the ratio to ~1e-6, and the lags of a
       waveform that matches give it to ~3e-7 on synthetic mixes.
    3. A source whose ratio is within UNSTRETCHED of 1 is placed unstretched; the final placement is the
       integer lag that best matches the windows where the source is clearest.
    Raises RejectedTransition when no candidate correlates (window score below `min_score`).
    """
    mix_n, src_n = mix.shape[-1], src.shape[-1]
    mix_mono = _mono(mix)
    search = int(round(search_ms * SR / 1000))
    candidates = align.candidates or [(align.offset, align.ratio, align.score)]
    ratio = align.ratio if abs(align.ratio - 1.0) >= 2e-3 else 1.0
    spans = [_overlap(o, ratio, src_n / SR, mix_n / SR) for o, _, _ in candidates]
    lo_s, hi_s = min(s[0] for s in spans), max(s[1] for s in spans)
    if hi_s - lo_s < 1.0:
        raise RejectedTransition("less than a second of the track falls inside the mix excerpt")

    # Rubber Band (offline) reads its whole input before it writes: the output depends on where the input
    # starts *and ends*. A deck plays the whole track, so a track that is not too long is stretched whole;
    # a long one from shortly before the excerpt needs it to 30 s after, the same input at every ratio.
    offsets = [o for o, _, _ in candidates]
    first = max(0.0, min(offsets) + align.ratio * lo_s)
    whole = first < STRETCH_FROM_START_S and src_n <= STRETCH_WHOLE_S * SR
    start = 0 if whole or first < STRETCH_FROM_START_S else int((first - 2.0) * SR)
    end = src_n if whole else min(src_n, int((max(offsets) + align.ratio * hi_s + 30.0) * SR))

    def deck(ratio_: float) -> tuple[torch.Tensor, int]:
        """(audio, first track sample) of the source as a deck plays it at ratio_."""
        return (src, 0) if ratio_ == 1.0 else (_stretch(src[:, start:end], ratio_), start)

    def measure(audio: torch.Tensor, mono: torch.Tensor, first_: int, ratio_: float, offset_: float):
        place = int(round((first_ / SR - offset_) * SR / ratio_))
        placement = Placement(audio, first_, place, ratio_, ratio_ != 1.0)
        lo, hi = _overlap(offset_, ratio_, src_n / SR, mix_n / SR)
        rows, score = _window_lags(mix_mono, _window(mono, -place, mix_n).numpy(), int(lo * SR), int(hi * SR),
                                   search)
        return placement, rows, score

    audio, first_sample = deck(ratio)
    mono = torch.from_numpy(_mono(audio))
    measured = [measure(audio, mono, first_sample, ratio, o) for o in offsets]
    best = max(range(len(measured)), key=lambda i: measured[i][2])
    log.debug("candidates (offset, onset score, waveform score): %s",
              [(round(c[0], 4), round(c[2], 3), round(m[2], 3)) for c, m in zip(candidates, measured)])
    placement, rows, score = measured[best]
    if score < min_score:
        raise RejectedTransition(f"track not found in the mix (waveform correlation {score:.2f} < {min_score})")
    stretches, c1 = 0, 0.0
    while True:
        # placed[m + lag(m)] ~ mix[m] with lag(m) = c0 + c1 m: the track time at mix sample m is
        # first/SR + ratio * (m (1 + c1) + c0 - place) / SR.
        good = rows[:, 2] >= max(0.3 * rows[:, 2].max(), 0.1)
        c0, c1, _ = _robust_line(rows[:, 0], rows[:, 1], np.where(good, rows[:, 2] ** 2, 0.0), tol=2.0)
        ratio = placement.ratio
        new_ratio = ratio * (1.0 + c1)
        offset = placement.start / SR + ratio * (c0 - placement.place) / SR
        if ratio == 1.0 and abs(new_ratio - 1.0) < UNSTRETCHED:
            new_ratio = 1.0  # not stretched: the lag line is flat to within the tolerance
            break
        if abs(c1) < converged or stretches >= (max_stretches if refine else 1):
            break
        audio, first_sample = deck(new_ratio)  # stretch again at the corrected ratio, measure again
        placement, rows, _ = measure(audio, torch.from_numpy(_mono(audio)), first_sample, new_ratio, offset)
        stretches += 1
        if not len(rows):
            break
    log.debug("waveform line: ratio %.7f -> %.7f after %d stretch(es) (last correction %.1e)", align.ratio,
              new_ratio, stretches, c1)
    if new_ratio != placement.ratio and (new_ratio == 1.0 or abs(c1) >= converged):
        audio, first_sample = deck(new_ratio)  # the unstretched source, or a last correction to apply
    else:
        new_ratio = placement.ratio  # converged: keep the audio already stretched (and its own ratio)
    # The final lag: one integer lag over the windows where the source is clearest (within 2 % of the best).
    strong = rows[(rows[:, 2] >= 0.98 * rows[:, 2].max()) | (rows[:, 2] >= np.sort(rows[:, 2])[-2]), 0]
    centre = float(np.mean(strong)) / SR
    offset_at = offset + (ratio * (1.0 + c1) - new_ratio) * centre  # the same track time at the centre
    final = Placement(audio, first_sample, int(round((first_sample / SR - offset_at) * SR / new_ratio)),
                      new_ratio, new_ratio != 1.0)
    ncc, lag = _global_lag(mix_mono, _mono(final.window(0, mix_n)),
                           [(int(c) - SR // 2, int(c) + SR // 2) for c in strong], 64)
    final.place -= lag
    return final, final.alignment(align, ncc)


def _global_lag(mix: np.ndarray, placed: np.ndarray, spans: list[tuple[int, int]], search: int
                ) -> tuple[float, int]:
    """(NCC, integer lag) of the mono mix over the sample spans [lo, hi) together against the placed source,
    one lag for all of them: placed[m + lag] ~ mix[m]. The NCC is the parabola's peak height between samples,
    so it moves smoothly as the placement drifts."""
    dots, energy_placed, energy_mix = np.zeros(2 * search + 1), np.zeros(2 * search + 1), 0.0
    for lo, hi in spans:
        lo, hi = max(lo, search), min(hi, len(mix) - search)
        if hi - lo < 16:
            continue
        x, y = mix[lo:hi].astype(np.float64), placed[lo - search:hi + search].astype(np.float64)
        dots += signal.correlate(y, x, mode="valid")
        cumulative = np.concatenate([[0.0], np.cumsum(y * y)])
        energy_placed += cumulative[hi - lo:] - cumulative[:-(hi - lo)]
        energy_mix += float(x @ x)
    if energy_mix <= 0:
        return 0.0, 0
    ncc = dots / np.sqrt(np.maximum(energy_placed * energy_mix, 1e-30))
    j, delta = _peak(ncc)
    height = ncc[j] - 0.25 * (ncc[j - 1] - ncc[j + 1]) * delta if 0 < j < len(ncc) - 1 else ncc[j]
    return float(height), j - search


def presence(mix: torch.Tensor, placed_a: torch.Tensor, placed_b: torch.Tensor, beats: np.ndarray) -> np.ndarray:
    """[n_beats - 1, 2] least-squares gains of A and B in the mix over each beat (mono, non-negative)."""
    x, a, b = _mono(mix), _mono(placed_a), _mono(placed_b)
    edges = np.clip(np.round(np.asarray(beats) * SR).astype(int), 0, len(x))
    gains = np.zeros((max(0, len(edges) - 1), 2))
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        if hi - lo < 64:
            continue
        basis = np.stack([a[lo:hi], b[lo:hi]], 1)
        gram = basis.T @ basis + 1e-9 * np.eye(2)
        gains[i] = np.maximum(np.linalg.solve(gram, basis.T @ x[lo:hi]), 0.0)
    return gains


def find_blend(gains: np.ndarray, beats: np.ndarray, threshold: float = 0.01) -> tuple[float, float]:
    """(blend start, blend end): the first beat from which B stays in the mix, the end of A's last beat in it; a
    hard cut on a beat gets the beat around it."""
    a_in, b_in = gains[:, 0] > threshold, gains[:, 1] > threshold
    if not a_in.any() or not b_in.any():
        raise RejectedTransition(f"{'A' if not a_in.any() else 'B'} is never audible in the excerpt")
    steady = b_in & np.concatenate([b_in[1:], [True]])
    first_b = int(np.argmax(steady)) if steady.any() else int(np.argmax(b_in))
    last_a = len(a_in) - 1 - int(np.argmax(a_in[::-1]))
    start, end = float(beats[first_b]), float(beats[last_a + 1])
    start, end = (start, end) if end >= start else (end, start)  # a gap (hard cut): the silence is the blend
    if end - start < 1e-6 and len(beats) > 1:  # a cut on a beat: one beat around it (no consumer takes 0 s)
        half = 0.5 * float(np.median(np.diff(beats)))
        start, end = max(float(beats[0]), start - half), min(float(beats[-1]), end + half)
    return start, end


# -- stems -----------------------------------------------------------------------------------------------------
def _ratio_masks(references: torch.Tensor, mixture: torch.Tensor, n_fft: int = 2048) -> torch.Tensor:
    """Split mixture [2, n] by the power ratios of references [4, 2, n] (an ideal ratio mask); the last stem
    takes the remainder, so the stems sum to the mixture."""
    n = mixture.shape[-1]
    window = torch.hann_window(n_fft)
    hop = n_fft // 4

    def spec(x):
        return torch.stft(x.reshape(-1, n), n_fft, hop, window=window, return_complex=True)

    power = spec(references).abs().square().reshape(4, 2, n_fft // 2 + 1, -1).sum(1, keepdim=True)
    masks = power / power.sum(0, keepdim=True).clamp_min(1e-12)
    mix_spec = spec(mixture)  # [2, F, T]
    stems = torch.zeros(4, 2, n)
    for i in range(3):
        stems[i] = torch.istft(mix_spec * masks[i, 0], n_fft, hop, window=window, length=n)
    stems[3] = mixture - stems[:3].sum(0)
    return stems


def clip_stems(src: SourceTrack, placement: Placement, mix_start: int, n: int, separator: Separator | None,
               cache_dir=None) -> torch.Tensor:
    """[4, 2, n] stems of the placed source over the clip, summing to its placed audio.

    Known stems (src.stems): sliced where the source is unstretched; stretched with it and used as ratio masks
    on the stretched audio where it was stretched. Otherwise `separator` separates the placed window.
    """
    audio = placement.window(mix_start, n)
    if src.stems is not None:
        if not placement.stretched:
            return _window(src.stems, placement.start + mix_start - placement.place, n)
        lo = max(0, mix_start - placement.place)  # output samples the clip needs
        hi = min(placement.audio.shape[-1], mix_start - placement.place + n)
        end = min(src.stems.shape[-1], placement.start + int(math.ceil(hi * placement.ratio)) + SR)
        stretched = _stretch(src.stems[..., placement.start:end].reshape(8, -1), placement.ratio).reshape(4, 2, -1)
        references = torch.stack([_window(s, mix_start - placement.place, n) for s in stretched])
        return _ratio_masks(references, audio) if hi > lo else torch.zeros(4, 2, n)
    if separator is None:
        raise ValueError(f"{src.id}: no stems given and no separator")
    lo_s, hi_s = placement.valid(mix_start, n)
    lo, hi = int(round(lo_s * SR)), int(round(hi_s * SR))
    stems = torch.zeros(4, 2, n)
    if hi - lo > SR // 10:
        stems[..., lo:hi] = separate_windows(audio[:, lo:hi].contiguous(), [(0.0, (hi - lo) / SR)], separator,
                                             cache_dir=cache_dir, track_id=src.id, progress=False, margin=0.0)[0]
    return stems


# -- the fit ---------------------------------------------------------------------------------------------------
@dataclass
class RealFitConfig:
    """How a real transition is cut and labelled (pipeline.py --transitions flags set these)."""

    steps: int = 40  # Adam steps of the curve fit (about 1 s each for a 12 s clip on one CPU thread)
    lr: float = 0.05
    fit_rate: int = 22_050  # the fit runs at this sample rate (same bins and frames as 44.1 kHz, half the work)
    frames_per_second: float = 4.0  # curve frames: duration x this, within [min_frames, max_frames]
    min_frames: int = 16
    max_frames: int = 64
    smoothness: float = 1.0
    monotonicity: float = 1.0
    waveform_weight: float = 1.0
    tie: str = "track"  # "track": per-stem controls move together (channel EQ); "stem": free per stem
    context_bars: int = 1  # bars of context on each side of the blend
    max_clip: float = 16.0  # seconds; a longer clip is cut around the blend's centre
    min_snr_db: float = 10.0  # fits below this are rejected
    refine: bool = True  # iterate the stretch of a stretched source until its ratio converges (place_source)
    seed: int = 0


def _fit_frames(duration: float, cfg: RealFitConfig) -> int:
    return int(np.clip(round(duration * cfg.frames_per_second), cfg.min_frames, cfg.max_frames))


def _tie_for(cfg: RealFitConfig, layout: ParamLayout = FULL) -> torch.Tensor | None:
    from effects.fit import tie_stems

    if cfg.tie not in ("track", "stem"):
        raise ValueError(f"tie must be 'track' or 'stem', got {cfg.tie!r}")
    tie = tie_stems(layout) if cfg.tie == "track" else torch.arange(len(layout))
    tie[layout.index("master_gain")] = -1  # the faders and crossfader already set the level
    return tie


def measured_levels(stems_a: torch.Tensor, stems_b: torch.Tensor, target: torch.Tensor, n_frames: int
                    ) -> np.ndarray:
    """[F, 2] least-squares broadband gains of A and B in the target around each curve frame."""
    x, a, b = _mono(target), _mono(stems_a.sum(0)), _mono(stems_b.sum(0))
    n = len(x)
    centres = np.linspace(0, n - 1, n_frames)
    half = max(SR // 20, int(0.5 * (n - 1) / max(1, n_frames - 1)))
    out = np.zeros((n_frames, 2))
    for i, c in enumerate(centres):
        lo, hi = max(0, int(c) - half), min(n, int(c) + half + 1)
        basis = np.stack([a[lo:hi], b[lo:hi]], 1)
        gram = basis.T @ basis + 1e-9 * np.eye(2)
        out[i] = np.maximum(np.linalg.solve(gram, basis.T @ x[lo:hi]), 0.0)
    return out


def with_levels(curves: torch.Tensor, levels: np.ndarray, layout: ParamLayout = FULL) -> torch.Tensor:
    """Curves whose faders and crossfader reproduce measured levels [F, 2] (constant-power crossfader at the
    angle of (A, B), both faders at their magnitude, at most unity); everything else as given."""
    g = torch.as_tensor(levels, dtype=torch.float32)
    out = curves.clone()
    out[:, layout.index("crossfader")] = torch.atan2(g[:, 1], g[:, 0]) * (2 / math.pi)
    level = g.norm(dim=1).clamp(max=1.0)
    for i in layout.indices(control="gain"):
        out[:, i] = level
    return out


def fit_transition(stems_a: torch.Tensor, stems_b: torch.Tensor, target: torch.Tensor, ctx, bpm: float,
                   cfg: RealFitConfig) -> dict:
    """Curves [F, 58] that make the mixer reproduce `target` [2, n] from the clip stems.

    The fit starts from the rule planner: every recipe of data/transitions.py drawn for this clip's context,
    and the best of them with its faders and crossfader set to the levels measured in the target; the one
    with the lowest loss wins. Returns {"curves", "init" (its name), "snr_db", "stft_distance", "init_snr_db",
    ...}: the scores are at 44.1 kHz against the target."""
    from effects.fit import monotone_faders

    fit_mixer = DifferentiableDJMixer(MixerConfig(sample_rate=cfg.fit_rate, n_fft=4096 * cfg.fit_rate // SR,
                                                  hop_length=1024 * cfg.fit_rate // SR))
    low = [resample(x, SR, cfg.fit_rate)[None] for x in (stems_a, stems_b, target)]
    loss_fn = MultiResolutionSTFTLoss()
    energy = low[2].square().mean().clamp_min(1e-12)

    def loss_of(curves: torch.Tensor) -> float:
        with torch.no_grad():
            out = fit_mixer(low[0], low[1], curves[None], bpm=bpm)
            return float(loss_fn(out, low[2]) + cfg.waveform_weight * (out - low[2]).square().mean() / energy)

    scored = []
    for label in sorted(RECIPES):
        curves = torch.as_tensor(RECIPES[label](ctx, np.random.default_rng(cfg.seed)), dtype=torch.float32)
        scored.append((loss_of(curves), label, curves))
    # The best recipe, and the same with its faders and crossfader set to the levels measured in the target.
    _, label, curves = min(scored, key=lambda s: s[0])
    levelled = with_levels(curves, measured_levels(stems_a, stems_b, target, ctx.n_frames))
    scored.append((loss_of(levelled), f"{label}+levels", levelled))
    _, label, init = min(scored, key=lambda s: s[0])
    result = fit_curves(fit_mixer, low[0], low[1], low[2], ctx.n_frames, init=init[None], bpm=bpm, steps=cfg.steps,
                        lr=cfg.lr, smoothness=cfg.smoothness, waveform_weight=cfg.waveform_weight,
                        monotone=monotone_faders(), monotonicity=cfg.monotonicity, tie=_tie_for(cfg))
    # Scores at the full rate, on the curves as stored.
    mixer, full_loss = DifferentiableDJMixer(), MultiResolutionSTFTLoss()
    with torch.no_grad():
        out = mixer(stems_a[None], stems_b[None], result.curves, bpm=bpm)[0]
        start = mixer(stems_a[None], stems_b[None], init[None], bpm=bpm)[0]
    return {"curves": result.curves[0].numpy().astype(np.float32), "init": label,
            "snr_db": snr_db(out, target), "stft_distance": float(full_loss(out, target)),
            "init_snr_db": snr_db(start, target), "init_stft_distance": float(full_loss(start, target)),
            "loss_first": result.losses[0] if result.losses else None,
            "loss_last": result.losses[-1] if result.losses else None, "steps": cfg.steps, "fit_rate": cfg.fit_rate,
            "tie": cfg.tie, "recipe_losses": {s[1]: round(s[0], 5) for s in scored}}


# -- one transition, end to end --------------------------------------------------------------------------------
def _analysis(src: SourceTrack) -> TrackAnalysis:
    if src.analysis is None:
        src.analysis = analyze_track(src.audio, SR, stems=src.stems)
    return src.analysis


def _prior(cues: dict, side: str) -> tuple[float, float] | None:
    """(mix time, track time) that roughly coincide, from the approximate cues."""
    if side == "a" and "a_time" in cues:
        return 0.0, cues["a_time"]
    if side == "b" and "b_time" in cues and "mix_b_start" in cues:
        return cues["mix_b_start"], cues["b_time"]
    return None


def process_transition(transition: RealTransition, separator: Separator | None = None,
                       config: RealFitConfig | None = None, cache_dir=None) -> Pair:
    """Align, cut, separate and fit one real transition; a `Pair` for `pipeline.write_pair` (meta: analysis.json).

    Raises RejectedTransition (with the reason) when it cannot be aligned or the fit is too poor.
    """
    cfg = config or RealFitConfig()
    mix = transition.mix
    mix_s = mix.shape[-1] / SR
    mix_analysis = analyze_track(mix, SR)
    mix_env = OnsetEnvelope(mix)
    aligns, placements = {}, {}
    for side, src in (("a", transition.a), ("b", transition.b)):
        analysis = _analysis(src)
        try:
            align = locate(mix, src.audio, mix_analysis, analysis, _prior(transition.cues, side),
                           mix_env=mix_env)
        except RejectedTransition as error:
            raise RejectedTransition(f"track {side.upper()}: {error}") from None
        try:
            placements[side], aligns[side] = place_source(mix, src.audio, align, refine=cfg.refine)
        except RejectedTransition as error:
            raise RejectedTransition(f"track {side.upper()}: {error}") from None
    n_mix = mix.shape[-1]
    placed = {side: p.window(0, n_mix) for side, p in placements.items()}
    beats = _beats_inside(mix_analysis.beats, mix_s)
    gains = presence(mix, placed["a"], placed["b"], beats)
    blend_start, blend_end = find_blend(gains, beats)

    bpm = float(transition.a.analysis.bpm * aligns["a"].ratio)
    bar = 4 * 60.0 / bpm
    lo, hi = max(0.0, blend_start - cfg.context_bars * bar), min(mix_s, blend_end + cfg.context_bars * bar)
    if hi - lo > cfg.max_clip:
        centre = 0.5 * (blend_start + blend_end)
        lo = min(max(0.0, centre - cfg.max_clip / 2), max(0.0, mix_s - cfg.max_clip))
        hi = min(mix_s, lo + cfg.max_clip)
    start, n = int(round(lo * SR)), int(round((hi - lo) * SR))
    duration = n / SR
    target = mix[:, start:start + n]
    stems = {side: clip_stems(src, placements[side], start, n, separator, cache_dir)
             for side, src in (("a", transition.a), ("b", transition.b))}

    metas = {}
    for side, src in (("a", transition.a), ("b", transition.b)):
        align = aligns[side]
        metas[side] = clip_analysis(src.analysis, align.offset + align.ratio * start / SR, align.ratio, duration,
                                    placements[side].valid(start, n))
    b0, b1 = float(np.clip(blend_start - start / SR, 0, duration)), float(np.clip(blend_end - start / SR, 0, duration))
    ctx = context_from_analyses(metas["a"], metas["b"], 0.0, 0.0, duration, b0, b1, _fit_frames(duration, cfg))
    fit = fit_transition(stems["a"], stems["b"], target, ctx, bpm, cfg)
    curves = fit.pop("curves")
    meta = {
        "kind": "real", "recipe": None, "layout": FULL.name, "sample_rate": SR, "n_frames": int(curves.shape[0]),
        "bpm": bpm, "tempo_ratio": aligns["b"].ratio / aligns["a"].ratio, "quality": fit["snr_db"],
        "clip": {"start_in_mix": start / SR, "start_in_whole_mix": transition.mix_start + start / SR,
                 "duration": duration, "n_samples": n, "blend_start": b0, "blend_end": b1},
        "alignment": {side: {**aligns[side].to_dict(), "offset_in_excerpt": aligns[side].offset,
                             "offset": aligns[side].offset + aligns[side].ratio * start / SR}
                      for side in ("a", "b")},
        "fit": fit,
        "tracks": {side: {"id": src.id, "source": src.path, **metas[side]}
                   for side, src in (("a", transition.a), ("b", transition.b))},
        "context": ctx.to_dict(), "source": {"mix": transition.source, "id": transition.id, "cues": transition.cues},
    }
    if not fit["snr_db"] >= cfg.min_snr_db:
        error = RejectedTransition(f"poor fit: SNR {fit['snr_db']:.1f} dB < {cfg.min_snr_db:g} dB "
                                   f"(STFT distance {fit['stft_distance']:.3f})")
        error.meta = meta
        raise error
    return Pair(stems["a"], stems["b"], curves, target.contiguous(), fit["init"], meta)
