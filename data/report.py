"""params.json: the record of one generated transition, its schema, and what happens at which bar.

inference.py writes one params.json per transition; visualize.py plots it and evaluate.py reads
its curves back. `PARAMS_SCHEMA` documents every field (a JSON Schema, draft 2020-12, checkable
with any JSON Schema validator); `validate_params` checks a document against it (a built-in
validator for the schema keywords used here, plus the cross-field rules a schema cannot state:
curve lengths, parameter names, finite values).

Times are seconds of the output audio file (`time_s`, `*_s`); bars count from the blend:
bar 1 starts at the blend start, the lead-in is bar 0 and below (`bar = 1 + (t - blend.start_s) /
tempo.bar_s`, fractional between downbeats). Curves are the 58 mixer parameters of the `full`
layout (effects/params.py) in physical units (amplitude, dB, Hz, s, ...; `unit` says which), on
the frames of the rendered clip; before the clip A plays alone and after it B alone, unprocessed.
`curves_from_params` turns them back into model space `[F, 58]`.

`stem_activity`, `timeline_events` and `summary_markdown` read the curves the way the teacher
recipes' rules do (data/transitions.py `stem_amplitudes`: fader x EQ x filters x track level on a
stem's representative frequencies), e.g. "bar 9: A bass out, B bass in".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.audio import write_json_atomic
from data.transitions import BASS_FREQS, VOCAL_FREQS, VOCAL_THRESHOLD_DB, stem_amplitudes
from effects.params import FULL, SAMPLE_RATE, STEMS, TRACKS

__all__ = [
    "FORMAT",
    "PARAMS_SCHEMA",
    "PARAMS_VERSION",
    "Event",
    "ParamsError",
    "build_params",
    "curves_from_params",
    "read_params",
    "stem_activity",
    "summary_markdown",
    "timeline_events",
    "validate_params",
    "write_params",
]

FORMAT = "djmix.params"
PARAMS_VERSION = 1
# Representative frequencies (Hz) at which a stem's mixer mask decides whether it is audible.
STEM_FREQS = {
    "drums": (60.0, 200.0, 1000.0, 4000.0, 10000.0),
    "bass": BASS_FREQS,
    "vocals": VOCAL_FREQS,
    "other": (200.0, 500.0, 1000.0, 2500.0, 6000.0),
}
AUDIBLE_DB = VOCAL_THRESHOLD_DB  # a stem above -20 dB (re unity) counts as audible
SEND_ON = 0.1  # a send above this amplitude counts as "on"
HPF_ON_HZ, LPF_ON_HZ = 150.0, 5000.0  # a filter past these cutoffs counts as "engaged"


class ParamsError(ValueError):
    """A params.json that does not follow PARAMS_SCHEMA; the message names the field."""


# ------------------------------------------------------------------------------------------------
# The schema
# ------------------------------------------------------------------------------------------------

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_TIMES = {"type": "array", "items": _NUM}


def _obj(properties: dict, required: Sequence[str] | None = None, extra: bool = True) -> dict:
    return {"type": "object", "required": list(properties if required is None else required),
            "properties": properties, "additionalProperties": extra}


_KEY = _obj({
    "key": {**_STR_OR_NULL, "description": "key name, e.g. 'A minor'"},
    "camelot": {**_STR_OR_NULL, "description": "Camelot code, e.g. '8A'"},
    "key_index": {"type": ["integer", "null"], "minimum": 0, "description": "0..11 major C..B, 12..23 minor"},
    "confidence": _NUM_OR_NULL,
})
_TRACK = _obj({
    "path": {**_STR_OR_NULL, "description": "the input file (null: given as audio in code)"},
    "duration_s": _NUM_OR_NULL,
    "offset_s": {**_NUM, "description": "track time at output time 0 of the mapping below"},
    "scale": {**_NUM, "description": "track time = offset_s + scale * output time (B: the tempo stretch)"},
    "gain_db": {**_NUM, "description": "gain the track was trimmed by before mixing (B: auto-gain toward A)"},
}, required=["path", "duration_s", "offset_s", "scale"])

PARAMS_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://djmix.invalid/params.schema.json",
    "title": "djmix transition parameters (params.json)",
    "description": "One generated A -> B transition: mixer curves in physical units on the output's "
                   "time axis (seconds) and bar grid, the tempo, keys, cue points and how it was made.",
    **_obj({
        "format": {"const": FORMAT},
        "version": {"type": "integer", "const": PARAMS_VERSION},
        "sample_rate": {"type": "integer", "minimum": 1, "description": "Hz of the output audio"},
        "audio": _obj({
            "path": {**_STR_OR_NULL, "description": "the audio file this describes"},
            "n_samples": {"type": ["integer", "null"], "minimum": 0},
            "duration_s": _NUM_OR_NULL,
            "full_mix": {"type": "boolean", "description": "all of A, the transition, the rest of B"},
            "clip_start_s": {**_NUM, "description": "where the rendered clip (the curves) starts"},
            "clip_end_s": {**_NUM, "description": "where it ends; outside it A or B plays unprocessed"},
        }),
        "tempo": _obj({
            "bpm": {**_NUM, "minimum": 0, "description": "the mix tempo (A's; B is stretched to it)"},
            "beats_per_bar": {"type": "integer", "minimum": 1},
            "bar_s": {**_NUM, "minimum": 0, "description": "seconds per bar"},
            "tempo_free": {"type": "boolean", "description": "no beat grid: a time-based blend, bars nominal"},
            "bpm_a": _NUM_OR_NULL, "bpm_b": _NUM_OR_NULL,
            "tempo_ratio": {**_NUM_OR_NULL, "description": "B's stretch to A's tempo (new = old x ratio)"},
            "applied_ratio": {**_NUM_OR_NULL, "description": "the stretch applied (1 inside the 0.01 % dead-zone)"},
            "octave_factor": _NUM_OR_NULL,
        }, required=["bpm", "beats_per_bar", "bar_s", "tempo_free"]),
        "keys": _obj({
            "a": _KEY, "b": _KEY,
            "score": {**_NUM_OR_NULL, "description": "Camelot compatibility 0..1 (data/cues.py)"},
            "report": {**_STR_OR_NULL, "description": "e.g. '8A -> 9A: compatible (adjacent)'"},
        }),
        "cues": _obj({
            "a_start_s": {**_NUM_OR_NULL, "description": "blend start on A's own timeline"},
            "a_end_s": _NUM_OR_NULL,
            "b_start_s": {**_NUM_OR_NULL, "description": "B's entry on B's own (unstretched) timeline"},
            "b_end_s": _NUM_OR_NULL,
            "bars": {"type": ["integer", "null"], "minimum": 0},
            "kick_offset_s": {**_NUM_OR_NULL, "description": "kick-lock shift of B (positive = later)"},
            "kick_score": _NUM_OR_NULL,
            "manual_a": {"type": "boolean"}, "manual_b": {"type": "boolean"},
        }),
        "blend": _obj({
            "start_s": _NUM, "end_s": _NUM,
            "start_bar": _NUM, "end_bar": _NUM, "bars": _NUM,
        }),
        "grid": _obj({"beats_s": _TIMES, "downbeats_s": _TIMES}),
        "tracks": _obj({"a": _TRACK, "b": _TRACK}),
        "curves": _obj({
            "layout": {"const": FULL.name},
            "n_frames": {"type": "integer", "minimum": 2},
            "time_s": {**_TIMES, "minItems": 2, "description": "frame times (output seconds)"},
            "bar": {**_TIMES, "minItems": 2, "description": "frame positions in bars (1 = blend start)"},
            "params": {
                "type": "object",
                "description": "one entry per parameter name of the full layout, e.g. 'a.bass.eq_low'",
                "additionalProperties": _obj({
                    "unit": {"type": "string", "description": "amplitude, dB, Hz, ratio, position or s"},
                    "values": {**_TIMES, "description": "physical values, one per frame"},
                }),
            },
        }),
        "generator": _obj({
            "kind": {"enum": ["model", "rules"]},
            "model_path": _STR_OR_NULL,
            "recipe": {**_STR_OR_NULL, "description": (
                "the move played (a data/transitions.RECIPES label): the rule planner's recipe, the --style asked "
                "for, or the model's move head's choice; null when the model's sampler chose it (--style free)")},
            "nearest_recipe": {**_STR_OR_NULL, "description": (
                "the recipe label itself, or where the sampler chose the move, the recipe whose typical curves "
                "are closest to the curves played")},
            "style": _STR_OR_NULL,
            "seed": {"type": ["integer", "null"]},
            "guidance_scale": _NUM_OR_NULL,
            "steps": {"type": ["integer", "null"], "minimum": 1},
            "candidates": {"type": "integer", "minimum": 1},
            "scores": {"type": ["array", "null"], "items": {"type": "object"},
                       "description": "per candidate: evaluation metrics (the best is kept)"},
        }, required=("kind", "model_path", "recipe", "style", "seed", "guidance_scale", "steps", "candidates",
                     "scores")),  # nearest_recipe came later: older files lack it
        "output": _obj({
            "loudness_gain_db": {"type": ["array", "null"], "items": _NUM,
                                 "description": "[min, max] of the loudness-compensation gain"},
            "true_peak_dbfs": _NUM_OR_NULL,
            "ceiling_dbfs": _NUM_OR_NULL,
            "limiter_reduction_db": _NUM_OR_NULL,
        }),
        "warnings": {"type": "array", "items": {"type": "string"}},
        "reasons": {"type": "array", "items": {"type": "string"}},
    }, required=["format", "version", "sample_rate", "audio", "tempo", "keys", "cues", "blend", "grid", "tracks",
                 "curves", "generator", "output", "warnings"]),
}


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _check(value, schema: dict, path: str) -> None:
    """The JSON Schema keywords PARAMS_SCHEMA uses; raises ParamsError at the first violation."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in names):
            raise ParamsError(f"{path}: expected {' or '.join(names)}, got {type(value).__name__} {value!r:.60}")
    if "const" in schema and value != schema["const"]:
        raise ParamsError(f"{path}: expected {schema['const']!r}, got {value!r:.60}")
    if "enum" in schema and value not in schema["enum"]:
        raise ParamsError(f"{path}: expected one of {schema['enum']}, got {value!r:.60}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        raise ParamsError(f"{path}: must be >= {schema['minimum']}, got {value}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise ParamsError(f"{path}: needs at least {schema['minItems']} items, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise ParamsError(f"{path}: missing required field {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], f"{path}.{key}")
            elif extra is False:
                raise ParamsError(f"{path}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}[{key!r}]")


def validate_params(doc: dict, where: str = "params") -> dict:
    """Check `doc` against PARAMS_SCHEMA and the cross-field rules; returns it, raises ParamsError.

    Cross-field rules: every curve has `n_frames` finite values, `time_s` and `bar` too; `time_s`
    increases; the parameter names are exactly the full layout's; the blend ends after it starts.
    """
    try:
        _check(doc, PARAMS_SCHEMA, where)
    except ParamsError as error:
        raise ParamsError(str(error)) from None
    curves = doc["curves"]
    n = curves["n_frames"]
    for key in ("time_s", "bar"):
        if len(curves[key]) != n:
            raise ParamsError(f"{where}.curves.{key}: {len(curves[key])} values for n_frames={n}")
    times = np.asarray(curves["time_s"], dtype=np.float64)
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise ParamsError(f"{where}.curves.time_s: frame times must be finite and increasing")
    names = set(curves["params"])
    missing, unknown = sorted(set(FULL.names) - names), sorted(names - set(FULL.names))
    if missing or unknown:
        raise ParamsError(f"{where}.curves.params: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                          f"unknown {unknown[:4]}")
    for name, entry in curves["params"].items():
        values = entry["values"]
        if len(values) != n:
            raise ParamsError(f"{where}.curves.params[{name!r}].values: {len(values)} values for n_frames={n}")
        if not all(math.isfinite(v) for v in values):
            raise ParamsError(f"{where}.curves.params[{name!r}].values: non-finite value")
        unit = FULL.params[FULL.index(name)].unit
        if entry["unit"] != unit:
            raise ParamsError(f"{where}.curves.params[{name!r}].unit: expected {unit!r}, got {entry['unit']!r}")
    if doc["blend"]["end_s"] < doc["blend"]["start_s"]:
        raise ParamsError(f"{where}.blend: end_s {doc['blend']['end_s']} is before start_s {doc['blend']['start_s']}")
    return doc


def read_params(path: str | os.PathLike) -> dict:
    """Load and validate a params.json; ParamsError names the file and the problem in one line."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: not valid JSON ({error})") from None
    return validate_params(doc, where=str(path))


def write_params(path: str | os.PathLike, doc: dict) -> Path:
    """Validate and write atomically (temporary file in the same folder, then os.replace)."""
    validate_params(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return path


# ------------------------------------------------------------------------------------------------
# Building and reading back
# ------------------------------------------------------------------------------------------------


def _round(values, digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


def _null_key() -> dict:
    return {"key": None, "camelot": None, "key_index": None, "confidence": None}


def build_params(
    curves,
    time_s,
    *,
    bpm: float,
    blend: tuple[float, float],
    beats: Sequence[float] = (),
    downbeats: Sequence[float] = (),
    beats_per_bar: int = 4,
    tempo_free: bool = False,
    sample_rate: int = SAMPLE_RATE,
    audio: dict | None = None,
    tempo: dict | None = None,
    keys: dict | None = None,
    cues: dict | None = None,
    tracks: dict | None = None,
    generator: dict | None = None,
    output: dict | None = None,
    warnings: Sequence[str] = (),
    reasons: Sequence[str] = (),
) -> dict:
    """A params.json document from model-space curves [F, 58] (full layout) on output times `time_s` [F].

    Sections left out get their unknown form (nulls); given sections are merged over it.
    """
    u = curves.detach().cpu().numpy() if isinstance(curves, torch.Tensor) else np.asarray(curves)
    if u.ndim != 2 or u.shape[1] != len(FULL):
        raise ValueError(f"curves must be [F, {len(FULL)}] in the full layout, got {u.shape}")
    times = np.asarray(time_s, dtype=np.float64)
    if times.shape != (u.shape[0],):
        raise ValueError(f"time_s must have one time per frame ({u.shape[0]}), got shape {times.shape}")
    bar_s = beats_per_bar * 60.0 / bpm
    start, end = float(blend[0]), float(blend[1])

    def bar_of(t):
        return 1.0 + (np.asarray(t, dtype=np.float64) - start) / bar_s

    physical = FULL.to_physical(torch.from_numpy(np.clip(u, 0.0, 1.0).astype(np.float32))).numpy()
    doc = {
        "format": FORMAT, "version": PARAMS_VERSION, "sample_rate": int(sample_rate),
        "audio": {"path": None, "n_samples": None, "duration_s": None, "full_mix": False,
                  "clip_start_s": round(float(times[0]), 6), "clip_end_s": round(float(times[-1]), 6),
                  **(audio or {})},
        "tempo": {"bpm": float(bpm), "beats_per_bar": int(beats_per_bar), "bar_s": bar_s,
                  "tempo_free": bool(tempo_free),
                  "bpm_a": None, "bpm_b": None, "tempo_ratio": None, "applied_ratio": None, "octave_factor": None,
                  **(tempo or {})},
        "keys": {"a": _null_key(), "b": _null_key(), "score": None, "report": None, **(keys or {})},
        "cues": {"a_start_s": None, "a_end_s": None, "b_start_s": None, "b_end_s": None, "bars": None,
                 "kick_offset_s": None, "kick_score": None, "manual_a": False, "manual_b": False, **(cues or {})},
        "blend": {"start_s": round(start, 6), "end_s": round(end, 6), "start_bar": 1.0,
                  "end_bar": round(float(bar_of(end)), 4), "bars": round((end - start) / bar_s, 4)},
        "grid": {"beats_s": _round(beats, 6), "downbeats_s": _round(downbeats, 6)},
        "tracks": tracks or {"a": {"path": None, "duration_s": None, "offset_s": 0.0, "scale": 1.0},
                             "b": {"path": None, "duration_s": None, "offset_s": 0.0, "scale": 1.0}},
        "curves": {
            "layout": FULL.name, "n_frames": int(u.shape[0]), "time_s": _round(times, 6),
            "bar": _round(bar_of(times), 5),
            "params": {p.name: {"unit": p.unit, "values": _round(physical[:, i], 5 if p.unit != "Hz" else 3)}
                       for i, p in enumerate(FULL.params)},
        },
        "generator": {"kind": "rules", "model_path": None, "recipe": None, "nearest_recipe": None, "style": None,
                      "seed": None, "guidance_scale": None, "steps": None, "candidates": 1, "scores": None,
                      **(generator or {})},
        "output": {"loudness_gain_db": None, "true_peak_dbfs": None, "ceiling_dbfs": None,
                   "limiter_reduction_db": None, **(output or {})},
        "warnings": [str(w) for w in warnings],
        "reasons": [str(r) for r in reasons],
    }
    return validate_params(doc)


def curves_from_params(doc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(model-space curves [F, 58] float32 in the full layout's column order, frame times [F] s)."""
    params = doc["curves"]["params"]
    physical = np.stack([np.asarray(params[name]["values"], dtype=np.float32) for name in FULL.names], axis=1)
    model = FULL.to_model(torch.from_numpy(physical)).clamp(0.0, 1.0).numpy()
    return model.astype(np.float32), np.asarray(doc["curves"]["time_s"], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# What happens when
# ------------------------------------------------------------------------------------------------


def stem_activity(curves) -> dict[str, np.ndarray]:
    """{"a.drums": amplitude [F], ...}: each stem's dry amplitude (re unity) on its representative band."""
    out = {}
    for stem in STEMS:
        amp = stem_amplitudes(curves, stem, STEM_FREQS[stem])  # [F, 2]
        for k, track in enumerate(TRACKS):
            out[f"{track}.{stem}"] = amp[:, k]
    return out


@dataclass
class Event:
    time_s: float
    bar: int  # 1 = the blend's first bar
    beat: int  # 1..beats_per_bar
    text: str  # e.g. "A bass out"

    def where(self, tempo_free: bool = False) -> str:
        if tempo_free:
            return f"{self.time_s:.1f} s"
        return f"bar {self.bar}" + ("" if self.beat == 1 else f" beat {self.beat}")


def _switches(on: np.ndarray, level: np.ndarray, threshold: float, times: np.ndarray, min_frames: int):
    """(time, new state) of each lasting switch of the boolean series `on` (runs shorter than
    `min_frames` inside the series are ignored); times interpolated where `level` crosses `threshold`."""
    state = bool(on[0])
    out = []
    k = 1
    while k < len(on):
        if bool(on[k]) != state:
            run = k
            while run < len(on) and bool(on[run]) != state:
                run += 1
            if run - k >= min_frames or run == len(on):
                a, b = level[k - 1], level[k]
                frac = float(np.clip((threshold - a) / (b - a), 0.0, 1.0)) if b != a else 0.0
                out.append((float(times[k - 1] + frac * (times[k] - times[k - 1])), not state))
                state = not state
            k = run
        else:
            k += 1
    return out


def timeline_events(doc: dict, threshold_db: float = AUDIBLE_DB) -> list[Event]:
    """What happens when, from a params document: stems in/out, sends on/off, filters engaged/open.

    A stem is audible above `threshold_db` (dry amplitude, see `stem_activity`); switches shorter
    than half a beat are ignored. Times are snapped to the nearest beat for the bar/beat label.
    """
    u, times = curves_from_params(doc)
    tempo = doc["tempo"]
    bar_s, bpb = float(tempo["bar_s"]), int(tempo["beats_per_bar"])
    start = float(doc["blend"]["start_s"])
    step = float(np.median(np.diff(times)))
    min_frames = max(1, int(round(0.5 * bar_s / bpb / step)))
    raw: list[tuple[float, str]] = []
    for name, amp in stem_activity(u).items():
        db = 20.0 * np.log10(np.maximum(amp, 1e-6))
        track, stem = name.split(".")
        for t, state in _switches(db > threshold_db, db, threshold_db, times, min_frames):
            raw.append((t, f"{track.upper()} {stem} {'in' if state else 'out'}"))
    physical = {name: np.asarray(doc["curves"]["params"][name]["values"], dtype=np.float64) for name in FULL.names}
    for track in TRACKS:
        for send, label in (("delay_send", "echo"), ("reverb_send", "reverb")):
            level = physical[f"{track}.{send}"]
            for t, state in _switches(level > SEND_ON, level, SEND_ON, times, min_frames):
                raw.append((t, f"{track.upper()} {label} {'on' if state else 'off'}"))
        hpf = np.max([physical[f"{track}.{s}.hpf"] for s in STEMS], axis=0)
        lpf = np.min([physical[f"{track}.{s}.lpf"] for s in STEMS], axis=0)
        for level, limit, label in ((hpf, HPF_ON_HZ, "high-pass"), (-lpf, -LPF_ON_HZ, "low-pass")):
            for t, state in _switches(level > limit, level, limit, times, min_frames):
                raw.append((t, f"{track.upper()} {label} {'in' if state else 'open'}"))
    raw.append((start, "blend starts"))
    raw.append((float(doc["blend"]["end_s"]), "blend ends"))
    events = []
    for t, text in sorted(raw, key=lambda e: e[0]):
        beat_pos = int(round((t - start) / bar_s * bpb))
        events.append(Event(t, beat_pos // bpb + 1, beat_pos % bpb + 1, text))
    return events


def move_note(generator: dict) -> str:
    """The move a params.json generator played, for a title: ' (bass_swap)', ' (its own move, nearest to
    bass_swap)' where the sampler chose it, or '' (older files name nothing)."""
    if generator.get("recipe"):
        return f" ({generator['recipe']})"
    if generator.get("nearest_recipe"):
        return f" (its own move, nearest to {generator['nearest_recipe']})"
    return ""


def summary_markdown(doc: dict, title: str = "Transition summary") -> str:
    """A short markdown report: the two tracks, tempo and key, the blend, and one line per moment
    ("bar 9: A bass out, B bass in"), then the warnings."""
    tempo, keys, blend, gen = doc["tempo"], doc["keys"], doc["blend"], doc["generator"]
    tempo_free = bool(tempo["tempo_free"])
    names = {t: (Path(doc["tracks"][t]["path"]).name if doc["tracks"][t].get("path") else t.upper())
             for t in TRACKS}

    def key_text(k: dict) -> str:
        return f"{k['camelot']} ({k['key']})" if k.get("camelot") else "key unknown"

    lines = [f"# {title}", ""]
    lines.append(f"- **A**: {names['a']}, {tempo.get('bpm_a') or tempo['bpm']:.1f} BPM, {key_text(keys['a'])}")
    ratio = tempo.get("applied_ratio")
    stretch = f", stretched x{ratio:.4f}" if ratio not in (None, 1.0) else ""
    lines.append(f"- **B**: {names['b']}, {tempo.get('bpm_b') or tempo['bpm']:.1f} BPM{stretch}, {key_text(keys['b'])}")
    if keys.get("report"):
        lines.append(f"- **Key**: {keys['report']}")
    grid = ("no beat grid: a time-based blend" if tempo_free
            else f"{tempo['bpm']:.2f} BPM, {tempo['bar_s']:.2f} s per bar")
    lines.append(f"- **Tempo**: {grid}")
    lines.append(f"- **Blend**: {blend['bars']:g} bars, {blend['start_s']:.2f}-{blend['end_s']:.2f} s of the output")
    made = "the model" if gen["kind"] == "model" else "the rule planner"
    lines.append(f"- **Made by**: {made}{move_note(gen)}, seed {gen.get('seed')}"
                 + (f", {gen['candidates']} candidates" if gen.get("candidates", 1) > 1 else ""))
    lines += ["", "## What happens when", ""]
    groups: dict[tuple[int, int], list[Event]] = {}
    for event in timeline_events(doc):
        key = (event.bar, event.beat) if not tempo_free else (round(event.time_s * 10), 0)
        groups.setdefault(key, []).append(event)
    for group in groups.values():
        first = group[0]
        lines.append(f"- {first.where(tempo_free)} ({first.time_s:.2f} s): " + ", ".join(e.text for e in group))
    if doc.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"
