"""inference.py end to end on short synthetic tracks (exact stems and ground truth), and its bad-input handling.

Everything runs offline: tracks come from data/synth.py, stems are the tracks' own (oracle) stems,
demucs_unittest or the DSP fallback, and the model is a tiny randomly initialised checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import inference as I
from data.audio import save_audio
from data.cues import low_band_envelope
from data.keys import key_index
from data.pairs import analysis_from_truth
from data.report import read_params
from data.synth import synthesize_track, write_track
from data.transitions import RECIPES
from dataset import STYLE_LABELS
from effects.output import true_peak_db
from model import create_ema, create_model, get_config, save_checkpoint

SR = 44_100
SECONDS = 32.0

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two synthetic house tracks (124 and 122 BPM, 8A and 9A) on disk, with their stems and truth."""
    root = tmp_path_factory.mktemp("inference")
    tracks = {}
    for name, seed, bpm, key in (("a", 21, 124.0, "8A"), ("b", 22, 122.0, "9A")):
        track = synthesize_track(seed, style="house", duration=SECONDS, bpm=bpm, key_index=key_index(key))
        folder = write_track(track, root / f"track_{name}")
        tracks[name] = SimpleNamespace(mix=folder / "mix.wav", stems=folder / "stems", truth=track.truth,
                                       audio=torch.from_numpy(track.mix), stem_array=track.stems)
    return SimpleNamespace(root=root, a=tracks["a"], b=tracks["b"], cache=root / "cache")


def run_api(work, **options):
    """One transition through the library call; one candidate (the planner's own first draw) unless asked."""
    kwargs = dict(model="rules", stems_a=work.a.stems, stems_b=work.b.stems, bars=8, context=6.0,
                  cache_dir=work.cache, device="cpu", candidates=1)
    kwargs.update(options)
    return I.generate_transition(work.a.mix, work.b.mix, **kwargs)


@pytest.fixture(scope="module")
def rules(work):
    """One rule-planner transition with oracle stems, saved with its plot and summary."""
    result = run_api(work)
    out = work.root / "rules"
    paths = result.save(out / "transition.wav", plot_path=out / "transition.png", summary_path=out / "transition.md")
    return SimpleNamespace(result=result, wav=paths[0], params=paths[1], png=paths[2], md=paths[3], out=out)


def cli(*args) -> int:
    return I.main([str(a) for a in args])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# The whole chain
# ------------------------------------------------------------------------------------------------


def test_output_rate_length_and_peak(rules):
    audio, rate = sf.read(rules.wav, dtype="float32", always_2d=True)
    doc = read_params(rules.params)
    assert rate == SR == doc["sample_rate"] and audio.shape[1] == 2
    assert audio.shape[0] == doc["audio"]["n_samples"]
    blend = doc["blend"]
    assert blend["bars"] == pytest.approx(8.0)
    # 6 s of A before the blend and 6 s of B after it (both tracks have that much)
    assert blend["start_s"] == pytest.approx(6.0, abs=1 / SR)
    assert audio.shape[0] / SR == pytest.approx(blend["end_s"] + 6.0, abs=2 / SR)
    assert true_peak_db(audio.T) <= -1.0 + 1e-3
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_params_json_is_valid_and_complete(rules, work):
    doc = read_params(rules.params)  # validates against the schema
    assert doc["audio"]["path"] == "transition.wav"
    assert doc["tempo"]["bpm_a"] == pytest.approx(124.0, abs=0.1)
    assert doc["tempo"]["bpm_b"] == pytest.approx(122.0, abs=0.1)
    assert doc["tempo"]["applied_ratio"] == pytest.approx(124.0 / 122.0, rel=2e-3)
    assert doc["keys"]["report"] and doc["keys"]["a"]["camelot"]
    assert doc["cues"]["bars"] == 8 and doc["tracks"]["b"]["scale"] == doc["tempo"]["applied_ratio"]
    assert doc["generator"] == {**doc["generator"], "kind": "rules", "recipe": "bass_swap", "seed": 0, "candidates": 1}
    assert doc["curves"]["n_frames"] == I.RULE_FRAMES
    times = doc["curves"]["time_s"]
    assert 0.0 <= times[0] < doc["blend"]["start_s"] < doc["blend"]["end_s"] < times[-1] <= doc["audio"]["duration_s"]
    assert doc["grid"]["downbeats_s"] and set(doc["grid"]["downbeats_s"]) <= set(doc["grid"]["beats_s"])


def _kicks(stem: torch.Tensor, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, strength) of the strongest low-band onset within +-25 ms of each time in `near` (s);
    strength relative to the stem's strongest onset there."""
    env, rate = low_band_envelope(stem.numpy(), SR)
    onset = np.maximum(np.diff(env, prepend=env[:1]), 0.0)
    times, peaks = [], []
    for t in near:
        i = int(round(t * rate))
        lo, hi = max(0, i - 25), min(len(onset), i + 26)
        k = lo + int(np.argmax(onset[lo:hi]))
        times.append(k / rate)
        peaks.append(onset[k])
    peaks = np.asarray(peaks)
    return np.asarray(times), peaks / max(peaks.max(), 1e-12)


def test_transition_is_beat_aligned(rules, work):
    """In the overlap, B's beats land on A's: by the params' track mapping (ground-truth beats) and in the
    audio the mixer received (the kicks of the two drum stems, where both tracks have one)."""
    doc = read_params(rules.params)
    ta, tb = doc["tracks"]["a"], doc["tracks"]["b"]
    beats_a = (np.asarray(work.a.truth["beats"]) - ta["offset_s"]) / ta["scale"]  # output seconds
    beats_b = (np.asarray(work.b.truth["beats"]) - tb["offset_s"]) / tb["scale"]
    start, end = doc["blend"]["start_s"], doc["blend"]["end_s"]
    overlap = beats_a[(beats_a > start) & (beats_a < end)]
    assert len(overlap) >= 30
    gap = np.array([np.min(np.abs(beats_b - t)) for t in overlap])
    assert gap.max() < 0.010

    clip = rules.result.clip
    shift = ta["offset_s"] - clip.start_in_a  # clip time = output time + shift
    kick_a, strength_a = _kicks(clip.stems_a[0], overlap + shift)
    kick_b, strength_b = _kicks(clip.stems_b[0], overlap + shift)
    both = (strength_a > 0.3) & (strength_b > 0.3)  # a kick on this beat in both tracks
    assert both.sum() >= 16
    assert np.abs(kick_b - kick_a)[both].max() < 0.010


def test_plot_and_summary_are_written(rules):
    assert rules.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = rules.md.read_text()
    assert "bar 1" in text and "B bass in" in text and "A bass out" in text
    assert files_in(rules.out) == ["transition.json", "transition.md", "transition.png", "transition.wav"]


def test_a_failed_save_leaves_no_file(rules, tmp_path, monkeypatch):
    import visualize

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(visualize, "plot_params", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        rules.result.save(tmp_path / "t.wav", plot_path=tmp_path / "t.png", summary_path=tmp_path / "t.md")
    assert files_in(tmp_path) == []  # neither the audio nor the params, nor a temporary


def test_duration_is_rounded_to_bars(work):
    analysis = analysis_from_truth(work.a.truth, work.a.audio)  # 124 BPM: 1.935 s per bar
    assert I._requested_bars(None, 31.0, analysis) == (16, True)
    assert I._requested_bars(None, None, analysis) == (I.DEFAULT_BARS, False)
    assert I._requested_bars(8, None, analysis) == (8, True)
    with pytest.raises(I.InferenceError, match="--duration 200 s is 103 bars"):
        I._requested_bars(None, 200.0, analysis)


def test_cli_same_seed_same_output(work, tmp_path):
    common = [work.a.mix, work.b.mix, "--stems-a", work.a.stems, "--stems-b", work.b.stems, "--bars", 4,
              "--context", 2, "--model", "rules", "--cache-dir", work.cache, "--seed", 5, "-q"]
    assert cli(*common, "-o", tmp_path / "one.wav") == 0
    assert cli(*common, "-o", tmp_path / "two.wav", "--save-params", tmp_path / "two_params.json") == 0
    one_audio, two_audio = (sf.read(tmp_path / name, dtype="float32")[0] for name in ("one.wav", "two.wav"))
    assert np.array_equal(one_audio, two_audio)  # (the files' bytes differ: libsndfile stamps a time in them)
    one, two = read_params(tmp_path / "one.json"), read_params(tmp_path / "two_params.json")
    assert one["curves"] == two["curves"] and one["generator"]["seed"] == 5
    assert files_in(tmp_path) == ["one.json", "one.wav", "two.wav", "two_params.json"]


def test_rule_planner_seed_changes_the_curves(rules):
    planner = I.RulePlanner()
    same = [planner.propose(rules.result.clip, 1, seed)[0] for seed in (0, 0, 1)]
    assert np.array_equal(same[0], same[1]) and not np.array_equal(same[0], same[2])
    assert np.array_equal(same[0][0], rules.result.curves)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("tiny")
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model, ema=create_ema(model))
    return path


def test_steps_beyond_the_schedule_are_recorded_as_taken(tiny_checkpoint):
    planner = I._planner(tiny_checkpoint)
    cap = planner.model.config.diffusion.train_timesteps
    assert I._steps_used(planner, 10**6) == cap and I._steps_used(planner, 7) == 7


def test_model_checkpoint_samples_deterministically(work, tiny_checkpoint):
    runs = [run_api(work, model=tiny_checkpoint, steps=2, bars=4, context=2.0, seed=seed) for seed in (3, 3, 4)]
    first, again, other = runs
    assert first.curves.shape == (32, 58)  # the tiny preset's n_frames, expanded to the full layout
    assert torch.equal(first.audio, again.audio) and np.array_equal(first.curves, again.curves)
    assert not np.array_equal(first.curves, other.curves)
    gen = first.params["generator"]
    assert gen["kind"] == "model" and gen["model_path"] == str(tiny_checkpoint)
    assert gen["guidance_scale"] == 2.0 and gen["steps"] == 2 and gen["recipe"] is None
    assert gen["nearest_recipe"] in RECIPES  # the sampler's own move, named after the recipe it is closest to


def test_a_move_head_picks_the_style_and_params_json_names_it(work, tmp_path):
    """A model with a move head: its argmax is the style the sampler is conditioned on (the same curves as asking
    for that style), params.json's generator.recipe names it; --style free leaves the move to the sampler."""
    torch.manual_seed(0)
    model = create_model(get_config("tiny", model__n_styles=9, model__move_head=True))
    with torch.no_grad():  # a head sure of filter_sweep, and a denoiser off adaLN-Zero's init
        model.move_head.net[-1].bias.copy_(torch.arange(9) == STYLE_LABELS.index("filter_sweep")).mul_(20.0)
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "head.pt"
    save_checkpoint(path, model, ema=create_ema(model))
    auto, asked, free = (run_api(work, model=path, steps=2, bars=4, context=2.0, style=style)
                         for style in (None, "filter_sweep", "free"))
    assert auto.params["generator"]["recipe"] == "filter_sweep" and auto.params["generator"]["style"] is None
    assert np.array_equal(auto.curves, asked.curves) and not np.array_equal(auto.curves, free.curves)
    assert free.params["generator"]["recipe"] is None and free.params["generator"]["nearest_recipe"] in RECIPES
    assert auto.params["generator"]["nearest_recipe"] == "filter_sweep"
    # with imposed-style tokens a --style is an asked-for move, the head's choice the music's own: other tokens
    model = create_model(get_config("tiny", model__n_styles=9, model__move_head=True, model__imposed_styles=True))
    with torch.no_grad():
        model.move_head.net[-1].bias.copy_(torch.arange(9) == STYLE_LABELS.index("filter_sweep")).mul_(20.0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(path, model, ema=create_ema(model))
    auto, asked = (run_api(work, model=path, steps=2, bars=4, context=2.0, style=style)
                   for style in (None, "filter_sweep"))
    assert auto.params["generator"]["recipe"] == asked.params["generator"]["recipe"] == "filter_sweep"
    assert not np.array_equal(auto.curves, asked.curves)


def test_default_model_is_used_when_present(monkeypatch, tiny_checkpoint, tmp_path, caplog):
    monkeypatch.setattr(I, "DEFAULT_MODEL", tmp_path / "checkpoints" / "default.pt")
    with caplog.at_level(logging.INFO, logger="inference"):
        planner = I._planner(None)
    assert isinstance(planner, I.RulePlanner)
    assert "no trained model" in caplog.text and "rule-based planner" in caplog.text
    monkeypatch.setattr(I, "DEFAULT_MODEL", tiny_checkpoint)
    planner = I._planner(None)
    assert isinstance(planner, I.ModelPlanner) and planner.model_path == str(tiny_checkpoint)
    assert not planner.model.training
    assert isinstance(I._planner("rules"), I.RulePlanner)


def test_full_mix_holds_all_of_a_then_the_rest_of_b(work):
    result = run_api(work, bars=4, context=2.0, full_mix=True)
    doc = result.params
    ta, tb = doc["tracks"]["a"], doc["tracks"]["b"]
    assert doc["audio"]["full_mix"] is True
    assert ta["offset_s"] == pytest.approx(0.0, abs=1 / SR)  # the file starts with A's first sample
    end_of_b = (SECONDS - tb["offset_s"]) / tb["scale"]
    assert result.audio.shape[-1] / SR == pytest.approx(end_of_b, abs=2 / SR)
    head = slice(0, 5 * SR)  # A alone, untouched (the limiter only acts near overs)
    a_head = work.a.audio[:, head]
    assert torch.corrcoef(torch.stack([result.audio[0, head], a_head[0]]))[0, 1] > 0.999
    tail = result.audio[:, -3 * SR:]
    assert tail.abs().max() > 0.05  # B plays to its end


def test_a_large_beat_phase_error_of_the_kept_transition_is_a_warning(work, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    real = evaluate.score_curves

    def with_phase(phase_ms):
        def scored(*args, **kwargs):
            return [{**m, "beat_phase_ms": phase_ms} for m in real(*args, **kwargs)]
        return scored

    for phase_ms, warned in ((80.0, True), (4.0, False)):
        monkeypatch.setattr(evaluate, "score_curves", with_phase(phase_ms))
        result = run_api(work, bars=4, context=2.0, candidates=2)
        found = [w for w in result.params["warnings"] if w.startswith("beat alignment unsure")]
        assert bool(found) == warned and (not warned or "80 ms" in found[0])


def test_rule_candidates_of_a_tempo_free_blend_are_fades(work):
    clip = run_api(work, bars=4, context=2.0).clip
    free = replace(clip, plan=replace(clip.plan, time_based=True))
    _, labels = I.RulePlanner().propose(free, 12, seed=3)
    assert labels[0] == "equal_power_fade" and set(labels) <= set(I.RulePlanner.TEMPO_FREE) and len(set(labels)) > 1
    _, labels = I.RulePlanner().propose(clip, 12, seed=3)
    assert labels[0] == "bass_swap" and not set(labels) <= set(I.RulePlanner.TEMPO_FREE)


def test_candidates_keep_the_best_by_the_metrics(work):
    pytest.importorskip("evaluate")
    result = run_api(work, bars=4, context=2.0, candidates=2, seed=1)
    scores = result.params["generator"]["scores"]
    assert len(scores) == 2 and all("composite" in s for s in scores)
    best = int(np.argmax([s["composite"] for s in scores]))
    assert result.params["generator"]["candidates"] == 2
    expected, labels = I.RulePlanner().propose(result.clip, 2, 1)
    assert np.array_equal(result.curves, expected[best])
    assert result.params["generator"]["recipe"] == labels[best]


def test_demucs_unittest_separates_only_the_clip(work):
    result = run_api(work, stems_a=None, stems_b=None, separator="demucs_unittest", bars=4, context=2.0)
    clip = result.clip
    assert clip.stems_a.shape == clip.stems_b.shape == (4, 2, clip.n_samples)
    assert torch.isfinite(clip.stems_a).all() and clip.stems_a.abs().sum() > 0
    assert result.timings["separation"] > 0
    assert true_peak_db(result.audio) <= -1.0 + 1e-3
    # the clip (blend + 2 bars each side) is all that was separated: ~ 8 bars + the 1 s margins
    assert clip.duration == pytest.approx(8 * 240.0 / 124.0, abs=0.1)


def test_demo_tracks_are_written_with_their_truth(tmp_path):
    folder_a, folder_b = I.make_demo_tracks(tmp_path / "demo_tracks", seconds=12.0)
    for folder, bpm in ((folder_a, 124.0), (folder_b, 122.0)):
        truth = json.loads((folder / "truth.json").read_text())
        assert truth["bpm"] == bpm and truth["style"] == "house"
        assert sf.info(str(folder / "mix.wav")).duration == pytest.approx(12.0)
        assert sorted(p.name for p in (folder / "stems").iterdir()) == ["bass.wav", "drums.wav", "other.wav",
                                                                          "vocals.wav"]


def test_demo_command_runs_the_chain(monkeypatch, tmp_path, work):
    """`inference.py --demo` (the README's main job) with this module's tracks standing in for the demo's."""
    def stand_in(folder, seconds=I.DEMO_SECONDS, seed=0):
        out = []
        for name, track in (("track_a", work.a), ("track_b", work.b)):
            target = Path(folder) / name
            (target / "stems").mkdir(parents=True)
            (target / "mix.wav").symlink_to(track.mix)
            for stem in track.stems.iterdir():
                (target / "stems" / stem.name).symlink_to(stem)
            out.append(target)
        return tuple(out)

    monkeypatch.setattr(I, "make_demo_tracks", stand_in)
    out = tmp_path / "demo" / "transition.wav"
    assert cli("--demo", "-o", out, "--bars", 8, "--context", 4, "--cache-dir", work.cache) == 0
    names = files_in(out.parent)
    for name in ("transition.wav", "transition.json", "transition.png", "transition.md"):
        assert name in names
    doc = read_params(out.with_suffix(".json"))
    assert doc["tempo"]["bpm_a"] == pytest.approx(124.0, abs=0.1) and doc["generator"]["kind"] in ("rules", "model")
    # by default the best of DEFAULT_CANDIDATES samples by the composite is kept
    generator = doc["generator"]
    assert generator["candidates"] == I.DEFAULT_CANDIDATES == 4 and len(generator["scores"]) == 4
    composites = [s["composite"] for s in generator["scores"]]
    assert all(c is not None and 0.0 < c <= 1.0 for c in composites)


@pytest.mark.slow
def test_demo_command_from_scratch(monkeypatch, tmp_path):
    monkeypatch.setenv("DJMIX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo" / "transition.wav"
    assert cli("--demo", "-o", out, "--model", "rules") == 0
    doc = read_params(out.with_suffix(".json"))
    assert doc["blend"]["bars"] >= 8 and (tmp_path / "demo" / "transition.png").is_file()


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def expect_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err and err[-1].startswith("error: ")
    for fragment in fragments:
        assert fragment in err[-1]
    return err[-1]


def test_missing_file(work, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(tmp_path / "nope.wav", work.b.mix, "-o", out / "t.wav", "--model", "rules")
    expect_error(capsys, code, "nope.wav", "file not found")
    assert files_in(out) == []


def test_unreadable_file(work, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    out = tmp_path / "out"
    code = cli(work.a.mix, bad, "-o", out / "t.wav", "--model", "rules")
    expect_error(capsys, code, "broken.wav", "unreadable")
    assert files_in(out) == []


def test_silent_file(work, tmp_path, capsys):
    silent = save_audio(tmp_path / "silence.wav", np.zeros((2, 10 * SR), dtype=np.float32))
    out = tmp_path / "out"
    code = cli(silent, work.b.mix, "-o", out / "t.wav", "--model", "rules")
    expect_error(capsys, code, "silence.wav", "silent")
    assert files_in(out) == []


def test_track_shorter_than_the_requested_transition(work, tmp_path, capsys):
    short = save_audio(tmp_path / "short.wav", work.a.audio[:, : 12 * SR])
    out = tmp_path / "out"
    code = cli(short, work.b.mix, "-o", out / "t.wav", "--bars", 8, "--model", "rules", "--separator", "dsp",
               "--cache-dir", work.cache)
    expect_error(capsys, code, "8-bar", "short.wav")
    assert files_in(out) == []


def ambient_pad(path: Path, seconds: float = 30.0) -> Path:
    """A beatless pad (five slow sines, a 20 s swell): no tempo to detect."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(0)
    pad = sum(0.08 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (110.0, 164.8, 220.0, 261.6, 329.6))
    pad = pad * (0.6 + 0.4 * np.sin(2 * np.pi * 0.05 * t))
    return save_audio(path, np.stack([pad, pad]).astype(np.float32))


def test_no_detectable_beat_falls_back_to_a_tempo_free_blend(work, tmp_path, capsys):
    ambient = ambient_pad(tmp_path / "ambient.wav")
    out = tmp_path / "out" / "t.wav"
    code = cli(work.a.mix, ambient, "-o", out, "--stems-a", work.a.stems, "--separator", "dsp", "--bars", 4,
               "--context", 2, "--model", "rules", "--cache-dir", work.cache)
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: no detectable beat in track B (ambient.wav): tempo-free blend" in err
    doc = read_params(out.with_suffix(".json"))
    assert doc["tempo"]["tempo_free"] is True and doc["grid"]["beats_s"] == []
    # no beat to cut, echo or swap stems on: every candidate is a fade, the first the equal-power one
    assert doc["generator"]["recipe"] in I.RulePlanner.TEMPO_FREE and doc["generator"]["candidates"] == 4
    assert any("no detectable beat" in w for w in doc["warnings"])
    assert sf.info(str(out)).frames == doc["audio"]["n_samples"]


def test_a_tempo_free_blend_ranks_the_models_samples_with_the_rule_fades(work, tmp_path, tiny_checkpoint):
    ambient = ambient_pad(tmp_path / "ambient.wav")
    common = dict(model=tiny_checkpoint, stems_b=None, separator="dsp", bars=4, context=2.0, steps=2, candidates=2)
    result = I.generate_transition(work.a.mix, ambient, stems_a=work.a.stems, cache_dir=work.cache, device="cpu",
                                   **common)
    gen = result.params["generator"]
    assert result.plan.time_based and gen["candidates"] == 4 and len(gen["scores"]) == 4  # 2 samples + 2 fades
    best = int(np.argmax([s["composite"] for s in gen["scores"]]))
    assert gen["kind"] == ("model" if best < 2 else "rules")
    if best >= 2:
        assert gen["recipe"] in I.RulePlanner.TEMPO_FREE and gen["steps"] is None
        assert any(r.startswith("tempo-free blend: the rule planner's") for r in result.params["reasons"])
    # an asked-for style is the model's alone
    styled = I.generate_transition(work.a.mix, ambient, stems_a=work.a.stems, cache_dir=work.cache, device="cpu",
                                   style="bass_swap", **common)
    assert styled.params["generator"]["candidates"] == 2 and styled.params["generator"]["kind"] == "model"


def test_incompatible_keys_warn_and_proceed(work, caplog):
    analysis_a = analysis_from_truth(work.a.truth, work.a.audio)
    clash = replace(analysis_from_truth(work.b.truth, torch.from_numpy(work.b.stem_array.sum(0))),
                    key_index=key_index("3B"))  # 8A -> 3B: no shared Camelot relation
    with caplog.at_level(logging.WARNING, logger="inference"):
        result = run_api(work, analysis_a=analysis_a, analysis_b=clash, bars=4, context=2.0)
    assert any(w.startswith("poor key match: 8A -> 3B") for w in result.warnings)
    assert "poor key match" in caplog.text
    assert result.params["keys"]["score"] < 0.5 and result.audio.shape[-1] > 0


def test_manual_cues_snap_to_downbeats(work):
    analysis_a = analysis_from_truth(work.a.truth, work.a.audio)
    analysis_b = analysis_from_truth(work.b.truth, torch.from_numpy(work.b.stem_array.sum(0)))
    cue_a = float(work.a.truth["downbeats"][4]) + 0.3
    cue_b = float(work.b.truth["downbeats"][2]) - 0.2
    result = run_api(work, analysis_a=analysis_a, analysis_b=analysis_b, bars=4, context=1.0, cue_a=cue_a, cue_b=cue_b)
    cues = result.params["cues"]
    assert cues["manual_a"] and cues["manual_b"]
    assert cues["a_start_s"] == pytest.approx(work.a.truth["downbeats"][4], abs=1e-6)
    assert cues["b_start_s"] == pytest.approx(work.b.truth["downbeats"][2], abs=1e-6)
    assert result.params["blend"]["start_s"] == pytest.approx(1.0, abs=1 / SR)


def test_bad_settings_are_one_line_errors(work, tmp_path, capsys):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    base = [work.a.mix, work.b.mix, "-o", out / "t.wav"]
    expect_error(capsys, cli(*base, "--model", tmp_path / "missing.pt"), "missing.pt", "not found")
    expect_error(capsys, cli(*base, "--model", garbage), "model.pt", "not a readable checkpoint")
    expect_error(capsys, cli(*base, "--model", "rules", "--separator", "nonsense", "--cache-dir", work.cache),
                 "unknown separator")
    expect_error(capsys, cli(*base, "--model", "rules", "--bars", 40), "--bars 40")
    assert files_in(out) == []


def test_outputs_that_would_overwrite_an_input_or_each_other_are_refused_before_any_work(work, tmp_path, capsys):
    track = tmp_path / "a_copy.wav"
    track.write_bytes(work.a.mix.read_bytes())
    before = track.read_bytes()
    common = [work.b.mix, "--stems-a", work.a.stems, "--stems-b", work.b.stems, "--model", "rules",
              "--cache-dir", work.cache, "-q"]
    expect_error(capsys, cli(track, *common, "-o", track), "a_copy.wav", "is an input track")
    out = tmp_path / "out" / "t.wav"
    expect_error(capsys, cli(track, *common, "-o", out, "--save-params", out), "t.wav", "two outputs")
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    expect_error(capsys, cli(track, *common, "-o", blocker / "t.wav"), "a_file is a file")
    assert track.read_bytes() == before and files_in(tmp_path / "out") == [] and blocker.read_text() == "in the way"
    # an output that is an existing folder: refused before any work, the other outputs untouched
    kept = tmp_path / "kept"
    (kept / "p.json").mkdir(parents=True)
    (kept / "t.wav").write_text("OLD")
    expect_error(capsys, cli(track, *common, "-o", kept / "t.wav", "--save-params", kept / "p.json"),
                 "p.json: is a folder")
    (kept / "dir.wav").mkdir()
    expect_error(capsys, cli(track, *common, "-o", kept / "dir.wav"), "dir.wav: is a folder")
    assert (kept / "t.wav").read_text() == "OLD" and files_in(kept) == ["t.wav"]


def test_stems_that_are_not_the_tracks_own_are_refused(work, tmp_path, capsys):
    base = [work.a.mix, work.b.mix, "-o", tmp_path / "out" / "t.wav", "--model", "rules", "--cache-dir", work.cache,
            "--bars", 4, "--context", 2, "--candidates", 1, "-q"]
    expect_error(capsys, cli(*base, "--stems-a", work.b.stems, "--stems-b", work.b.stems),
                 "stems of track A do not match it", "correlates 0.")
    silent = tmp_path / "silent"
    silent.mkdir()
    for stem in work.a.stems.iterdir():
        x, sr = sf.read(stem, dtype="float32")
        sf.write(silent / stem.name, 0 * x, sr)
    expect_error(capsys, cli(*base, "--stems-a", silent, "--stems-b", work.b.stems), "stems of track A are silent")
    broken = tmp_path / "nan"
    broken.mkdir()
    for stem in work.a.stems.iterdir():
        x, sr = sf.read(stem, dtype="float32")
        x[len(x) // 2] = np.nan
        sf.write(broken / stem.with_suffix(".wav").name, x, sr, subtype="FLOAT")
    expect_error(capsys, cli(*base, "--stems-a", broken, "--stems-b", work.b.stems), "non-finite samples")
    assert files_in(tmp_path / "out") == []
    # the track's own stems a decoder's delay away still belong to it
    assert I.stems_match(*(lambda s: (s.sum(0), torch.nn.functional.pad(s, (1105, 0))[..., :s.shape[-1]]))(
        torch.from_numpy(work.a.stem_array))) > 0.99


def test_tracks_far_apart_in_loudness_get_a_warning(work, tmp_path):
    quiet = tmp_path / "quiet"
    (quiet / "stems").mkdir(parents=True)
    x, sr = sf.read(work.b.mix, dtype="float32")
    sf.write(quiet / "mix.wav", 0.1 * x, sr, subtype="FLOAT")  # 20 dB down
    for stem in work.b.stems.iterdir():
        y, sr = sf.read(stem, dtype="float32")
        sf.write(quiet / "stems" / stem.with_suffix(".wav").name, 0.1 * y, sr, subtype="FLOAT")
    def run(auto_gain: bool):
        return I.generate_transition(work.a.mix, quiet / "mix.wav", model="rules", stems_a=work.a.stems,
                                     stems_b=quiet / "stems", bars=4, context=2.0, candidates=1, cache_dir=work.cache,
                                     device="cpu", auto_gain=auto_gain)

    trimmed, raw = run(True), run(False)
    # auto-gain lifts B by its cap (12 dB of the 20), the rest is a warning; without it, the whole gap is
    assert trimmed.params["tracks"]["b"]["gain_db"] == pytest.approx(12.0) and raw.params["tracks"]["b"]["gain_db"] == 0
    for result, words in ((trimmed, "after auto-gain): the level falls"), (raw, "LUFS): the level falls")):
        found = [w for w in result.params["warnings"] if w.startswith("the tracks differ by")]
        assert len(found) == 1 and words in found[0]
    tail = slice(-SR, None)  # B's own mix after the blend: 12 dB up, before the output stage's own small moves
    lift = 20 * np.log10(trimmed.audio[:, tail].std() / raw.audio[:, tail].std())
    assert lift == pytest.approx(12.0, abs=1.5)
    same = run_api(work, bars=4, context=2.0).params
    assert not any(w.startswith("the tracks differ by") for w in same["warnings"])


def test_a_failed_commit_puts_every_output_back(tmp_path):
    """The last file cannot be moved into place (a folder appeared there): the first, already replaced, gets its
    old content back and no temporary is left."""
    first, second = tmp_path / "t.wav", tmp_path / "t.json"
    first.write_text("OLD")
    second.mkdir()
    with pytest.raises(OSError):
        I._commit([(first, lambda p: p.write_text("NEW")), (second, lambda p: p.write_text("{}"))])
    assert first.read_text() == "OLD" and sorted(x.name for x in tmp_path.iterdir()) == ["t.json", "t.wav"]
    assert I._commit([(first, lambda p: p.write_text("NEW"))]) == [first] and first.read_text() == "NEW"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.json", "t.wav"]


def test_guidance_and_style_a_model_cannot_take_are_one_line_errors(work, tiny_checkpoint, tmp_path, capsys):
    base = [work.a.mix, work.b.mix, "--stems-a", work.a.stems, "--stems-b", work.b.stems, "--cache-dir", work.cache,
            "--bars", 4, "--context", 2, "--steps", 2, "-o", tmp_path / "t.wav", "-q"]
    for bad in ("nan", "-50", "1e30"):  # negative or huge scales rendered near-silence or chaotic levels
        expect_error(capsys, cli(*base, "--model", tiny_checkpoint, "--guidance-scale", bad), "--guidance-scale",
                     "must be in 0..20")
    for bad in ("nan", "inf", "-4"):
        no_bars = [x for i, x in enumerate(base) if x != "--bars" and (i == 0 or base[i - 1] != "--bars")]
        expect_error(capsys, cli(*no_bars, "--model", tiny_checkpoint, "--duration", bad),
                     "--duration must be a positive number")
    with pytest.raises(I.InferenceError, match="--seed must be an integer"):
        run_api(work, seed=-1)
    torch.manual_seed(0)
    few = create_model(get_config("tiny", model__n_styles=3))
    path = save_checkpoint(tmp_path / "three_styles.pt", few, ema=create_ema(few))
    expect_error(capsys, cli(*base, "--model", path, "--style", STYLE_LABELS[5]), f"--style {STYLE_LABELS[5]}",
                 "trained on 3 styles")
    assert files_in(tmp_path) == ["three_styles.pt"]
