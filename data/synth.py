"""Procedural multi-stem music with exact ground truth: tempo, beats, downbeats, key, sections, vocals.

Every track is rendered stem by stem in the order of `effects.params.STEMS` (drums, bass, vocals,
other) from one seed, so the analysis detectors can be trained on, and scored against, labels that
are exact by construction. The music aims at plausible electronic/pop production rather than test
signals: synthesised kick/snare/clap/hat timbres instead of clicks, swing and timing jitter, bass
lines and chords from the key, a formant-shaped singing (or rapping) voice, sidechain pumping, and
an arrangement of 8-bar phrases with an energy arc.

    seed -> style, tempo, key, swing        (always drawn in the same order; overrides apply after)
         -> arrangement: phrases -> sections -> the parts playing in each bar, the chord of each bar
         -> drums / bass / vocals / other: one-shots rendered once, copies added at their onsets
         -> sidechain ducking, stem levels, one master gain (mix peak below 0 dBFS)

Speed: every drum hit, note, chord and vocal phrase is rendered once (cached by content) and its
copies are added at the humanised onsets, so there are no per-sample Python loops; a 3-minute track
renders in about 2 s on 2 CPU cores (see `python -m data.synth --help`).

Truth conventions: beat times are the intended grid (before humanisation jitter); the first beat
is a downbeat; sections cover [0, duration] in order and start on downbeats (the first at 0.0);
vocal activity intervals are exact (the vocal stem is digital silence outside them).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from data.analysis import SECTION_LABELS
from data.keys import PITCH_NAMES, camelot, key_name
from effects.params import SAMPLE_RATE, STEMS

log = logging.getLogger(__name__)

TRUTH_VERSION = 1


# --------------------------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleSpec:
    """How one genre is played.

    bpm_range: (low, high) quarter-note tempo in BPM, inclusive; the truth `bpm` lies inside it.
    drums / bass / chords: pattern families (keys of _DRUM_PATTERNS, _BASS_PATTERNS, _CHORD_FAMILIES).
    bars_per_chord: choices for the harmonic rhythm (bars per chord).
    swing: (low, high) delay of every second 16th note, as a fraction of a 16th note.
    humanise_ms: standard deviation of the onset jitter in milliseconds.
    minor_prob: probability of a minor key when the key is drawn.
    form: "edm" (intro/build/drop/breakdown/outro) or "song" (intro/verse/hook/bridge/outro).
    sidechain: depth (0..1) of the kick-triggered ducking of bass and other.
    vocal_prob: probability that a track has vocals at all.
    seventh_prob: probability that the chords carry their diatonic seventh.
    """

    name: str
    bpm_range: tuple[float, float]
    drums: str
    bass: str
    chords: str
    bars_per_chord: tuple[int, ...] = (1, 2)
    swing: tuple[float, float] = (0.0, 0.0)
    humanise_ms: float = 2.0
    minor_prob: float = 0.6
    form: str = "edm"
    sidechain: float = 0.0
    vocal_prob: float = 0.8
    seventh_prob: float = 0.2


STYLES: dict[str, StyleSpec] = {
    "house": StyleSpec(
        "house", (120, 128), "four_floor", "offbeat", "stab", (1, 2), (0.0, 0.12), 2.0, 0.5,
        sidechain=0.35, seventh_prob=0.6,
    ),
    "techno": StyleSpec(
        "techno", (125, 140), "techno", "rolling", "techno_stab", (2, 4), (0.0, 0.05), 1.0, 0.85,
        sidechain=0.3, vocal_prob=0.5,
    ),
    "trance": StyleSpec(
        "trance", (132, 140), "trance", "trance_roll", "supersaw_arp", (1, 2), (0.0, 0.0), 1.0, 0.7,
        sidechain=0.5, vocal_prob=0.7,
    ),
    "disco": StyleSpec(
        "disco", (110, 122), "disco", "octave", "disco_keys", (1, 2), (0.04, 0.15), 4.0, 0.4,
        sidechain=0.15, seventh_prob=0.6,
    ),
    "dnb": StyleSpec("dnb", (165, 178), "dnb", "reese", "pad", (2,), (0.0, 0.04), 2.5, 0.8, sidechain=0.2),
    "hiphop": StyleSpec(
        "hiphop", (80, 100), "boombap", "808", "keys", (1, 2), (0.12, 0.3), 7.0, 0.7,
        form="song", vocal_prob=0.95, seventh_prob=0.5,
    ),
    "dubstep": StyleSpec(
        "dubstep", (138, 142), "halftime", "wobble", "dark", (2,), (0.0, 0.05), 2.0, 0.9,
        sidechain=0.25, vocal_prob=0.6,
    ),
}

# Project section labels (data.analysis.SECTION_LABELS) for each style-specific section name.
_SECTION_LABEL = {
    "intro": "intro", "build": "verse", "drop": "drop", "breakdown": "bridge", "outro": "outro",
    "verse": "verse", "hook": "chorus", "bridge": "bridge",
}
_SECTION_ENERGY = {
    "intro": 0.35, "build": 0.6, "drop": 1.0, "breakdown": 0.3, "outro": 0.35,
    "verse": 0.7, "hook": 0.9, "bridge": 0.4,
}
assert set(_SECTION_LABEL.values()) <= set(SECTION_LABELS)

# --------------------------------------------------------------------------------------------
# Harmony
# --------------------------------------------------------------------------------------------

_SCALES = {False: (0, 2, 4, 5, 7, 9, 11), True: (0, 2, 3, 5, 7, 8, 10)}  # major, natural minor
# Diatonic progressions as scale degrees (0 = I/i); all start on the tonic.
_PROGRESSIONS = {
    False: ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (0, 3, 5, 4), (0, 2, 3, 4), (0, 3, 0, 4)),
    True: ((0, 5, 2, 6), (0, 6, 5, 6), (0, 3, 4, 0), (0, 5, 3, 4), (0, 0, 5, 6), (0, 3, 0, 6), (0, 5, 6, 0)),
}
# Contrasting progressions for breakdowns, bridges and hooks; they still resolve to the tonic.
_ALT_PROGRESSIONS = {
    False: ((3, 4, 0, 0), (5, 3, 4, 0), (3, 0, 4, 0)),
    True: ((5, 6, 0, 0), (3, 5, 6, 0), (5, 3, 6, 0)),
}
_TECHNO_PROGRESSIONS = ((0, 0, 0, 0), (0, 0, 0, 5), (0, 0, 3, 0))
_QUALITIES = {
    (4, 7): "maj", (3, 7): "min", (3, 6): "dim",
    (4, 7, 11): "maj7", (3, 7, 10): "min7", (4, 7, 10): "7", (3, 6, 10): "hdim7",
}


def _chord(minor: bool, degree: int, seventh: bool) -> tuple[int, ...]:
    """Diatonic chord on a scale degree: semitones above the tonic, root first (stacked thirds)."""
    scale = _SCALES[minor]
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    return tuple(scale[(degree + s) % 7] + 12 * ((degree + s) // 7) for s in steps)


def _chord_label(tonic: int, chord: tuple[int, ...]) -> str:
    """mir_eval chord label such as 'A:min' or 'F:maj7'."""
    quality = _QUALITIES[tuple(c - chord[0] for c in chord[1:])]
    return f"{PITCH_NAMES[(tonic + chord[0]) % 12]}:{quality}"


def _hz(midi) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _in_octave(pc: int, low: int) -> int:
    """The MIDI note of pitch class `pc` in [low, low + 12)."""
    return low + (pc - low) % 12


# --------------------------------------------------------------------------------------------
# Grid and arrangement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The tempo grid of one track: 4/4, a beat every 60/bpm s, the first downbeat at `offset`."""

    sr: int
    n: int  # samples in the track
    bpm: float
    offset: float  # seconds of silence before the first downbeat
    swing: float  # delay of odd 16th notes, fraction of a 16th
    jitter: float  # onset jitter standard deviation, seconds

    @property
    def beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def step(self) -> float:  # a 16th note, seconds
        return self.beat / 4.0

    @property
    def bar(self) -> float:
        return 4.0 * self.beat

    @property
    def duration(self) -> float:
        return self.n / self.sr

    @property
    def n_bars(self) -> int:
        """Bars that start inside the track (the last one may be cut by the end)."""
        return max(1, int(np.ceil((self.duration - self.offset) / self.bar - 1e-9)))

    def bar_time(self, bar: int) -> float:
        return self.offset + bar * self.bar

    def step_times(self, bar: int, steps) -> np.ndarray:
        """Grid times (s) of 16th-note `steps` (0..15, may be fractional) in `bar`, swing applied."""
        steps = np.asarray(steps, dtype=np.float64)
        swung = (np.floor(steps) % 2 == 1) & (steps == np.floor(steps))
        return self.bar_time(bar) + (steps + self.swing * swung) * self.step

    def humanise(self, times: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """Add the style's onset jitter (normal, clipped to 2.5 sigma) to `times` (s)."""
        sigma = self.jitter * scale
        return times + np.clip(rng.normal(0.0, 1.0, np.shape(times)), -2.5, 2.5) * sigma


@dataclass
class _Section:
    style_label: str  # e.g. "build", "breakdown", "hook"
    start_bar: int
    n_bars: int
    vocals: bool = False


@dataclass
class _Arrangement:
    sections: list[_Section]
    parts: list[set[str]]  # per bar: which parts play ("kick", "bass", "pad", ...)
    section_of: np.ndarray  # [n_bars] section index of each bar
    chords: list[tuple[int, ...]]  # per bar: chord as semitones above the tonic, root first
    minor: bool
    tonic: int  # pitch class 0..11


def _plan_edm(n: int, rng: np.random.Generator) -> list[list]:
    """`n` phrases -> [[style_label, n_phrases], ...] with an intro/build/drop/breakdown/outro arc."""
    if n <= 3:  # too short for an arc: the essentials
        return [["intro", 1], ["drop", 1], ["outro", 1]][:n]
    plan = [["intro", 1], ["build", 1], ["drop", 1], ["outro", 1]]
    cap = {"intro": int(rng.choice([1, 2], p=[0.3, 0.7])), "outro": int(rng.choice([1, 2], p=[0.4, 0.6])),
           "breakdown": int(rng.choice([1, 2]))}
    while sum(s[1] for s in plan) < n:
        remaining = n - sum(s[1] for s in plan)
        last_drop = max(i for i, s in enumerate(plan) if s[0] == "drop")
        breakdowns = [s for s in plan if s[0] == "breakdown"]
        if plan[last_drop][1] < 2:
            plan[last_drop][1] += 1
        elif plan[0][1] < cap["intro"]:
            plan[0][1] += 1
        elif plan[-1][1] < cap["outro"]:
            plan[-1][1] += 1
        elif remaining >= 3:
            plan[-1:-1] = [["breakdown", 1], ["build", 1], ["drop", 1]]
        elif breakdowns and breakdowns[-1][1] < cap["breakdown"]:
            breakdowns[-1][1] += 1
        else:
            plan[last_drop][1] += 1
    return plan


def _plan_song(n: int, rng: np.random.Generator) -> list[list]:
    """`n` phrases -> [[style_label, n_phrases], ...] with intro/verse/hook/bridge/outro."""
    if n <= 3:
        return [["intro", 1], ["verse", 1], ["hook", 1]][:n]
    plan = [["intro", 1], ["verse", 1], ["hook", 1], ["outro", 1]]
    verse_len = int(rng.choice([1, 2], p=[0.3, 0.7]))
    while sum(s[1] for s in plan) < n:
        remaining = n - sum(s[1] for s in plan)
        last_verse = max(i for i, s in enumerate(plan) if s[0] == "verse")
        n_verses = sum(s[0] == "verse" for s in plan)
        has_bridge = any(s[0] == "bridge" for s in plan)
        if plan[last_verse][1] < verse_len:
            plan[last_verse][1] += 1
        elif remaining >= 2 and (n_verses < 2 or has_bridge):
            plan[-1:-1] = [["verse", 1], ["hook", 1]]
        elif remaining >= 2:
            plan[-1:-1] = [["bridge", 1], ["hook", 1]]
        elif plan[-1][1] < 2:
            plan[-1][1] += 1
        else:
            plan[last_verse][1] += 1
    return plan


def _edm_parts(label: str, n: int, rng: np.random.Generator) -> list[set[str]]:
    """Parts playing in each of the `n` bars of an EDM section (the energy arc lives here)."""
    drop_kick = rng.random() < 0.5  # the kick stops in the last bar of a build
    late_hats = rng.random() < 0.5  # hats come back in the second half of a breakdown
    intro_stab = rng.random() < 0.3
    drop_pad = rng.random() < 0.5  # a sustained layer under the drop's rhythmic chords
    fills = rng.random() < 0.6
    out = []
    for i in range(n):
        if label == "intro":
            p = {"kick", "hat"}
            if i >= n // 4:
                p.add("perc")
            if i >= n // 2:
                p |= {"snare", "ohat", "bass"}
            if intro_stab and i >= 3 * n // 4:
                p.add("stab")
        elif label == "build":
            p = {"kick", "snare", "hat", "stab", "arp"}
            p.add("bass" if i < n // 2 else "riser")
            if i >= n - 2:
                p = (p - {"snare"}) | {"roll"}
            if drop_kick and i == n - 1:
                p.discard("kick")
        elif label == "drop":
            p = {"kick", "snare", "hat", "ohat", "perc", "ride", "bass", "stab", "arp"}
            if drop_pad:
                p.add("pad")
            if i == 0:
                p.add("crash")
            if fills and i % 8 == 7:
                p.add("fill")
        elif label == "breakdown":
            p = {"pad", "arp"}
            if i == 0:
                p.add("crash")
            if late_hats and i >= n // 2:
                p.add("hat")
        else:  # outro: the intro in reverse
            p = {"kick", "hat", "perc"}
            if i < n // 2:
                p |= {"snare", "ohat", "bass"}
            if i == 0:
                p.add("crash")
        out.append(p)
    return out


def _song_parts(label: str, n: int, rng: np.random.Generator) -> list[set[str]]:
    """Parts playing in each of the `n` bars of a song-form (hip-hop) section."""
    intro_hats = rng.random() < 0.5
    fills = rng.random() < 0.5
    out = []
    for i in range(n):
        if label == "intro":
            p = {"stab"} | ({"hat"} if intro_hats else set())
            if i >= n // 2:
                p |= {"kick", "snare", "hat"}
        elif label == "verse":
            p = {"kick", "snare", "hat", "bass", "stab"}
            if fills and i % 8 == 7:
                p.add("fill")
        elif label == "hook":
            p = {"kick", "snare", "hat", "ohat", "perc", "bass", "stab", "pad"}
            if i == 0:
                p.add("crash")
        elif label == "bridge":
            p = {"stab", "pad", "hat"}
        else:  # outro
            p = {"stab"}
            if i < n // 2:
                p |= {"kick", "snare", "hat", "bass"}
        out.append(p)
    return out


_VOCAL_SECTION_PROB = {"build": 0.5, "drop": 0.5, "breakdown": 0.9, "verse": 1.0, "hook": 1.0, "bridge": 0.6}


def _arrange(grid: _Grid, spec: StyleSpec, key_index: int, rng: np.random.Generator) -> _Arrangement:
    """Phrases -> sections -> per-bar parts and chords."""
    n_bars = grid.n_bars
    full_bars = max(1, int((grid.duration - grid.offset) / grid.bar + 1e-9))
    phrase = 8 if full_bars >= 40 else 4
    if grid.bpm >= 150 and full_bars >= 128:
        phrase = 16  # at drum & bass tempo sections run in 16-bar (two-phrase) blocks
    n_phrases = max(1, full_bars // phrase)
    plan = (_plan_song if spec.form == "song" else _plan_edm)(n_phrases, rng)

    sections, bar = [], 0
    for label, n_phr in plan:
        sections.append(_Section(label, bar, n_phr * phrase))
        bar += n_phr * phrase
    sections[-1].n_bars = n_bars - sections[-1].start_bar  # the remainder joins the last section

    has_vocals = rng.random() < spec.vocal_prob
    for s in sections:
        s.vocals = has_vocals and rng.random() < _VOCAL_SECTION_PROB.get(s.style_label, 0.0)
    eligible = [s for s in sections if s.style_label in _VOCAL_SECTION_PROB]
    if has_vocals and eligible and not any(s.vocals for s in sections):
        eligible[-1].vocals = True

    parts_fn = _song_parts if spec.form == "song" else _edm_parts
    parts: list[set[str]] = []
    section_of = np.zeros(n_bars, dtype=np.int64)
    for i, s in enumerate(sections):
        parts += parts_fn(s.style_label, s.n_bars, rng)
        section_of[s.start_bar : s.start_bar + s.n_bars] = i

    chords = _chord_plan(sections, spec, key_index >= 12, rng)
    return _Arrangement(sections, parts, section_of, chords, key_index >= 12, key_index % 12)


def _chord_plan(sections: list[_Section], spec: StyleSpec, minor: bool, rng) -> list[tuple[int, ...]]:
    """One diatonic chord per bar; every section restarts its progression, the track ends on the tonic."""
    main = _PROGRESSIONS[minor][rng.integers(len(_PROGRESSIONS[minor]))]
    if spec.name == "techno" and rng.random() < 0.6:
        main = _TECHNO_PROGRESSIONS[rng.integers(len(_TECHNO_PROGRESSIONS))]
    alt = _ALT_PROGRESSIONS[minor][rng.integers(len(_ALT_PROGRESSIONS[minor]))]
    use_alt = {label: rng.random() < 0.5 for label in ("breakdown", "bridge", "hook")}
    per_chord = int(rng.choice(spec.bars_per_chord))
    seventh = rng.random() < spec.seventh_prob
    chords = []
    for s in sections:
        prog = alt if use_alt.get(s.style_label, False) else main
        if spec.form == "edm" and s.style_label in ("intro", "outro"):
            prog = (0,)  # DJ-friendly intros and outros sit on the tonic (bass pedal)
        for i in range(s.n_bars):
            degree = prog[(i // per_chord) % len(prog)]
            if s is sections[-1] and i >= s.n_bars - per_chord:
                degree = 0
            chords.append(_chord(minor, degree, seventh and degree in (0, 3, 5)))
    return chords


# --------------------------------------------------------------------------------------------
# DSP building blocks (all float32, [samples] mono or [2, samples] stereo)
# --------------------------------------------------------------------------------------------

_TABLE_BITS = 14
_TABLE_SIZE = 1 << _TABLE_BITS
_HARMONICS = {
    "saw": lambda k: 1.0 / k,
    "square": lambda k: np.where(k % 2 == 1, 1.0 / k, 0.0),
    "organ": lambda k: np.select([k == 1, k == 2, k == 3, k == 4, k == 6, k == 8],
                                 [1.0, 0.7, 0.45, 0.3, 0.2, 0.12], 0.0),
    "ep": lambda k: np.select([k == 1, k == 2, k == 3], [1.0, 0.2, 0.05], 0.0),
    "glottal": lambda k: k ** -1.2,  # glottal source (-12 dB/oct) plus lip radiation (+6 dB/oct), roughly
}


@lru_cache(maxsize=512)
def _table(kind: str, n_harm: int) -> np.ndarray:
    """One cycle [_TABLE_SIZE] of a band-limited waveform with `n_harm` harmonics, peak 1."""
    n_harm = int(np.clip(n_harm, 1, _TABLE_SIZE // 2 - 1))
    k = np.arange(1, n_harm + 1, dtype=np.float64)
    spec = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    spec[1 : n_harm + 1] = -0.5j * _TABLE_SIZE * _HARMONICS[kind](k)
    table = np.fft.irfft(spec, n=_TABLE_SIZE)
    return (table / np.abs(table).max()).astype(np.float32)


def _osc(kind: str, freq, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """Band-limited wavetable oscillator -> [n] float32.

    freq: Hz, a scalar or [n] per sample. The phase is a uint32 fixed-point accumulator (it wraps
    for free) read with nearest lookup in a 16k-point table: about 20 ns per sample.
    """
    f = np.asarray(freq, dtype=np.float64)
    table = _table(kind, int(0.45 * sr / max(float(f.max()), 1.0)))
    scale = 2.0**32 / sr
    if f.ndim == 0:
        acc = np.arange(n, dtype=np.uint32) * np.uint32(int(round(float(f) * scale)) % 2**32)
    else:
        acc = np.cumsum(np.round(f * scale).astype(np.int64).astype(np.uint32), dtype=np.uint32)
    acc += np.uint32(int((phase % 1.0) * 2**32))
    return table[acc >> np.uint32(32 - _TABLE_BITS)]


def _filt(x: np.ndarray, kind: str, freq, sr: int, order: int = 2) -> np.ndarray:
    """Butterworth filter along the last axis; cutoffs are clipped so any sample rate works."""
    f = tuple(float(v) for v in np.clip(np.atleast_1d(np.asarray(freq, dtype=np.float64)), 20.0, 0.45 * sr))
    return signal.sosfilt(_sos(kind, f, sr, order), x, axis=-1).astype(np.float32)


@lru_cache(maxsize=256)
def _sos(kind: str, freq: tuple[float, ...], sr: int, order: int) -> np.ndarray:
    """Butterworth design, cached: scipy's design costs milliseconds, the filtering often less."""
    return signal.butter(order, freq if len(freq) > 1 else freq[0], btype=kind, fs=sr, output="sos")


def _noise(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / np.float32(sr)


def _env(sr: int, attack: float, decay: float, sustain: float, release: float, gate: float) -> np.ndarray:
    """ADSR amplitude envelope [n], n = (gate + release) * sr; exponential decay, quadratic release."""
    n = max(1, int((gate + release) * sr))
    t = _time(n, sr)
    rise = np.minimum(t / max(attack, 1e-4), 1.0)
    body = sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / decay)
    fall = np.clip(1.0 - (t - gate) / max(release, 1e-4), 0.0, 1.0) ** 2
    return (rise * body * fall).astype(np.float32)


def _fade_tail(x: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    """Linear fade over the last `seconds` so cut-off decays do not click (in place)."""
    n = min(x.shape[-1], max(1, int(seconds * sr)))
    x[..., -n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return x


def _pan(pan: float) -> np.ndarray:
    """Constant-power pan gains [2, 1]; -1 left, 0 centre (gain 1 on both channels), +1 right."""
    theta = (pan + 1.0) * np.pi / 4.0
    return (np.sqrt(2.0) * np.array([[np.cos(theta)], [np.sin(theta)]])).astype(np.float32)


def _place(out: np.ndarray, sample: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add `sample` ([L] or [2, L]) times `gain` into `out` [2, N] from sample index `start` (clipped)."""
    s0, s1 = max(start, 0), min(start + sample.shape[-1], out.shape[-1])
    if s1 > s0:
        out[:, s0:s1] += np.float32(gain) * sample[..., s0 - start : s1 - start]


def _one_pole(x: np.ndarray, tau: float, rate: float) -> np.ndarray:
    """First-order smoothing (time constant `tau` s at `rate` Hz) along axis 0, starting at x[0]."""
    a = float(np.exp(-1.0 / max(tau * rate, 1e-6)))
    zi = a * np.asarray(x[:1], dtype=np.float64)
    return signal.lfilter([1.0 - a], [1.0, -a], x, axis=0, zi=zi)[0]


def _reverb_ir(rng: np.random.Generator, sr: int, rt60: float, damp_hz: float = 6000.0) -> np.ndarray:
    """Stereo reverb impulse response [2, L]: decorrelated, damped noise with an RT60 decay."""
    n = int(rt60 * sr)
    t = _time(n, sr)
    ir = _filt(_noise(rng, (2, n)), "lowpass", damp_hz, sr) * np.exp(-6.9 * t / rt60)
    ir[:, : int(0.012 * sr)] = 0.0  # pre-delay
    return (ir / np.sqrt((ir**2).sum(axis=1, keepdims=True))).astype(np.float32)


def _reverb(x: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """Dry [2, L] plus `wet` times its convolution with `ir` [2, Lir] -> [2, L + Lir - 1]."""
    y = signal.fftconvolve(x, ir, axes=1).astype(np.float32) * np.float32(wet)
    y[:, : x.shape[1]] += x
    return y


def _pingpong(x: np.ndarray, delay: int, feedback: float, repeats: int = 4) -> np.ndarray:
    """Ping-pong echo: the mono sum of `x` [2, L] repeats alternately left/right every `delay` samples."""
    mono = x.mean(axis=0)
    y = np.zeros((2, x.shape[1] + repeats * delay), dtype=np.float32)
    y[:, : x.shape[1]] += x
    for r in range(1, repeats + 1):
        y[r % 2, r * delay : r * delay + x.shape[1]] += np.float32(feedback**r) * mono
    return y


def _unison(kind: str, midis, n: int, sr: int, rng, voices: int, detune: float, spread: float) -> np.ndarray:
    """Detuned unison of oscillators for every note in `midis` -> [2, n], width from detune + pan."""
    out = np.zeros((2, n), dtype=np.float32)
    for f in _hz(midis):
        for v in range(voices):
            pos = 2.0 * v / (voices - 1) - 1.0 if voices > 1 else 0.0
            x = _osc(kind, f * 2.0 ** (detune * pos / 1200.0), n, sr, rng.random())
            out += _pan(spread * pos) * x
    return out / np.float32(np.sqrt(len(midis) * voices))


def _brightness_decay(x: np.ndarray, sr: int, lo: float, hi: float, tau: float) -> np.ndarray:
    """Filter envelope: a low-passed copy whose cutoff falls from `hi` to `lo` Hz with time constant tau.

    Approximated by crossfading two static low-passes, which costs two IIR passes instead of a
    per-sample filter update.
    """
    dark, bright = _filt(x, "lowpass", lo, sr), _filt(x, "lowpass", hi, sr)
    w = np.exp(-_time(x.shape[-1], sr) / tau)
    return dark + (bright - dark) * w


# --------------------------------------------------------------------------------------------
# Drums
# --------------------------------------------------------------------------------------------

# 16-step velocity patterns: X 1.0, x 0.75, o 0.5, g 0.25 (ghost), . rest. Several variants each.
_DRUM_PATTERNS = {
    "four_floor": {
        "kick": ["X...X...X...X..."],
        "snare": ["....X.......X...", "....X.......X..o"],
        "hat": ["x.x.x.x.x.x.x.x.", "oxo.oxo.oxo.oxo.", "gogxgogxgogxgogx"],
        "ohat": ["..X...X...X...X."],
        "perc": ["...x..x....x..x.", "g.gog.gog.gog.go", "..o...o.o.o...o."],
        "ride": [],
    },
    "techno": {
        "kick": ["X...X...X...X..."],
        "snare": ["....x.......x...", "....x.......x..g"],
        "hat": ["xgogxgogxgogxgog", "gxgxgxgxgxgxgxgx"],
        "ohat": ["..x...x...x...x."],
        "perc": ["...x..x....x..x.", "..x..x..x...x..x"],
        "ride": ["x.o.x.o.x.o.x.o.", "..x...x...x...x."],
    },
    "trance": {
        "kick": ["X...X...X...X..."],
        "snare": ["....X.......X..."],
        "hat": ["ggxgggxgggxgggxg", "g.x.g.x.g.x.g.x."],
        "ohat": ["..X...X...X...X."],
        "perc": ["g.g.g.g.g.g.g.g.", "...g.......g...."],
        "ride": [],
    },
    "disco": {
        "kick": ["X...X...X...X..."],
        "snare": ["....X.......X...", "....X.......X.o."],
        "hat": ["xgxgxgxgxgxgxgxg", "x.x.x.x.x.x.x.x."],
        "ohat": ["..x...x...x...x."],
        "perc": ["gogogogogogogogo", "....x.......x..."],
        "ride": [],
    },
    "dnb": {
        "kick": ["X.........X.....", "X.........X..x..", "X.....x...X....."],
        "snare": ["....X.......X...", "....X..g.g..X..g", "....X.......X.g."],
        "hat": ["x.x.x.x.x.x.x.x.", "xgxgxgxgxgxgxgxg", "x.xgx.xgx.xgx.xg"],
        "ohat": ["..............o.", "......o.......o."],
        "perc": ["gogogogogogogogo"],
        "ride": ["x.o.x.o.x.o.x.o."],
    },
    "boombap": {
        "kick": ["X......X..X.....", "X.........X..x..", "X..x....X.x....."],
        "snare": ["....X.......X...", "....X.......X..g", "....X..g....X..."],
        "hat": ["x.x.x.x.x.x.x.x.", "x.xox.xox.xox.xo", "xgxgxgxgxgxgxgxg"],
        "ohat": ["..............x.", "......x........."],
        "perc": ["...g.......g....", ".......g.......g"],
        "ride": [],
    },
    "halftime": {
        "kick": ["X.........x.....", "X.....x.........", "X.........X..x.."],
        "snare": ["........X.......", "........X.....g."],
        "hat": ["x.x.x.x.x.x.x.x.", "x..x..x.x..x..x."],
        "ohat": ["..............x."],
        "perc": ["...x.......x....", "......x.......x."],
        "ride": [],
    },
}
_VELOCITY = {"X": 1.0, "x": 0.75, "o": 0.5, "g": 0.25, ".": 0.0}

# Kick parameter ranges: start/end pitch (Hz), pitch-drop time constant (s), decay (s), drive.
_KITS = {
    "four_floor": dict(kick=((140, 180), (47, 56), (0.025, 0.045), (0.12, 0.2), (1.5, 3.0)),
                       snare="clap", perc=("conga", "shaker")),
    "techno": dict(kick=((150, 200), (45, 54), (0.02, 0.04), (0.15, 0.28), (2.5, 5.0)),
                   snare="clap", perc=("rim",)),
    "trance": dict(kick=((150, 190), (48, 56), (0.02, 0.035), (0.12, 0.2), (2.0, 3.5)),
                   snare="clap", perc=("shaker",)),
    "disco": dict(kick=((120, 160), (55, 66), (0.02, 0.035), (0.1, 0.16), (1.0, 1.5)),
                  snare="snare", perc=("tambourine",)),
    "dnb": dict(kick=((180, 240), (50, 60), (0.012, 0.025), (0.1, 0.16), (1.5, 3.0)),
                snare="snare", perc=("shaker",)),
    "boombap": dict(kick=((110, 150), (45, 55), (0.03, 0.05), (0.2, 0.35), (1.5, 2.5)),
                    snare="snare", perc=("rim", "shaker")),
    "halftime": dict(kick=((140, 190), (42, 50), (0.03, 0.05), (0.2, 0.32), (2.5, 4.0)),
                     snare="snare", perc=("rim",)),
}
_DRUM_GAIN = {"kick": 1.0, "snare": 0.55, "hat": 0.2, "ohat": 0.16, "perc": 0.2, "ride": 0.1, "crash": 0.22}
_METAL_HZ = np.array([205.3, 304.4, 369.6, 522.7, 540.0, 800.0])  # the TR-808 cymbal oscillators


def _kick(rng, sr: int, ranges, tuned_hz: float | None = None) -> np.ndarray:
    """Sine with a fast pitch drop, a noise click and soft saturation -> [L].

    tuned_hz: the final pitch (producers often tune the kick to the key); None = the style's range.
    """
    f0, f1, tp, decay, drive = (rng.uniform(*r) for r in ranges)
    f1 = f1 if tuned_hz is None else tuned_hz
    n = int((4.0 * decay + 0.02) * sr)
    t = np.arange(n) / sr
    f = f1 + (f0 - f1) * np.exp(-t / tp)
    body = np.sin(2.0 * np.pi * np.cumsum(f) / sr) * np.exp(-t / decay)
    click = _filt(_noise(rng, n), "highpass", 1500.0, sr) * np.exp(-t / 0.003) * rng.uniform(0.1, 0.3)
    x = np.tanh(drive * (body + click)) / np.tanh(drive)
    return _fade_tail(x.astype(np.float32), sr, 0.03)


def _snare(rng, sr: int) -> np.ndarray:
    """Two damped drum-head modes plus band-passed snare-wire noise -> [L]."""
    n = int(0.35 * sr)
    t = _time(n, sr)
    f = rng.uniform(170.0, 215.0)
    tone = np.sin(2 * np.pi * f * t) * np.exp(-t / 0.05)
    tone += 0.5 * np.sin(2 * np.pi * 1.72 * f * t) * np.exp(-t / 0.03)  # the second (inharmonic) head mode
    wires = _filt(_noise(rng, n), "bandpass", (1800.0, 9000.0), sr) * np.exp(-t / rng.uniform(0.07, 0.14))
    x = rng.uniform(0.4, 0.8) * tone + 1.6 * wires
    return _fade_tail((x / np.abs(x).max()).astype(np.float32), sr)


def _clap(rng, sr: int) -> np.ndarray:
    """Three to four noise bursts ~10 ms apart and a short tail, band-passed, slightly wide -> [2, L]."""
    n = int(0.4 * sr)
    t = _time(n, sr)
    offsets = np.cumsum([0.0] + list(rng.uniform(0.007, 0.012, int(rng.integers(2, 4)))))
    env = sum(np.where(t >= d, np.exp(-(t - d) / 0.004), 0.0) for d in offsets)
    env += np.where(t >= offsets[-1], 0.6 * np.exp(-(t - offsets[-1]) / rng.uniform(0.08, 0.15)), 0.0)
    mid, side = _noise(rng, n), _noise(rng, n)
    x = _filt(np.stack([mid + 0.35 * side, mid - 0.35 * side]), "bandpass", (900.0, 5000.0), sr) * env
    return _fade_tail((x / np.abs(x).max()).astype(np.float32), sr)


def _metal(rng, t: np.ndarray, base: float) -> np.ndarray:
    """Six detuned square waves (the 808 cymbal source) -> [len(t)]."""
    freqs = _METAL_HZ * base * rng.uniform(0.95, 1.08)
    phases = rng.uniform(0, 2 * np.pi, 6)
    squares = np.sign(np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None]))
    return squares.sum(axis=0).astype(np.float32)


def _cymbal(rng, sr: int, decay: float, cutoff: float, base: float = 1.0, channels: int = 1) -> np.ndarray:
    """Hi-hat / crash / ride: metallic squares plus noise, high-passed, exponential decay."""
    n = int((4.0 * decay + 0.01) * sr)
    t = _time(n, sr)
    noise = _noise(rng, (channels, n))
    src = 0.5 * _metal(rng, t, base) / 6.0 + (noise[0] if channels == 1 else noise)
    x = _filt(src, "highpass", cutoff, sr, order=4) * np.exp(-t / decay) * np.minimum(t / 0.0005, 1.0)
    return _fade_tail((x / np.abs(x).max()).astype(np.float32), sr)


def _perc(rng, sr: int, kind: str) -> np.ndarray:
    """Conga, shaker, rim shot or tambourine one-shot -> [L]."""
    n = int({"conga": 0.4, "shaker": 0.15, "rim": 0.1}.get(kind, 0.25) * sr)  # ~ -40 dB at the end
    t = _time(n, sr)
    if kind == "conga":
        f = rng.uniform(190.0, 380.0) * (1 + 0.15 * np.exp(-t / 0.01))
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.09)
    elif kind == "shaker":
        x = _filt(_noise(rng, n), "highpass", 5000.0, sr) * np.minimum(t / 0.012, 1) * np.exp(-t / 0.045)
    elif kind == "rim":
        f = rng.uniform(1500.0, 1900.0)
        x = np.sin(2 * np.pi * f * t) * np.exp(-t / 0.012)
        x += 0.6 * _filt(_noise(rng, n), "bandpass", (2500.0, 6000.0), sr) * np.exp(-t / 0.008)
    else:  # tambourine: jingles = metal through a high-pass with a few quick re-strikes
        jingles = sum(np.where(t >= d, np.exp(-(t - d) / 0.03), 0.0) for d in (0.0, 0.012, 0.025))
        x = _filt(_metal(rng, t, 3.0) + _noise(rng, n), "highpass", 6000.0, sr, order=4) * jingles
    return _fade_tail((x / np.abs(x).max()).astype(np.float32), sr)


def _make_kit(family: str, rng, sr: int, tonic: int) -> dict[str, list[np.ndarray]]:
    """Per-track drum kit: name -> stereo variants [2, L] (round robin against the machine-gun effect).

    The kick is tuned to the tonic (60 %), to the fifth (15 %) or left at a random pitch.
    """
    spec = _KITS[family]
    tuning = rng.choice(3, p=[0.6, 0.15, 0.25])
    kick_hz = None if tuning == 2 else float(_hz(_in_octave((tonic + 7 * tuning) % 12, 27)))  # 38..74 Hz
    room = _reverb_ir(rng, sr, rng.uniform(0.25, 0.5))
    hat_pan = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.35)
    perc_kind = spec["perc"][rng.integers(len(spec["perc"]))]

    def mono(x: np.ndarray, pan: float = 0.0) -> np.ndarray:
        return _pan(pan) * x

    snare_fn = _clap if spec["snare"] == "clap" else _snare
    snares = []
    for _ in range(2):
        s = snare_fn(rng, sr)
        s = s if s.ndim == 2 else mono(s)
        snares.append(_reverb(s, room, rng.uniform(0.1, 0.25)))
    hat_decay = rng.uniform(0.02, 0.045)
    return {
        "kick": [mono(_kick(rng, sr, spec["kick"], kick_hz))],
        "snare": snares,
        "hat": [mono(_cymbal(rng, sr, hat_decay, 7000.0), hat_pan) for _ in range(3)],
        "ohat": [mono(_cymbal(rng, sr, rng.uniform(0.08, 0.16), 6500.0), -0.5 * hat_pan) for _ in range(2)],
        "ride": [mono(_cymbal(rng, sr, 0.3, 3000.0, base=2.5), -hat_pan)],
        "perc": [mono(_perc(rng, sr, perc_kind), -1.5 * hat_pan) for _ in range(2)],
        "crash": [_cymbal(rng, sr, rng.uniform(0.6, 1.0), 3500.0, channels=2)],
    }


def _parse(pattern: str) -> np.ndarray:
    return np.array([_VELOCITY[c] for c in pattern], dtype=np.float64)


def _drum_bar(name: str, vel: np.ndarray, parts: set[str], bars_left: int, rng) -> np.ndarray:
    """Per-bar variations of one instrument's 16 velocities: ghost notes, fills, rolls."""
    vel = vel.copy()
    if name == "hat" and rng.random() < 0.2:
        empty = np.flatnonzero(vel == 0)
        if empty.size:
            vel[rng.choice(empty)] = 0.2
    if "fill" in parts:
        if name == "snare":
            fill = [0.6, 0.4, 0.8, 1.0] if rng.random() < 0.5 else [0.0, 0.5, 0.7, 0.9]
            vel[12:] = np.maximum(vel[12:], fill)
        elif name in ("hat", "ohat"):
            vel[12:] = 0.0
    if name == "snare" and "roll" in parts:
        # the snare roll of a build: 8ths then 16ths in the last bar, rising velocity
        last = bars_left <= 1
        every = 1 if last else 2
        vel = np.zeros(16)
        vel[::every] = (np.linspace(0.35, 1.0, 16) if last else np.linspace(0.2, 0.5, 16))[::every]
    return vel


def _render_drums(out: np.ndarray, grid: _Grid, arr: _Arrangement, spec: StyleSpec, rng) -> dict:
    """Drum stem into `out` [2, N]. Returns kick onsets per bar {bar: (steps, times_s)} for bass/sidechain."""
    sr = grid.sr
    kit = _make_kit(spec.drums, rng, sr, arr.tonic)
    patterns = {}
    for name, variants in _DRUM_PATTERNS[spec.drums].items():
        if variants:
            main, alt = rng.integers(len(variants), size=2)
            patterns[name] = (_parse(variants[main]), _parse(variants[alt]))
    alt_every = int(rng.choice([0, 4, 8]))  # a variation every 4 or 8 bars (or never)
    kick_jitter = 1.0 if spec.form == "song" else 0.3  # programmed electronic kicks sit tight
    kicks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in range(grid.n_bars):
        parts, section = arr.parts[b], arr.sections[arr.section_of[b]]
        in_section = b - section.start_bar
        bars_left = section.n_bars - in_section
        for name, (main, alt) in patterns.items():
            if name not in parts and not (name == "snare" and "roll" in parts):
                continue
            use_alt = alt_every and in_section % alt_every == alt_every - 1
            vel = _drum_bar(name, alt if use_alt else main, parts, bars_left, rng)
            steps = np.flatnonzero(vel > 0)
            times = grid.humanise(grid.step_times(b, steps), rng, kick_jitter if name == "kick" else 1.0)
            vels = vel[steps] * np.clip(1.0 + rng.normal(0.0, 0.07, steps.size), 0.7, 1.3)
            if name == "kick":
                kicks[b] = (steps, times)
            _place_hits(out, kit[name], times, vels * _DRUM_GAIN[name], sr, rng)
        if "crash" in parts:
            _place_hits(out, kit["crash"], grid.step_times(b, [0]), np.array([_DRUM_GAIN["crash"]]), sr, rng)
    return kicks


def _place_hits(out: np.ndarray, variants: list[np.ndarray], times, gains, sr: int, rng) -> None:
    for t, g in zip(times, gains):
        _place(out, variants[rng.integers(len(variants))], int(round(t * sr)), g)


# --------------------------------------------------------------------------------------------
# Bass
# --------------------------------------------------------------------------------------------

# (step, length in 16ths, chord tone: 0 root, 1 third, 2 fifth, 3 octave); several variants each.
_BASS_PATTERNS = {
    "offbeat": (((2, 2, 0), (6, 2, 0), (10, 2, 0), (14, 2, 0)),
                ((2, 1, 0), (3, 1, 3), (6, 2, 0), (10, 1, 0), (11, 1, 3), (14, 2, 0)),
                ((2, 2, 0), (6, 1, 0), (7, 1, 0), (10, 2, 0), (13, 1, 2), (14, 2, 0))),
    "rolling": (tuple((s, 1, 0) for s in range(16) if s % 4),
                tuple((s, 1, 3 if s % 8 == 3 else 0) for s in range(16) if s % 4 in (2, 3)),
                tuple((s, 1, 0) for s in range(16) if s % 2)),
    "trance_roll": (tuple((s, 1, 0) for s in range(16) if s % 4),),
    "octave": (tuple((s, 1.5, 0 if s % 4 == 0 else 3) for s in range(0, 16, 2)),
               ((0, 1.5, 0), (2, 1.5, 3), (4, 1.5, 0), (6, 1.5, 3), (8, 1.5, 0), (10, 1.5, 3), (12, 1.5, 2),
                (14, 1.5, 1))),
    "reese": (((0, 6, 0), (6, 4, 0), (10, 6, 2)), ((0, 10, 0), (10, 6, 0)),
              ((0, 3, 0), (3, 7, 0), (10, 6, 2))),
    "wobble": (((0, 8, 0), (8, 8, 0)), ((0, 16, 0),), ((0, 6, 0), (6, 2, 3), (8, 8, 0))),
}
# family -> (voice, lowest MIDI note of the root octave, gate fraction)
_BASS_VOICES = {
    "offbeat": ("saw", 33, 0.8), "rolling": ("saw", 36, 0.6), "trance_roll": ("saw", 36, 0.7),
    "octave": ("round", 33, 0.75), "reese": ("reese", 28, 1.0), "808": ("808", 28, 1.0),
    "wobble": ("wobble", 28, 1.0),
}


def _bass_note(voice: str, midi: int, gate: float, sr: int, p: dict, extra: float = 0.0) -> np.ndarray:
    """One bass note [L] (mono: bass stays centred). `p` holds the track's timbre, `extra` the wobble Hz."""
    f = float(_hz(midi))
    if voice == "808":
        env = _env(sr, 0.002, p["decay"], 0.0, 0.03, gate)
        t = np.arange(env.size) / sr
        x = np.sin(2 * np.pi * np.cumsum(f * (1 + 0.6 * np.exp(-t / 0.025))) / sr)
        return (np.tanh(p["drive"] * x) / np.tanh(p["drive"]) * env).astype(np.float32)
    if voice == "reese":
        env = _env(sr, 0.01, 1.0, 1.0, 0.05, gate)
        d = 2.0 ** (p["detune"] / 1200)
        x = _osc("saw", f * d, env.size, sr) + _osc("saw", f / d, env.size, sr, 0.37)
        x = _filt(x, "lowpass", p["cutoff"], sr) + p["sub"] * np.sin(2 * np.pi * f * _time(env.size, sr))
        return (x * env).astype(np.float32)
    if voice == "wobble":
        env = _env(sr, 0.005, 1.0, 1.0, 0.04, gate)
        t = _time(env.size, sr)
        x = _osc("saw", f, env.size, sr) + 0.6 * _osc("square", f, env.size, sr)
        dark, bright = _filt(x, "lowpass", 150.0, sr), _filt(x, "lowpass", p["cutoff"] * 3, sr)
        lfo = 0.5 - 0.5 * np.cos(2 * np.pi * extra * t)
        x = dark + (bright - dark) * lfo + p["sub"] * np.sin(2 * np.pi * f * t)
        return (x * env).astype(np.float32)
    sustain = 0.5 if voice == "round" else 0.7
    env = _env(sr, 0.003, 0.15, sustain, 0.02, gate)
    kind = "square" if voice == "round" else "saw"
    x = _brightness_decay(_osc(kind, f, env.size, sr), sr, p["cutoff"] * 0.4, p["cutoff"] * 2, p["tau"])
    x += p["sub"] * np.sin(2 * np.pi * f * _time(env.size, sr))
    return (x * env).astype(np.float32)


def _render_bass(out, grid: _Grid, arr: _Arrangement, spec: StyleSpec, kicks: dict, rng) -> None:
    """Bass stem into `out` [2, N]: chord roots (and 3rds/5ths/octaves) in the style's rhythm."""
    sr = grid.sr
    voice, low, gate_frac = _BASS_VOICES[spec.bass]
    p = {"cutoff": rng.uniform(300.0, 900.0), "tau": rng.uniform(0.04, 0.12), "sub": rng.uniform(0.3, 0.8),
         "decay": rng.uniform(0.5, 1.2), "drive": rng.uniform(1.2, 3.0), "detune": rng.uniform(8.0, 18.0)}
    patterns = _BASS_PATTERNS.get(spec.bass)
    pattern = patterns[rng.integers(len(patterns))] if patterns else None
    alt = patterns[rng.integers(len(patterns))] if patterns else None
    wobble_rates = np.array([1.0, 2.0, 3.0, 4.0]) * grid.bpm / 60.0  # LFO cycles per beat -> Hz
    default_kick = _parse(_DRUM_PATTERNS[spec.drums]["kick"][0])
    cache: dict[tuple, np.ndarray] = {}
    for b in range(grid.n_bars):
        if "bass" not in arr.parts[b]:
            continue
        chord = arr.chords[b]
        root = _in_octave((arr.tonic + chord[0]) % 12, low)
        tones = (0, chord[1] - chord[0], chord[2] - chord[0], 12)
        if pattern is None:  # 808: lock to the kick, each note ringing until the next one
            steps, times = kicks.get(b, (np.flatnonzero(default_kick), None))
            if times is None:
                times = grid.humanise(grid.step_times(b, steps), rng)
            lengths = np.diff(np.append(steps, 16))
            notes = [(int(s), float(n), 0 if rng.random() < 0.8 else 3) for s, n in zip(steps, lengths)]
        else:
            use_alt = b % 4 == 3 and rng.random() < 0.5
            notes = list(alt if use_alt else pattern)
            times = grid.humanise(grid.step_times(b, [n[0] for n in notes]), rng, 0.5)
        rate = float(wobble_rates[rng.integers(len(wobble_rates))]) if voice == "wobble" else 0.0
        for (_, length, tone), t in zip(notes, times):
            midi = root + tones[tone]
            gate = round(length * grid.step * gate_frac, 3)
            key = (midi, gate, rate)
            if key not in cache:
                cache[key] = _bass_note(voice, midi, gate, sr, p, rate)
            _place(out, cache[key], int(round(t * sr)), float(np.clip(rng.normal(1.0, 0.05), 0.85, 1.15)))


# --------------------------------------------------------------------------------------------
# Other: chords, pads, arpeggios, risers
# --------------------------------------------------------------------------------------------

# stab: instruments; rhythm: 16-step hits ("sustain" = one chord per chord change);
# length: note length in 16ths ("hold" = until the next hit); arp: probability of an arpeggio.
_CHORD_FAMILIES = {
    "stab": dict(stab=("organ", "stab_saw"),
                 rhythm=("..x...x...x...x.", "x..x..x...x..x..", "...x..x...x..x.."),
                 length=1.5, pad="pad", arp=0.3, delay=0.5),
    "techno_stab": dict(stab=("dark_stab",),
                        rhythm=("...x......x.....", "x..x..x..x..x...", "..x..x..x..x..x."),
                        length=1.0, pad="dark_pad", arp=1.0, delay=0.8),
    "supersaw_arp": dict(stab=("supersaw",), rhythm=("sustain",), length=0, pad="supersaw", arp=1.0,
                         delay=0.3),
    "disco_keys": dict(stab=("ep", "organ"), rhythm=("..x...x...x...x.", "x.x..x.x..x..x.."), length=1.0,
                       pad="pad", arp=0.3, delay=0.1),
    "pad": dict(stab=("pluck",), rhythm=("x.....x...x.....", "......x.......x."), length=2.0, pad="pad",
                arp=0.4, delay=0.5),
    "keys": dict(stab=("ep",), rhythm=("x.........x.....", "x.......x.......", "x.....x........."),
                 length="hold", pad="pad", arp=0.0, delay=0.2),
    "dark": dict(stab=("dark_stab",), rhythm=("x...............", "x.....x........."), length=4.0,
                 pad="dark_pad", arp=0.3, delay=0.4),
}
# instrument -> (oscillator, unison voices, detune cents, stereo spread, ADSR,
#                lowpass cutoff Hz or a filter envelope (lo Hz, hi Hz, tau s))
_INSTRUMENTS = {
    "organ": ("organ", 1, 0.0, 0.0, (0.003, 0.2, 0.0, 0.03), 5000.0),
    "stab_saw": ("saw", 3, 12.0, 0.4, (0.002, 0.18, 0.0, 0.05), (500.0, 4500.0, 0.07)),
    "dark_stab": ("saw", 2, 8.0, 0.3, (0.002, 0.12, 0.0, 0.04), (300.0, 2500.0, 0.05)),
    "supersaw": ("saw", 5, 22.0, 0.8, (0.01, 0.3, 0.8, 0.15), 4500.0),
    "ep": ("ep", 1, 0.0, 0.0, (0.002, 0.8, 0.15, 0.12), 6000.0),
    "pad": ("saw", 2, 10.0, 0.8, (0.45, 1.0, 0.8, 0.8), 1800.0),
    "dark_pad": ("square", 2, 7.0, 0.7, (0.7, 1.0, 0.8, 1.0), 900.0),
    "pluck": ("saw", 2, 6.0, 0.3, (0.001, 0.2, 0.0, 0.05), (600.0, 5000.0, 0.05)),
}
_OTHER_GAIN = {"stab": 0.5, "pad": 0.35, "arp": 0.22, "riser": 0.12}


def _chord_voice(inst: str, midis: tuple[int, ...], gate: float, sr: int, rng) -> np.ndarray:
    """A chord (or a single note) on one of `_INSTRUMENTS` -> [2, L], dry."""
    kind, voices, detune, spread, (a, d, s, r), tone = _INSTRUMENTS[inst]
    env = _env(sr, a, d, s, r, gate)
    x = _unison(kind, midis, env.size, sr, rng, voices, detune, spread)
    if isinstance(tone, tuple):
        x = _brightness_decay(x, sr, *tone)
    else:
        x = _filt(x, "lowpass", tone, sr)
    if inst == "ep":  # tine "bell" partial and a gentle auto-pan for width
        t = _time(env.size, sr)
        bell = sum(np.sin(2 * np.pi * 7.0 * f * t) for f in _hz(midis)) * np.exp(-t / 0.03) * 0.05
        x = (x + bell) * (1.0 + 0.2 * np.sin(2 * np.pi * 4.5 * t + np.array([[0.0], [np.pi]])))
    return (x * env).astype(np.float32)


def _riser(rng, n: int, sr: int) -> np.ndarray:
    """White-noise riser [2, n]: crossfade from a low to a high band with a rising level."""
    noise = _noise(rng, (2, n))
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    low, high = _filt(noise, "bandpass", (300.0, 1500.0), sr), _filt(noise, "bandpass", (2500.0, 10000.0), sr)
    return ((low * (1 - ramp) + high * ramp) * ramp**2).astype(np.float32)


def _runs(bars: list[int]) -> list[tuple[int, int]]:
    """Consecutive bar indices -> [(first, count), ...]."""
    out: list[tuple[int, int]] = []
    for b in bars:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def _render_other(out, grid: _Grid, arr: _Arrangement, spec: StyleSpec, rng) -> None:
    """Other stem into `out` [2, N]: rhythmic chords, pads, arpeggio/lead and risers, reverb baked in."""
    sr = grid.sr
    fam = _CHORD_FAMILIES[spec.chords]
    stab_inst = fam["stab"][rng.integers(len(fam["stab"]))]
    rhythm = fam["rhythm"][rng.integers(len(fam["rhythm"]))]
    low = int(rng.integers(53, 58))  # chord voicings live in [low, low + 12)
    long_ir = _reverb_ir(rng, sr, rng.uniform(1.5, 2.6))
    short_ir = _reverb_ir(rng, sr, rng.uniform(0.7, 1.2))
    delay = int(round(grid.step * 3 * sr)) if rng.random() < fam["delay"] else 0
    has_arp = rng.random() < fam["arp"]
    lead = spec.chords == "techno_stab"
    arp_order = _arp_order(rng, lead)
    dry: dict[tuple, np.ndarray] = {}
    wet: dict[tuple, np.ndarray] = {}

    def voice(inst: str):
        def render(midis: tuple[int, ...], gate: float) -> np.ndarray:
            key = (inst, midis, round(gate, 3))
            if key not in dry:
                dry[key] = _chord_voice(inst, midis, gate, sr, rng)
            return dry[key]
        return render

    def voiced(chord: tuple[int, ...], lowest: int = low) -> tuple[int, ...]:
        return tuple(sorted(_in_octave((arr.tonic + c) % 12, lowest) for c in chord))

    def bars_with(part: str) -> list[int]:
        return [b for b in range(grid.n_bars) if part in arr.parts[b]]

    # Rhythmic chords: a looped one-bar figure, or one sustained chord per chord change.
    if rhythm == "sustain":
        for first, count in _chord_runs(bars_with("stab"), arr):
            key = ("stab", arr.chords[first], count)
            if key not in wet:
                chord = voice(stab_inst)(voiced(arr.chords[first]), count * grid.bar - 0.02)
                wet[key] = _reverb(chord, long_ir, 0.3)
            _place(out, wet[key], int(round(grid.bar_time(first) * sr)), _OTHER_GAIN["stab"])
    else:
        steps = np.flatnonzero(_parse(rhythm) > 0)
        hold = np.diff(np.append(steps, 16)) - 0.5
        lengths = hold if fam["length"] == "hold" else np.full(steps.size, float(fam["length"]))
        stab_gain = _OTHER_GAIN["stab"]

        def stab_hits(b: int) -> tuple:
            return tuple((int(s), voiced(arr.chords[b]), float(n), stab_gain) for s, n in zip(steps, lengths))

        _loop_bars(out, grid, rng, bars_with("stab"), stab_hits, voice(stab_inst), short_ir, 0.25, delay)

    # Pads: one sustained chord per chord change, the root doubled an octave down.
    for first, count in _chord_runs(bars_with("pad"), arr):
        key = ("pad", arr.chords[first], count)
        if key not in wet:
            root = _in_octave((arr.tonic + arr.chords[first][0]) % 12, low - 12)
            midis = (root,) + voiced(arr.chords[first])
            wet[key] = _reverb(voice(fam["pad"])(midis, count * grid.bar), long_ir, 0.35)
        _place(out, wet[key], int(round(grid.bar_time(first) * sr)), _OTHER_GAIN["pad"])

    if has_arp:
        scale = _SCALES[arr.minor]

        def arp_hits(b: int) -> tuple:
            if lead:  # a riff from the scale that ignores the chords
                notes = [_in_octave(arr.tonic, low + 7) + scale[i % 7] + 12 * (i // 7) for _, i in arp_order]
            else:
                tones = sorted(voiced(arr.chords[b][:3], low + 12))
                pool = tones + [t + 12 for t in tones] + [t + 24 for t in tones]
                notes = [pool[i % len(pool)] for _, i in arp_order]
            return tuple((s, (m,), 0.8, _OTHER_GAIN["arp"]) for (s, _), m in zip(arp_order, notes))

        _loop_bars(out, grid, rng, bars_with("arp"), arp_hits, voice("pluck"), short_ir, 0.3, delay)

    risers: dict[int, np.ndarray] = {}
    for first, count in _runs(bars_with("riser")):
        n = int(count * grid.bar * sr)
        if n not in risers:
            risers[n] = _riser(rng, n, sr)
        _place(out, risers[n], int(round(grid.bar_time(first) * sr)), _OTHER_GAIN["riser"])


_TAKES = 2  # humanised takes per distinct bar of a looped part


def _loop_bars(out, grid: _Grid, rng, bars: list[int], hits_of, voice, ir, wet: float, delay: int) -> None:
    """Place a one-bar part on `bars`, rendering each distinct bar once per humanised take.

    hits_of(bar) -> tuple of hits (step, midis, length in 16ths, gain); voice(midis, gate_s) -> dry
    [2, L]. Echo and reverb run once on the whole rendered bar (they are linear, so this equals
    per-note effects) and the result is added at every bar that plays the same content: a looped,
    programmed part as in a DAW, and far fewer copies to add than one per note.
    """
    sr = grid.sr
    pre = int(0.03 * sr)  # head room for notes humanised ahead of the bar line
    cache: dict[tuple, np.ndarray] = {}
    for b in bars:
        hits = hits_of(b)
        key = (hits, int(rng.integers(_TAKES)))
        if key not in cache:
            times = grid.humanise(grid.step_times(0, [h[0] for h in hits]) - grid.offset, rng)
            notes = [voice(h[1], h[2] * grid.step) for h in hits]
            starts = [pre + int(round(t * sr)) for t in times]
            buf = np.zeros((2, max(s + x.shape[1] for s, x in zip(starts, notes))), dtype=np.float32)
            for s, x, h in zip(starts, notes, hits):
                _place(buf, x, s, h[3] * rng.uniform(0.85, 1.0))
            if delay:
                buf = _pingpong(buf, delay, 0.35)
            cache[key] = _reverb(buf, ir, wet)
        _place(out, cache[key], int(round(grid.bar_time(b) * sr)) - pre)


def _chord_runs(bars: list[int], arr: _Arrangement) -> list[tuple[int, int]]:
    """Runs of consecutive bars with the same chord and section -> [(first, count)]."""
    out: list[tuple[int, int]] = []
    for b in bars:
        if out and out[-1][0] + out[-1][1] == b and arr.chords[b] == arr.chords[out[-1][0]] \
                and arr.section_of[b] == arr.section_of[out[-1][0]]:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def _arp_order(rng, lead: bool) -> list[tuple[int, int]]:
    """A one-bar arpeggio as (step, index into chord tones over two octaves) pairs.

    For a techno lead the index is a scale degree instead and ignores the chord (a hypnotic riff).
    """
    if lead:
        steps = np.sort(rng.choice(16, size=int(rng.integers(5, 9)), replace=False))
        return [(int(s), int(rng.choice([0, 0, 2, 4, 6, 7]))) for s in steps]
    shape = rng.integers(3)
    idx = np.arange(16) % 8
    if shape == 1:  # up and down
        idx = np.array([0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1, 0, 1])
    elif shape == 2:  # a random but fixed figure
        idx = rng.integers(0, 6, size=16)
    return [(s, int(i)) for s, i in enumerate(idx)]


# --------------------------------------------------------------------------------------------
# Vocals
# --------------------------------------------------------------------------------------------

# Formant frequencies F1..F4 (Hz) of an adult male voice (Peterson & Barney); F5 is fixed.
_VOWELS = {
    "a": (730.0, 1090.0, 2440.0, 3400.0),
    "e": (530.0, 1840.0, 2480.0, 3500.0),
    "i": (270.0, 2290.0, 3010.0, 3700.0),
    "o": (570.0, 840.0, 2410.0, 3400.0),
    "u": (300.0, 870.0, 2240.0, 3300.0),
}
_VOWEL_NAMES = tuple(_VOWELS)
_VOWEL_P = (0.3, 0.2, 0.15, 0.2, 0.15)
_FORMANT_BW = np.array([80.0, 100.0, 130.0, 180.0, 250.0], dtype=np.float32)
_F5 = 4500.0
_CONSONANTS = ("", "s", "t", "k")


@dataclass(frozen=True)
class _Syllable:
    step: int  # onset, 16th notes from the phrase's first downbeat
    length: float  # 16th notes
    degree: int  # scale degree above the vocal tonic (sung) or around the reciting tone (rap)
    vowel: str
    consonant: str
    accent: float  # 0..1


def _sung_motif(rng, n_steps: int = 32) -> list[_Syllable]:
    """A two-bar melodic phrase: stepwise scale motion, held last note, a rest before the next phrase."""
    step = int(rng.choice([0, 0, 2, 4]))
    end = n_steps - int(rng.choice([4, 6, 8]))
    degree = int(rng.choice([0, 2, 4, 7]))
    out = []
    while step < end:
        length = min(int(rng.choice([2, 2, 2, 3, 4, 4, 6])), end - step)
        vowel = str(rng.choice(_VOWEL_NAMES, p=_VOWEL_P))
        consonant = str(rng.choice(_CONSONANTS, p=(0.4, 0.2, 0.25, 0.15)))
        out.append(_Syllable(step, length, degree, vowel, consonant, float(rng.uniform(0.75, 1.0))))
        step += length + (2 if rng.random() < 0.12 else 0)
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), -3, 9))
    last = out[-1]
    held = last.length + int(rng.choice([2, 3]))  # the phrase ends on a held note
    out[-1] = _Syllable(last.step, held, last.degree, last.vowel, last.consonant, 1.0)
    return out


def _rap_motif(rng, n_steps: int = 32) -> list[_Syllable]:
    """A two-bar rap line: 16th/8th syllables around a reciting tone, accents on the beats."""
    step = int(rng.choice([0, 1, 2]))
    end = n_steps - int(rng.choice([2, 3, 4]))
    out = []
    while step < end:
        length = min(int(rng.choice([1, 1, 1, 2, 2, 3])), end - step)
        out.append(_Syllable(step, length, int(rng.choice([0, 0, 0, 1, -1])), str(rng.choice(_VOWEL_NAMES)),
                             str(rng.choice(_CONSONANTS, p=(0.2, 0.3, 0.3, 0.2))),
                             1.0 if step % 4 == 0 else float(rng.uniform(0.55, 0.8))))
        step += length + (1 if rng.random() < 0.1 else 0)
    return out


def _formant_filter(
    x: np.ndarray, formants: np.ndarray, hop_c: int, sr: int, n_fft: int = 1024
) -> np.ndarray:
    """Time-varying cascade of formant resonators, applied as a real gain in the STFT domain.

    x: [n] source; formants: [n_c, 4] F1..F4 in Hz on a control grid of one value every `hop_c` samples.
    Each resonator has the magnitude response of a 2nd-order cascade formant F^2/|F^2 - f^2 + j B f|
    (gain 1 at DC, F/B at its peak), so the product is the classic source-filter vowel envelope.
    Returns [n] float32.
    """
    n, hop = x.size, n_fft // 4
    total = int(np.ceil((n + 2 * n_fft) / hop)) * hop
    xp = np.zeros(total, dtype=np.float32)
    xp[n_fft : n_fft + n] = x
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    frames = sliding_window_view(xp, n_fft)[::hop] * win  # [F, n_fft]
    spec = scipy.fft.rfft(frames, axis=1)
    centres = (np.arange(frames.shape[0]) * hop + n_fft // 2 - n_fft) / hop_c
    fm = np.stack([np.interp(centres, np.arange(len(formants)), formants[:, i]) for i in range(4)]
                  + [np.full(frames.shape[0], _F5)], axis=1).astype(np.float32)  # [F, 5]
    f = np.fft.rfftfreq(n_fft, 1.0 / sr).astype(np.float32)[None, :]
    gain = np.ones((frames.shape[0], f.shape[1]), dtype=np.float32)
    for i in range(5):
        fi = fm[:, i : i + 1]
        gain *= fi**2 / np.sqrt((fi**2 - f**2) ** 2 + (_FORMANT_BW[i] * f) ** 2)
    frames = scipy.fft.irfft(spec * gain, n=n_fft, axis=1).astype(np.float32) * win
    y = np.zeros(total, dtype=np.float32)
    for i in range(n_fft // hop):  # overlap-add: block i of frame k lands at (k + i) * hop
        block = frames[:, i * hop : (i + 1) * hop].reshape(-1)
        y[i * hop : i * hop + block.size] += block
    return y[n_fft : n_fft + n] / np.float32(1.5)  # sum of hann^2 at 75 % overlap


def _render_phrase(onsets, lengths, midis, syllables, sr: int, voice: dict, rng) -> np.ndarray:
    """Sing (or rap) one phrase -> [L] float32, starting exactly at the first syllable onset.

    A glottal wavetable source follows a smoothed pitch track with vibrato and drift, plus breath
    noise; the formant filter follows the smoothed vowel targets; consonants are noise bursts.
    """
    onsets = np.asarray(onsets) - onsets[0]
    release = 0.08
    n = int((onsets[-1] + lengths[-1] + release) * sr)
    hop_c = 64  # control rate: one value per 64 samples (~1.5 ms)
    n_c = n // hop_c + 2
    tc = np.arange(n_c) * hop_c / sr
    pitch, amp = np.full(n_c, float(midis[0])), np.zeros(n_c)
    form = np.tile(np.array(_VOWELS[syllables[0].vowel]), (n_c, 1))
    since = np.full(n_c, -1.0)
    for t0, length, midi, syl in zip(onsets, lengths, midis, syllables):
        c0, c1 = int(t0 * sr / hop_c), int((t0 + length) * sr / hop_c)
        pitch[c0:] = midi
        form[c0:] = _VOWELS[syl.vowel]
        amp[c0:c1] = syl.accent
        since[c0:c1] = tc[c0:c1] - tc[c0]
    rate = sr / hop_c
    pitch = _one_pole(pitch, voice["glide"], rate)
    vib_depth = voice["vibrato"] * np.clip((since - 0.15) / 0.25, 0.0, 1.0)  # vibrato sets in on held notes
    vib = vib_depth * np.sin(2 * np.pi * voice["vib_rate"] * tc)
    drift = _one_pole(rng.normal(0.0, 1.0, n_c), 0.1, rate) * 40.0  # slow pitch wander, a few cents
    f0 = _hz(pitch + (vib + drift) / 100.0)
    amp = _one_pole(amp, 0.015, rate)
    form = _one_pole(form * voice["formant_scale"], 0.03, rate)

    idx = np.arange(n) / hop_c
    f0_s = np.interp(idx, np.arange(n_c), f0)
    amp_s = np.interp(idx, np.arange(n_c), amp).astype(np.float32)
    src = _osc("glottal", f0_s, n, sr, rng.random()) + voice["breath"] * _noise(rng, n)
    x = _formant_filter(src * amp_s, form, hop_c, sr)
    x *= np.float32(0.1 / (np.sqrt(np.mean(x**2)) + 1e-9))
    for t0, syl in zip(onsets, syllables):
        if syl.consonant:
            _add_consonant(x, syl.consonant, int(t0 * sr), sr, rng, 0.12 * syl.accent)
    return _fade_tail(x, sr, 0.01)


def _add_consonant(x: np.ndarray, kind: str, start: int, sr: int, rng, level: float) -> None:
    """Fricative ("s") or plosive burst ("t", "k") of band-passed noise added at `start` (in place)."""
    length, band, tau = {"s": (0.07, (4500.0, 11000.0), 0.03), "t": (0.025, (2000.0, 7000.0), 0.008),
                         "k": (0.03, (1200.0, 4000.0), 0.01)}[kind]
    n = min(int(length * sr), x.size - start)
    if n <= 0:
        return
    t = _time(n, sr)
    burst = _filt(_noise(rng, n), "bandpass", band, sr) * np.minimum(t / 0.004, 1.0) * np.exp(-t / tau)
    x[start : start + n] += np.float32(level) * burst / (np.abs(burst).max() + 1e-9)


def _render_vocals(out, grid: _Grid, arr: _Arrangement, spec: StyleSpec, rng) -> list[list[float]]:
    """Vocal stem into `out` [2, N]; returns the exact activity intervals [[start, end], ...] in seconds.

    Phrases are two bars long and repeat like a hook (motif pattern A A B A), rendered once per
    motif and chord context; sung in EDM sections, hooks and bridges, rapped in verses.
    """
    sr = grid.sr
    female = rng.random() < 0.55
    voice = {
        "formant_scale": (1.15 if female else 1.0) * rng.uniform(0.96, 1.04),
        "vibrato": rng.uniform(20.0, 55.0), "vib_rate": rng.uniform(4.8, 6.3),
        "breath": rng.uniform(0.03, 0.08), "glide": rng.uniform(0.025, 0.045),
    }
    tonic_midi = _in_octave(arr.tonic, 60 if female else 48)
    scale = _SCALES[arr.minor]
    motifs: dict[tuple[str, int], list[_Syllable]] = {}
    cache: dict[tuple, tuple[float, np.ndarray]] = {}
    reflections = (int(0.011 * sr), int(0.017 * sr))  # one early reflection per side for a little width
    intervals = []
    for s in [s for s in arr.sections if s.vocals]:
        mode = "rap" if s.style_label == "verse" and spec.form == "song" else "sung"
        for k, bar in enumerate(range(s.start_bar, s.start_bar + s.n_bars - 1, 2)):
            if k and rng.random() < 0.15:
                continue
            motif_id = (s.style_label, (0, 0, 1, 0, 0, 0, 1, 2)[k % 8] if mode == "sung" else k % 4)
            if motif_id not in motifs:
                motifs[motif_id] = (_rap_motif if mode == "rap" else _sung_motif)(rng)
            key = (motif_id, arr.chords[bar], arr.chords[min(bar + 1, len(arr.chords) - 1)])
            if key not in cache:
                syl = motifs[motif_id]
                chords = [arr.chords[min(bar + sy.step // 16, len(arr.chords) - 1)] for sy in syl]
                midis = _melody(syl, chords, tonic_midi, scale, mode, rng)
                onsets = grid.step_times(0, [sy.step for sy in syl]) - grid.offset
                onsets = onsets + rng.normal(0.0, 0.008, len(syl))  # loose, human phrasing
                lengths = np.array([sy.length for sy in syl]) * grid.step * (0.9 if mode == "sung" else 0.75)
                v = dict(voice, glide=voice["glide"] * (0.5 if mode == "rap" else 1.0),
                         vibrato=voice["vibrato"] * (0.1 if mode == "rap" else 1.0))
                x = _render_phrase(onsets, lengths, midis, syl, sr, v, rng)
                cache[key] = (float(onsets[0]), _with_reflections(x, reflections, 0.12))
            first, x = cache[key]
            start = int(round((grid.bar_time(bar) + first) * sr))
            _place(out, x, start)
            s0, s1 = max(start, 0), min(start + x.shape[1], grid.n)
            if s1 > s0:
                intervals.append([s0 / sr, s1 / sr])
    return _merge(intervals)


def _with_reflections(x: np.ndarray, delays: tuple[int, int], gain: float) -> np.ndarray:
    """Mono [L] -> stereo [2, L + max(delays)]: the dry voice plus one delayed copy per channel."""
    y = np.zeros((2, x.size + max(delays)), dtype=np.float32)
    y[:, : x.size] = x
    for ch, d in enumerate(delays):
        y[ch, d : d + x.size] += np.float32(gain) * x
    return y


def _merge(intervals: list[list[float]]) -> list[list[float]]:
    """Sorted, overlapping or touching intervals joined."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _melody(syllables, chords, tonic_midi: int, scale, mode: str, rng) -> np.ndarray:
    """Scale degrees -> MIDI pitches; sung notes on strong beats (and the last) snap to a chord tone."""
    out = []
    for i, (syl, chord) in enumerate(zip(syllables, chords)):
        d = syl.degree
        midi = float(tonic_midi + scale[d % 7] + 12 * (d // 7))
        if mode == "sung" and (syl.step % 8 == 0 or i == len(syllables) - 1):
            tones = np.array([tonic_midi + c + 12 * o for c in chord for o in (-2, -1, 0, 1)])
            midi = float(tones[np.argmin(np.abs(tones - midi) + 0.01 * (tones > midi))])
        if mode == "rap":  # speech-like: falling intonation over the line, no fixed scale pitches
            midi += -2.0 * (syl.step / 32.0) ** 2 + rng.normal(0.0, 0.3)
        out.append(midi)
    return np.array(out)


# --------------------------------------------------------------------------------------------
# Levels, truth and the public API
# --------------------------------------------------------------------------------------------

# Stem levels: RMS (dBFS, before the master gain) over each stem's audible frames.
_STEM_RMS_DB = {"drums": -13.0, "bass": -16.0, "vocals": -16.0, "other": -18.0}


def _active_rms(x: np.ndarray, sr: int) -> float:
    """RMS of [2, N] over its audible 50 ms frames (those within 40 dB of the loudest frame).

    Estimated from every 31st sample (~70 per frame), which reads a fraction of the memory.
    """
    stride = 31
    frame = max(1, int(0.05 * sr) // stride)
    sub = x[:, ::stride]
    m = sub.shape[1] // frame
    if m == 0:
        return float(np.sqrt(np.mean(x**2)))
    energy = (sub[:, : m * frame].reshape(2, m, frame) ** 2).mean(axis=(0, 2))
    active = energy[energy > energy.max() * 1e-4]
    return float(np.sqrt(active.mean())) if active.size else 0.0


def _duck_envelope(kicks: dict, n: int, sr: int, depth: float, release: float) -> np.ndarray:
    """Sidechain gain [n]: dips by `depth` at every kick and recovers with time constant `release` s."""
    env = np.ones(n, dtype=np.float32)
    t = _time(int(5 * release * sr), sr)
    dip = 1.0 - depth * np.minimum(t / 0.004, 1.0) * np.exp(-np.maximum(t - 0.004, 0) / release)
    for _, times in kicks.values():
        for t0 in times:
            s = int(round(t0 * sr))
            s0, s1 = max(s, 0), min(s + dip.size, n)
            if s1 > s0:
                np.minimum(env[s0:s1], dip[s0 - s : s1 - s], out=env[s0:s1])
    return env


@dataclass
class SynthTrack:
    """A synthetic track: oracle stems and exact ground truth."""

    stems: np.ndarray  # [4, 2, N] float32, order STEMS = (drums, bass, vocals, other)
    truth: dict  # JSON-serialisable, see synthesize_track
    sample_rate: int = SAMPLE_RATE

    @property
    def mix(self) -> np.ndarray:
        """[2, N] float32: the sum of the stems."""
        return self.stems.sum(axis=0)

    def stem(self, name: str) -> np.ndarray:
        """[2, N] one stem by name (see STEMS)."""
        return self.stems[STEMS.index(name)]


def _draw_choices(rng, style, bpm, key_index) -> tuple[StyleSpec, float, int, float, float]:
    """Style, tempo, key, swing and lead-in; always drawn in full so overrides keep the rest of the track."""
    names = sorted(STYLES)
    drawn_style = names[int(rng.integers(len(names)))]
    u_bpm, integer_bpm = rng.random(), rng.random() < 0.85
    minor_u, tonic = rng.random(), int(rng.integers(12))
    swing_u, offset_u, has_offset = rng.random(), rng.random(), rng.random() < 0.7

    name = drawn_style if style is None else style
    if name not in STYLES:
        raise ValueError(f"unknown style {name!r}; choose one of {', '.join(names)}")
    spec = STYLES[name]
    lo, hi = spec.bpm_range
    drawn_bpm = lo + u_bpm * (hi - lo)
    if integer_bpm:  # most productions sit on a whole BPM
        drawn_bpm = float(np.clip(round(drawn_bpm), np.ceil(lo), np.floor(hi)))
    else:
        drawn_bpm = round(drawn_bpm, 2)
    bpm = drawn_bpm if bpm is None else float(bpm)
    if not 40.0 <= bpm <= 250.0:
        raise ValueError(f"bpm must be in 40..250, got {bpm}")
    key = tonic + 12 * (minor_u < spec.minor_prob) if key_index is None else int(key_index)
    if not 0 <= key < 24:
        raise ValueError(f"key_index must be in 0..23, got {key_index}")
    swing = spec.swing[0] + swing_u * (spec.swing[1] - spec.swing[0])
    offset = 0.3 * offset_u if has_offset else 0.0
    return spec, bpm, key, swing, offset


def synthesize_track(
    seed: int,
    style: str | None = None,
    duration: float = 180.0,
    bpm: float | None = None,
    key_index: int | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> SynthTrack:
    """Render one track with oracle stems and exact truth, deterministically from `seed`.

    style: a key of STYLES, or None for a choice drawn from the seed. bpm / key_index (0..23, see
    data/keys.py) override the drawn values; everything else stays as the seed would have it.
    duration: seconds (the stems have round(duration * sample_rate) samples).

    Truth keys: bpm, beats, downbeats (seconds, the intended grid), time_signature "4/4",
    beats_per_bar, key_index, key, camelot, sections [{start, end, label, style_label, energy}],
    vocal_activity [[start, end], ...], chords [{start, end, label}] (the harmonic plan, mir_eval
    labels), style, seed, duration, sample_rate, swing, version.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    spec, bpm, key, swing, offset = _draw_choices(streams[0], style, bpm, key_index)
    n = int(round(duration * sample_rate))
    grid = _Grid(sample_rate, n, bpm, offset, swing, spec.humanise_ms / 1000.0)
    arr = _arrange(grid, spec, key, streams[1])

    stems = np.zeros((len(STEMS), 2, n), dtype=np.float32)
    kicks = _render_drums(stems[0], grid, arr, spec, streams[2])
    _render_bass(stems[1], grid, arr, spec, kicks, streams[3])
    vocal_activity = _render_vocals(stems[2], grid, arr, spec, streams[4])
    _render_other(stems[3], grid, arr, spec, streams[5])

    duck = None
    if spec.sidechain > 0:
        duck = _duck_envelope(kicks, n, sample_rate, spec.sidechain, 0.15 * grid.beat)
    _set_levels(stems, sample_rate, streams[0], duck)
    truth = _truth(seed, spec, grid, arr, key, vocal_activity)
    return SynthTrack(stems=stems, truth=truth, sample_rate=sample_rate)


def _set_levels(stems: np.ndarray, sr: int, rng, duck: np.ndarray | None = None) -> None:
    """Sidechain, stem balance and master gain, in place on `stems` [4, 2, N].

    Stems are balanced to active-RMS targets (+- 1.5 dB), `duck` [N] (if given) multiplies bass
    and other, and one master gain brings the mix peak to -1.5..-0.3 dBFS. Memory traffic is what
    costs here, so the stems are read once in cache-sized chunks to find the peak and written once.
    """
    gains = np.ones(len(STEMS), dtype=np.float32)
    for i, name in enumerate(STEMS):
        rms = _active_rms(stems[i], sr)
        if rms > 0:
            gains[i] = 10 ** ((_STEM_RMS_DB[name] + rng.uniform(-1.5, 1.5)) / 20) / rms
    n = stems.shape[-1]
    fade = min(n, int(0.02 * sr))  # no click at the very end
    stems[..., n - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    ducked = [STEMS.index("bass"), STEMS.index("other")]
    chunk, peak = 1 << 14, 0.0
    for c in range(0, n, chunk):
        block = stems[:, :, c : c + chunk] * gains[:, None, None]
        if duck is not None:
            block[ducked] *= duck[c : c + chunk]
        peak = max(peak, float(np.abs(block.sum(axis=0)).max()))
    master = np.float32(10 ** (rng.uniform(-1.5, -0.3) / 20) / peak if peak > 0 else 1.0)
    for c in range(0, n, chunk):
        block = stems[:, :, c : c + chunk]
        block *= (gains * master)[:, None, None]
        if duck is not None:
            block[ducked] *= duck[c : c + chunk]


def _truth(seed: int, spec: StyleSpec, grid: _Grid, arr: _Arrangement, key: int, vocals) -> dict:
    """The JSON-serialisable ground truth of one track (times in seconds, rounded to 1 us)."""
    duration = grid.duration
    n_beats = int(np.floor((duration - grid.offset) / grid.beat - 1e-9)) + 1 if duration > grid.offset else 0
    beats = grid.offset + grid.beat * np.arange(n_beats)
    starts = [0.0] + [grid.bar_time(s.start_bar) for s in arr.sections[1:]]
    ends = starts[1:] + [duration]
    sections = [
        {"start": round(a, 6), "end": round(b, 6), "label": _SECTION_LABEL[s.style_label],
         "style_label": s.style_label, "energy": _SECTION_ENERGY[s.style_label]}
        for s, a, b in zip(arr.sections, starts, ends)
    ]
    chords = []
    for first, count in _chord_runs(list(range(grid.n_bars)), arr):
        start = 0.0 if first == 0 else grid.bar_time(first)
        end = min(grid.bar_time(first + count), duration)
        label = _chord_label(arr.tonic, arr.chords[first])
        chords.append({"start": round(start, 6), "end": round(end, 6), "label": label})
    return {
        "version": TRUTH_VERSION,
        "seed": int(seed),
        "style": spec.name,
        "duration": round(duration, 6),
        "sample_rate": grid.sr,
        "bpm": float(grid.bpm),
        "time_signature": "4/4",
        "beats_per_bar": 4,
        "beats": [round(float(t), 6) for t in beats],
        "downbeats": [round(float(t), 6) for t in beats[::4]],
        "key_index": int(key),
        "key": key_name(key),
        "camelot": camelot(key),
        "sections": sections,
        "vocal_activity": [[round(a, 6), round(b, 6)] for a, b in vocals],
        "chords": chords,
        "swing": round(float(grid.swing), 4),
        "stems": list(STEMS),
    }


def write_track(track: SynthTrack, folder: Path, subtype: str = "FLOAT") -> Path:
    """Write mix.wav, stems/{drums,bass,vocals,other}.wav and truth.json into `folder`; returns it.

    Audio files are written atomically (data.audio.save_audio). subtype: "FLOAT" keeps the stems
    summing to the mix bit for bit; "PCM_16" is four times smaller on disk.
    """
    from data.audio import save_audio  # imports torch; keep `import data.synth` light

    folder = Path(folder)
    (folder / "stems").mkdir(parents=True, exist_ok=True)
    for name in STEMS:
        save_audio(folder / "stems" / f"{name}.wav", track.stem(name), track.sample_rate, subtype)
    save_audio(folder / "mix.wav", track.mix, track.sample_rate, subtype)
    tmp = folder / ".truth.json.tmp"
    tmp.write_text(json.dumps(track.truth, indent=1))
    tmp.replace(folder / "truth.json")
    return folder


def load_truth(folder: Path) -> dict:
    """Read `folder`/truth.json as written by write_track."""
    return json.loads((Path(folder) / "truth.json").read_text())


def load_track(folder: Path) -> SynthTrack:
    """Read a folder written by write_track back into a SynthTrack (stems by name, float32)."""
    folder = Path(folder)
    stems = []
    for name in STEMS:
        data, sr = sf.read(folder / "stems" / f"{name}.wav", dtype="float32", always_2d=True)
        stems.append(data.T)
    return SynthTrack(stems=np.stack(stems), truth=load_truth(folder), sample_rate=int(sr))


def main(argv: list[str] | None = None) -> int:
    """CLI: render `--n` tracks with seeds seed, seed+1, ... into OUT/synth_<seed>/."""
    parser = argparse.ArgumentParser(description="Render synthetic multi-stem tracks with exact truth.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=5, help="number of tracks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first track")
    parser.add_argument("--style", choices=sorted(STYLES), default=None, help="default: drawn per seed")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds per track")
    parser.add_argument("--subtype", default="FLOAT", help="WAV subtype: FLOAT or PCM_16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for seed in range(args.seed, args.seed + args.n):
        t0 = time.perf_counter()
        track = synthesize_track(seed, style=args.style, duration=args.duration)
        elapsed = time.perf_counter() - t0
        folder = write_track(track, args.out / f"synth_{seed:06d}", args.subtype)
        t = track.truth
        log.info("%s: %s %.1f BPM %s (%s), %d sections, %d vocal phrases, rendered in %.2f s",
                 folder, t["style"], t["bpm"], t["key"], t["camelot"], len(t["sections"]),
                 len(t["vocal_activity"]), elapsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
