"""Datasets of transitions: the processed on-disk layout, and on-the-fly synthetic pairs.

Each item is one transition clip: features of A and of B on the curve grid (the model's
`TrackFeatures`, unbatched), the teacher curves [F, P] in model space (when labelled), a frame
mask, the recipe label, and optionally the stems and the target audio (for the audio loss).

Frame grid: F frames spanning the clip end to end (frame i at sample i * (N - 1) / (F - 1), the
mixer's convention), so curves, features and the rendered audio line up exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.analysis import SECTION_LABELS
from data.audio import write_json_atomic  # noqa: F401 (re-exported: pipeline.py)
from data.transitions import RECIPES
from effects.params import FULL, SAMPLE_RATE, STEMS, get_layout
from model.checkpoint import atomic_save
from model.conditioning import N_KEYS, TrackFeatures


class DataError(ValueError):
    """A pair on disk that cannot be trained on (train.py reports it as one line)."""


MAX_SEED = 2**63 - 1  # numpy's and torch's generators take 0..2^63-1


def seed_arg(text: str) -> int:
    """argparse type of every CLI's --seed: an integer in 0..MAX_SEED (a one-line usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2^63-1, got {value}")
    return value


log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STYLE_LABELS = tuple(sorted(RECIPES))  # transition-style vocabulary: the teacher recipes' labels
MEL_N_FFT = 2048
MEL_HOP = 512


# -- features -------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _mel_basis(n_mels: int, sample_rate: int) -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=MEL_N_FFT, n_mels=n_mels, fmin=20.0, fmax=16_000.0)
    return torch.from_numpy(basis).float()


def frame_times(n_frames: int, n_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Seconds of the F curve frames: frame i at sample i * (N - 1) / (F - 1)."""
    if n_frames == 1:
        return np.zeros(1)
    return np.arange(n_frames) * (n_samples - 1) / (n_frames - 1) / sample_rate


def _pool_to_frames(x: torch.Tensor, centres: np.ndarray, hop: int, n_frames: int) -> torch.Tensor:
    """Average fine frames [..., M] (centres at m * hop samples) into F frames around `centres` (samples)."""
    m = x.shape[-1]
    half = max(hop, (centres[1] - centres[0]) / 2 if n_frames > 1 else hop)
    lo = np.clip(np.floor((centres - half) / hop).astype(int), 0, m - 1)
    hi = np.clip(np.ceil((centres + half) / hop).astype(int), 1, m)
    hi = np.maximum(hi, lo + 1)
    cum = torch.cat([torch.zeros_like(x[..., :1]), x.cumsum(-1)], dim=-1)
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    return (cum[..., hi_t] - cum[..., lo_t]) / (hi_t - lo_t).to(x.dtype)


def stem_log_mels(stems: torch.Tensor, n_frames: int, n_mels: int = 128,
                  sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Log-mel per stem on the curve grid: stems [4, 2, N] -> [4, n_mels, F] (natural log of power)."""
    mono = stems.float().mean(dim=1)  # [4, N]
    spec = torch.stft(mono, MEL_N_FFT, MEL_HOP, window=torch.hann_window(MEL_N_FFT), return_complex=True)
    power = torch.view_as_real(spec).square().sum(-1)  # |X|^2 without the complex abs (its hypot: 2.5x slower)
    mel = _mel_basis(n_mels, sample_rate) @ power  # [4, n_mels, M]
    centres = frame_times(n_frames, stems.shape[-1], sample_rate) * sample_rate
    return torch.log(_pool_to_frames(mel, centres, MEL_HOP, n_frames) + 1e-8)


def _rms_frames(audio: torch.Tensor, n_frames: int) -> torch.Tensor:
    mono_power = audio.float().mean(dim=0).square()  # [N]
    hop = 512
    fine = F.avg_pool1d(mono_power[None, None], hop, hop, ceil_mode=True)[0, 0]
    centres = frame_times(n_frames, audio.shape[-1]) * SAMPLE_RATE
    return _pool_to_frames(fine, centres, hop, n_frames).clamp_min(0).sqrt()


def _marks(times, grid: np.ndarray) -> torch.Tensor:
    """Binary [F]: 1 at the frame nearest each event time inside the grid's span."""
    out = torch.zeros(len(grid))
    times = np.asarray(times, dtype=np.float64)
    if len(grid) < 2 or times.size == 0:
        return out
    step = grid[1] - grid[0]
    inside = times[(times >= grid[0] - step / 2) & (times <= grid[-1] + step / 2)]
    out[np.clip(np.rint((inside - grid[0]) / step).astype(int), 0, len(grid) - 1)] = 1.0
    return out


def _structure(sections: list[dict], grid: np.ndarray) -> torch.Tensor:
    """One-hot [F, 6] of the section label at each frame (frames outside every section: all zero)."""
    out = torch.zeros(len(grid), len(SECTION_LABELS))
    for section in sections:
        label = section["label"]
        if label not in SECTION_LABELS:
            continue
        inside = (grid >= section["start"]) & (grid < section["end"])
        out[torch.from_numpy(inside), SECTION_LABELS.index(label)] = 1.0
    return out


def build_track_features(
    stems: torch.Tensor,
    track: dict,
    n_frames: int,
    n_mels: int = 128,
    sample_rate: int = SAMPLE_RATE,
) -> TrackFeatures:
    """Unbatched TrackFeatures of one track's clip.

    Args:
        stems: [4, 2, N] the track's stems over the clip (zeros where it is silent or absent).
        track: clip-time analysis: bpm, key_index, beats, downbeats, sections [{start, end, label}],
            and `valid` = [start, end] seconds where the track has audio in the clip.
        n_frames: F, the curve grid.
    """
    n = stems.shape[-1]
    grid = frame_times(n_frames, n, sample_rate)
    valid_lo, valid_hi = track.get("valid", [0.0, n / sample_rate])
    step = grid[1] - grid[0] if n_frames > 1 else 0.0
    mask = torch.from_numpy((grid >= valid_lo - step / 2) & (grid <= valid_hi + step / 2))
    key = torch.zeros(N_KEYS)
    key[int(track["key_index"])] = 1.0
    return TrackFeatures(
        stem_mels=stem_log_mels(stems, n_frames, n_mels, sample_rate),
        structure=_structure(track.get("sections", []), grid),
        beats=_marks(track.get("beats", []), grid),
        downbeats=_marks(track.get("downbeats", []), grid),
        bpm=torch.tensor([float(track["bpm"])]),
        key=key,
        energy=_rms_frames(stems.sum(dim=0), n_frames),
        mask=mask,
    )


# -- the processed layout -------------------------------------------------------------------------
def _read_stems(folder: Path) -> torch.Tensor:
    from data.stems import load_stems

    return load_stems(folder)


def _safe_join(root: Path, relative: str) -> Path:
    """root / relative, refusing anything that escapes root (absolute paths, '..')."""
    path = (root / relative).resolve()
    if root.resolve() not in path.parents and path != root.resolve():
        raise ValueError(f"manifest path {relative!r} escapes its folder {root}")
    return path


def read_manifest(root: str | os.PathLike) -> dict:
    """manifest.json of a processed folder, validated (format version, relative paths)."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json (run pipeline.py first)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {version}, this code reads {FORMAT_VERSION}")
    for pair in manifest.get("pairs", []):
        _safe_join(root, pair["path"])
    return manifest


class TransitionDataset(Dataset):
    """Pairs of one split of a processed folder (see DESIGN.md for the layout).

    Features are computed once per pair and cached next to it (`features_F{n}_M{mels}.pt`).
    `augment`: window jitter (crop up to `jitter` of the clip at either end, features and curves
    alike) and per-track gain (+-3 dB on the mels and energy). `with_audio`: True for every pair's stems
    and target audio (the audio loss), or the pair kinds that get them, e.g. ("real",). The target is
    transition.flac divided by analysis.json's `target_gain` (1 when absent), the level the mixer rendered.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        n_frames: int = 128,
        n_mels: int = 128,
        layout: str = "full",
        augment: bool = False,
        jitter: float = 0.05,
        with_audio: bool | Collection[str] = False,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.pairs = [p for p in self.manifest["pairs"] if p["split"] == split]
        if not self.pairs:
            raise ValueError(f"{self.root}: no pairs in split {split!r}")
        self.n_frames, self.n_mels = n_frames, n_mels
        self.layout = get_layout(layout)
        self.augment, self.jitter = augment, jitter
        self.with_audio = with_audio if isinstance(with_audio, bool) else frozenset(with_audio)
        self.kinds = [p.get("kind", "synthetic") for p in self.pairs]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def _features(self, folder: Path, meta: dict) -> tuple[TrackFeatures, TrackFeatures]:
        cache = folder / f"features_F{self.n_frames}_M{self.n_mels}.pt"
        if cache.is_file():
            data = torch.load(cache, weights_only=True)
            return TrackFeatures(**data["a"]), TrackFeatures(**data["b"])
        feats = [build_track_features(_read_stems(folder / f"track_{t}_stems"), meta["tracks"][t], self.n_frames,
                                      self.n_mels) for t in ("a", "b")]
        try:  # atomically and mode 0644, like a checkpoint
            atomic_save({t: vars(f) for t, f in zip(("a", "b"), feats)}, cache)
        except OSError as error:  # a read-only dataset still works, just without the cache
            log.debug("feature cache not written for %s: %s", folder, error)
        return feats[0], feats[1]

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        folder = _safe_join(self.root, pair["path"])
        meta = json.loads((folder / "analysis.json").read_text())
        feats_a, feats_b = self._features(folder, meta)
        params_path = folder / "params.npy"
        curves = None
        if params_path.is_file():
            full = torch.from_numpy(np.load(params_path)).float()
            if not torch.isfinite(full).all():  # one NaN would turn every weight NaN at the first step
                raise DataError(f"{params_path}: non-finite values (NaN or Inf); remake or remove this pair")
            stored = get_layout(meta.get("layout", "full"))
            curves = stored.to_full(full) if stored is not self.layout else full
            if self.layout is not FULL and stored is not self.layout:
                curves = torch.stack([curves[:, FULL.index(n)] for n in self.layout.names], dim=1)
            curves = _resample_frames(curves, self.n_frames)
        item = {
            "features_a": feats_a,
            "features_b": feats_b,
            "curves": curves,
            "frame_mask": torch.ones(self.n_frames, dtype=torch.bool),
            "style": style_index(pair.get("recipe")),
            "pair_id": pair["id"],
            "bpm": float(meta["bpm"]),
        }
        if self.with_audio is True or (self.with_audio and self.kinds[index] in self.with_audio):
            item["stems_a"] = _read_stems(folder / "track_a_stems")
            item["stems_b"] = _read_stems(folder / "track_b_stems")
            from data.audio import load_audio

            # A target above full scale is stored scaled by target_gain (pipeline.write_pair); older folders lack it.
            gain = float(meta.get("target_gain", 1.0))
            item["target"] = load_audio(folder / "transition.flac", allow_silence=True) / gain
        if self.augment:
            item = augment_item(item, self.rng, self.jitter)
        return item


class KindWeighted(Dataset):
    """A dataset whose pairs are drawn by kind ("real", "synthetic") in given proportions.

    Slot i of `length` (default: the base's length) holds one pair; kind k gets weights[k] / sum of the
    weights of the kinds present of the slots, filled by cycling a seeded permutation of its pairs (a kind
    with fewer pairs than slots repeats them). The table is fixed, so slot i is the same pair every epoch
    and the training order stays a pure function of (seed, epoch). `base` needs `kinds` (a kind per item).
    """

    def __init__(self, base: Dataset, weights: dict[str, float], seed: int = 0, length: int | None = None):
        kinds = list(base.kinds)
        present = sorted({k for k in kinds if weights.get(k, 0.0) > 0})
        if not present:
            raise ValueError(f"no pairs of the weighted kinds {sorted(k for k, w in weights.items() if w > 0)} "
                             f"(the data holds {sorted(set(kinds))})")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"kind weights must be >= 0, got {weights}")
        self.base, self.length = base, int(length or len(base))
        total = sum(weights[k] for k in present)
        share = {k: self.length * weights[k] / total for k in present}
        counts = {k: int(math.floor(share[k])) for k in present}
        for k in sorted(present, key=lambda k: counts[k] - share[k])[:self.length - sum(counts.values())]:
            counts[k] += 1  # largest remainders take the slots rounding left
        rng = np.random.default_rng(seed)
        table = []
        for k in present:
            members = np.flatnonzero(np.array(kinds) == k)
            order = rng.permutation(members)
            table.extend(int(order[j % len(order)]) for j in range(counts[k]))
        self.table = np.asarray(table, dtype=np.int64)
        self.kinds = [kinds[i] for i in self.table]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.base[int(self.table[index])]


def style_index(label: str | None) -> int:
    """Index of a recipe label in STYLE_LABELS; -1 for unlabelled (real) transitions."""
    return STYLE_LABELS.index(label) if label in STYLE_LABELS else -1


TEACHERS = ("sample", "select", "decide")  # see SyntheticDataset
# Bumped when a teacher's curves change for the same seed, so caches of made pairs are not reused across the change
# (decide 2: the deciding teacher rides the master through the blend, data.transitions.ride_gain; decide 3: its
# bass swap hands the lows over with the low EQs alone, the bass faders stay up; select 2: its judge, evaluate.py's
# composite, reads the clash gains frame by frame; it has no B tempo, so its beat phase folds on A's beat as before).
TEACHER_REVISIONS = {"sample": 1, "select": 2, "decide": 3}


def quality_judge(stems_a, stems_b, context):
    """The teacher's judge for data.transitions.select_recipe: evaluate.py's composite on the clip's stems."""
    from evaluate import composite_scorer  # the metrics live with the evaluation

    return composite_scorer(stems_a, stems_b, context, _judge_mixer())


@lru_cache(maxsize=1)
def _judge_mixer():
    """One mixer per process for the judge (its filters and windows are built once)."""
    from effects.mixer import DifferentiableDJMixer

    return DifferentiableDJMixer()


TrackDuration = float | tuple[float, float]


def parse_track_duration(text: str) -> TrackDuration:
    """"40" -> 40.0 s; "40:90" -> (40.0, 90.0): each track's length drawn uniformly in that range (seconds)."""
    parts = str(text).split(":")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v >= 8.0 for v in values) or values != sorted(values):
        raise ValueError(f"track duration must be SECONDS or MIN:MAX with 8 <= MIN <= MAX, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def format_track_duration(duration: TrackDuration) -> str:
    """The inverse of parse_track_duration: 40.0 -> "40", (40, 90) -> "40:90"."""
    if isinstance(duration, (tuple, list)):
        return f"{duration[0]:g}:{duration[1]:g}"
    return f"{duration:g}"


class SyntheticDataset(Dataset):
    """Synthetic pairs made on the fly (no disk): two synth tracks, B at A's tempo in a compatible key,
    a teacher recipe's curves. track_duration: seconds of each track, or (min, max) to draw each track's
    length uniformly (long tracks let the longest blends fit: a 16-bar blend at 120 BPM needs 32 s of both).
    Item i is the same every time (seeded by (seed, i, epoch)); call
    `set_epoch` for fresh pairs each epoch. `cache` keeps made items in memory (features are small).
    teacher: "sample" draws the recipe from `weights`; "select" renders one random draw of each recipe of a
    shortlist and keeps the best by evaluate.py's composite (data.transitions.select_recipe; ~4 renders per
    item, so slower to make); "decide" lets plain facts of the clips pick the move
    (data.transitions.choose_recipe), makes every detail its typical choice (TypicalChoices) and rides the
    master where the blend would sag (data.transitions.ride_gain, one render), so the curves are a function of
    the music alone (learnable from it).
    style_forced: items say so ("style_forced": True) and training never hides their style label: pairs whose
    recipe was imposed teach `--style`, not what the music would choose.
    """

    def __init__(self, length: int = 1024, seed: int = 0, n_frames: int = 128, n_mels: int = 128,
                 track_duration: TrackDuration = 40.0, weights: dict[str, float] | None = None,
                 with_audio: bool = False, cache: bool = True, teacher: str = "sample", style_forced: bool = False):
        if teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
        self.length, self.seed, self.n_frames, self.n_mels = length, seed, n_frames, n_mels
        if isinstance(track_duration, (tuple, list)):
            track_duration = (float(track_duration[0]), float(track_duration[1]))
        self.track_duration, self.weights, self.with_audio = track_duration, weights, with_audio
        self.teacher, self.style_forced = teacher, style_forced
        self.cache = {} if cache else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch and self.cache is not None:
            self.cache.clear()
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        item = self.make(index)
        if self.cache is not None:
            self.cache[index] = item
        return item

    def make(self, index: int) -> dict:
        from data.pairs import analysis_from_truth, clip_analysis
        from data.synth import synthesize_track
        from data.transitions import _compatible_key, _compatible_style, pair_from_tracks

        rng = np.random.default_rng([self.seed, index, self.epoch])
        seed_a, seed_b = (int(s) for s in rng.integers(2**31, size=2))
        if isinstance(self.track_duration, tuple):  # drawn only for a range: fixed-length items stay as they were
            duration_a, duration_b = rng.uniform(*self.track_duration, size=2)
        else:
            duration_a = duration_b = self.track_duration
        track_a = synthesize_track(seed_a, duration=duration_a)
        truth_a = track_a.truth
        track_b = synthesize_track(seed_b, style=_compatible_style(rng, truth_a["bpm"], truth_a["style"]),
                                   duration=duration_b, bpm=truth_a["bpm"],
                                   key_index=_compatible_key(rng, truth_a["key_index"]))
        pair = pair_from_tracks(track_a.stems, truth_a, track_b.stems, track_b.truth, rng, n_frames=self.n_frames,
                                weights=self.weights, select=quality_judge if self.teacher == "select" else None,
                                decide=self.teacher == "decide")
        stems_a, stems_b = torch.from_numpy(pair.stems_a), torch.from_numpy(pair.stems_b)
        duration = pair.context.duration
        feats = []
        for track, stems, offset in ((track_a, stems_a, pair.info["offset_a"]),
                                     (track_b, stems_b, pair.info["offset_b"])):
            audio = torch.from_numpy(track.stems).sum(0)
            valid = (max(0.0, -offset), min(duration, audio.shape[-1] / SAMPLE_RATE - offset))
            meta = clip_analysis(analysis_from_truth(track.truth, audio), offset, 1.0, duration, valid)
            feats.append(build_track_features(stems, meta, self.n_frames, self.n_mels))
        item = {
            "features_a": feats[0], "features_b": feats[1],
            "curves": torch.as_tensor(pair.curves, dtype=torch.float32),
            "frame_mask": torch.ones(self.n_frames, dtype=torch.bool),
            "style": style_index(pair.label), "style_forced": self.style_forced,
            "pair_id": f"synthetic_{self.seed}_{self.epoch}_{index}",
            "bpm": float(pair.bpm),
        }
        if self.with_audio:
            from effects.mixer import DifferentiableDJMixer

            item["stems_a"], item["stems_b"] = stems_a, stems_b
            with torch.no_grad():
                item["target"] = DifferentiableDJMixer()(stems_a[None], stems_b[None], item["curves"][None],
                                                         bpm=pair.bpm)[0]
        return item


def _resample_frames(curves: torch.Tensor, n_frames: int) -> torch.Tensor:
    """[F, P] -> [n_frames, P], linear, end to end."""
    if curves.shape[0] == n_frames:
        return curves
    return F.interpolate(curves.T[None], size=n_frames, mode="linear", align_corners=True)[0].T


def _crop_frames(x: torch.Tensor, axis: int, start: float, end: float) -> torch.Tensor:
    """Linearly resample the span [start, end] (fractions of the clip) of x along `axis` to its length."""
    n = x.shape[axis]
    pos = torch.linspace(start * (n - 1), end * (n - 1), n)
    left = pos.floor().long().clamp(max=n - 2)
    w = (pos - left).view([-1 if d == axis % x.dim() else 1 for d in range(x.dim())])
    moved = x.float()
    out = moved.index_select(axis, left) * (1 - w) + moved.index_select(axis, left + 1) * w
    return out.to(x.dtype) if not x.dtype == torch.bool else out > 0.5


def augment_item(item: dict, rng: np.random.Generator, jitter: float = 0.05) -> dict:
    """Window jitter (same crop for features and curves) and +-3 dB per-track gain on features."""
    item = dict(item)
    start, end = rng.uniform(0, jitter), 1 - rng.uniform(0, jitter)
    for track in ("features_a", "features_b"):
        feats: TrackFeatures = item[track]
        gain_db = rng.uniform(-3, 3)
        item[track] = TrackFeatures(
            stem_mels=_crop_frames(feats.stem_mels, -1, start, end) + gain_db / 10 * np.log(10),
            structure=_crop_frames(feats.structure, 0, start, end).round(),
            beats=_crop_frames(feats.beats, 0, start, end).gt(0.25).float(),
            downbeats=_crop_frames(feats.downbeats, 0, start, end).gt(0.25).float(),
            bpm=feats.bpm,
            key=feats.key,
            energy=_crop_frames(feats.energy, 0, start, end) * 10 ** (gain_db / 20),
            mask=_crop_frames(feats.mask, 0, start, end) if feats.mask is not None else None,
        )
    if item.get("curves") is not None:
        item["curves"] = _crop_frames(item["curves"], 0, start, end)
    return item


def collate(items: list[dict]) -> dict:
    """Batch items into what TransitionDiffusion's loss reads.

    feats_a / feats_b (TrackFeatures), curves [B, F, P] (when every item is labelled), mask [B, F],
    style [B] (-1 = none), style_forced [B] bool, mix_bpm [B], pair_id; with audio: stems_a / stems_b [B, 4, 2, N],
    target_audio [B, 2, N] zero-padded to the longest and has_audio [B].
    """
    batch = {
        "feats_a": TrackFeatures.stack([i["features_a"] for i in items]),
        "feats_b": TrackFeatures.stack([i["features_b"] for i in items]),
        "mask": torch.stack([i["frame_mask"] for i in items]),
        "style": torch.tensor([i["style"] for i in items]),
        "style_forced": torch.tensor([bool(i.get("style_forced", False)) for i in items]),
        "pair_id": [i["pair_id"] for i in items],
        "mix_bpm": torch.tensor([i["bpm"] for i in items]),
    }
    if all(i.get("curves") is not None for i in items):
        batch["curves"] = torch.stack([i["curves"] for i in items])
    if any("target" in i for i in items):
        n = max(i["target"].shape[-1] for i in items if "target" in i)

        def padded(item: dict, key: str, shape: tuple[int, ...]) -> torch.Tensor:
            x = item.get(key)
            return torch.zeros(*shape, n) if x is None else F.pad(x, (0, n - x.shape[-1]))

        batch["stems_a"] = torch.stack([padded(i, "stems_a", (4, 2)) for i in items])
        batch["stems_b"] = torch.stack([padded(i, "stems_b", (4, 2)) for i in items])
        batch["target_audio"] = torch.stack([padded(i, "target", (2,)) for i in items])
        batch["has_audio"] = torch.tensor(["target" in i for i in items])
    return batch


__all__ = [
    "FORMAT_VERSION", "STEMS", "STYLE_LABELS", "KindWeighted", "SyntheticDataset", "TransitionDataset", "augment_item",
    "build_track_features", "collate", "frame_times", "read_manifest", "stem_log_mels", "style_index",
    "write_json_atomic",
]
