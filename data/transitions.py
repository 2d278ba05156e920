"""Teacher transitions: recipes that write mixer curves for synthetic A -> B pairs.

A recipe is a function `(ctx: TransitionContext, rng: numpy.random.Generator) -> curves [F, 58]`
(float32, model space [0, 1], the `effects.params.FULL` layout); the mixer renders the two stem
windows through the curves, and the curves are exact training labels. `RECIPES` maps each label to
its recipe; `sample_recipe` draws a label from a configurable mixture, `select_recipe` lets the
music choose (the best of a shortlist under a quality score); `generate_pair` builds a
whole synthetic pair (two synth tracks at one tempo, windows, context, curves, label).

Clip geometry (all times are seconds of *clip time*):

    0 ........ blend_start ==================== blend_end ........ duration
      A alone                  the blend                  B alone
      (crossfader 0, A at unity)                (crossfader 1, B at unity)

- the clip is one window of each track, both `[4, 2, N]`: clip time t plays A time
  `t + offset_a` and B time `t + offset_b` (B is already at A's tempo, so one beat grid serves
  both; `offset_b` is usually negative: B is silent zero padding before its window starts);
- curve frame i sits at clip time `i * duration / (F - 1)` (the mixer puts it at sample
  `i * (N - 1) / (F - 1)`, i.e. within one sample of that), so curves span the clip end to end;
- `blend_start` is where B may first be heard, `blend_end` where A (and any echo/reverb tail of A)
  has gone. Outside the blend the curves are canonical: the crossfader at 0 before and 1 after,
  master at 0 dB, the playing track's controls at neutral and both tracks' sends at 0. The other
  controls may sit anywhere (the silent track's faders, EQ and filters are behind the crossfader;
  the reverb decay and delay feedback act on nothing).

Track levels. Recipes first decide two per-frame *track levels* la, lb in [0, 1] (the amplitude of
each track after the crossfader and master) and realise them exactly with the constant-power
crossfader plus master gain: x = atan2(lb, la) / (pi/2), master = hypot(la, lb). So an
equal-power fade is a plain crossfader move (master at 0 dB), and both tracks at unity is the
centre with +3 dB of master (what a DJ gets with the crossfader out of the way). Per-stem faders,
EQ, filters and sends then shape each track; sends are post-fader and pre-crossfader, so a recipe
that wants an effect tail cuts the track with its faders, not with the crossfader.

Musical rules every recipe keeps (and `vocal_overlap`, `bass_overlap`, `bass_handover_time`
measure on any curves, teacher or model):
- switches sit on downbeats, preferring phrase boundaries (`phrase_bars` bars from the downbeat
  at blend_start); without downbeats in the blend on beats, without a grid at plain times;
- never two vocal stems audible (amplitude above -20 dB) where both tracks sing; with vocal
  activity unknown (None) the incoming vocal stays down until the outgoing one is out, and an echo
  or reverb tail of the outgoing vocal counts as audible until it dies away;
- never two full basses: the two bass stems' low-band amplitudes (fader x EQ x filters x track
  level) sum to at most 1.1 (of the louder track's level where a master lift puts that above
  unity), except for one equal-power handover window of at most one beat.

The deciding teacher then rides the master (`ride_gain`): up, inside the blend only, wherever the
rendered mix would sag below the energy-fair loudness path between the two tracks, keeping both rules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from effects.mixer import DifferentiableDJMixer, MixerConfig
from effects.params import EQ_DB_RANGE, FULL, SAMPLE_RATE, STEM_CONTROLS, STEMS, TRACKS

logger = logging.getLogger(__name__)

__all__ = [
    "BASS_FREQS",
    "BASS_LIMIT",
    "DEFAULT_WEIGHTS",
    "GRID_MODES",
    "RECIPES",
    "SELECTION_LABELS",
    "VOCAL_FREQS",
    "VOCAL_MODES",
    "VOCAL_THRESHOLD_DB",
    "TransitionContext",
    "TransitionPair",
    "TypicalChoices",
    "bass_amplitudes",
    "bass_handover_time",
    "bass_overlap",
    "choose_recipe",
    "clip_teacher",
    "context_from_analyses",
    "generate_pair",
    "nearest_recipe",
    "pair_from_tracks",
    "random_context",
    "render_transition",
    "ride_gain",
    "sample_recipe",
    "select_recipe",
    "stem_amplitudes",
    "teacher_curves",
    "track_levels",
    "transition_facts",
    "vocal_amplitudes",
    "vocal_overlap",
]

VOCAL_THRESHOLD_DB = -20.0  # a vocal stem above this amplitude (dB re unity) counts as audible
BASS_LIMIT = 1.1  # the two basses may sum to this much of one full bass
BASS_GRACE_BEATS = 1.0  # ... except for one handover window this long
EQ_KILL_DB = EQ_DB_RANGE[0]  # -26 dB: the mixer's EQ kill
# Representative frequencies (Hz) at which a stem's mixer mask is read: bass and kick fundamentals,
# and the band a voice lives in. The power mean over them is the stem's "band gain".
BASS_FREQS = (40.0, 60.0, 90.0)
VOCAL_FREQS = (300.0, 700.0, 1500.0, 3000.0)

_MIXER = MixerConfig()  # corner frequencies, Q, filter order and delay spacing the mixer uses
_COL = {name: FULL.index(name) for name in FULL.names}
_NEUTRAL_U = FULL.neutral().numpy().astype(np.float64)
_SPECS = [p.spec for p in FULL.params]
_NEUTRAL_X = np.array([s.to_physical(u) for s, u in zip(_SPECS, _NEUTRAL_U)])


# ------------------------------------------------------------------------------------------------
# Context
# ------------------------------------------------------------------------------------------------


def _times(values) -> np.ndarray:
    return np.sort(np.asarray(values if values is not None else [], dtype=np.float64).reshape(-1))


def _intervals(values) -> list[tuple[float, float]] | None:
    if values is None:
        return None
    return [(float(a), float(b)) for a, b in values if b > a]


@dataclass
class TransitionContext:
    """What a recipe knows about one clip (see the module docstring for the geometry).

    n_frames: curve frames F (>= 2), spanning the clip end to end.
    duration: clip length in seconds (N / sample_rate).
    bpm: the shared tempo after beatmatching (None or <= 0: unknown; a beat then counts 0.5 s).
    beats, downbeats: seconds, clip time, sorted (empty when there is no grid).
    blend_start, blend_end: seconds, clip time; B is silent before, A (and its tails) after.
    vocals_a, vocals_b: vocal activity as (start, end) seconds in clip time, or None = unknown.
    phrase_bars: bars per phrase; phrase boundaries count from the downbeat nearest blend_start.
    """

    n_frames: int
    duration: float
    bpm: float | None
    beats: np.ndarray
    downbeats: np.ndarray
    blend_start: float
    blend_end: float
    vocals_a: list[tuple[float, float]] | None = None
    vocals_b: list[tuple[float, float]] | None = None
    phrase_bars: int = 8

    def __post_init__(self) -> None:
        self.beats, self.downbeats = _times(self.beats), _times(self.downbeats)
        self.vocals_a, self.vocals_b = _intervals(self.vocals_a), _intervals(self.vocals_b)
        self.n_frames, self.duration = int(self.n_frames), float(self.duration)
        self.blend_start, self.blend_end = float(self.blend_start), float(self.blend_end)
        if self.n_frames < 2:
            raise ValueError(f"n_frames must be >= 2, got {self.n_frames}")
        if not self.duration > 0:
            raise ValueError(f"duration must be positive, got {self.duration}")
        if not 0.0 <= self.blend_start <= self.blend_end <= self.duration:
            raise ValueError(
                f"need 0 <= blend_start <= blend_end <= duration, got {self.blend_start}, {self.blend_end}, "
                f"{self.duration}"
            )
        if self.phrase_bars < 1:
            raise ValueError(f"phrase_bars must be >= 1, got {self.phrase_bars}")

    @property
    def frame_times(self) -> np.ndarray:
        """[F] seconds of clip time of each curve frame."""
        return np.linspace(0.0, self.duration, self.n_frames)

    @property
    def frame_step(self) -> float:
        """Seconds between curve frames."""
        return self.duration / (self.n_frames - 1)

    @property
    def beat(self) -> float:
        """One beat in seconds (0.5 s when the tempo is unknown)."""
        return 60.0 / self.bpm if self.bpm and self.bpm > 0 else 0.5

    @property
    def blend_length(self) -> float:
        return self.blend_end - self.blend_start

    def at(self, fraction: float) -> float:
        """Clip time at `fraction` (0..1) of the blend."""
        return self.blend_start + fraction * self.blend_length

    def phrase_level(self) -> np.ndarray:
        """[n_downbeats] 2 for phrase boundaries, 1 for half phrases, 0 for other downbeats."""
        if not len(self.downbeats):
            return np.zeros(0, dtype=int)
        k = np.arange(len(self.downbeats)) - int(np.argmin(np.abs(self.downbeats - self.blend_start)))
        half = max(1, self.phrase_bars // 2)
        return np.where(k % self.phrase_bars == 0, 2, np.where(k % half == 0, 1, 0))

    def to_dict(self) -> dict:
        """JSON-serialisable dict (for analysis.json)."""
        return {
            "n_frames": self.n_frames, "duration": self.duration, "bpm": self.bpm,
            "beats": [round(float(t), 6) for t in self.beats],
            "downbeats": [round(float(t), 6) for t in self.downbeats],
            "blend_start": self.blend_start, "blend_end": self.blend_end,
            "vocals_a": None if self.vocals_a is None else [list(v) for v in self.vocals_a],
            "vocals_b": None if self.vocals_b is None else [list(v) for v in self.vocals_b],
            "phrase_bars": self.phrase_bars,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TransitionContext:
        return cls(**{k: d[k] for k in (
            "n_frames", "duration", "bpm", "beats", "downbeats", "blend_start", "blend_end", "vocals_a", "vocals_b",
            "phrase_bars") if k in d})


def _get(analysis, key: str, default=None):
    """A field of a TrackAnalysis-like object or of a synth truth dict."""
    if isinstance(analysis, dict):
        return analysis.get(key, default)
    return getattr(analysis, key, default)


def context_from_analyses(
    analysis_a,
    analysis_b,
    offset_a: float,
    offset_b: float,
    duration: float,
    blend_start: float,
    blend_end: float,
    n_frames: int,
    phrase_bars: int = 8,
) -> TransitionContext:
    """Context of a clip cut from two analysed tracks (TrackAnalysis, or synth truth dicts).

    offset_a / offset_b: the track time (s) that plays at clip time 0 (clip t = track t - offset).
    B must already be at A's tempo (its analysis on the stretched timeline). The grid is A's up to
    blend_end and B's after it (they coincide in the blend); bpm is A's. Vocal activity is mapped
    and clipped to the clip; None (unknown) stays None.
    """
    bpm = _get(analysis_a, "bpm")
    beat = 60.0 / bpm if bpm else 0.5
    cut = blend_end + 0.5 * beat

    def grid(key: str) -> np.ndarray:
        a = _times(_get(analysis_a, key)) - offset_a
        b = _times(_get(analysis_b, key)) - offset_b
        both = np.concatenate([a[a <= cut], b[b > cut]])
        return both[(both >= -1e-9) & (both <= duration + 1e-9)]

    def vocals(analysis, offset: float):
        spans = _get(analysis, "vocal_activity")
        if spans is None:
            return None
        clipped = [(max(0.0, s - offset), min(duration, e - offset)) for s, e in spans]
        return [(s, e) for s, e in clipped if e > s]

    return TransitionContext(
        n_frames=n_frames, duration=duration, bpm=float(bpm) if bpm else None,
        beats=grid("beats"), downbeats=grid("downbeats"), blend_start=blend_start, blend_end=blend_end,
        vocals_a=vocals(analysis_a, offset_a), vocals_b=vocals(analysis_b, offset_b), phrase_bars=phrase_bars,
    )


# ------------------------------------------------------------------------------------------------
# Switch points on the grid
# ------------------------------------------------------------------------------------------------


def _candidates(ctx: TransitionContext, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Switch times in [lo, hi] (clipped to the blend) and their weights.

    Downbeats first (phrase boundaries weigh 4, half phrases 2, other downbeats 1); with no downbeat
    in range but some in the blend, the one nearest the range; then beats; then plain times.
    """
    eps = 1e-6
    lo = min(max(lo, ctx.blend_start), ctx.blend_end)
    hi = max(min(hi, ctx.blend_end), lo)
    db = ctx.downbeats
    in_blend = (db >= ctx.blend_start - eps) & (db <= ctx.blend_end + eps)
    inside = in_blend & (db >= lo - eps) & (db <= hi + eps)
    if inside.any():
        return db[inside], np.array([1.0, 2.0, 4.0])[ctx.phrase_level()[inside]]
    if in_blend.any():
        near = db[in_blend]
        dist = np.minimum(np.abs(near - lo), np.abs(near - hi))
        return near[[int(np.argmin(dist))]], np.ones(1)
    beats = ctx.beats[(ctx.beats >= lo - eps) & (ctx.beats <= hi + eps)]
    if len(beats):
        return beats, np.ones(len(beats))
    times = np.linspace(lo, hi, max(2, int((hi - lo) / 0.5) + 1)) if hi > lo else np.array([lo])
    return times, np.ones(len(times))


def _pick(ctx: TransitionContext, rng: np.random.Generator, lo: float, hi: float) -> float:
    """One switch time in [lo, hi], drawn with the phrase weights of `_candidates`."""
    times, weights = _candidates(ctx, lo, hi)
    return float(times[rng.choice(len(times), p=weights / weights.sum())])


def _pick_sorted(ctx: TransitionContext, rng: np.random.Generator, lo: float, hi: float, n: int) -> list[float]:
    """n switch times in [lo, hi], ascending; distinct when the range holds enough candidates."""
    times, weights = _candidates(ctx, lo, hi)
    distinct = len(times) >= n
    idx = rng.choice(len(times), size=n, replace=not distinct, p=weights / weights.sum())
    return sorted(float(times[i]) for i in idx)


# ------------------------------------------------------------------------------------------------
# Curve shapes
# ------------------------------------------------------------------------------------------------


def _progress(t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """0 up to t0, 1 from t1 on, linear between; a step at t0 (1 for t >= t0) when t1 <= t0."""
    if t1 <= t0:
        return (t >= t0).astype(np.float64)
    return np.clip((t - t0) / (t1 - t0), 0.0, 1.0)


def _fade_in(r: np.ndarray, law: str) -> np.ndarray:
    """Rising curve of progress r: linear, power (equal-power sine) or smooth (smoothstep)."""
    if law == "power":
        return np.sin(0.5 * np.pi * r)
    if law == "smooth":
        return r * r * (3.0 - 2.0 * r)
    return r


def _fade_out(r: np.ndarray, law: str) -> np.ndarray:
    """The partner of `_fade_in`: cos for power (so the pair keeps constant power), 1 - x otherwise."""
    if law == "power":
        return np.cos(0.5 * np.pi * r)
    return 1.0 - _fade_in(r, law)


def _db(amplitude: np.ndarray) -> np.ndarray:
    """Amplitude -> dB, floored at the EQ kill."""
    return np.maximum(20.0 * np.log10(np.maximum(amplitude, 1e-6)), EQ_KILL_DB)


def _window(ctx: TransitionContext, centre: float, width: float) -> tuple[float, float]:
    """A handover window of up to `width` seconds centred on `centre`, shrunk symmetrically to fit
    the blend (so the crossing stays on `centre`)."""
    half = max(0.0, min(0.5 * width, centre - ctx.blend_start, ctx.blend_end - centre))
    return centre - half, centre + half


# ------------------------------------------------------------------------------------------------
# Plans: curves under construction in physical units
# ------------------------------------------------------------------------------------------------


class _Plan:
    """Physical-unit curves being written by a recipe, plus the two track levels.

    `la`, `lb` [F] are the track levels (see the module docstring); columns not touched stay
    exactly neutral in model space.
    """

    def __init__(self, ctx: TransitionContext):
        self.ctx = ctx
        self.t = ctx.frame_times
        self.la = (self.t < ctx.blend_end).astype(np.float64)
        self.lb = (self.t >= ctx.blend_start).astype(np.float64)
        self._phys: dict[int, np.ndarray] = {}

    def col(self, name: str) -> np.ndarray:
        """[F] physical values of one parameter (writable; starts at neutral)."""
        i = _COL[name]
        if i not in self._phys:
            self._phys[i] = np.full(len(self.t), _NEUTRAL_X[i])
        return self._phys[i]

    def scale(self, name: str, factor: np.ndarray) -> None:
        self.col(name)[:] *= factor

    def add_db(self, name: str, db: np.ndarray) -> None:
        col = self.col(name)
        col[:] = np.clip(col + db, *EQ_DB_RANGE)

    def cap_db(self, name: str, db: np.ndarray) -> None:
        """Lower an EQ to at most `db` (two cuts of one band keep the deeper one)."""
        col = self.col(name)
        col[:] = np.minimum(col, db)

    def scale_track(self, track: str, factor: np.ndarray, stems: Sequence[str] = STEMS) -> None:
        for stem in stems:
            self.scale(f"{track}.{stem}.gain", factor)

    def curves(self) -> np.ndarray:
        """[F, 58] float32 model-space curves."""
        la, lb = np.clip(self.la, 0.0, 1.0), np.clip(self.lb, 0.0, 1.0)
        norm = np.hypot(la, lb)
        out = np.repeat(_NEUTRAL_U[None], len(self.t), axis=0)
        out[:, _COL["crossfader"]] = np.where(norm > 0, np.arctan2(lb, la) / (0.5 * np.pi), 0.5)
        master_db = np.clip(20.0 * np.log10(np.maximum(norm, 1e-6)), *EQ_DB_RANGE)
        out[:, _COL["master_gain"]] = np.where(norm > 0, (master_db - EQ_DB_RANGE[0]) / 32.0, 0.0)
        for i, x in self._phys.items():
            # Values at the neutral setting map to the exact neutral (bit-exact bypass in the mixer).
            at_neutral = np.isclose(x, _NEUTRAL_X[i], rtol=1e-9, atol=1e-9)
            out[:, i] = np.where(at_neutral, _NEUTRAL_U[i], _to_model(i, x))
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _to_model(i: int, x: np.ndarray) -> np.ndarray:
    spec = _SPECS[i]
    if spec.log:
        return np.log(np.maximum(x, 1e-12) / spec.low) / math.log(spec.high / spec.low)
    return (x - spec.low) / (spec.high - spec.low)


# ------------------------------------------------------------------------------------------------
# Rule helpers shared by the recipes
# ------------------------------------------------------------------------------------------------


def _bass_swap(
    p: _Plan, centre: float, width: float, fader: bool = True, eq_stems: Sequence[str] = ()
) -> None:
    """Equal-power low-band handover at `centre`: A's low goes, B's comes.

    fader: the bass stems' faders swap (A's 1 -> 0, B's 0 -> 1); eq_stems: those stems' eq_low
    swap too (0 dB <-> kill), like a channel EQ, so kicks do not double up either. Before the
    window B's low is out, after it A's. The window (shrunk symmetrically to fit the blend) runs
    A's low along cos(theta), B's along sin(theta); theta's time course is bent so that the two
    bass amplitudes cross exactly at `centre` even when the tracks' levels differ there. When one
    bass is already 12 dB below the other the swap is a step on `centre` (nothing to crossfade).
    """
    ctx = p.ctx
    amp = bass_amplitudes(p.curves())
    amp_a, amp_b = (float(np.interp(centre, p.t, amp[:, k])) for k in range(2))
    start, end = _window(ctx, centre, width)
    half = end - centre
    if max(amp_a, amp_b) <= 1e-9 or min(amp_a, amp_b) < 0.25 * max(amp_a, amp_b):
        half = 0.0
    r = _progress(p.t, centre - half, centre + half)
    if half > 0:
        cross = math.atan2(amp_a, amp_b) / (0.5 * np.pi)  # theta at the centre, as a fraction of pi/2
        r = r ** (math.log(cross) / math.log(0.5))
    up, down = np.sin(0.5 * np.pi * r), np.cos(0.5 * np.pi * r)
    if fader:
        p.scale("a.bass.gain", down)
        p.scale("b.bass.gain", up)
    for stem in eq_stems:
        p.cap_db(f"a.{stem}.eq_low", _db(down))
        p.cap_db(f"b.{stem}.eq_low", _db(up))


def _coin(rng, p: float, typical: bool) -> bool:
    """rng.random() < p, or `typical` when rng is a TypicalChoices (whose random() would take every branch).

    For a branch whose usual variant is the one the draw guards against; a Generator's stream and
    outcome are the same as a plain `rng.random() < p`, so seeded draws do not change.
    """
    draw = rng.random() < p
    return typical if isinstance(rng, TypicalChoices) else bool(draw)


def _balanced_swap_time(p: _Plan, rng: np.random.Generator) -> float:
    """A downbeat where the two track levels are within 6 dB of each other (the middle of a fade)."""
    la, lb = np.clip(p.la, 0.0, 1.0), np.clip(p.lb, 0.0, 1.0)
    balanced = (np.minimum(la, lb) >= 0.5 * np.maximum(la, lb)) & (np.maximum(la, lb) > 0)
    blend = (p.t >= p.ctx.blend_start) & (p.t <= p.ctx.blend_end)
    if (balanced & blend).any():
        lo, hi = p.t[balanced & blend][[0, -1]]
    else:
        lo = hi = float(p.t[blend][np.argmin(np.abs(la - lb)[blend])]) if blend.any() else p.ctx.at(0.5)
    return _pick(p.ctx, rng, lo, hi)


def _bass_width(ctx: TransitionContext, rng: np.random.Generator) -> float:
    """A handover window of a quarter to one beat (seconds)."""
    return float(rng.uniform(0.25, 1.0)) * ctx.beat


def _eq_moves(p: _Plan, rng: np.random.Generator, track: str, t0: float, t1: float) -> None:
    """Sometimes a small channel EQ dip (mid or high, -1.5..-6 dB) that is back at 0 dB by t1.

    Cuts only: a dip never makes a vocal or a bass louder, so the rules stay kept.
    """
    if rng.random() < 0.5 or t1 <= t0:
        return
    control = ("eq_high", "eq_mid")[int(rng.integers(2))]
    dip = float(rng.uniform(-6.0, -1.5)) * np.sin(np.pi * _progress(p.t, t0, t1))
    for stem in STEMS:
        p.add_db(f"{track}.{stem}.{control}", dip)


def _active(spans: list[tuple[float, float]] | None, t: np.ndarray) -> np.ndarray:
    """[F] bool: vocal activity at the frame times (everywhere when unknown)."""
    if spans is None:
        return np.ones(len(t), dtype=bool)
    out = np.zeros(len(t), dtype=bool)
    for start, end in spans:
        out |= (t >= start) & (t <= end)
    return out


def _vocal_rule(p: _Plan, rng: np.random.Generator, wet_a: tuple[float, float] | None = None) -> None:
    """Duck vocals so that the two tracks never sing audibly at once.

    wet_a: (send opens, tail dies) of A's echo/reverb: a vocal of A fed into it stays audible
    until the tail dies, whatever A's fader does. If a clash remains, one downbeat T in the blend
    hands the vocals over: A's vocal fader reaches 0 at T, B's rises from 0 at T. T minimises the
    vocal time lost (A's after T, B's before), drawn among near-best candidates.
    """
    ctx, t = p.ctx, p.t
    thr = 10.0 ** (VOCAL_THRESHOLD_DB / 20.0)
    amp = vocal_amplitudes(p.curves())
    sing_a = (amp[:, 0] > thr) & _active(ctx.vocals_a, t)
    sing_b = (amp[:, 1] > thr) & _active(ctx.vocals_b, t)
    earliest = ctx.blend_start
    if wet_a is not None:
        fed = sing_a & (t >= wet_a[0]) & (t <= wet_a[1])
        if fed.any():
            sing_a = sing_a | ((t >= t[fed][0]) & (t <= wet_a[1]))
            earliest = max(earliest, wet_a[1])
    if not (sing_a & sing_b).any():
        return
    times, weights = _candidates(ctx, earliest, ctx.blend_end)
    if times[0] < earliest - 1e-6:  # only a downbeat before the tail dies: wait for the tail instead
        times, weights = np.array([min(earliest, ctx.blend_end)]), np.ones(1)
    cost = np.array([np.sum(sing_a & (t >= T)) + np.sum(sing_b & (t < T)) for T in times], dtype=np.float64)
    bar_frames = 4.0 * ctx.beat / ctx.frame_step
    ok = cost <= cost.min() + bar_frames
    w = weights * ok
    T = float(times[rng.choice(len(times), p=w / w.sum())])
    width_a = min(float(rng.uniform(0.0, 1.0)) * ctx.beat, T - ctx.blend_start)
    width_b = min(float(rng.uniform(0.0, 1.0)) * ctx.beat, ctx.blend_end - T)
    p.scale("a.vocals.gain", 1.0 - _fade_in(_progress(t, T - width_a, T), "smooth"))
    p.scale("b.vocals.gain", _fade_in(_progress(t, T, T + width_b), "smooth"))


def _retire_a(p: _Plan, start: float) -> None:
    """A's level goes 1 -> 0 over [start, blend_end] once its faders are down (keeps B's level smooth)."""
    p.la = np.minimum(p.la, 1.0 - _progress(p.t, start, p.ctx.blend_end))


# ------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------


def _fade(ctx: TransitionContext, rng: np.random.Generator, law: str) -> np.ndarray:
    """Crossfade over the whole blend with the bass handed over on a downbeat mid-blend."""
    p = _Plan(ctx)
    r = _progress(p.t, ctx.blend_start, ctx.blend_end)
    if law == "exponential":
        # One track moves linearly in dB (exponential in amplitude) over range_db, the other is its
        # constant-power complement: "in" lets B creep in under A, "out" lets A sink away early.
        range_db = float(rng.uniform(30.0, 48.0))
        if rng.random() < 0.5:
            p.lb = np.where(r > 0, 10.0 ** (-range_db * (1.0 - r) / 20.0), 0.0)
            p.la = np.sqrt(np.clip(1.0 - p.lb**2, 0.0, 1.0))
        else:
            p.la = np.where(r < 1, 10.0 ** (-range_db * r / 20.0), 0.0)
            p.lb = np.sqrt(np.clip(1.0 - p.la**2, 0.0, 1.0))
    else:
        p.la, p.lb = _fade_out(r, law), _fade_in(r, law)
    swap = _balanced_swap_time(p, rng)
    eq_stems = ("drums", "other") if rng.random() < 0.5 else ()
    _bass_swap(p, swap, _bass_width(ctx, rng), fader=True, eq_stems=eq_stems)
    _eq_moves(p, rng, "b", ctx.blend_start, swap)
    _vocal_rule(p, rng)
    return p.curves()


def linear_fade(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """A falls and B rises linearly in amplitude over the blend (a 3 dB dip mid-way, as a linear fade has)."""
    return _fade(ctx, rng, "linear")


def equal_power_fade(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """A constant-power crossfader move over the blend."""
    return _fade(ctx, rng, "power")


def exponential_fade(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """One track moves linearly in dB (30-48 dB), the other is its constant-power complement."""
    return _fade(ctx, rng, "exponential")


def bass_swap(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """EQ mix: B comes in with its lows killed, the low EQs swap on a downbeat, then A leaves.

    B rises over [blend_start, in_end], the channel eq_low of every stem swaps (equal power, a
    quarter to one beat) at a downbeat 35-65 % into the blend (half the draws swap the bass faders
    too; the typical move does not: the low EQs already hand the lows over, and pulling the bass
    stem's fader as well takes its upper harmonics out at the same instant, an audible seam), and A
    fades out over [out_start, blend_end].
    """
    p = _Plan(ctx)
    swap = _pick(ctx, rng, ctx.at(0.35), ctx.at(0.65))
    in_end = _pick(ctx, rng, ctx.blend_start + ctx.beat, swap)
    out_start = _pick(ctx, rng, swap, ctx.blend_end - ctx.beat)
    p.lb = _fade_in(_progress(p.t, ctx.blend_start, min(in_end, swap)), str(rng.choice(["power", "smooth"])))
    p.la = _fade_out(_progress(p.t, max(out_start, swap), ctx.blend_end), str(rng.choice(["power", "smooth"])))
    _bass_swap(p, swap, _bass_width(ctx, rng), fader=_coin(rng, 0.5, typical=False), eq_stems=STEMS)
    _eq_moves(p, rng, "b", ctx.blend_start, swap)
    _eq_moves(p, rng, "a", swap, ctx.blend_end)
    _vocal_rule(p, rng)
    return p.curves()


def filter_sweep(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """A high-pass sweeps A out while a low-pass opens B in (both log-frequency sweeps).

    B's low-pass starts at 200-800 Hz and opens to 20 kHz by a downbeat after the bass swap; A's
    high-pass rises from 20 Hz to 0.6-3 kHz until blend_end, A's level leaving over the last part.
    The basses swap (faders, and the kick's low EQ) on a downbeat mid-blend.
    """
    p = _Plan(ctx)
    t0, t1 = ctx.blend_start, ctx.blend_end
    swap = _pick(ctx, rng, ctx.at(0.35), ctx.at(0.65))
    b_in = _pick(ctx, rng, t0 + ctx.beat, swap)
    p.lb = _fade_in(_progress(p.t, t0, min(b_in, swap)), "power")
    lpf_lo = float(np.exp(rng.uniform(np.log(200.0), np.log(800.0))))
    open_end = _pick(ctx, rng, swap, t1)
    curve = float(rng.uniform(0.7, 1.5))  # sweep curvature in log-frequency
    r_open = _progress(p.t, t0, open_end) ** curve
    # Closed before B enters (the DJ preps the filter), exactly open from open_end on.
    lpf = np.where(r_open >= 1.0, 20_000.0, lpf_lo * (20_000.0 / lpf_lo) ** r_open)
    hp_start = _pick(ctx, rng, t0, swap)
    hpf_hi = float(np.exp(rng.uniform(np.log(600.0), np.log(3000.0))))
    hpf = 20.0 * (hpf_hi / 20.0) ** (_progress(p.t, hp_start, t1) ** float(rng.uniform(0.7, 1.5)))
    for stem in STEMS:
        p.col(f"b.{stem}.lpf")[:] = lpf
        p.col(f"a.{stem}.hpf")[:] = hpf
    out_start = _pick(ctx, rng, max(swap, t1 - 2 * 4 * ctx.beat), t1)
    p.la = _fade_out(_progress(p.t, out_start, t1), "power")
    _bass_swap(p, swap, _bass_width(ctx, rng), fader=True, eq_stems=("drums", "other"))
    _vocal_rule(p, rng)
    return p.curves()


def echo_out(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """A's delay send opens with feedback, A is cut on a downbeat and its echoes ring over B.

    B either drops in at the cut or has been fading in under A with its lows out. The feedback is
    pulled to 0 over the last beat(s) so the tail has gone by blend_end.
    """
    p = _Plan(ctx)
    t0, t1, beat = ctx.blend_start, ctx.blend_end, ctx.beat
    bar = 4 * beat
    delay = _MIXER.delay_beats * beat
    latest = t1 - 2 * delay - ctx.frame_step  # the last echo must leave the delay line by blend_end
    hi = min(latest, t1 - max(bar, 0.25 * ctx.blend_length))
    cut = _pick(ctx, rng, min(max(t0 + bar, ctx.at(0.3)), hi), hi)
    if cut > latest:  # a blend too short for the range: the latest switch point that leaves room
        times, _ = _candidates(ctx, t0, latest)
        cut = float(times[times <= latest][-1]) if (times <= latest).any() else t0
    send_start = max(t0, cut - float(rng.choice([1, 2, 4])) * beat)
    send = float(rng.uniform(0.5, 1.0))
    feedback = float(rng.uniform(0.45, 0.8))
    kill_start = max(cut, t1 - float(rng.choice([1, 2])) * beat)
    close = _progress(p.t, min(cut + beat, t1), min(cut + 2 * beat, t1))
    p.col("a.delay_send")[:] = send * _progress(p.t, send_start, cut) * (1.0 - close)
    fb = p.col("a.delay_feedback")
    fb[p.t >= send_start] = feedback
    fb[:] *= np.where(p.t >= send_start, 1.0 - _progress(p.t, kill_start, t1), 1.0)
    cut_now = _progress(p.t, cut, cut)  # step: 1 from the cut on
    p.scale_track("a", 1.0 - cut_now)
    p.la = 1.0 - cut_now
    if rng.random() < 0.5:
        p.lb = cut_now  # B drops in on the cut
    else:
        p.lb = _fade_in(_progress(p.t, t0, cut), str(rng.choice(["power", "smooth"])))
        _eq_moves(p, rng, "b", t0, cut)
    _bass_swap(p, cut, 0.0, fader=True, eq_stems=("drums", "other"))
    # Echo k has level send * feedback^k: audible (above -20 dB) for this many repeats.
    repeats = math.ceil(math.log(0.1 / send) / math.log(feedback)) if send > 0.1 else 0
    _vocal_rule(p, rng, wet_a=(send_start, min(cut + repeats * delay, t1)))
    return p.curves()


def hard_cut(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """A stops and B starts on one downbeat, no overlap; sometimes A high-passed over the bar(s) before."""
    p = _Plan(ctx)
    cut = _pick(ctx, rng, ctx.blend_start, ctx.blend_end)
    cut_now = _progress(p.t, cut, cut)
    p.la, p.lb = 1.0 - cut_now, cut_now
    if rng.random() < 0.3:
        start = max(ctx.blend_start, cut - float(rng.choice([1, 2])) * 4 * ctx.beat)
        top = float(np.exp(rng.uniform(np.log(100.0), np.log(400.0))))
        hpf = 20.0 * (top / 20.0) ** _progress(p.t, start, cut)
        for stem in STEMS:
            p.col(f"a.{stem}.hpf")[:] = hpf
    return p.curves()


def stem_handover(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """Stem by stem: B's other parts rise, then drums swap, then bass, vocals last, each on a downbeat.

    Both tracks sit at unity (crossfader centre, master +3 dB) while the stems change hands; A's
    remaining parts leave over [vocal switch, blend_end].
    """
    p = _Plan(ctx)
    t0, t1, beat = ctx.blend_start, ctx.blend_end, ctx.beat
    drums, bass, vocals = _pick_sorted(ctx, rng, t0 + beat, t1 - beat, 3)
    p.lb = _fade_in(_progress(p.t, t0, drums), str(rng.choice(["power", "linear"])))
    p.la = _fade_out(_progress(p.t, vocals, t1), str(rng.choice(["power", "linear"])))
    d0, d1 = _window(ctx, drums, _bass_width(ctx, rng))
    r = _progress(p.t, d0, d1)
    p.scale("a.drums.gain", _fade_out(r, "power"))
    p.scale("b.drums.gain", _fade_in(r, "power"))
    _bass_swap(p, bass, _bass_width(ctx, rng), fader=True)
    width = min(float(rng.uniform(0.0, 1.0)) * beat, vocals - t0)
    p.scale("a.vocals.gain", 1.0 - _fade_in(_progress(p.t, vocals - width, vocals), "smooth"))
    width = min(float(rng.uniform(0.0, 1.0)) * beat, t1 - vocals)
    p.scale("b.vocals.gain", _fade_in(_progress(p.t, vocals, vocals + width), "smooth"))
    _eq_moves(p, rng, "b", t0, drums)
    _vocal_rule(p, rng)
    return p.curves()


def reverb_wash(ctx: TransitionContext, rng: np.random.Generator) -> np.ndarray:
    """A goes into a long reverb while its faders fade, B comes in under the wash.

    The reverb decay is turned down to its minimum (0.2 s) between one and half a beat before
    blend_end, so the wash has gone by then. The basses swap on a downbeat while A is fading.
    """
    p = _Plan(ctx)
    t0, t1, beat = ctx.blend_start, ctx.blend_end, ctx.beat
    bar = 4 * beat
    send_start = _pick(ctx, rng, t0, ctx.at(0.5))
    send_full = _pick(ctx, rng, send_start + beat, ctx.at(0.75))
    fade_start = _pick(ctx, rng, max(send_start, ctx.at(0.4)), ctx.at(0.75))
    fade_end = _pick(ctx, rng, fade_start + beat, t1 - bar)
    fade_end = max(fade_end, fade_start)
    rt60 = float(np.exp(rng.uniform(np.log(3.0), np.log(8.0))))
    send = float(rng.uniform(0.4, 1.0))
    close = _progress(p.t, fade_end, min(fade_end + beat, t1))
    p.col("a.reverb_send")[:] = send * _progress(p.t, send_start, send_full) * (1.0 - close)
    decay = p.col("reverb_decay")
    decay[p.t >= max(t0, send_start - beat)] = rt60
    # Decay down to its shortest half a beat before blend_end: the wash has gone when A has.
    kill = _progress(p.t, t1 - beat, t1 - 0.5 * beat)
    decay[:] = np.exp((1.0 - kill) * np.log(decay) + kill * np.log(0.2))
    p.scale_track("a", _fade_out(_progress(p.t, fade_start, fade_end), str(rng.choice(["power", "smooth"]))))
    if rng.random() < 0.5:  # thin A out as it goes into the wash
        top = float(np.exp(rng.uniform(np.log(100.0), np.log(400.0))))
        hpf = 20.0 * (top / 20.0) ** _progress(p.t, fade_start, fade_end)
        for stem in STEMS:
            p.col(f"a.{stem}.hpf")[:] = hpf
    b_start = _pick(ctx, rng, t0, fade_start)
    b_full = _pick(ctx, rng, max(b_start, fade_start), fade_end)
    p.lb = _fade_in(_progress(p.t, b_start, b_full), "power")
    _retire_a(p, max(fade_end, t1 - beat))
    swap = _pick(ctx, rng, max(b_start, fade_start), fade_end)
    _bass_swap(p, swap, _bass_width(ctx, rng), fader=True, eq_stems=("drums", "other"))
    _eq_moves(p, rng, "b", b_start, t1)
    _vocal_rule(p, rng, wet_a=(send_start, min(t1, fade_end + rt60 / 3.0)))
    return p.curves()


Recipe = Callable[[TransitionContext, np.random.Generator], np.ndarray]

RECIPES: dict[str, Recipe] = {
    "linear_fade": linear_fade,
    "equal_power_fade": equal_power_fade,
    "exponential_fade": exponential_fade,
    "bass_swap": bass_swap,
    "filter_sweep": filter_sweep,
    "echo_out": echo_out,
    "hard_cut": hard_cut,
    "stem_handover": stem_handover,
    "reverb_wash": reverb_wash,
}

# Mixture weights: EQ-style blends dominate real DJ sets; effects transitions and cuts are spice.
DEFAULT_WEIGHTS: dict[str, float] = {
    "linear_fade": 0.08,
    "equal_power_fade": 0.14,
    "exponential_fade": 0.08,
    "bass_swap": 0.2,
    "filter_sweep": 0.1,
    "echo_out": 0.1,
    "hard_cut": 0.06,
    "stem_handover": 0.14,
    "reverb_wash": 0.1,
}


def sample_recipe(rng: np.random.Generator, weights: dict[str, float] | None = None) -> str:
    """A recipe label drawn with probability proportional to `weights` (default DEFAULT_WEIGHTS).

    Labels missing from `weights` have weight 0. Raises ValueError on unknown labels, negative or
    non-finite weights, or weights that sum to 0.
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = sorted(set(weights) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipe label(s) {unknown}; expected some of {sorted(RECIPES)}")
    labels = list(RECIPES)
    w = np.array([float(weights.get(label, 0.0)) for label in labels])
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"recipe weights must be finite, >= 0 and not all 0, got {weights}")
    return labels[int(rng.choice(len(labels), p=w / w.sum()))]


# The teacher's shortlist when it selects by quality: the recipes that score best on average under
# evaluate.py's composite (EQ bass swap, echo out, filter sweep, cut). The others stay available by
# label and in the random mixture.
SELECTION_LABELS: tuple[str, ...] = ("bass_swap", "echo_out", "filter_sweep", "hard_cut")

Scorer = Callable[[list[np.ndarray]], Sequence[float]]


class TypicalChoices:
    """Stands in for a numpy Generator in the recipes and always makes the typical choice: the teacher
    deciding instead of rolling dice, so its curves are a function of the music alone.

    - choice(n, p=w): the heaviest candidate (switch points: a phrase boundary before a plain
      downbeat), ties to the middle one; choice(n, size=k, p=w): the k heaviest, ties nearest the
      middle; choice(options) without p: the first (recipes list the usual option first);
    - uniform(lo, hi): the middle; integers(lo, hi): lo (the first option); random(): 0.0, so
      every `random() < p` branch is taken: the recipes guard their usual variant that way (no
      extra EQ dip, B drops in on an echo's cut, the kicks' low EQ swaps with the bass); `_coin`
      names the exception (the bass swap's low EQs hand the lows over without the bass faders:
      on the 44 bass swaps of the README's three held-out sets, with the ride, seam novelty falls
      on each set (2.25 -> 2.18, 1.06 -> 1.06, 2.02 -> 1.88) and curve TV by a fifth).

    What remains variable is what the music sets: the blend length and grid, where the vocals sit
    (the vocal rule), which bass is already down (the handover is a step then) and, with
    `choose_recipe`, which move suits the pair.
    """

    def random(self) -> float:
        return 0.0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return 0.5 * (float(low) + float(high))

    def integers(self, low: int, high: int | None = None, size=None):
        if size is not None:
            raise ValueError("TypicalChoices makes one choice at a time")
        return 0 if high is None else int(low)

    def choice(self, a, size=None, replace: bool = True, p=None):
        options = np.arange(a) if isinstance(a, (int, np.integer)) else np.asarray(a)
        if p is None:
            if size is not None:
                raise ValueError("TypicalChoices draws several only by weight (p)")
            return options[0]
        w = np.asarray(p, dtype=np.float64)
        middle = 0.5 * (len(w) - 1)
        order = sorted(range(len(w)), key=lambda i: (-round(w[i], 12), abs(i - middle), i))
        if size is None:
            return options[order[0]]
        k = int(size)
        return options[order[:k]] if not replace or k <= len(w) else options[[order[0]] * k]


def _draft(label: str, ctx: TransitionContext, rng) -> np.ndarray:
    return np.asarray(RECIPES[label](ctx, rng), np.float32)


def select_recipe(
    ctx: TransitionContext, score: Scorer, rng: np.random.Generator, labels: Sequence[str] = SELECTION_LABELS
) -> tuple[str, np.ndarray, dict[str, float]]:
    """The teacher as a DJ auditioning options: one draw of each recipe in `labels`, rendered and
    judged by `score` (curves list -> one quality per curves, higher is better, e.g. evaluate.py's
    composite on the pair's own stems); the best wins.

    So the label is a function of the music (which move suits these two tracks here), not a coin
    toss, and the teacher is at least as good as each of its candidates by that measure. Returns
    (label, curves [F, 58] float32, {label: score}).
    """
    unknown = sorted(set(labels) - set(RECIPES))
    if unknown or not labels:
        raise ValueError(f"unknown or no recipe label(s) {unknown or labels}; expected some of {sorted(RECIPES)}")
    seeds = rng.integers(2**31, size=len(labels))  # one stream per label: a draw does not depend on the others
    drafts = [_draft(label, ctx, np.random.default_rng(int(seed))) for label, seed in zip(labels, seeds)]
    scores = [float(v) for v in score(drafts)]
    finite = [v if np.isfinite(v) else -np.inf for v in scores]
    best = int(np.argmax(finite))
    return labels[best], drafts[best], dict(zip(labels, scores))


def nearest_recipe(curves: np.ndarray, ctx: TransitionContext, labels: Sequence[str] | None = None) -> str:
    """The recipe (of `labels`, default all) whose typical curves on `ctx` are closest to `curves` [F, 58]
    (mean squared difference of the normalised values): a name for a move that the model's sampler chose."""
    labels = list(RECIPES) if labels is None else list(labels)
    errors = [float(np.mean((_draft(label, ctx, TypicalChoices()) - curves) ** 2)) for label in labels]
    return labels[int(np.argmin(errors))]


def teacher_curves(
    ctx: TransitionContext, rng: np.random.Generator, label: str | None = None,
    weights: dict[str, float] | None = None, score: Scorer | None = None, typical: bool = False,
) -> tuple[str, np.ndarray, dict[str, float] | None]:
    """The teacher's (label, curves [F, 58] float32, scores or None) for one clip: the recipe `label` when given,
    else the best of the shortlist by `score` (`select_recipe`), else a recipe drawn from `weights`.
    typical: the recipe makes its typical choices (`TypicalChoices`) instead of drawing them from `rng`."""
    if label is None and score is not None:
        return select_recipe(ctx, score, rng)
    label = label if label is not None else sample_recipe(rng, weights)
    if label not in RECIPES:
        raise ValueError(f"unknown recipe label {label!r}; expected one of {sorted(RECIPES)}")
    return label, _draft(label, ctx, TypicalChoices() if typical else rng), None


def clip_teacher(
    stems_a, stems_b, ctx: TransitionContext, rng: np.random.Generator, label: str | None = None,
    weights: dict[str, float] | None = None, select: Callable | None = None, decide: bool = False,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[str, np.ndarray, dict]:
    """The teacher of one clip (stems [4, 2, N] in clip time): (label, curves [F, 58] float32, notes).

    label: this recipe; else decide: `choose_recipe` picks it (and every detail is typical); else
    select(stems_a, stems_b, ctx) -> scorer: the best of the shortlist (`select_recipe`); else drawn
    from `weights`. A deciding teacher also rides the master through the blend (`ride_gain`).
    notes for analysis.json: "teacher_facts" and "teacher_ride_db" (its largest lift), or "teacher_scores", or none.
    """
    notes: dict = {}
    if decide and label is None:
        label, notes["teacher_facts"] = choose_recipe(stems_a, ctx, sample_rate)
    score = select(stems_a, stems_b, ctx) if label is None and select is not None else None
    label, curves, scores = teacher_curves(ctx, rng, label, weights, score, typical=decide)
    if decide:
        ridden = ride_gain(curves, stems_a, stems_b, ctx, sample_rate)
        lift = (ridden[:, _COL["master_gain"]] - curves[:, _COL["master_gain"]]) * _MASTER_DB_SPAN
        notes["teacher_ride_db"] = round(float(lift.max()), 2)
        curves = ridden
    if scores is not None:
        notes["teacher_scores"] = scores
    return label, curves, notes


# Gain riding: the deciding teacher keeps the blend's loudness on the path between the two tracks' own.
RIDE_WINDOW_S = 1.0  # short-term loudness window (evaluate.py's loudness dip uses the same)
RIDE_HOP = 1024  # analysis hop (samples): 23 ms at 44.1 kHz
RIDE_ITERATIONS = 8
_MASTER_DB_SPAN = EQ_DB_RANGE[1] - EQ_DB_RANGE[0]


@lru_cache(maxsize=1)
def _ride_mixer() -> DifferentiableDJMixer:
    """One mixer per process for gain riding (its filters and windows are built once)."""
    return DifferentiableDJMixer()


def _frame_power(x) -> np.ndarray:
    """[..., N] audio -> [M] mean square per RIDE_HOP frame over all channels (M = N // RIDE_HOP)."""
    x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    m = x.shape[-1] // RIDE_HOP
    return np.square(x[:, :m * RIDE_HOP], dtype=np.float64).reshape(x.shape[0], m, RIDE_HOP).mean(axis=(0, 2))


def _moving_average(p: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` frames (at most the whole signal), edges held."""
    return ndimage.uniform_filter1d(p, size=max(1, min(int(window), len(p))), mode="nearest") if len(p) else p


def ride_gain(curves, stems_a, stems_b, ctx: TransitionContext, sample_rate: int = SAMPLE_RATE,
              mixer: DifferentiableDJMixer | None = None) -> np.ndarray:
    """Curves [F, 58] (model space) with the master raised inside the blend wherever the rendered mix's short-term
    loudness (RIDE_WINDOW_S) would sag below the energy-fair path (1 - r) P_A + r P_B between the two tracks' own
    loudness (r: blend progress), as a DJ rides the master through a handover (a loudness dip is what listeners
    notice first). Only up, to at most the master's +6 dB.

    stems_a, stems_b: [4, 2, N] clip stems. The master stays within its range and untouched outside the blend
    (the curves stay canonical there). The master is the mixer's last stage, so the audio scales exactly with it
    and one render suffices: the ride is refined RIDE_ITERATIONS times on the measured powers.
    Returns float32 [F, 58].
    """
    u = np.array(curves, dtype=np.float64)
    out = render_transition(mixer or _ride_mixer(), stems_a, stems_b, u.astype(np.float32), ctx.bpm).cpu().numpy()
    window = max(1, int(round(RIDE_WINDOW_S * sample_rate / RIDE_HOP)))
    p_out = _frame_power(out)
    p_a = _moving_average(_frame_power(np.asarray(stems_a, np.float32).sum(0)), window)
    p_b = _moving_average(_frame_power(np.asarray(stems_b, np.float32).sum(0)), window)
    m = min(len(p_out), len(p_a), len(p_b))
    if m == 0:
        return u.astype(np.float32)
    p_out, p_a, p_b = p_out[:m], p_a[:m], p_b[:m]
    hop_t = (np.arange(m) + 0.5) * RIDE_HOP / sample_rate
    r = _progress(hop_t, ctx.blend_start, ctx.blend_end)
    fair = (1.0 - r) * p_a + r * p_b
    judged = (hop_t >= ctx.blend_start) & (hop_t <= ctx.blend_end) & (fair > 1e-8)

    t = ctx.frame_times
    col = _COL["master_gain"]
    master_db = EQ_DB_RANGE[0] + u[:, col] * _MASTER_DB_SPAN
    inside = (t > ctx.blend_start) & (t < ctx.blend_end)
    headroom = np.where(inside, np.maximum(EQ_DB_RANGE[1] - master_db, 0.0), 0.0)
    # Each curve frame answers for the loudness windows that its interpolated gain reaches: the one furthest
    # below the path sets its boost.
    reach = (np.abs(hop_t[None, :] - t[:, None]) <= 0.5 * RIDE_WINDOW_S + ctx.frame_step) & judged[None, :]
    ride = np.zeros(len(t))
    for _ in range(RIDE_ITERATIONS):
        gain = 10.0 ** (np.interp(hop_t, t, ride) / 10.0)  # power ratio per hop frame
        level = _moving_average(p_out * gain, window)
        error = 10.0 * np.log10(np.maximum(fair, 1e-30) / np.maximum(level, 1e-30))  # dB below the path
        need = np.where(reach, np.maximum(error, 0.0)[None, :], 0.0).max(axis=1)
        if need.max() < 0.05:
            break
        ride = np.minimum(ride + 0.7 * need, headroom)  # damped: neighbouring frames share windows
    # The rules hold: the ride stops short of lifting a held-down vocal over the audibility threshold where both
    # tracks sing (the master lifts both alike, so the quieter decides), and of lifting two basses that sound
    # below full track level past BASS_LIMIT together (`bass_overlap`).
    quieter = vocal_amplitudes(u).min(axis=-1)
    threshold = 10.0 ** (VOCAL_THRESHOLD_DB / 20.0)
    guarded = _active(ctx.vocals_a, t) & _active(ctx.vocals_b, t) & (quieter > 0) & (quieter <= threshold)
    total, level = bass_amplitudes(u).sum(axis=-1), track_levels(u).max(axis=-1)
    capped = (total > BASS_LIMIT * level) & (total <= BASS_LIMIT)
    cap = np.minimum(np.where(guarded, 20.0 * np.log10(threshold / np.where(guarded, quieter, 1.0)) - 0.1, np.inf),
                     np.where(capped, 20.0 * np.log10(BASS_LIMIT / np.where(capped, total, 1.0)) - 0.05, np.inf))
    ride = np.minimum(ride, np.maximum(cap, 0.0))
    u[:, col] = np.clip((master_db + ride - EQ_DB_RANGE[0]) / _MASTER_DB_SPAN, 0.0, 1.0)
    return u.astype(np.float32)


# The transition-type engine of the deciding teacher ('decide'): plain facts of the two clips -> the move.
# Levels are RMS over all stems unless named, in dB relative to the track's own level outside the blend.
SINGS_DB = -24.0  # A's vocal stem in the blend's second half this close to A's level before: A still sings
HOLDS_DB = 2.0  # A's second half-blend this much above its level before: A does not thin out by itself
_FLOOR_DB = -120.0


def transition_facts(stems_a, ctx: TransitionContext, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """What the engine reads off A's clip stems [4, 2, N] (clip time, `STEMS` order), in dB:

    a_vocal_late: A's vocal stem over the blend's second half re A's mix before the blend;
    a_late: A's mix over the blend's second half re A's mix before the blend.
    """
    a = np.asarray(stems_a, np.float64)
    n = a.shape[-1]

    def level(x: np.ndarray, t0: float, t1: float) -> float:
        i0, i1 = (min(n, max(0, int(round(t * sample_rate)))) for t in (t0, t1))
        if i1 <= i0:  # an empty region (no lead-in or tail): the whole clip stands in
            i0, i1 = 0, n
        rms = math.sqrt(float(np.mean(np.square(x[..., i0:i1])))) if i1 > i0 else 0.0
        return max(20.0 * math.log10(rms), _FLOOR_DB) if rms > 0 else _FLOOR_DB

    def relative(x: float, ref: float) -> float:  # silence stays at the floor, whatever the reference
        return _FLOOR_DB if x <= _FLOOR_DB else x - ref

    mid = 0.5 * (ctx.blend_start + ctx.blend_end)
    mix_a = a.sum(0)
    a_before = level(mix_a, 0.0, ctx.blend_start)
    return {
        "a_vocal_late": relative(level(a[STEMS.index("vocals")], mid, ctx.blend_end), a_before),
        "a_late": relative(level(mix_a, mid, ctx.blend_end), a_before),
    }


def choose_recipe(stems_a, ctx: TransitionContext, sample_rate: int = SAMPLE_RATE) -> tuple[str, dict[str, float]]:
    """The move a DJ makes for this clip (A's stems [4, 2, N], clip time), from `transition_facts`:

    A still singing late in the blend -> echo out (the echoes carry the vocal out instead of
    chopping it under B); else A not thinning out by itself -> filter sweep (the high-pass thins
    it); else, an outro into an intro -> the long EQ bass swap. Plain, audible facts, so a model
    can learn the choice from the audio. (A cut is left to `--style hard_cut`: on synthetic
    pairs, every rule tried that cut more often, or keyed on B's entry, lowered evaluate.py's mean
    composite.) Returns (label, facts).
    """
    facts = transition_facts(stems_a, ctx, sample_rate)
    if facts["a_vocal_late"] > SINGS_DB:
        label = "echo_out"
    elif facts["a_late"] > HOLDS_DB:
        label = "filter_sweep"
    else:
        label = "bass_swap"
    return label, facts


# ------------------------------------------------------------------------------------------------
# Measuring the rules on any curves
# ------------------------------------------------------------------------------------------------


def _model_curves(curves) -> np.ndarray:
    u = curves.detach().cpu().numpy() if isinstance(curves, torch.Tensor) else np.asarray(curves)
    if u.ndim < 2 or u.shape[-1] != len(FULL):
        raise ValueError(f"curves must be [..., F, {len(FULL)}] in the full layout, got {u.shape}")
    return np.clip(u.astype(np.float64), 0.0, 1.0)  # the mixer clamps the same way


def track_levels(curves) -> np.ndarray:
    """[..., F, 2] amplitude of each track after crossfader and master, from curves [..., F, 58]."""
    u = _model_curves(curves)
    angle = 0.5 * np.pi * u[..., _COL["crossfader"]]
    master = 10.0 ** ((EQ_DB_RANGE[0] + 32.0 * u[..., _COL["master_gain"]]) / 20.0)
    return np.stack([np.cos(angle) * master, np.sin(angle) * master], axis=-1)


def _warp(freq_hz) -> np.ndarray:
    """Hz -> tan(w/2), as effects.filters.warp."""
    return np.tan(np.minimum(np.pi * np.asarray(freq_hz, dtype=np.float64) / SAMPLE_RATE, np.pi / 2 - 1e-3))


def _stem_mask(w: np.ndarray, u: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Magnitude of the mixer's stem mask at warped frequencies w [K] for one stem's controls.

    u, x: [..., 6] model-space and physical values of STEM_CONTROLS. Returns [..., K]. The same
    analog-prototype formulas as effects/filters.py (checked against it in the tests), in numpy:
    these run per recipe on a few frequencies, where torch's per-call overhead would dominate.
    """
    cfg = _MIXER
    gain, low, mid, high, hpf, lpf = (x[..., i, None] for i in range(6))

    def ratio2(corner_hz: float) -> np.ndarray:
        return np.clip(w / _warp(corner_hz), 1e-4, 1e4) ** 2

    def shelf(gain_db: np.ndarray, corner_hz: float, high_side: bool) -> np.ndarray:
        a, x2 = 10.0 ** (gain_db / 40.0), ratio2(corner_hz)
        damping = a / cfg.shelf_q**2 * x2
        low_part, high_part = (a - x2) ** 2 + damping, (1.0 - a * x2) ** 2 + damping
        return a * np.sqrt(high_part / low_part if high_side else low_part / high_part)

    a, x2 = 10.0 ** (mid / 40.0), ratio2(cfg.eq_mid_hz)
    base = (1.0 - x2) ** 2
    peak = np.sqrt((base + (a / cfg.mid_q) ** 2 * x2) / (base + (1.0 / (a * cfg.mid_q)) ** 2 * x2))
    order = cfg.filter_order
    hp = np.exp(-0.5 * np.logaddexp(0.0, -2.0 * order * (np.log(w) - np.log(_warp(hpf)))))
    lp = np.exp(-0.5 * np.logaddexp(0.0, 2.0 * order * (np.log(w) - np.log(_warp(lpf)))))
    hp_on = np.minimum(u[..., 4, None] / cfg.filter_engage, 1.0)
    lp_on = np.minimum((1.0 - u[..., 5, None]) / cfg.filter_engage, 1.0)
    mask = gain * shelf(low, cfg.eq_low_hz, False) * peak * shelf(high, cfg.eq_high_hz, True)
    return mask * (1.0 - hp_on * (1.0 - hp)) * (1.0 - lp_on * (1.0 - lp))


def stem_amplitudes(curves, stem: str, freqs: Sequence[float]) -> np.ndarray:
    """[..., F, 2] amplitude of one stem of each track (A, B) on the dry path.

    fader x track level x the power mean over `freqs` (Hz) of the stem's mixer mask (EQ shelves,
    mid peak, high/low-pass with the mixer's engage fade). Effect sends are not counted.
    """
    u = _model_curves(curves)
    w = _warp(freqs)
    levels = track_levels(u)
    out = []
    for k, track in enumerate(TRACKS):
        idx = [_COL[f"{track}.{stem}.{c}"] for c in STEM_CONTROLS]
        us = u[..., idx]
        xs = np.stack([
            _SPECS[i].low * (_SPECS[i].high / _SPECS[i].low) ** us[..., j] if _SPECS[i].log
            else _SPECS[i].low + (_SPECS[i].high - _SPECS[i].low) * us[..., j]
            for j, i in enumerate(idx)
        ], axis=-1)
        band = np.sqrt(np.mean(_stem_mask(w, us, xs) ** 2, axis=-1))
        out.append(band * levels[..., k])
    return np.stack(out, axis=-1)


def vocal_amplitudes(curves) -> np.ndarray:
    """[..., F, 2] dry vocal-stem amplitude of A and B in the voice band (see VOCAL_FREQS)."""
    return stem_amplitudes(curves, "vocals", VOCAL_FREQS)


def bass_amplitudes(curves) -> np.ndarray:
    """[..., F, 2] bass-stem amplitude of A and B in the low band (see BASS_FREQS); 1 = one full bass."""
    return stem_amplitudes(curves, "bass", BASS_FREQS)


def _per_item(curves, fn) -> float | np.ndarray:
    u = _model_curves(curves)
    if u.ndim == 2:
        return fn(u)
    flat = u.reshape(-1, *u.shape[-2:])
    return np.array([fn(c) for c in flat]).reshape(u.shape[:-2])


def _check_frames(u: np.ndarray, ctx: TransitionContext) -> None:
    if u.shape[-2] != ctx.n_frames:
        raise ValueError(f"curves have {u.shape[-2]} frames, the context {ctx.n_frames}")


def vocal_overlap(curves, ctx: TransitionContext, threshold_db: float = VOCAL_THRESHOLD_DB) -> float | np.ndarray:
    """Fraction of frames (0..1) where both tracks sing audibly: vocal stem above `threshold_db`
    and vocal activity there (unknown activity counts as singing). One value per [F, 58] curve set.
    """
    thr = 10.0 ** (threshold_db / 20.0)

    def one(u: np.ndarray) -> float:
        _check_frames(u, ctx)
        amp, t = vocal_amplitudes(u), ctx.frame_times
        both = (amp[:, 0] > thr) & _active(ctx.vocals_a, t) & (amp[:, 1] > thr) & _active(ctx.vocals_b, t)
        return float(both.mean())

    return _per_item(curves, one)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index ranges of the True runs of a bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def bass_overlap(
    curves, ctx: TransitionContext, limit: float = BASS_LIMIT, grace_beats: float = BASS_GRACE_BEATS
) -> float | np.ndarray:
    """Fraction of frames (0..1) where the two basses together exceed `limit` x one full bass.

    One full bass is a bass stem at full with its track at unity, or at the louder track's level where the
    master lifts that above unity (a gain ride lifts both basses together: the rule is one bass against the
    other). One run of such frames spanning at most `grace_beats` beats (the equal-power handover) is
    excused. One value per [F, 58] curve set.
    """

    def one(u: np.ndarray) -> float:
        _check_frames(u, ctx)
        full = np.maximum(track_levels(u).max(axis=-1), 1.0)
        over = bass_amplitudes(u).sum(axis=-1) > limit * full
        runs = _runs(over)
        # A run's length is the time its frames span: a window of w seconds holds frames spanning <= w.
        excused = [stop - start for start, stop in runs
                   if (stop - start - 1) * ctx.frame_step <= grace_beats * ctx.beat + 1e-9]
        return float((over.sum() - (max(excused) if excused else 0)) / len(over))

    return _per_item(curves, one)


def bass_handover_time(curves, ctx: TransitionContext | float, eps: float = 1e-3) -> float | np.ndarray:
    """Seconds (clip time) where the dominant bass passes from A to B for good; NaN if it never does.

    The last frame run where B's bass exceeds A's (by more than eps) after A's had led; the time is
    the interpolated crossing with the frame before, or that frame itself when both were silent.
    ctx: a TransitionContext or the clip duration in seconds.
    """
    duration = ctx.duration if isinstance(ctx, TransitionContext) else float(ctx)

    def one(u: np.ndarray) -> float:
        t = np.linspace(0.0, duration, u.shape[-2])
        amp = bass_amplitudes(u)
        d = amp[:, 1] - amp[:, 0]
        state = np.where(d > eps, 1, np.where(d < -eps, -1, 0))
        led_a = np.maximum.accumulate(state == -1)
        starts = [k for k in range(1, len(d)) if state[k] == 1 and state[k - 1] != 1 and led_a[k - 1]]
        if not starts or (state[starts[-1]:] == -1).any():
            return float("nan")
        k = starts[-1]
        frac = np.clip(-d[k - 1] / (d[k] - d[k - 1]), 0.0, 1.0) if d[k - 1] < 0 else 0.0
        return float(t[k - 1] + frac * (t[k] - t[k - 1]))

    return _per_item(curves, one)


# ------------------------------------------------------------------------------------------------
# Rendering and synthetic pairs
# ------------------------------------------------------------------------------------------------


def render_transition(
    mixer: DifferentiableDJMixer | None,
    stems_a,
    stems_b,
    curves,
    bpm: float | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Render stems through curves with the DJ mixer.

    stems_a, stems_b: [4, 2, N] or [B, 4, 2, N] (numpy or torch); curves [F, 58] or [B, F, 58]
    (one curve set is shared by the batch). Returns [2, N] or [B, 2, N] float32 on the mixer's
    device; gradients only with grad=True. mixer None: a default DifferentiableDJMixer.
    """
    mixer = mixer or DifferentiableDJMixer()
    device = mixer.window.device
    a, b, c = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (stems_a, stems_b, curves))
    single = a.dim() == 3
    if single:
        a, b = a[None], b[None]
    if c.dim() == 2:
        c = c[None].expand(a.shape[0], -1, -1)
    with torch.set_grad_enabled(grad):
        out = mixer(a, b, c, layout="full", bpm=bpm)
    return out[0] if single else out


@dataclass
class TransitionPair:
    """One synthetic training pair.

    stems_a, stems_b: [4, 2, N] float32 windows (clip time t = A time t + offset_a = B time
    t + offset_b, see info); curves: [F, 58] float32 model space; label: the recipe;
    context: the geometry and musical facts the recipe used; info: JSON-serialisable provenance.
    """

    stems_a: np.ndarray
    stems_b: np.ndarray
    curves: np.ndarray
    label: str
    context: TransitionContext
    bpm: float
    info: dict = field(default_factory=dict)

    def render(self, mixer: DifferentiableDJMixer | None = None) -> torch.Tensor:
        """[2, N] the transition."""
        return render_transition(mixer, self.stems_a, self.stems_b, self.curves, self.bpm)


def _window_of(stems: np.ndarray, start: int, n: int) -> np.ndarray:
    """stems [4, 2, M] -> [4, 2, n] from sample `start` (may be negative), zero-padded outside."""
    out = np.zeros((*stems.shape[:2], n), dtype=np.float32)
    lo, hi = max(start, 0), min(start + n, stems.shape[-1])
    if hi > lo:
        out[..., lo - start : hi - start] = stems[..., lo:hi]
    return out


def _cues(analysis_a, analysis_b, blend: float, lead: float, tail: float) -> tuple[float, float, bool] | None:
    """(A's blend start, B's entry, whether A's cue is in its last two sections), track seconds;
    None when the blend does not fit.

    A: the latest section start (its outro, usually) that leaves `lead` before and the blend
    after it inside the track, else the latest downbeat that does. B: its first downbeat that
    leaves the blend and `tail` inside the track.
    """
    margin = 0.05  # stay clear of the synth's end-of-track fade
    dur_a, dur_b = float(_get(analysis_a, "duration")), float(_get(analysis_b, "duration"))
    db_a, db_b = _times(_get(analysis_a, "downbeats")), _times(_get(analysis_b, "downbeats"))
    fit_a = db_a[(db_a >= lead - 1e-6) & (db_a + blend <= dur_a - margin)]
    fit_b = db_b[db_b + blend + tail <= dur_b - margin]
    if not len(fit_a) or not len(fit_b):
        return None
    starts = sorted(float(_get(s, "start")) for s in _get(analysis_a, "sections", []) or [])
    at_sections = [d for d in fit_a if any(abs(d - s) < 1e-3 for s in starts)]
    a_cue = max(at_sections) if at_sections else float(fit_a[-1])
    late = not starts or a_cue >= starts[max(0, len(starts) - 2)] - 1e-3
    return float(a_cue), float(fit_b[0]), late


def pair_from_tracks(
    stems_a: np.ndarray,
    analysis_a,
    stems_b: np.ndarray,
    analysis_b,
    rng: np.random.Generator,
    blend_bars: int | Sequence[int] = (4, 8, 16),
    lead_bars: int = 2,
    tail_bars: int = 2,
    n_frames: int | None = None,
    frame_rate: float = 20.0,
    weights: dict[str, float] | None = None,
    label: str | None = None,
    sample_rate: int = SAMPLE_RATE,
    select: Callable[[np.ndarray, np.ndarray, TransitionContext], Scorer] | None = None,
    decide: bool = False,
) -> TransitionPair:
    """A pair from two whole tracks already at one tempo (B generated or stretched to A's BPM).

    analysis_a/b: TrackAnalysis or synth truth dicts (bpm, beats, downbeats, sections,
    vocal_activity, duration). The blend length is drawn from `blend_bars` among those that fit
    both tracks, preferring those that let A mix out in its last two sections; A mixes out at its
    latest fitting section start, B in at its first fitting downbeat (2 or 1 bars when nothing
    asked for fits). The clip is `lead_bars` of A alone, the blend, `tail_bars` of B alone.
    n_frames None: round(duration * frame_rate) + 1. select: with no `label`, the teacher picks by
    quality (`select_recipe`) with the scorer select(stems_a, stems_b, ctx) of the clip's windows;
    decide: the teacher decides instead: the move by `choose_recipe` (unless `label` is given) and every
    detail at its typical value (`TypicalChoices`), so the curves are a function of the music alone;
    neither draws the label from `weights`.
    """
    bpm_a, bpm_b = float(_get(analysis_a, "bpm")), float(_get(analysis_b, "bpm"))
    if abs(bpm_b / bpm_a - 1.0) > 1e-3:
        raise ValueError(f"B ({bpm_b} BPM) is not at A's tempo ({bpm_a} BPM): beatmatch it first")
    bar = 4 * 60.0 / bpm_a
    options = [int(blend_bars)] if isinstance(blend_bars, (int, np.integer)) else [int(b) for b in blend_bars]
    lead, tail = lead_bars * bar, tail_bars * bar
    # A blend length whose A cue lies in A's last two sections (its outro) if one fits, else any
    # that fits, else the shortest blends.
    order = [options[i] for i in rng.permutation(len(options))]
    fits = {b: _cues(analysis_a, analysis_b, b * bar, lead, tail) for b in dict.fromkeys(order + [2, 1])}
    ranked = [b for b in order if fits[b] and fits[b][2]] + [b for b in order + [2, 1] if fits[b]]
    if not ranked:
        raise ValueError("tracks too short for even a 1-bar blend with the lead-in and tail asked for")
    bars = ranked[0]
    a_cue, b_cue, _ = fits[bars]
    blend = bars * bar
    n = int(round((lead + blend + tail) * sample_rate))
    duration = n / sample_rate
    offset_a, offset_b = a_cue - lead, b_cue - lead
    frames = int(n_frames) if n_frames is not None else int(round(duration * frame_rate)) + 1
    ctx = context_from_analyses(analysis_a, analysis_b, offset_a, offset_b, duration, lead, lead + blend, frames)
    window_a = _window_of(stems_a, int(round(offset_a * sample_rate)), n)
    window_b = _window_of(stems_b, int(round(offset_b * sample_rate)), n)
    label, curves, notes = clip_teacher(window_a, window_b, ctx, rng, label, weights, select, decide, sample_rate)
    info = {
        "recipe": label, "bpm": bpm_a, "blend_bars": bars, "lead_bars": lead_bars, "tail_bars": tail_bars,
        "offset_a": offset_a, "offset_b": offset_b, "a_cue": a_cue, "b_cue": b_cue,
    }
    info.update(notes)
    return TransitionPair(stems_a=window_a, stems_b=window_b, curves=curves, label=label, context=ctx, bpm=bpm_a,
                          info=info)


def _compatible_style(rng: np.random.Generator, bpm: float, fallback: str) -> str:
    """A synth style whose tempo range (+-6 %) holds `bpm`, else `fallback`."""
    from data.synth import STYLES

    fits = sorted(name for name, s in STYLES.items() if s.bpm_range[0] * 0.94 <= bpm <= s.bpm_range[1] * 1.06)
    return fits[int(rng.integers(len(fits)))] if fits else fallback


def _compatible_key(rng: np.random.Generator, key: int) -> int:
    """Same key, a step around the Camelot wheel, or the relative major/minor."""
    from data.keys import camelot, camelot_to_index

    code = camelot(key)
    number, letter = int(code[:-1]), code[-1]
    move = int(rng.integers(4))
    if move == 1:
        number = number % 12 + 1
    elif move == 2:
        number = (number - 2) % 12 + 1
    elif move == 3:
        letter = "B" if letter == "A" else "A"
    return camelot_to_index(f"{number}{letter}")


def generate_pair(
    seed: int | np.random.Generator,
    track_duration: float = 30.0,
    style_a: str | None = None,
    style_b: str | None = None,
    **kwargs,
) -> TransitionPair:
    """A synthetic pair from a seed: two synth tracks (B rendered at A's tempo, in a compatible key
    and style), windows, context, a recipe's curves and its label. kwargs go to `pair_from_tracks`
    (blend_bars, lead_bars, tail_bars, n_frames, frame_rate, weights, label).
    """
    from data.synth import synthesize_track  # keeps `import data.transitions` light

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    seed_a, seed_b = (int(s) for s in rng.integers(2**31, size=2))
    track_a = synthesize_track(seed_a, style=style_a, duration=track_duration)
    truth_a = track_a.truth
    style_b = style_b or _compatible_style(rng, truth_a["bpm"], truth_a["style"])
    key_b = _compatible_key(rng, truth_a["key_index"])
    track_b = synthesize_track(seed_b, style=style_b, duration=track_duration, bpm=truth_a["bpm"], key_index=key_b)
    pair = pair_from_tracks(track_a.stems, truth_a, track_b.stems, track_b.truth, rng, **kwargs)
    pair.info.update({
        "seed_a": seed_a, "seed_b": seed_b, "style_a": truth_a["style"], "style_b": track_b.truth["style"],
        "key_a": truth_a["key"], "key_b": track_b.truth["key"], "track_duration": track_duration,
    })
    logger.debug("pair %s: %s -> %s, %s", pair.label, truth_a["style"], track_b.truth["style"], pair.info)
    return pair


# ------------------------------------------------------------------------------------------------
# Random contexts (property tests, curve-only experiments)
# ------------------------------------------------------------------------------------------------

VOCAL_MODES = ("none", "unknown", "a_only", "b_only", "overlap", "random")
GRID_MODES = ("downbeats", "beats", "none")


def _random_phrases(rng: np.random.Generator, downbeats: np.ndarray, duration: float) -> list[tuple[float, float]]:
    """Vocal phrases of 1-4 bars starting on downbeats, with gaps."""
    spans, i = [], int(rng.integers(0, 3))
    bar = float(np.median(np.diff(downbeats))) if len(downbeats) > 1 else 2.0
    while i < len(downbeats):
        length = int(rng.integers(1, 5))
        spans.append((float(downbeats[i]), min(duration, float(downbeats[i]) + length * bar - 0.1)))
        i += length + int(rng.integers(1, 4))
    return spans


def random_context(
    rng: np.random.Generator,
    n_frames: int | None = None,
    vocal_mode: str | None = None,
    grid_mode: str | None = None,
    blend_bars: int | None = None,
) -> TransitionContext:
    """A random but plausible context: 85-175 BPM, 1-2 bars lead, a 1-16 bar blend starting and
    ending on downbeats, 1-2 bars tail, 15-40 frames/s. vocal_mode: one of VOCAL_MODES
    ("overlap": both sing through the middle of the blend); grid_mode: one of GRID_MODES
    (default: downbeats 80 %, beats only 10 %, none 10 %). None draws.
    """
    vocal_mode = vocal_mode or VOCAL_MODES[int(rng.integers(len(VOCAL_MODES)))]
    grid_mode = grid_mode or GRID_MODES[int(rng.choice(3, p=[0.8, 0.1, 0.1]))]
    if vocal_mode not in VOCAL_MODES or grid_mode not in GRID_MODES:
        raise ValueError(f"vocal_mode in {VOCAL_MODES}, grid_mode in {GRID_MODES}; got {vocal_mode}, {grid_mode}")
    bpm = float(rng.uniform(85.0, 175.0))
    beat = 60.0 / bpm
    bar = 4 * beat
    phase = float(rng.uniform(0.0, bar))
    blend = int(blend_bars or rng.choice([1, 2, 4, 8, 16]))
    start = phase + int(rng.integers(1, 3)) * bar
    end = start + blend * bar
    duration = end + int(rng.integers(1, 3)) * bar + float(rng.uniform(0.0, beat))
    beats = phase - bar + beat * np.arange(int((duration - phase) / beat) + 5)
    beats = beats[(beats >= 0) & (beats <= duration)]
    downbeats = phase - bar + bar * np.arange(int((duration - phase) / bar) + 3)
    downbeats = downbeats[(downbeats >= -1e-9) & (downbeats <= duration)]
    frames = n_frames or int(round(duration * rng.uniform(15.0, 40.0))) + 1
    middle = (start + 0.3 * blend * bar, end - 0.3 * blend * bar)
    vocals = {
        "none": ([], []),
        "unknown": (None, None) if rng.random() < 0.5 else ((None, []) if rng.random() < 0.5 else ([], None)),
        "a_only": ([(0.0, float(rng.uniform(*middle)))], []),
        "b_only": ([], [(float(rng.uniform(*middle)), duration)]),
        "overlap": ([(0.0, middle[1])], [(middle[0], duration)]),
        "random": (_random_phrases(rng, downbeats, duration), _random_phrases(rng, downbeats, duration)),
    }[vocal_mode]
    if grid_mode != "downbeats":
        downbeats = np.zeros(0)
    if grid_mode == "none":
        beats, bpm = np.zeros(0), None
    return TransitionContext(frames, duration, bpm, beats, downbeats, start, end, *vocals)
