"""Inference clips: the transition window the model sees and the mixer renders, and the audio around it.

One A -> B transition at inference time, on A's timeline (the mix timeline):

    ... A's mix (lead-in) ...|== clip: 2 bars of A, the blend, 2 bars of B ==|... B's mix (tail) ...
                             ^ crossfade                             crossfade ^

- The *clip* has the geometry of a training clip (`data.pairs.build_pair`: the blend plus
  `context_bars` = 2 bars on each side), so the model is conditioned on what it was trained on.
  Only the clip needs stems: `make_clip` separates A's and B's windows (`separate_windows`, cached
  by content hash), beatmatches B's stems to A's tempo, places them by the cue plan and refines
  the placement by locking B's drum stem to A's over the blend (`drum_lock`).
- Outside the clip a finished transition plays A alone before and B alone after, at unity (the
  canonical curves of data/transitions.py), which is each track's own mix: `splice` takes the
  lead-in from A's original audio and the tail from B's mix, beatmatched and placed on the same
  mapping as its stems, crossfading into and out of the rendered clip over one beat inside its
  2-bar margins. So a 20 s lead-in or a whole-track `--full-mix` costs no separation and no mixer
  time, and the untouched parts keep the original audio instead of a stem re-sum.

Beatmatching uses Rubber Band's standard engine (`high_quality=False`): measured on synth drum
stems stretched by 0.97..1.04 it keeps onsets within ~2 ms of their exact positions, while the
high-quality (R3) engine drifted ~0.55 ms per second (21 ms after 40 s), too much for a beat-locked
blend. Stretched audio is cached on disk next to the stems (keyed by content, ratio and engine).

Times: seconds. Clip time t plays A time `start_in_a + t` and B time `offset_b + ratio * t`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.analysis import TrackAnalysis
from data.cues import CuePlan, KickLock, beatmatch, kick_lock_search, low_band_envelope
from data.pairs import clip_analysis, window
from data.stems import Separator, default_cache_dir, separate_windows, write_cache
from data.transitions import TransitionContext, context_from_analyses
from effects.params import SAMPLE_RATE, STEMS

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CONTEXT_BARS", "Clip", "crossfade_seconds", "drum_lock", "make_clip", "splice", "stretch",
           "track_b_audio"]

MODEL_CONTEXT_BARS = 2  # bars of A before and of B after the blend in a training clip (data/pairs.py)
STRETCH_HIGH_QUALITY = False  # Rubber Band R2: time-accurate (see the module docstring)
_STRETCH_PAD = 0.25  # s of extra B audio on each side of a stretched segment (stretcher edge effects)


@dataclass
class Clip:
    """The model's window of one transition (see the module docstring)."""

    stems_a: torch.Tensor  # [4, 2, N] A over the clip (zeros where A has no audio)
    stems_b: torch.Tensor  # [4, 2, N] B over the clip, beatmatched and placed
    plan: CuePlan
    start_in_a: float  # A time at clip time 0 (negative: the clip starts before A)
    blend_start: float  # clip time
    blend_end: float  # clip time
    offset_b: float  # B time (own, unstretched timeline) at clip time 0
    ratio: float  # applied stretch: B time = offset_b + ratio * clip time
    bpm: float  # the mix tempo (A's)
    meta_a: dict = field(default_factory=dict)  # A's analysis on clip time (data.pairs.clip_analysis)
    meta_b: dict = field(default_factory=dict)  # B's, stretched
    drum_offset: float = 0.0  # s B was moved by the drum-stem lock after the plan's kick-lock (see drum_lock)
    drum_score: float | None = None  # its correlation (None = not run)
    drum_locked: bool = False  # the drum lock was trusted and applied
    gain_b: float = 1.0  # linear gain B is trimmed by (auto-gain): on its clip stems and on its tail (splice)
    sample_rate: int = SAMPLE_RATE

    @property
    def n_samples(self) -> int:
        return self.stems_a.shape[-1]

    @property
    def duration(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def bar(self) -> float:
        """Seconds per bar at the mix tempo."""
        return self.plan.beats_per_bar * 60.0 / self.bpm

    def a_time(self, t):
        """A time (s) at clip time t."""
        return self.start_in_a + np.asarray(t, dtype=np.float64) if np.ndim(t) else self.start_in_a + float(t)

    def b_time(self, t):
        """B time (s, own timeline) at clip time t."""
        return self.offset_b + self.ratio * (np.asarray(t, dtype=np.float64) if np.ndim(t) else float(t))

    def context(self, n_frames: int, phrase_bars: int = 8) -> TransitionContext:
        """The recipes' view of this clip on an `n_frames` curve grid."""
        return context_from_analyses(self.meta_a, self.meta_b, 0.0, 0.0, self.duration, self.blend_start,
                                     self.blend_end, n_frames, phrase_bars)


# ------------------------------------------------------------------------------------------------
# Beatmatching with a cache
# ------------------------------------------------------------------------------------------------


def stretch(
    audio: torch.Tensor,
    ratio: float,
    sample_rate: int = SAMPLE_RATE,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    high_quality: bool = STRETCH_HIGH_QUALITY,
) -> torch.Tensor:
    """`data.cues.beatmatch(audio [C, N], ratio)` without a dead-zone, cached on disk.

    Returns [C, ~N / ratio] float32 (the input itself for ratio 1). The cache file
    `<cache_dir>/stretch/<sha1>.pt` is keyed by the audio bytes, rate, ratio and engine; a cache
    that cannot be read or written is ignored with a warning.
    """
    if ratio == 1.0:
        return audio
    path = None
    if use_cache:
        digest = hashlib.sha1(f"djmix-stretch-v1|{sample_rate}|{ratio!r}|hq={high_quality}|"
                              f"{tuple(audio.shape)}|".encode())
        digest.update(audio.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / "stretch" / f"{digest.hexdigest()}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(cached, torch.Tensor) and cached.shape[0] == audio.shape[0]:
                    return cached.to(audio.device)
            except Exception as exc:  # a truncated file: recompute
                logger.warning("ignoring unreadable stretch cache %s: %s", path, exc)
    out, _ = beatmatch(audio.detach().to("cpu", torch.float32), sample_rate, ratio, dead_zone=0.0,
                       high_quality=high_quality)
    out = torch.as_tensor(np.asarray(out), dtype=torch.float32).contiguous()
    if path is not None:
        write_cache(path, out, "stretch")
    return out.to(audio.device)


# ------------------------------------------------------------------------------------------------
# The clip
# ------------------------------------------------------------------------------------------------


def make_clip(
    audio_a: torch.Tensor,
    audio_b: torch.Tensor,
    analysis_a: TrackAnalysis,
    analysis_b: TrackAnalysis,
    plan: CuePlan,
    separator_a: Separator,
    separator_b: Separator,
    context_bars: float = MODEL_CONTEXT_BARS,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    track_ids: tuple[str, str] = ("A", "B"),
    progress: bool = False,
    lock_drums: bool = True,
    sample_rate: int = SAMPLE_RATE,
    gain_b: float = 1.0,
) -> Clip:
    """Stems and clip-time analyses of the blend plus `context_bars` on each side (build_pair's geometry).

    Separates only A's and B's windows (plus the separator margins), stretches B's stems by the
    plan's applied ratio and places them so that B time `plan.b_time_at(t)` plays at A time t;
    then, with `lock_drums`, moves B by the drum-stem lock when it is trusted (`drum_lock`). B's stems
    are scaled by `gain_b` (a trim; after separation and stretching, so their caches serve any trim).
    Raises ValueError when less than a second of B falls inside the clip.
    """
    sr = sample_rate
    a, b = analysis_a, analysis_b
    if plan.time_based or not (np.isfinite(a.bpm) and a.bpm > 0):
        bar = plan.duration / plan.bars  # the time-based plan's nominal bar
    else:
        bar = plan.beats_per_bar * 60.0 / a.bpm
    bpm = plan.beats_per_bar * 60.0 / bar
    clip_start = plan.a_start - context_bars * bar
    clip_end = plan.a_end + context_bars * bar
    n = int(round((clip_end - clip_start) * sr))
    duration = n / sr

    window_a = (max(0.0, clip_start), min(a.duration, clip_end))
    if window_a[1] - window_a[0] <= 0:
        raise ValueError(f"track {track_ids[0]}: the blend at {plan.a_start:.2f} s lies outside the track")
    stems_a_win = separate_windows(audio_a, [window_a], separator_a, cache_dir=cache_dir, use_cache=use_cache,
                                   track_id=track_ids[0], progress=progress, sample_rate=sr)[0]
    stems_a = window(stems_a_win, int(round(clip_start * sr)) - int(round(window_a[0] * sr)), n)

    ratio = plan.applied_ratio
    b_lo, b_hi = plan.b_time_at(clip_start), plan.b_time_at(clip_end)
    window_b = (max(0.0, b_lo), min(b.duration, b_hi + 0.5))
    if window_b[1] - window_b[0] < 1.0:
        raise ValueError(f"track {track_ids[1]}: less than a second of it falls inside the transition clip")
    stems_b_win = separate_windows(audio_b, [window_b], separator_b, cache_dir=cache_dir, use_cache=use_cache,
                                   track_id=track_ids[1], progress=progress, sample_rate=sr)[0]
    stretched = stretch(stems_b_win.reshape(8, -1), ratio, sr, cache_dir, use_cache).reshape(4, 2, -1)
    if gain_b != 1.0:
        stretched = stretched * gain_b
    b_start_in_clip = (window_b[0] - plan.b_start) / ratio + plan.a_start + plan.kick_offset - clip_start
    stems_b = window(stretched, -int(round(b_start_in_clip * sr)), n)
    blend_start, blend_end = plan.a_start - clip_start, plan.a_end - clip_start

    shift, score, locked = 0.0, None, False
    if lock_drums and not plan.time_based:
        lock = drum_lock(stems_a, stems_b, blend_start, blend_end, bpm, sr, plan.octave_factor)
        score = lock.score
        if lock.trusted:
            shift, locked = lock.offset, True
            b_start_in_clip += shift
            stems_b = window(stretched, -int(round(b_start_in_clip * sr)), n)
            plan.reasons.append(f"drum-lock: B moved {shift * 1000:+.1f} ms more (drum-stem correlation {score:.2f})")
        else:
            logger.debug("drum-lock not trusted (score %.2f, rival %.2f)", lock.score, lock.runner_up)

    offset_b = plan.b_start - (plan.a_start + plan.kick_offset + shift - clip_start) * ratio  # B time at clip 0
    valid_a = (max(0.0, -clip_start), min(duration, a.duration - clip_start))
    valid_b = (max(0.0, b_start_in_clip), min(duration, b_start_in_clip + (window_b[1] - window_b[0]) / ratio))
    return Clip(
        stems_a=stems_a, stems_b=stems_b, plan=plan, start_in_a=clip_start, blend_start=blend_start,
        blend_end=blend_end, offset_b=offset_b, ratio=ratio, bpm=bpm,
        meta_a=clip_analysis(a, clip_start, 1.0, duration, valid_a),
        meta_b=clip_analysis(b, offset_b, ratio, duration, valid_b), drum_offset=shift, drum_score=score,
        drum_locked=locked, sample_rate=sr, gain_b=float(gain_b),
    )


# The drum lock refines the placement that the beat grids and the plan's kick-lock made: it searches +- this
# share of the faster track's beat. Enough to undo a grid read half a beat off (a kick-less intro can do that);
# never a whole fast beat, which aligns the beats just as well and only moves the bars (with +-1 beat, 87/174 BPM
# pairs lost their bar alignment by one fast beat; every correct lock measured moved B by 0-6 ms).
DRUM_LOCK_SEARCH = 0.6
# A drum stem whose kick band sounds this far below the other's has no kicks to lock to (a kick-less intro: its
# "onsets" are hi-hat leakage through the low-pass, which the normalised correlation would score as well).
DRUM_LOCK_GAP_DB = 30.0


def drum_lock(stems_a: torch.Tensor, stems_b: torch.Tensor, blend_start: float, blend_end: float, bpm: float,
              sample_rate: int = SAMPLE_RATE, octave_factor: float = 1.0) -> KickLock:
    """Residual lag of B's kicks against A's over the blend, from the two *drum stems* (clip time).

    The plan's kick-lock (data/cues.py) correlates the full mixes' low band at the cue, where bass
    notes compete with the kicks and often leave it unsure; here the stems are at hand, so the
    drum stems' low-band onsets are correlated over the whole blend (at most 64 beats): a clean,
    long window, searched within +-DRUM_LOCK_SEARCH of the faster track's beat (octave_factor: the
    plan's, B's clip tempo is bpm / octave_factor). Sign and trust as `kick_lock_search` (positive:
    move B later); score 0 (untrusted) when one drum stem's kick band is DRUM_LOCK_GAP_DB below the other's.
    """
    beat = 60.0 / bpm
    beats = float(np.clip((blend_end - blend_start) / beat, 4.0, 64.0))
    drums = STEMS.index("drums")
    i0, i1 = (int(round(t * sample_rate)) for t in (blend_start, blend_end))
    # The kick band's level where the kicks sound: the 90th percentile of its envelope (a periodic kick keeps it
    # near the kicks' peaks; one stray transient, say where the audio starts inside the window, does not).
    levels = [float(np.percentile(low_band_envelope(x[drums][..., i0:i1], sample_rate)[0], 90)) if i1 > i0 else 0.0
              for x in (stems_a, stems_b)]
    if min(levels) <= max(levels) * 10.0 ** (-DRUM_LOCK_GAP_DB / 20.0):
        logger.debug("drum-lock skipped: kick bands %.1f / %.1f dBFS", *(20 * np.log10(max(v, 1e-12)) for v in levels))
        return KickLock(0.0, 0.0, 0.0)
    search = DRUM_LOCK_SEARCH * min(1.0, octave_factor)  # in A's beats
    return kick_lock_search(stems_a[drums], stems_b[drums], sample_rate, blend_start, blend_start, bpm,
                            search_beats=search, window_beats=beats)


# ------------------------------------------------------------------------------------------------
# Lead-in and tail from the original mixes
# ------------------------------------------------------------------------------------------------


def track_b_audio(audio_b: torch.Tensor, clip: Clip, start: float, end: float, cache_dir=None,
                  use_cache: bool = True) -> torch.Tensor:
    """B's mix, beatmatched and placed, over clip times [start, end): [2, round((end - start) * sr)].

    Zero where B has no audio. B time `clip.b_time(t)` plays at clip time t, the mapping its stems use.
    """
    sr = clip.sample_rate
    n = int(round((end - start) * sr))
    duration_b = audio_b.shape[-1] / sr
    lo = max(0.0, clip.b_time(start) - _STRETCH_PAD * clip.ratio)
    hi = min(duration_b, clip.b_time(end) + _STRETCH_PAD * clip.ratio)
    if hi <= lo:
        return audio_b.new_zeros(audio_b.shape[0], n)
    i0, i1 = int(round(lo * sr)), int(round(hi * sr))
    stretched = stretch(audio_b[:, i0:i1], clip.ratio, sr, cache_dir, use_cache)
    first = ((i0 / sr) - clip.offset_b) / clip.ratio  # clip time of the stretched segment's first sample
    return window(stretched, int(round((start - first) * sr)), n)


def crossfade_seconds(clip: Clip) -> float:
    """One beat, and never more than the clip's margins outside the blend allow."""
    margin = min(clip.blend_start, clip.duration - clip.blend_end)
    return max(0.0, min(clip.bar / clip.plan.beats_per_bar, 0.5 * margin))


def splice(
    rendered: torch.Tensor,
    audio_a: torch.Tensor,
    audio_b: torch.Tensor,
    clip: Clip,
    start: float,
    end: float,
    crossfade: float | None = None,
    cache_dir=None,
    use_cache: bool = True,
) -> torch.Tensor:
    """The output for clip times [start, end): A's mix, then the rendered clip, then B's mix.

    rendered: [2, clip.n_samples] the mixer's output over the clip. Where [start, end) reaches past
    the clip, A's original audio plays before it and B's beatmatched mix after it, each crossfaded
    (linearly: the two sides are the same coherent music) over `crossfade` seconds just inside
    the clip's edges (default `crossfade_seconds`). Returns [2, round((end - start) * sr)].
    """
    sr = clip.sample_rate
    n = int(round((end - start) * sr))
    s0 = int(round(start * sr))  # clip sample at output sample 0
    xf = int(round((crossfade_seconds(clip) if crossfade is None else crossfade) * sr))
    out = window(rendered, s0, n)
    if start < 0:  # lead-in from A's mix: A time = start_in_a + t
        fade_end = min(n, -s0 + xf)
        a_part = window(audio_a, int(round(clip.start_in_a * sr)) + s0, fade_end)
        weight = torch.ones(fade_end, dtype=out.dtype, device=out.device)
        if xf > 0 and fade_end > -s0:
            ramp = torch.linspace(1.0, 0.0, xf + 2, dtype=out.dtype, device=out.device)[1:-1]
            weight[-s0:fade_end] = ramp[: fade_end + s0]
        out[:, :fade_end] = out[:, :fade_end] * (1 - weight) + a_part.to(out) * weight
    if end > clip.duration:  # tail from B's mix
        t0 = max(start, clip.duration - xf / sr)
        k0 = int(round(t0 * sr)) - s0
        b_part = track_b_audio(audio_b, clip, t0, end, cache_dir, use_cache).to(out) * clip.gain_b
        m = min(n - k0, b_part.shape[-1])
        weight = torch.ones(m, dtype=out.dtype, device=out.device)
        into = clip.n_samples - s0 - k0  # samples of the crossfade that lie inside the clip
        if into > 0:
            ramp = torch.linspace(0.0, 1.0, into + 2, dtype=out.dtype, device=out.device)[1:-1]
            weight[:min(into, m)] = ramp[:min(into, m)]
        out[:, k0:k0 + m] = out[:, k0:k0 + m] * (1 - weight) + b_part[:, :m] * weight
    return out
