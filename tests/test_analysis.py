"""data/analysis.py against the exact truth of data/synth.py tracks, plus edge cases.

Fast by default (short tracks, each analysed once per module); the 12-track accuracy run is
marked slow. Thresholds are a little below what benchmarks/bench_analysis.py measures, so a
real regression fails while one unlucky track does not.
"""

import json

import mir_eval
import numpy as np
import pyloudnorm
import pytest
import torch

from data.analysis import (
    SECTION_LABELS,
    TrackAnalysis,
    analyze_track,
    detect_vocal_activity,
    energy_curve,
    estimate_key,
    integrated_loudness,
)
from data.keys import key_name

synth = pytest.importorskip("data.synth")

SR = 44_100
DURATION = 60.0
STYLE_SEEDS = {"house": 11, "dnb": 12, "hiphop": 13, "techno": 14, "disco": 15}


def _scores(analysis: TrackAnalysis, truth: dict) -> dict:
    return {
        "tempo_ok": abs(analysis.bpm - truth["bpm"]) <= 0.04 * truth["bpm"],
        "beat_f": mir_eval.beat.f_measure(np.asarray(truth["beats"]), analysis.beats),
        "downbeat_f": mir_eval.beat.f_measure(np.asarray(truth["downbeats"]), analysis.downbeats),
        "key": mir_eval.key.weighted_score(truth["key"], key_name(analysis.key_index)),
    }


@pytest.fixture(scope="module")
def tracks():
    return {
        style: synth.synthesize_track(seed, style=style, duration=DURATION)
        for style, seed in STYLE_SEEDS.items()
    }


@pytest.fixture(scope="module")
def mix_results(tracks):
    return {style: (analyze_track(t.mix, SR), t.truth) for style, t in tracks.items()}


@pytest.mark.parametrize("style", list(STYLE_SEEDS))
def test_tempo_beats_downbeats_from_mix(mix_results, style):
    analysis, truth = mix_results[style]
    s = _scores(analysis, truth)
    assert s["tempo_ok"], (analysis.bpm, truth["bpm"])
    assert s["beat_f"] >= 0.9
    assert s["downbeat_f"] >= 0.8
    assert analysis.beat_confidence > 0.5
    assert set(np.round(analysis.downbeats, 6)) <= set(np.round(analysis.beats, 6))


def test_out_of_phase_stereo_is_analysed_like_the_track(mix_results, tracks):
    """R = -L cancels in the mid signal (a miswired recording): the side carries the music."""
    style = next(iter(tracks))
    left = np.asarray(tracks[style].mix)[0]
    analysis = analyze_track(np.stack([left, -left]), SR)
    reference, truth = mix_results[style]
    assert analysis.beat_confidence > 0.5 and _scores(analysis, truth)["tempo_ok"]
    assert analysis.bpm == pytest.approx(reference.bpm, rel=1e-3)


def test_key_from_mix(mix_results):
    scores = [_scores(a, truth)["key"] for a, truth in mix_results.values()]
    assert np.mean(scores) >= 0.7, scores
    for analysis, _ in mix_results.values():
        assert 0.0 <= analysis.key_confidence <= 1.0


def test_stems_sharpen_and_give_vocals(tracks):
    track = tracks["hiphop"]
    analysis = analyze_track(torch.from_numpy(track.mix), SR, stems=torch.from_numpy(track.stems))
    s = _scores(analysis, track.truth)
    assert s["tempo_ok"] and s["beat_f"] >= 0.9 and s["downbeat_f"] >= 0.8
    assert analysis.vocal_activity is not None
    assert _interval_f(analysis.vocal_activity, track.truth["vocal_activity"], DURATION) >= 0.8


def _interval_f(estimated, reference, duration, rate=10.0) -> float:
    n = int(duration * rate)
    est, ref = np.zeros(n, bool), np.zeros(n, bool)
    for mask, intervals in ((est, estimated), (ref, reference)):
        for start, end in intervals:
            mask[int(start * rate) : int(np.ceil(end * rate))] = True
    hits = (est & ref).sum()
    return 0.0 if hits == 0 else 2 * hits / (est.sum() + ref.sum())


@pytest.mark.parametrize(
    "style, bpm, forbidden",
    [("dnb", 174.0, 87.0), ("dnb", 168.0, 84.0), ("hiphop", 90.0, 180.0), ("hiphop", 82.0, 164.0)],
)
def test_half_and_double_time(style, bpm, forbidden):
    track = synth.synthesize_track(21, style=style, duration=45.0, bpm=bpm)
    analysis = analyze_track(track.mix, SR)
    assert abs(analysis.bpm - bpm) <= 0.04 * bpm, f"{style} at {bpm} read as {analysis.bpm:.1f}"
    assert abs(analysis.bpm - forbidden) > 0.1 * forbidden


def test_bpm_range_folds_the_octave(mix_results, tracks):
    # With a range that only admits the slow octave, drum & bass is reported at half tempo.
    truth_bpm = tracks["dnb"].truth["bpm"]
    analysis = analyze_track(tracks["dnb"].mix, SR, bpm_range=(60.0, 110.0))
    assert abs(analysis.bpm - truth_bpm / 2) <= 0.04 * truth_bpm / 2
    with pytest.raises(ValueError, match="bpm_range"):
        analyze_track(tracks["dnb"].mix, SR, bpm_range=(120.0, 90.0))


@pytest.mark.parametrize("sample_rate", [44_100, 48_000])
def test_lufs_matches_pyloudnorm(tracks, rng, sample_rate):
    mix = tracks["house"].mix[:, : 20 * SR]
    if sample_rate != SR:
        mix = (0.1 * rng.standard_normal((2, 20 * sample_rate))).astype(np.float32)
        mix[:, : 5 * sample_rate] *= 0.01  # a quiet stretch, so the relative gate matters
    ours = integrated_loudness(mix, sample_rate)
    reference = pyloudnorm.Meter(sample_rate).integrated_loudness(mix.T.astype(np.float64))
    assert abs(ours - reference) < 0.1, (ours, reference)


def test_running_sums_in_chunks_are_the_cumulative_sums(monkeypatch, rng):
    """The loudness and energy are summed in chunks (an hour-long DJ mix needs no full-length float64 copy)."""
    import data.analysis as analysis

    monkeypatch.setattr(analysis, "_SUM_CHUNK", 1000)  # many chunks, positions on and off their edges
    v = rng.standard_normal((2, 10_507))
    positions = np.array([0, 0, 1, 999, 1000, 1001, 5000, 10_506, 10_507])
    sums = analysis._running_sums(v.shape[1], positions, lambda c0, c1: v[:, c0:c1])
    expected = np.concatenate([np.zeros((2, 1)), np.cumsum(v, axis=1)], axis=1)[:, positions]
    assert np.allclose(sums, expected, atol=1e-9)
    x = (rng.standard_normal((2, 3 * SR)) * 0.1).astype(np.float32)
    chunked = analysis.integrated_loudness(x, SR), analysis.energy_curve(x, SR)
    monkeypatch.setattr(analysis, "_SUM_CHUNK", 1 << 30)  # one chunk: the plain computation
    assert chunked[0] == pytest.approx(analysis.integrated_loudness(x, SR), abs=1e-9)
    assert np.allclose(chunked[1], analysis.energy_curve(x, SR), rtol=1e-6)


def test_lufs_of_silence_and_mono(rng):
    assert integrated_loudness(np.zeros((2, SR)), SR) == -70.0
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(5 * SR) / SR)).astype(np.float32)
    reference = pyloudnorm.Meter(SR).integrated_loudness(tone.astype(np.float64))
    assert abs(integrated_loudness(tone, SR) - reference) < 0.1


def test_energy_curve_rate_and_level():
    audio = np.full((2, 3 * SR + 100), 0.5, np.float32)
    energy = energy_curve(audio, SR, rate=10.0)
    assert energy.shape == (31,) and np.allclose(energy, 0.5, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["silence", "noise", "pad"],
)
def test_no_beat_gives_zero_confidence(name, rng):
    t = np.arange(20 * SR) / SR
    audio = {
        "silence": np.zeros((2, len(t)), np.float32),
        "noise": (0.1 * rng.standard_normal((2, len(t)))).astype(np.float32),
        # A sustained A major pad that swells slowly: no attacks, no pulse.
        "pad": np.stack(
            [
                0.1
                * sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
                * (0.7 + 0.3 * np.sin(2 * np.pi * 0.05 * t))
            ]
            * 2
        ).astype(np.float32),
    }[name]
    analysis = analyze_track(audio, SR)
    assert analysis.beat_confidence == 0.0
    assert analysis.bpm > 0 and len(analysis.beats) > 0  # a nominal grid for callers that need one
    assert np.isfinite(analysis.lufs)
    if name == "pad":
        assert analysis.key in ("A major", "F# minor")


def test_short_and_mono_inputs(tracks):
    mix = tracks["house"].mix[:, : 30 * SR]
    stereo = analyze_track(mix, SR)
    mono_numpy = analyze_track(mix.mean(0), SR)
    mono_torch = analyze_track(torch.from_numpy(mix.mean(0, keepdims=True)), SR)
    for analysis in (mono_numpy, mono_torch):
        assert abs(analysis.bpm - stereo.bpm) < 0.5
        assert analysis.key_index == stereo.key_index
    tiny = analyze_track(np.zeros(10, np.float32), SR)
    assert tiny.duration == pytest.approx(10 / SR) and tiny.beat_confidence == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        analyze_track(np.array([0.0, np.nan], np.float32), SR)


def test_sections_cover_the_track(mix_results):
    for analysis, _ in mix_results.values():
        sections = analysis.sections
        assert sections[0].start == 0.0 and sections[-1].end == pytest.approx(analysis.duration)
        assert all(a.end == b.start for a, b in zip(sections[:-1], sections[1:]))
        assert all(s.label in SECTION_LABELS and s.end > s.start for s in sections)
    # The intro of a dance track is found as such.
    analysis, _ = mix_results["house"]
    assert analysis.sections[0].label == "intro"


def test_analysis_round_trips_through_json(mix_results):
    analysis, _ = mix_results["house"]
    back = TrackAnalysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    assert back.bpm == analysis.bpm and back.key == analysis.key and back.camelot == analysis.camelot
    assert np.allclose(back.beats, analysis.beats, atol=1e-6)
    assert [s.label for s in back.sections] == [s.label for s in analysis.sections]


def test_estimate_key_on_profiles():
    # Chord tones of C major (C E G) over its scale, and of A minor (A C E) over its scale.
    c_major = np.array([3, 0, 1, 0, 2, 1, 0, 2.5, 0, 1, 0, 1], float)
    assert key_name(estimate_key(c_major)[0]) == "C major"
    a_minor = np.roll(np.array([3, 0, 1, 2, 0, 1, 0, 2.5, 1, 0, 1, 0], float), 9)
    assert key_name(estimate_key(a_minor)[0]) == "A minor"
    assert estimate_key(np.zeros(12)) == (0, 0.0)
    with pytest.raises(ValueError, match="profile"):
        estimate_key(c_major, profile="nope")


def test_vocal_activity_hysteresis():
    sr = 1000
    level = np.zeros(10 * sr, np.float32)
    level[1000:3000] = 0.5  # 2 s phrase
    level[3200:3300] = 0.0  # (inside: a 0.2 s gap is bridged below)
    level[3300:5000] = 0.5
    level[7000:7200] = 0.5  # 0.2 s blip: dropped
    level[8000:9000] = 0.5 * 10 ** (-40 / 20)  # bleed 40 dB down: not vocals
    t = np.arange(len(level)) / sr
    vocals = (level * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    regions = detect_vocal_activity(vocals, sr)
    assert len(regions) == 1
    start, end = regions[0]
    assert abs(start - 1.0) < 0.1 and abs(end - 5.0) < 0.15
    assert detect_vocal_activity(np.zeros(sr), sr) == []


@pytest.mark.slow
def test_accuracy_over_styles():
    """12 tracks of 90 s across all styles, mix only and with stems (see bench_analysis.py)."""
    styles = list(synth.STYLES)
    rows = {"mix": [], "stems": []}
    for i in range(12):
        track = synth.synthesize_track(100 + i, style=styles[i % len(styles)], duration=90.0)
        rows["mix"].append(_scores(analyze_track(track.mix, SR), track.truth))
        rows["stems"].append(_scores(analyze_track(track.mix, SR, stems=track.stems), track.truth))
    for mode, scores in rows.items():
        assert np.mean([s["tempo_ok"] for s in scores]) >= 0.9, mode
        assert np.mean([s["beat_f"] for s in scores]) >= 0.9, mode
        assert np.mean([s["downbeat_f"] for s in scores]) >= 0.8, mode
        assert np.mean([s["key"] for s in scores]) >= 0.75, mode
