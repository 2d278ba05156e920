"""visualize.py: plots and summaries from a params.json, and its command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import visualize
from data.audio import save_audio
from data.report import build_params, write_params
from data.transitions import RECIPES, TransitionContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    """A bass-swap transition's params.json (4 s of lead-in before the clip) and a matching audio file."""
    folder = tmp_path_factory.mktemp("viz")
    bpm, bar = 124.0, 240.0 / 124.0
    start, end = 2 * bar, 10 * bar
    duration = end + 2 * bar
    beats = np.arange(0.0, duration, 60.0 / bpm)
    ctx = TransitionContext(96, duration, bpm, beats, beats[::4], start, end, vocals_a=None, vocals_b=None)
    curves = RECIPES["bass_swap"](ctx, np.random.default_rng(1))
    lead = 4.0
    doc = build_params(curves, ctx.frame_times + lead, bpm=bpm, blend=(start + lead, end + lead), beats=beats + lead,
                       downbeats=beats[::4] + lead, audio={"duration_s": duration + 2 * lead, "n_samples": None},
                       generator={"recipe": "bass_swap", "seed": 3})
    path = write_params(folder / "transition.json", doc)
    t = np.arange(int((duration + 2 * lead) * 44_100)) / 44_100
    audio = 0.2 * np.sin(2 * np.pi * 110 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * t * bpm / 60) ** 8)
    wav = save_audio(folder / "transition.wav", np.stack([audio, audio]).astype(np.float32))
    return path, wav


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_has_a_panel_per_track_and_stem(params_file, tmp_path):
    path, _ = params_file
    doc = json.loads(path.read_text())
    out = visualize.plot_params(doc, tmp_path / "plot.png")
    width, height = png_size(out)
    assert width > 1000 and height > 1000


def test_cli_plot_with_timeline_audio_and_summary(params_file, tmp_path):
    path, wav = params_file
    plain = tmp_path / "plain.png"
    assert visualize.main([str(path), "-o", str(plain)]) == 0
    full = tmp_path / "full.png"
    summary = tmp_path / "summary.md"
    code = visualize.main([str(path), "-o", str(full), "--timeline", "--audio", str(wav), "--summary", str(summary)])
    assert code == 0
    assert png_size(full)[1] > png_size(plain)[1]  # the spectrogram and timeline panels add height
    text = summary.read_text()
    assert "bar 5" in text and "A bass out" in text and "B bass in" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.png", "plain.png", "summary.md"]  # no temporaries


def test_cli_summary_only(params_file, tmp_path):
    path, _ = params_file
    summary = tmp_path / "only.md"
    assert visualize.main([str(path), "--summary", str(summary)]) == 0
    assert summary.read_text().startswith("# Transition summary")
    assert [p.name for p in tmp_path.iterdir()] == ["only.md"]


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("{oops", "not valid JSON"),
    ('{"format": "djmix.params"}', "missing required field"),
])
def test_cli_rejects_bad_params_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "params.json"
    if content is not None:
        path.write_text(content)
    assert visualize.main([str(path), "-o", str(tmp_path / "plot.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "plot.png").exists()


def test_cli_rejects_unreadable_audio(params_file, tmp_path, capsys):
    path, _ = params_file
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    assert visualize.main([str(path), "-o", str(tmp_path / "plot.png"), "--audio", str(bad)]) == 1
    assert "bad.wav" in capsys.readouterr().err
    assert not (tmp_path / "plot.png").exists()


def test_cli_rejects_audio_of_another_length_than_the_params(params_file, tmp_path, capsys):
    path, wav = params_file
    x, sr = sf.read(wav, dtype="float32")
    other = tmp_path / "other.wav"
    sf.write(other, np.concatenate([x, x]), sr, subtype="FLOAT")  # twice as long: not this transition
    assert visualize.main([str(path), "-o", str(tmp_path / "plot.png"), "--audio", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "other.wav: lasts" in err and "\n" not in err
    assert not (tmp_path / "plot.png").exists()


def test_cli_rejects_an_image_type_matplotlib_cannot_write_before_writing(params_file, tmp_path, capsys):
    path, _ = params_file
    summary = tmp_path / "summary.md"
    summary.write_text("earlier summary")
    assert visualize.main([str(path), "-o", str(tmp_path / "plot.xyz"), "--summary", str(summary)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cannot write .xyz images" in err and "\n" not in err
    assert summary.read_text() == "earlier summary" and not (tmp_path / "plot.xyz").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert visualize.main([str(path), "-o", str(blocker / "plot.png")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
