"""Real pairs (data/real_mixes.py, pipeline.py --transitions): inputs, alignment, the curve fit, rejection,
and real pairs in training (dataset.KindWeighted, audio for real pairs only, train.py flags).

The transition is "real-like": benchmarks/bench_real_mixes.py's independent pedalboard chain (shelving EQs,
filters, faders in blocks, reverb, a Rubber Band stretch of B and an offset) over short synthetic tracks,
an 11 s excerpt. It is aligned and fitted once per module with a few fit steps; the full >= 15 dB claim is
the slow test's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import pipeline
import train
from data import real_mixes
from data.real_mixes import (
    RealFitConfig,
    RejectedTransition,
    find_blend,
    find_transitions,
    parse_time,
    process_transition,
    transition_folder,
)
from data.stems import DSPSeparator
from dataset import KindWeighted, TransitionDataset, collate
from effects.fit import fit_curves, monotone_faders, tie_stems
from effects.mixer import DifferentiableDJMixer
from effects.params import FULL, STEMS

ROOT = Path(__file__).resolve().parents[1]
SR = 44_100


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real_mixes", ROOT / "benchmarks" / "bench_real_mixes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread_module")


def make_transition(folder: Path, seed: int = 3, **kwargs) -> dict:
    options = dict(cues=True, margin_s=1.5, blend_s=4.0, duration_a=(20.0, 21.0), duration_b=(15.0, 16.0),
                   min_blend_start=6.0)
    return _bench().make_real_like(seed, folder, **{**options, **kwargs})


@pytest.fixture(scope="module")
def transition(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("transitions") / "t0"
    return folder, make_transition(folder)


@pytest.fixture(scope="module")
def processed(transition):
    """The transition aligned and fitted with an 8-step budget; the fit is scored but never rejected."""
    folder, truth = transition
    pair = process_transition(transition_folder(folder).load(),
                              config=RealFitConfig(steps=8, min_snr_db=-math.inf))
    return pair, truth


# -- the fit's new options (effects/fit.py) -------------------------------------------------------------------
def test_fit_ties_stems_freezes_and_pushes_faders_monotone():
    torch.manual_seed(0)
    n, frames = SR // 2, 8
    a, b = 0.1 * torch.randn(1, 4, 2, n), 0.1 * torch.randn(1, 4, 2, n)
    start = FULL.neutral_curves(frames, 1)
    gains_a = FULL.indices(track="a", control="gain")
    start[0, :, gains_a] = torch.tensor([0.5, 1.0] * (frames // 2))[:, None]  # a zigzag fader
    start[0, :, FULL.index("crossfader")] = 0.3
    mixer = DifferentiableDJMixer()
    with torch.no_grad():
        target = mixer(a, b, start)  # the start is already a perfect fit: only the penalty moves the faders
    tie = tie_stems()
    tie[FULL.index("master_gain")] = -1
    direction = monotone_faders()
    assert direction[gains_a].eq(-1).all() and direction[FULL.index("crossfader")] == 1
    assert direction[FULL.indices(track="b", control="gain")].eq(1).all()
    result = fit_curves(mixer, a, b, target, frames, init=start, steps=4, lr=0.05, tie=tie, monotone=direction,
                        monotonicity=10.0)
    curves = result.curves[0]
    for track in ("a", "b"):
        for control in ("gain", "eq_low", "hpf"):
            columns = curves[:, FULL.indices(track=track, control=control)]
            assert torch.equal(columns, columns[:, :1].expand_as(columns))  # one curve per track
    assert torch.equal(curves[:, FULL.index("master_gain")], start[0, :, FULL.index("master_gain")])

    def backwards(c):
        return torch.relu(c[:, gains_a[0]].diff()).sum()

    assert backwards(curves) < 0.8 * backwards(start[0])
    assert math.isfinite(result.stft_distance) and result.snr_db > 10


# -- inputs ---------------------------------------------------------------------------------------------------
def _noise(path: Path, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.1 * np.random.default_rng(0).standard_normal((int(seconds * SR), 2)), SR)


def test_find_transitions_in_both_input_forms(tmp_path):
    per = tmp_path / "per"
    for name in ("x", "y"):
        for file in ("mix.wav", "a.flac", "track_b.wav"):
            _noise(per / name / file)
    for stem in STEMS:
        _noise(per / "x" / "a_stems" / f"{stem}.wav")
    (per / "x" / "cues.json").write_text(json.dumps({"a_time": 61.0, "mix_b_start": 12.5}))
    found = find_transitions(per)
    assert [f.id for f in found] == ["x", "y"]
    assert found[0].cues == {"a_time": 61.0, "mix_b_start": 12.5} and found[1].cues == {}
    assert found[0].a_stems == per / "x" / "a_stems" and found[0].b_stems is None
    assert found[0].b.name == "track_b.wav"
    (per / "y" / "cues.json").write_text(json.dumps({"when": 3}))
    with pytest.raises(ValueError, match="cue keys"):
        find_transitions(per)
    for bad in ([1], "abc", True):  # a traceback or a message without the file, before
        (per / "y" / "cues.json").write_text(json.dumps({"a_time": bad}))
        with pytest.raises(ValueError, match=r"cues.json: cue 'a_time' must be a number of seconds"):
            find_transitions(per)
    (per / "y" / "cues.json").write_text('{"a_time": NaN}')
    with pytest.raises(ValueError, match="must be a number of seconds"):
        find_transitions(per)
    (per / "y" / "cues.json").unlink()

    whole = tmp_path / "whole"
    _noise(whole / "mix.flac", 3.0)
    for name in ("one.wav", "two.wav", "three.wav"):
        _noise(whole / "tracks" / name)
    (whole / "tracklist.csv").write_text("start,file,title\n0:00,one.wav,One\n1:05.5,two.wav,Two\n150,three.wav,3\n")
    found = find_transitions(whole)
    assert [(f.a.name, f.b.name) for f in found] == [("one.wav", "two.wav"), ("two.wav", "three.wav")]
    assert found[0].window == (20.5, 110.5) and found[0].cues == {"mix_b_start": 45.0}
    assert found[1].window == (105.0, 195.0)
    excerpt = real_mixes._read_excerpt(whole / "mix.flac", (1.0, 2.5))
    assert excerpt.shape == (2, int(1.5 * SR))
    assert parse_time("1:01:35") == 3695 and parse_time("95.5") == 95.5
    (whole / "tracklist.csv").write_text("start,file\n0:00,one.wav\n1:xx,two.wav\n")
    with pytest.raises(ValueError, match="tracklist.csv:3: bad timestamp"):
        find_transitions(whole)
    (whole / "tracklist.csv").write_text("start,file\n0:00,one.wav\n60,missing.wav\n")
    with pytest.raises(ValueError, match="missing.wav"):
        find_transitions(whole)
    with pytest.raises(ValueError, match="below 60"):  # a typo, not 135 s
        parse_time("1:75")
    (whole / "tracklist.csv").write_text("start,file\n0:00,one.wav\n")
    with pytest.raises(ValueError, match="at least two rows"):
        find_transitions(whole)


# -- alignment and fit ----------------------------------------------------------------------------------------
def test_alignment_recovers_offsets_and_tempo_ratio(processed):
    pair, truth = processed
    bench = _bench()
    errors = bench.alignment_error_ms(pair.meta, truth)
    assert errors["a"] <= 5.0 and errors["b"] <= 5.0, errors
    assert errors["ratio_a"] <= 0.2 and errors["ratio_b"] <= 0.2, errors
    alignment = pair.meta["alignment"]
    assert not alignment["a"]["stretched"] and alignment["b"]["stretched"]
    assert abs(pair.meta["tempo_ratio"] - truth["ratio_b"]) < 1e-4
    clip = pair.meta["clip"]  # the clip holds the blend the hidden faders made
    start = clip["start_in_mix"]
    assert start <= truth["blend"][0] + 0.6 and start + clip["duration"] >= truth["blend"][1] - 0.6


def test_fit_improves_on_the_rule_planner_and_writes_a_real_pair(processed):
    pair, _ = processed
    meta, fit = pair.meta, pair.meta["fit"]
    assert meta["kind"] == "real" and meta["recipe"] is None and meta["quality"] == fit["snr_db"]
    assert fit["snr_db"] > fit["init_snr_db"] + 0.5 and fit["loss_last"] < 0.8 * fit["loss_first"], fit
    assert fit["init"].split("+")[0] in fit["recipe_losses"]
    n = meta["clip"]["n_samples"]
    assert pair.stems_a.shape == pair.stems_b.shape == (4, 2, n) and pair.transition.shape == (2, n)
    curves = torch.from_numpy(pair.curves)
    assert curves.shape == (meta["n_frames"], len(FULL)) and 0 <= curves.min() and curves.max() <= 1
    eq = curves[:, FULL.indices(track="b", control="eq_low")]
    assert torch.equal(eq, eq[:, :1].expand_as(eq))  # tied per track by default
    for side in ("a", "b"):
        track = meta["tracks"][side]
        assert {"bpm", "key_index", "beats", "downbeats", "valid"} <= set(track)


def test_beatless_or_foreign_audio_is_rejected_with_a_reason(transition, tmp_path):
    folder, _ = transition
    other = tmp_path / "foreign"
    shutil.copytree(folder, other)
    (other / "cues.json").unlink()
    noise = 0.1 * np.random.default_rng(1).standard_normal((SR * 12, 2))
    sf.write(str(other / "b.wav"), noise, SR)
    shutil.rmtree(other / "b_stems")
    with pytest.raises(RejectedTransition, match="track B"):
        process_transition(transition_folder(other).load(), separator=DSPSeparator(), config=RealFitConfig(steps=1))


# -- pipeline.py --transitions ----------------------------------------------------------------------------------
def test_pipeline_writes_real_pairs_keeps_other_kinds_and_reports_rejections(processed, transition, tmp_path,
                                                                            monkeypatch, caplog):
    pair, _ = processed
    folder, _ = transition
    source = tmp_path / "transitions"
    for name in ("good", "poor"):
        shutil.copytree(folder, source / name)
    out = tmp_path / "processed"
    (out / "pair_synth").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "pairs": [
        {"id": "pair_synth", "path": "pair_synth", "split": "train", "kind": "synthetic"}]}))

    def fake(transition_, separator, config, cache_dir=None):  # the alignment and fit ran in `processed`
        assert config.steps == 3 and config.min_snr_db == 12.0 and separator is None
        if transition_.id == "poor":
            raise RejectedTransition("poor fit: SNR 3.0 dB < 12 dB")
        return pair

    monkeypatch.setattr(real_mixes, "process_transition", fake)
    argv = ["--transitions", str(source), "--output", str(out), "--fit-steps", "3", "--min-snr", "12"]
    assert pipeline.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = sorted(p["kind"] for p in manifest["pairs"])
    assert kinds == ["real", "synthetic"]
    real = next(p for p in manifest["pairs"] if p["kind"] == "real")
    assert real["transition"] == "good" and real["quality"] == pair.meta["quality"]
    written = json.loads((out / real["path"] / "analysis.json").read_text())
    assert written["kind"] == "real" and written["format_version"] == 1
    assert np.load(out / real["path"] / "params.npy").shape == pair.curves.shape
    report = json.loads((out / "real_report.json").read_text())["transitions"]
    assert report["good"]["status"] == "ok" and report["poor"]["status"] == "rejected"
    assert "poor fit" in report["poor"]["reason"] and "poor fit" in caplog.text

    def refuse(*_args, **_kwargs):
        raise AssertionError("finished pairs are not fitted again")

    monkeypatch.setattr(real_mixes, "process_transition", refuse)
    (source / "poor").rename(tmp_path / "poor_gone")
    assert pipeline.main(argv) == 0  # resumable: the good one is kept, nothing is refitted
    assert len(json.loads((out / "manifest.json").read_text())["pairs"]) == 2


def test_pipeline_transitions_bad_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert pipeline.main(["--transitions", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "no transitions" in capsys.readouterr().err
    assert pipeline.main(["--transitions", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2


# -- real pairs in training -------------------------------------------------------------------------------------
class _Kinds:
    def __init__(self, kinds):
        self.kinds = kinds

    def __len__(self):
        return len(self.kinds)

    def __getitem__(self, i):
        return i


def test_kind_weighted_draws_kinds_in_proportion():
    base = _Kinds(["real"] * 2 + ["synthetic"] * 8)
    weighted = KindWeighted(base, {"real": 1, "synthetic": 1}, seed=0, length=20)
    items = [weighted[i] for i in range(len(weighted))]
    assert len(items) == 20 and sum(base.kinds[i] == "real" for i in items) == 10
    assert set(items) == set(range(10))  # the 2 real pairs repeat, every synthetic pair is drawn
    again = KindWeighted(base, {"real": 1, "synthetic": 1}, seed=0, length=20)
    assert [again[i] for i in range(20)] == items
    only = KindWeighted(base, {"real": 1, "synthetic": 0}, seed=0)
    assert len(only) == 10 and {base.kinds[only[i]] for i in range(10)} == {"real"}
    with pytest.raises(ValueError, match="no pairs of the weighted kinds"):
        KindWeighted(base, {"live": 1})


@pytest.fixture
def mixed_folder(processed, tmp_path) -> Path:
    """A processed folder with the real pair and a copy of it labelled synthetic."""
    pair, _ = processed
    out = tmp_path / "mixed"
    out.mkdir()
    pipeline.write_pair(out / "real_0", pair)
    pipeline.write_pair(out / "synth_0", pair)
    meta = json.loads((out / "synth_0" / "analysis.json").read_text())
    (out / "synth_0" / "analysis.json").write_text(json.dumps({**meta, "kind": "synthetic", "recipe": "bass_swap"}))
    pairs = [{"id": "real_0", "path": "real_0", "split": "train", "kind": "real"},
             {"id": "synth_0", "path": "synth_0", "split": "train", "kind": "synthetic", "recipe": "bass_swap"}]
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "sample_rate": SR, "pairs": pairs}))
    return out


def test_dataset_gives_audio_to_real_pairs_only(mixed_folder):
    ds = TransitionDataset(mixed_folder, "train", n_frames=16, n_mels=32, with_audio=("real",))
    assert ds.kinds == ["real", "synthetic"]
    real, synth = ds[0], ds[1]
    assert "target" in real and "stems_a" in real and "target" not in synth
    assert real["style"] == -1 and real["curves"].shape == (16, len(FULL))
    batch = collate([real, synth])
    assert batch["has_audio"].tolist() == [True, False] and batch["curves"].shape == (2, 16, len(FULL))


def test_train_mixes_kinds_and_adds_the_audio_loss_for_real_pairs(mixed_folder, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", str(mixed_folder), "--model-size", "tiny", "--config", "model.n_mels=32",
              "--config", "model.n_frames=16", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
              "--log-every", "1", "--val-every", "100", "--output", str(out)]
    args = [*common, "--steps", "2", "--kind-weights", "real=1,synthetic=1", "--audio-loss-on", "real",
            "--audio-loss-weight", "0.1"]
    assert train.main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert all(r["audio"] > 0 for r in records if r["kind"] == "train")  # every batch holds the real pair
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["kind_weights"] == "real=1,synthetic=1" and config["run"]["audio_loss_on"] == "real"
    for bad, message in ((["--kind-weights", "real"], "KIND=WEIGHT"),
                         (["--kind-weights", "live=1"], "no pairs of the weighted kinds")):
        assert train.main([*common, "--steps", "1", *bad, "--output", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err


# -- the claim, end to end (slow) -------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_like_transitions_reach_15_db_through_the_cli(tmp_path):
    """Both input forms through pipeline.py: a transition folder, and a whole mix with its tracklist."""
    per = tmp_path / "per"
    truths = {"t0": make_transition(per / "t0", seed=11, margin_s=3.0, blend_s=8.0, duration_a=(30.0, 32.0),
                                    duration_b=(24.0, 26.0), min_blend_start=10.0)}
    whole = tmp_path / "whole"
    truth = make_transition(tmp_path / "made", seed=12, cues=False, margin_s=3.0, blend_s=8.0,
                            duration_a=(30.0, 32.0), duration_b=(24.0, 26.0), min_blend_start=10.0)
    (whole / "tracks").mkdir(parents=True)
    shutil.copy(tmp_path / "made" / "mix.wav", whole / "mix.wav")
    for side in ("a", "b"):
        shutil.copy(tmp_path / "made" / f"{side}.wav", whole / "tracks" / f"{side}.wav")
        shutil.copytree(tmp_path / "made" / f"{side}_stems", whole / "tracks" / f"{side}_stems")
    (whole / "tracklist.csv").write_text(f"start,file\n0,a.wav\n{truth['blend'][0] + 1.3:.1f},b.wav\n")
    truths["mix_001"] = truth
    bench = _bench()
    for source in (per, whole):
        out = tmp_path / f"out_{source.name}"
        assert pipeline.main(["--transitions", str(source), "--output", str(out)]) == 0
        report = json.loads((out / "real_report.json").read_text())["transitions"]
        for name, entry in report.items():
            assert entry["status"] == "ok", entry
            errors = bench.alignment_error_ms(entry["meta"], truths[name])
            assert max(errors["a"], errors["b"]) <= 5.0 and max(errors["ratio_a"], errors["ratio_b"]) <= 0.2
            assert entry["meta"]["fit"]["snr_db"] >= 15.0, entry["meta"]["fit"]


def test_a_hard_cut_gets_the_beat_around_it_as_its_blend():
    """Per-beat gains of A and B: a blend, a cut on beat 4, a gap of silence (beats: one every 0.5 s)."""
    beats = np.arange(0.0, 5.01, 0.5)
    blend = np.array([[1, 0]] * 3 + [[1, 1]] * 3 + [[0, 1]] * 4, dtype=float)
    assert find_blend(blend, beats) == (1.5, 3.0)
    cut = np.array([[1, 0]] * 4 + [[0, 1]] * 6, dtype=float)
    assert find_blend(cut, beats) == (1.75, 2.25)  # was (2.0, 2.0): no metric or clip takes a 0 s blend
    gap = np.array([[1, 0]] * 3 + [[0, 0]] * 2 + [[0, 1]] * 5, dtype=float)
    assert find_blend(gap, beats) == (1.5, 2.5)  # the silence is the blend
