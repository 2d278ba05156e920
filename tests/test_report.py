"""params.json (data/report.py): schema, validation messages, curve round trip, what happens at which bar."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from data.report import (
    PARAMS_SCHEMA,
    ParamsError,
    build_params,
    curves_from_params,
    move_note,
    read_params,
    stem_activity,
    summary_markdown,
    timeline_events,
    validate_params,
    write_params,
)
from data.transitions import RECIPES, TransitionContext
from effects.params import FULL


def context(bars: int = 16, bpm: float = 120.0, lead_bars: int = 2) -> TransitionContext:
    bar = 240.0 / bpm
    start = lead_bars * bar
    end = start + bars * bar
    duration = end + lead_bars * bar
    beats = np.arange(0.0, duration + 1e-9, 60.0 / bpm)
    downbeats = np.arange(0.0, duration + 1e-9, bar)
    return TransitionContext(128, duration, bpm, beats, downbeats, start, end, vocals_a=[(0.0, start + 8 * bar)],
                             vocals_b=[(start + 8 * bar, duration)])


def document(recipe: str = "bass_swap", offset: float = 3.0) -> tuple[dict, np.ndarray, TransitionContext]:
    ctx = context()
    curves = RECIPES[recipe](ctx, np.random.default_rng(0))
    doc = build_params(curves, ctx.frame_times + offset, bpm=ctx.bpm,
                       blend=(ctx.blend_start + offset, ctx.blend_end + offset), beats=ctx.beats + offset,
                       downbeats=ctx.downbeats + offset, generator={"recipe": recipe, "seed": 0})
    return doc, curves, ctx


def test_built_document_is_valid_and_round_trips_the_curves():
    doc, curves, ctx = document()
    assert validate_params(doc) is doc
    assert sorted(doc["curves"]["params"]) == sorted(FULL.names)
    assert doc["curves"]["params"]["a.bass.eq_low"]["unit"] == "dB"
    assert doc["curves"]["params"]["b.drums.hpf"]["unit"] == "Hz"
    assert doc["blend"]["bars"] == pytest.approx(16.0) and doc["blend"]["end_bar"] == pytest.approx(17.0)
    assert doc["curves"]["bar"][0] == pytest.approx(1.0 - 2.0, abs=1e-4)  # two bars of lead-in: bar -1
    model, times = curves_from_params(doc)
    assert model.shape == curves.shape
    assert np.abs(model - np.clip(curves, 0, 1)).max() < 1e-4
    assert np.allclose(times, ctx.frame_times + 3.0, atol=1e-5)


def test_json_round_trip_and_atomic_write(tmp_path):
    doc, _, _ = document()
    path = write_params(tmp_path / "params.json", doc)
    assert read_params(path) == json.loads(json.dumps(doc))
    assert [p.name for p in tmp_path.iterdir()] == ["params.json"]


def test_schema_is_a_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    doc, _, _ = document()
    jsonschema.validate(doc, PARAMS_SCHEMA)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("tempo"), "missing required field 'tempo'"),
    (lambda d: d["tempo"].update(bpm="fast"), "params.tempo.bpm: expected number"),
    (lambda d: d["curves"]["params"].pop("a.bass.gain"), "missing ['a.bass.gain']"),
    (lambda d: d["curves"]["params"]["crossfader"]["values"].pop(), "values: 127 values for n_frames=128"),
    (lambda d: d["curves"]["params"]["a.bass.hpf"].update(unit="kHz"), "expected 'Hz'"),
    (lambda d: d["curves"]["time_s"].reverse(), "increasing"),
    (lambda d: d["generator"].update(kind="magic"), "expected one of ['model', 'rules']"),
    (lambda d: d.update(version=99), "params.version: expected 1"),
])
def test_validation_names_the_field(edit, message):
    doc, _, _ = document()
    bad = copy.deepcopy(doc)
    edit(bad)
    with pytest.raises(ParamsError, match=None) as error:
        validate_params(bad)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_read_params_errors_are_one_line(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        read_params(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ParamsError, match="not valid JSON"):
        read_params(broken)


def test_stem_activity_follows_the_faders():
    doc, curves, ctx = document("stem_handover")
    activity = stem_activity(curves)
    assert set(activity) == {f"{t}.{s}" for t in "ab" for s in ("drums", "bass", "vocals", "other")}
    first, last = 0, -1
    assert activity["a.bass"][first] > 0.5 and activity["b.bass"][first] < 0.01
    assert activity["a.bass"][last] < 0.01 and activity["b.bass"][last] > 0.5


def test_bass_swap_reads_as_a_handover_on_the_grid():
    doc, _, ctx = document("bass_swap")
    events = timeline_events(doc)
    texts = [e.text for e in events]
    assert "A bass out" in texts and "B bass in" in texts
    swap = [e for e in events if e.text in ("A bass out", "B bass in")]
    assert max(e.time_s for e in swap) - min(e.time_s for e in swap) <= 2 * 60.0 / ctx.bpm + 1e-6
    assert all(1 <= e.bar <= 17 for e in swap)
    assert events[0].text == "blend starts" and events[0].bar == 1 and events[0].beat == 1


def test_summary_groups_events_by_bar():
    doc, _, _ = document("echo_out")
    text = summary_markdown(doc)
    assert text.startswith("# Transition summary")
    lines = [line for line in text.splitlines() if line.startswith("- bar ")]
    assert lines and all(":" in line for line in lines)
    assert any("A echo on" in line for line in lines)
    assert "16 bars" in text and "echo_out" in text


def test_move_note_names_the_move_played():
    """The summary and the plot title say which move was played: the recipe, else the nearest recipe to the
    sampler's own move, else nothing (older params.json files)."""
    assert move_note({"recipe": "echo_out", "nearest_recipe": "echo_out"}) == " (echo_out)"
    assert move_note({"recipe": None, "nearest_recipe": "bass_swap"}) == " (its own move, nearest to bass_swap)"
    assert move_note({"recipe": None}) == ""
    doc, _, _ = document("echo_out")
    doc["generator"].update(kind="model", recipe=None, nearest_recipe="filter_sweep")
    validate_params(doc)
    assert "the model (its own move, nearest to filter_sweep)" in summary_markdown(doc)
