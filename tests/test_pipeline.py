"""pipeline.py and dataset.py on synthetic tracks: layout, splits by track, alignment, resume, bad files."""

import json

import numpy as np
import pytest
import scipy.signal as ss
import soundfile as sf
import torch

import pipeline
from data import transitions as T
from data.cues import select_cues
from data.pairs import Track, analysis_from_truth, build_pair, pick_pairs
from data.stems import OracleSeparator, load_stems
from data.synth import synthesize_track
from dataset import TransitionDataset, collate, read_manifest
from effects.params import FULL

SR = 44_100


def _track(seed, bpm, key, style="house", duration=50.0):
    synth = synthesize_track(seed, style=style, duration=duration, bpm=bpm, key_index=key)
    stems = torch.from_numpy(synth.stems)
    audio = stems.sum(0)
    return Track(f"t{seed}", audio, analysis_from_truth(synth.truth, audio), OracleSeparator(stems))


def _kick_lag_ms(a, b, start, end, bpm):
    """Lag (ms) that best aligns the low-band onsets of a and b over [start, end] seconds."""
    s, e = int(start * SR), int(end * SR)
    sos = ss.butter(4, 300, "low", fs=SR, output="sos")

    def onsets(x):
        env = ss.resample_poly(np.abs(ss.hilbert(ss.sosfilt(sos, x[s:e]))), 1, 44)
        return np.maximum(np.diff(env, prepend=env[0]), 0)

    ea, eb = onsets(a), onsets(b)
    xc = ss.correlate(ea - ea.mean(), eb - eb.mean(), "full")
    lags = np.arange(-len(eb) + 1, len(ea))
    keep = np.abs(lags) < 60 / bpm * 1002.27 / 2
    return lags[keep][np.argmax(xc[keep])] / 1002.27 * 1000


def test_build_pair_is_beat_locked_and_consistent():
    a, b = _track(11, 124.0, 9), _track(12, 126.5, 9)
    pair = build_pair(a, b, np.random.default_rng(0), n_frames=64, bars=8, recipe="bass_swap",
                      plan=select_cues(a.analysis, b.analysis, bars=8))
    n = pair.stems_a.shape[-1]
    assert pair.stems_b.shape == (4, 2, n) and pair.transition.shape == (2, n)
    assert pair.curves.shape == (64, len(FULL)) and 0 <= pair.curves.min() and pair.curves.max() <= 1
    clip = pair.meta["clip"]
    assert clip["n_samples"] == n and 0 < clip["blend_start"] < clip["blend_end"] <= clip["duration"]
    # B was stretched to A's tempo and placed on A's grid: kicks coincide across the blend
    lag = _kick_lag_ms(pair.stems_a[0].mean(0).numpy(), pair.stems_b[0].mean(0).numpy(),
                       clip["blend_start"], clip["blend_end"], pair.meta["bpm"])
    assert abs(lag) <= 5.0
    # clip-time analyses: B's stretched tempo equals A's, downbeats inside the clip
    tracks = pair.meta["tracks"]
    assert tracks["b"]["bpm"] == pytest.approx(tracks["a"]["bpm"], rel=1e-3)
    assert all(0 <= t <= clip["duration"] for t in tracks["b"]["downbeats"])


def test_build_pair_with_a_deciding_teacher():
    a, b = _track(11, 124.0, 9), _track(12, 126.5, 9)
    plan = select_cues(a.analysis, b.analysis, bars=8)
    pairs = [build_pair(a, b, np.random.default_rng(seed), n_frames=64, bars=8, plan=plan, render=False, decide=True)
             for seed in (0, 1)]
    label, facts = T.choose_recipe(pairs[0].stems_a, T.TransitionContext.from_dict(pairs[0].meta["context"]))
    assert pairs[0].recipe == label and pairs[0].meta["teacher_facts"] == pytest.approx(facts)
    assert np.array_equal(pairs[0].curves, pairs[1].curves)  # the music decides, not the rng


def test_a_target_above_full_scale_is_stored_scaled_and_read_back_at_the_mixers_level(tmp_path, caplog):
    """transition.flac is 24-bit: a render peaking above 1 is written times target_gain (analysis.json) and the
    dataset divides it out, so the audio-loss target is the mixer's render, not a clipped copy of it."""
    from data.pairs import Pair
    from effects.mixer import DifferentiableDJMixer

    a, b = _track(11, 124.0, 9), _track(12, 126.5, 9)
    pair = build_pair(a, b, np.random.default_rng(0), n_frames=16, bars=4, recipe="bass_swap", render=False,
                      plan=select_cues(a.analysis, b.analysis, bars=4))
    curves = pair.curves.copy()
    curves[:, FULL.index("master_gain")] = 1.0  # the master at +6 dB: the stems stay in range, the mix does not
    with torch.no_grad():
        render = DifferentiableDJMixer()(pair.stems_a[None], pair.stems_b[None], torch.from_numpy(curves)[None],
                                         bpm=pair.meta["bpm"])[0]
    peak = float(render.abs().max())
    assert peak > 1.05 and max(float(pair.stems_a.abs().max()), float(pair.stems_b.abs().max())) < 1.0
    loud = Pair(pair.stems_a, pair.stems_b, curves, render, pair.recipe, pair.meta)
    quiet = Pair(pair.stems_a, pair.stems_b, pair.curves, render * (0.5 / peak), pair.recipe, pair.meta)
    with caplog.at_level("WARNING"):
        pipeline.write_pair(tmp_path / "loud", loud)
        pipeline.write_pair(tmp_path / "quiet", quiet)
    assert "will clip" not in caplog.text
    meta = json.loads((tmp_path / "loud" / "analysis.json").read_text())
    assert meta["target_gain"] == pytest.approx(pipeline.TARGET_PEAK / peak)
    assert "target_gain" not in json.loads((tmp_path / "quiet" / "analysis.json").read_text())  # layout as before
    assert "target_gain" not in pair.meta  # the caller's meta is not changed
    stored, _ = sf.read(tmp_path / "loud" / "transition.flac", always_2d=True)
    assert np.abs(stored).max() <= 1.0

    pipeline.write_manifest(tmp_path, [{"id": name, "path": name, "split": "train", "kind": "synthetic"}
                                       for name in ("loud", "quiet")], "synthetic", 16)
    ds = TransitionDataset(tmp_path, "train", n_frames=16, n_mels=32, with_audio=True)
    for item, expected in zip((ds[0], ds[1]), (render, quiet.transition)):
        assert item["target"].shape == expected.shape
        # 24-bit quantisation (2^-23 of full scale, over the gain) is the only difference
        assert float((item["target"] - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_pick_pairs_respects_tempo_and_uses_each_track_once():
    tracks = {t.id: t.analysis for t in (_track(1, 124, 0, duration=30), _track(2, 125, 7, duration=30),
                                         _track(3, 90, 0, "hiphop", duration=30))}
    pairs = pick_pairs(tracks, np.random.default_rng(0))
    assert pairs and all({"t1", "t2"} == {a, b} for a, b in pairs)
    assert len({a for a, _ in pairs}) == len(pairs)


@pytest.mark.slow
def test_pipeline_synthetic_end_to_end(tmp_path):
    out = tmp_path / "processed"
    args = ["--synthetic", "8", "--output", str(out), "--max", "6", "--duration", "60", "--bars", "8",
            "--n-frames", "64", "--seed", "3"]
    assert pipeline.main(args) == 0
    manifest = read_manifest(out)
    pairs = manifest["pairs"]
    assert pairs and manifest["format_version"] == 1
    # splits by track: no track in two splits
    split_of_track = {}
    for p in pairs:
        for track in p["tracks"]:
            assert split_of_track.setdefault(track, p["split"]) == p["split"]
    folder = out / pairs[0]["path"]
    meta = json.loads((folder / "analysis.json").read_text())
    stems = load_stems(folder / "track_a_stems")
    assert stems.shape[0] == 4 and np.load(folder / "params.npy").shape == (64, len(FULL))
    assert meta["kind"] == "synthetic" and meta["recipe"] == pairs[0]["recipe"]
    # the dataset reads it back, batches it
    split = pairs[0]["split"]
    ds = TransitionDataset(out, split, n_frames=64, augment=True)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["curves"].shape == (len(ds), 64, len(FULL))
    assert batch["feats_a"].stem_mels.shape[1:] == (4, 128, 64)
    # resumable: a second run keeps every finished pair untouched
    stamps = {p["id"]: (out / p["path"] / "params.npy").stat().st_mtime_ns for p in pairs}
    assert pipeline.main(args) == 0
    assert {p["id"]: (out / p["path"] / "params.npy").stat().st_mtime_ns for p in pairs} == stamps
    # ... but not with another curve length, which the manifest would then misdescribe
    other = [x if x != "64" else "32" for x in args]
    assert pipeline.main(other) == 2
    assert {p["id"]: (out / p["path"] / "params.npy").stat().st_mtime_ns for p in pairs} == stamps
    assert read_manifest(out)["n_frames"] == 64


def test_library_with_a_corrupt_file_reports_and_skips(tmp_path, caplog):
    library = tmp_path / "lib"
    library.mkdir()
    (library / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(library / "silence.wav", np.zeros((SR, 2), dtype=np.float32), SR)
    code = pipeline.main(["--tracks", str(library), "--output", str(tmp_path / "out"), "--separator", "dsp"])
    assert code == 1  # nothing usable, but no crash
    assert "broken" in caplog.text and "silence" in caplog.text and "skipped" in caplog.text


def test_manifest_paths_may_not_escape(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "pairs": [{"id": "x", "path": "../elsewhere", "split": "train"}]}))
    with pytest.raises(ValueError, match="escapes"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing")


def test_missing_tracks_folder_is_a_clear_error(tmp_path, capsys):
    assert pipeline.main(["--tracks", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("in the way")
    assert pipeline.main(["--synthetic", "2", "--output", str(tmp_path / "a_file" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output") and "cannot create the folder" in err and "\n" not in err


@pytest.mark.parametrize("flags, message", [
    (["--synthetic", "0"], "--synthetic needs N >= 2"), (["--synthetic", "-3"], "--synthetic needs N >= 2"),
    (["--synthetic", "4", "--bars", "0"], "--bars must be in 4..32"),
    (["--synthetic", "4", "--n-frames", "1"], "--n-frames must be >= 2"),
    (["--synthetic", "4", "--duration", "-5"], "--duration must be > 0"),
    (["--synthetic", "4", "--max", "0"], "--max must be >= 1"),
])
def test_settings_every_pair_would_fail_on_are_refused_before_any_work(tmp_path, capsys, flags, message):
    assert pipeline.main([*flags, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err and not (tmp_path / "out").exists()


def test_synthetic_crates_stay_in_style_ranges():
    from data.synth import STYLES

    sources = pipeline.synthetic_sources(400, seed=5)
    assert {s.style for s in sources} == set(STYLES)  # every style, including narrow-range ones
    for s in sources:
        lo, hi = STYLES[s.style].bpm_range
        assert lo <= s.bpm <= hi


@pytest.mark.slow
def test_all_to_puts_every_pair_in_one_split(tmp_path):
    """--all-to test: a held-out evaluation set (another --seed), every pair in the test split, --max pairs."""
    out = tmp_path / "heldout"
    args = ["--synthetic", "4", "--output", str(out), "--max", "1", "--duration", "40", "--bars", "4",
            "--n-frames", "32", "--seed", "5", "--all-to", "test", "--teacher", "decide"]
    assert pipeline.main(args) == 0
    pairs = read_manifest(out)["pairs"]
    assert len(pairs) == 1 and {p["split"] for p in pairs} == {"test"}
    meta = json.loads((out / pairs[0]["path"] / "analysis.json").read_text())
    assert set(meta["teacher_facts"]) == {"a_vocal_late", "a_late"} and "teacher_scores" not in meta
