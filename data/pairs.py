"""Training pairs from whole tracks: pick compatible pairs, cut the transition clip, label it.

The flow for one pair (the same one inference follows, so training clips look like what the model
will be given): cue plan (A's outro phrase, B's intro phrase, tempo ratio, kick-lock) ->
clip = blend plus `context_bars` on each side, on A's timeline -> stems of only the windows the clip
needs -> B stretched to A's tempo -> both analyses moved to clip time -> a teacher recipe draws
the curves -> the mixer renders the target transition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from data.analysis import ENERGY_RATE, Section, TrackAnalysis, energy_curve, integrated_loudness
from data.cues import CuePlan, beatmatch, bpm_compatibility, camelot_compatibility, plan_transition
from data.stems import Separator, separate_windows
from data.transitions import clip_teacher, context_from_analyses
from effects.mixer import DifferentiableDJMixer
from effects.params import FULL, SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class Track:
    """A whole track: audio [2, N] at 44.1 kHz, its analysis, where its stems come from."""

    id: str
    audio: torch.Tensor
    analysis: TrackAnalysis
    separator: Separator
    source: str = ""


@dataclass
class Pair:
    stems_a: torch.Tensor  # [4, 2, N] A over the clip
    stems_b: torch.Tensor  # [4, 2, N] B over the clip, stretched to A's tempo and aligned
    curves: np.ndarray  # [F, 58] model space, full layout
    transition: torch.Tensor | None  # [2, N] the rendered target
    recipe: str
    meta: dict = field(default_factory=dict)  # analysis.json


def analysis_from_truth(truth: dict, audio: torch.Tensor) -> TrackAnalysis:
    """A synthetic track's exact analysis (grid, key, sections, vocals from its truth; energy and LUFS measured).

    Synthetic pairs are cut on the exact grid, so teacher transitions are beat-locked by construction.
    """
    x = audio.numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    return TrackAnalysis(
        duration=x.shape[-1] / SAMPLE_RATE, bpm=float(truth["bpm"]),
        beats=np.asarray(truth["beats"], dtype=np.float64), downbeats=np.asarray(truth["downbeats"], dtype=np.float64),
        key_index=int(truth["key_index"]), key_confidence=1.0,
        energy=energy_curve(x, SAMPLE_RATE, ENERGY_RATE), energy_rate=ENERGY_RATE,
        lufs=integrated_loudness(x, SAMPLE_RATE),
        sections=[Section(float(s["start"]), float(s["end"]), s["label"]) for s in truth["sections"]],
        vocal_activity=[(float(a), float(b)) for a, b in truth["vocal_activity"]],
    )


def pair_score(a: TrackAnalysis, b: TrackAnalysis) -> float:
    """How well B follows A: 0 when the tempi are out of range, else key compatibility x tempo closeness."""
    ratio, _, ok = bpm_compatibility(a.bpm, b.bpm)
    if not ok or a.beat_confidence == 0 or b.beat_confidence == 0:
        return 0.0
    return camelot_compatibility(a.key_index, b.key_index) * (1.0 - abs(ratio - 1.0))


def pick_pairs(analyses: dict[str, TrackAnalysis], rng: np.random.Generator, max_pairs: int | None = None,
               min_score: float = 0.3) -> list[tuple[str, str]]:
    """Compatible (A, B) pairs, best first with random tie-breaks; each track is A once and B once at most."""
    ids = sorted(analyses)
    scored = []
    for a in ids:
        for b in ids:
            if a != b:
                score = pair_score(analyses[a], analyses[b])
                if score >= min_score:
                    scored.append((score + rng.uniform(0, 0.05), a, b))
    scored.sort(reverse=True)
    used_a, used_b, pairs = set(), set(), []
    for _, a, b in scored:
        if a in used_a or b in used_b:
            continue
        used_a.add(a)
        used_b.add(b)
        pairs.append((a, b))
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
    return pairs


def _shift(times, offset: float, scale: float = 1.0) -> list[float]:
    return [round((float(t) - offset) / scale, 6) for t in times]


def clip_analysis(analysis: TrackAnalysis, offset: float, scale: float, duration: float,
                  valid: tuple[float, float]) -> dict:
    """A track's analysis on clip time: clip t = (track t - offset) / scale, kept to [0, duration]."""
    def keep(times):
        return [t for t in _shift(times, offset, scale) if -1e-6 <= t <= duration + 1e-6]

    sections = []
    for s in analysis.sections:
        start, end = (s.start - offset) / scale, (s.end - offset) / scale
        if end > 0 and start < duration:
            sections.append({"start": round(max(0.0, start), 6), "end": round(min(duration, end), 6), "label": s.label})
    vocals = None
    if analysis.vocal_activity is not None:
        vocals = [[max(0.0, (s - offset) / scale), min(duration, (e - offset) / scale)] for s, e in
                  analysis.vocal_activity]
        vocals = [[round(s, 6), round(e, 6)] for s, e in vocals if e > s]
    return {
        "bpm": analysis.bpm * scale,  # a stretched track plays at its tempo times the ratio
        "key_index": analysis.key_index, "key": analysis.key, "camelot": analysis.camelot,
        "key_confidence": analysis.key_confidence, "lufs": analysis.lufs,
        "beats": keep(analysis.beats), "downbeats": keep(analysis.downbeats),
        "sections": sections, "vocal_activity": vocals,
        "valid": [round(valid[0], 6), round(valid[1], 6)], "offset": offset, "scale": scale,
    }


def window(audio: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """audio[..., start:start + n], zero-padded where that runs off either end."""
    out = audio.new_zeros(*audio.shape[:-1], n)
    lo, hi = max(0, start), min(audio.shape[-1], start + n)
    if hi > lo:
        out[..., lo - start:hi - start] = audio[..., lo:hi]
    return out


def build_pair(
    track_a: Track,
    track_b: Track,
    rng: np.random.Generator,
    n_frames: int = 128,
    bars: int = 16,
    context_bars: int = 2,
    recipe: str | None = None,
    weights: dict[str, float] | None = None,
    mixer: DifferentiableDJMixer | None = None,
    cache_dir=None,
    render: bool = True,
    plan: CuePlan | None = None,
    select=None,
    decide: bool = False,
) -> Pair:
    """One labelled transition clip from two whole tracks (see the module docstring).

    recipe: force this teacher recipe; else select(stems_a, stems_b, ctx) -> scorer makes the teacher pick
    the best of a shortlist (data.transitions.select_recipe, e.g. with dataset.quality_judge); else a
    recipe drawn from `weights`. decide: the teacher decides instead (data.transitions.choose_recipe picks
    the move unless `recipe` is given; every detail takes its typical value, TypicalChoices).
    """
    sr = SAMPLE_RATE
    a, b = track_a.analysis, track_b.analysis
    plan = plan or plan_transition(a, b, track_a.audio, track_b.audio, sr, bars=bars)
    bar = 4 * 60.0 / a.bpm
    clip_start = plan.a_start - context_bars * bar
    clip_end = plan.a_end + context_bars * bar
    n = int(round((clip_end - clip_start) * sr))
    duration = n / sr

    # A: its own timeline is the clip's, shifted.
    a0 = int(round(clip_start * sr))
    window_a = (max(0.0, clip_start), min(a.duration, clip_end))
    stems_a_win = separate_windows(track_a.audio, [window_a], track_a.separator, cache_dir=cache_dir,
                                   track_id=track_a.id, progress=False)[0]
    stems_a = window(stems_a_win, a0 - int(round(window_a[0] * sr)), n)

    # B: the B times that play over the clip, stretched to A's tempo, then placed.
    ratio = plan.applied_ratio
    b_lo, b_hi = plan.b_time_at(clip_start), plan.b_time_at(clip_end)
    window_b = (max(0.0, b_lo), min(b.duration, b_hi + 0.5))
    if window_b[1] - window_b[0] < 1.0:
        raise ValueError(f"track {track_b.id}: less than a second of B falls inside the clip")
    stems_b_win = separate_windows(track_b.audio, [window_b], track_b.separator, cache_dir=cache_dir,
                                   track_id=track_b.id, progress=False)[0]
    stretched, applied = beatmatch(stems_b_win.reshape(8, -1), sr, ratio, dead_zone=0.0)
    stretched = torch.as_tensor(np.asarray(stretched), dtype=torch.float32).reshape(4, 2, -1)
    b_start_in_clip = (window_b[0] - plan.b_start) / ratio + plan.a_start + plan.kick_offset - clip_start
    stems_b = window(stretched, -int(round(b_start_in_clip * sr)), n)

    blend_start, blend_end = plan.a_start - clip_start, plan.a_end - clip_start
    offset_b = plan.b_start - (plan.a_start + plan.kick_offset - clip_start) * ratio  # B time at clip 0
    valid_a = (max(0.0, -clip_start), min(duration, a.duration - clip_start))
    valid_b = (max(0.0, b_start_in_clip), min(duration, b_start_in_clip + (window_b[1] - window_b[0]) / ratio))
    meta_a = clip_analysis(a, clip_start, 1.0, duration, valid_a)
    meta_b = clip_analysis(b, offset_b, ratio, duration, valid_b)

    ctx = context_from_analyses(meta_a, meta_b, 0.0, 0.0, duration, blend_start, blend_end, n_frames)
    label, curves, notes = clip_teacher(stems_a, stems_b, ctx, rng, recipe, weights, select, decide, sr)
    transition = None
    if render:
        mixer = mixer or DifferentiableDJMixer()
        with torch.no_grad():
            transition = mixer(stems_a[None], stems_b[None], torch.from_numpy(curves)[None], bpm=a.bpm)[0]
    meta = {
        "kind": "synthetic", "recipe": label, "layout": FULL.name, "sample_rate": sr, "n_frames": n_frames,
        "bpm": a.bpm, "tempo_ratio": plan.tempo_ratio, "applied_ratio": applied, "kick_offset": plan.kick_offset,
        "clip": {"start_in_a": clip_start, "duration": duration, "n_samples": n, "blend_start": blend_start,
                 "blend_end": blend_end},
        "tracks": {"a": {"id": track_a.id, "source": track_a.source, **meta_a},
                   "b": {"id": track_b.id, "source": track_b.source, **meta_b}},
        "plan": plan.to_dict(), "context": ctx.to_dict(),
    }
    meta.update(notes)
    return Pair(stems_a, stems_b, curves, transition, label, meta)
