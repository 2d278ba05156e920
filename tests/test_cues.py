"""Cue selection, key/tempo compatibility, beatmatching and kick-lock (data/cues.py).

Analyses are built by hand (a known bar grid and section layout), audio is kick trains, so every
expected value is known exactly and the whole file runs in a few seconds.
"""

import logging
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import signal

from data.analysis import Section, TrackAnalysis
from data.cues import (
    CuePlan,
    beatmatch,
    bpm_compatibility,
    camelot_compatibility,
    key_relation,
    key_report,
    kick_lock_offset,
    kick_lock_search,
    low_band_envelope,
    plan_transition,
    select_cues,
    stretch_analysis,
)
from data.keys import camelot_to_index

SR = 44_100
# Energy per section label: the breakdown ("bridge") is as calm as the outro on purpose.
LEVELS = {"intro": 0.3, "verse": 0.6, "chorus": 1.0, "drop": 1.0, "bridge": 0.2, "outro": 0.3}


def make_analysis(
    n_bars: int,
    bpm: float = 128.0,
    first_downbeat: float = 0.37,
    layout: tuple[tuple[str, int], ...] = (),
    labelled: bool = True,
    key: str = "8A",
    beat_confidence: float = 1.0,
    tail: float = 0.0,
) -> TrackAnalysis:
    """A track of `n_bars` 4/4 bars; `layout` is (label, bars) per section, in order."""
    beat = 60.0 / bpm
    beats = first_downbeat + beat * np.arange(4 * n_bars)
    downbeats = beats[::4]
    duration = first_downbeat + 4 * n_bars * beat + tail
    rate = 10.0
    energy = np.full(int(duration * rate) + 1, 0.8, dtype=np.float32)
    sections, bar = [], 0
    for label, length in layout:
        start = first_downbeat + bar * 4 * beat
        end = first_downbeat + (bar + length) * 4 * beat
        energy[int(start * rate) : int(end * rate)] = LEVELS[label]
        sections.append(Section(start, end, label))
        bar += length
    return TrackAnalysis(
        duration=duration,
        bpm=bpm,
        beats=beats,
        downbeats=downbeats,
        key_index=camelot_to_index(key),
        key_confidence=0.9,
        energy=energy,
        energy_rate=rate,
        lufs=-9.0,
        sections=sections if labelled else [],
        beat_confidence=beat_confidence,
    )


# A 128-bar track with a calm 16-bar breakdown in the middle and a 32-bar outro.
TRACK_LAYOUT = (("intro", 16), ("drop", 32), ("bridge", 16), ("drop", 32), ("outro", 32))
TRACK_A = make_analysis(128, layout=TRACK_LAYOUT, tail=1.3)
TRACK_B = make_analysis(128, bpm=126.0, first_downbeat=0.52, layout=TRACK_LAYOUT, key="9A")


# --------------------------------------------------------------------------- keys and tempo


@pytest.mark.parametrize(
    ("a", "b", "score", "relation"),
    [
        ("8A", "8A", 1.0, "same key"),
        ("8A", "9A", 0.9, "adjacent"),
        ("8A", "7A", 0.9, "adjacent"),
        ("12B", "1B", 0.9, "adjacent"),  # the wheel wraps
        ("8A", "8B", 0.9, "relative major/minor"),
        ("8A", "9B", 0.7, "diagonal"),
        ("8A", "10A", 0.6, "two steps"),
        ("8A", "3A", 0.5, "energy boost"),  # +7: one semitone up
        ("8A", "3B", 0.2, "clash"),
        ("8A", "2A", 0.2, "clash"),
    ],
)
def test_camelot_table(a, b, score, relation):
    assert key_relation(camelot_to_index(a), camelot_to_index(b)) == (score, relation)
    assert camelot_compatibility(camelot_to_index(a), camelot_to_index(b)) == score


def test_camelot_scores_in_range_and_names_accepted():
    scores = [camelot_compatibility(i, j) for i in range(24) for j in range(24)]
    assert min(scores) >= 0.0 and max(scores) <= 1.0
    assert camelot_compatibility("A minor", "C major") == 0.9  # 8A -> 8B
    with pytest.raises(ValueError):
        camelot_compatibility(24, 0)


def test_key_report():
    assert key_report(camelot_to_index("8A"), camelot_to_index("9A")) == "8A -> 9A: compatible (adjacent)"
    assert key_report(camelot_to_index("8A"), camelot_to_index("3B")) == "8A -> 3B: poor (clash)"
    assert "workable" in key_report("8A", "9B")


def test_bpm_compatibility():
    ratio, octave, ok = bpm_compatibility(128.0, 126.0)
    assert octave == 1.0 and ok and ratio == pytest.approx(128 / 126)
    ratio, octave, ok = bpm_compatibility(87.0, 174.0)  # B read double time
    assert (ratio, octave, ok) == (pytest.approx(1.0), 0.5, True)
    ratio, octave, ok = bpm_compatibility(126.0, 63.0)  # B read half time
    assert (ratio, octave, ok) == (pytest.approx(1.0), 2.0, True)
    ratio, octave, ok = bpm_compatibility(128.0, 100.0)  # 28 % away at any octave
    assert not ok and octave == 1.0
    assert bpm_compatibility(120.0, 127.0)[2] is True  # 5.5 % stretch
    assert bpm_compatibility(120.0, 128.0)[2] is False  # 6.25 %
    with pytest.raises(ValueError):
        bpm_compatibility(0.0, 120.0)


# --------------------------------------------------------------------------- cue selection


def _is_downbeat(t: float, analysis: TrackAnalysis) -> bool:
    return bool(np.min(np.abs(analysis.downbeats - t)) < 1e-9)


def _bar_index(t: float, analysis: TrackAnalysis) -> int:
    return int(np.argmin(np.abs(analysis.downbeats - t)))


@pytest.mark.parametrize("labelled", [True, False])
def test_a_mixes_out_in_outro_not_breakdown(labelled):
    a = make_analysis(128, layout=TRACK_LAYOUT, labelled=labelled, tail=1.3)
    plan = select_cues(a, TRACK_B, bars=16)
    outro_start = a.downbeats[96]
    assert _is_downbeat(plan.a_start, a)
    assert plan.a_start >= outro_start  # not the breakdown at bars 48..64
    assert (_bar_index(plan.a_start, a) - 96) % 8 == 0  # phrase boundary counted from the outro
    assert plan.a_end <= a.duration and plan.bars == 16
    assert plan.a_end == pytest.approx(plan.a_start + 16 * 4 * 60 / 128)


def test_unlabelled_track_ending_loud_mixes_out_at_latest_calm_phrase():
    layout = (("intro", 16), ("drop", 32), ("bridge", 16), ("drop", 32), ("outro", 24), ("drop", 8))
    a = make_analysis(128, layout=layout, labelled=False)
    plan = select_cues(a, TRACK_B, bars=16)
    assert _bar_index(plan.a_start, a) == 104  # bars 104..120: calm; 112..128 runs into the loud end
    assert any("calm phrase" in r for r in plan.reasons)


def test_b_enters_at_intro_and_tempo_ratio():
    plan = select_cues(TRACK_A, TRACK_B, bars=16)
    assert plan.b_start == pytest.approx(0.52)
    assert plan.tempo_ratio == pytest.approx(128 / 126) and plan.applied_ratio == plan.tempo_ratio
    assert plan.bpm_ok and plan.octave_factor == 1.0
    assert plan.b_end - plan.b_start == pytest.approx(plan.duration * 128 / 126)
    assert plan.key_score == 0.9 and not plan.warnings and not plan.time_based
    # B's intro starting after a few bars of silence: B enters at the intro's downbeat.
    late = make_analysis(64, layout=(("verse", 2), ("intro", 16), ("drop", 46)), key="9A")
    late.sections = late.sections[1:]
    plan = select_cues(TRACK_A, late, bars=8)
    assert plan.b_start == pytest.approx(late.downbeats[2])


def test_dead_zone_in_plan_and_mapping():
    b = make_analysis(64, bpm=128.01, layout=(("intro", 16), ("drop", 48)))
    plan = select_cues(TRACK_A, b, bars=8)
    assert plan.tempo_ratio == pytest.approx(128 / 128.01) and plan.applied_ratio == 1.0
    # 0.2 % would drift 34 ms over these 8 bars: stretched
    nearly = select_cues(TRACK_A, make_analysis(64, bpm=128.3, layout=(("intro", 16), ("drop", 48))), bars=8)
    assert nearly.applied_ratio == pytest.approx(128 / 128.3)
    assert plan.b_time_at(plan.a_start) == pytest.approx(plan.b_start)
    assert plan.b_time_at(plan.a_end) == pytest.approx(plan.b_end)
    assert set(plan.to_dict()) >= {"a_start", "b_start", "tempo_ratio", "kick_offset", "warnings"}


@pytest.mark.parametrize("bars", [3, 33, 0, 16.5, True, "16"])
def test_bars_validation(bars):
    with pytest.raises(ValueError, match="bars"):
        select_cues(TRACK_A, TRACK_B, bars=bars)


@pytest.mark.parametrize("bars", [4, 8, 32])
def test_bars_range_accepted(bars):
    plan = select_cues(TRACK_A, TRACK_B, bars=bars)
    assert plan.bars == bars and plan.a_end <= TRACK_A.duration


def test_short_track_shrinks_with_warning():
    short = make_analysis(12)
    plan = select_cues(short, TRACK_B, bars=16)
    assert plan.bars == 12 and plan.a_end <= short.duration + 1e-6
    assert any("shortened from 16 to 12" in w for w in plan.warnings)


def test_too_short_track_raises():
    with pytest.raises(ValueError, match="track A is too short"):
        select_cues(make_analysis(3), TRACK_B, bars=8)
    with pytest.raises(ValueError, match="track B is too short"):
        select_cues(TRACK_A, make_analysis(3), bars=8)


def test_manual_cues_snap_to_downbeats():
    plan = select_cues(TRACK_A, TRACK_B, bars=8, cue_a=100.3, cue_b=5.0)
    assert _is_downbeat(plan.a_start, TRACK_A) and abs(plan.a_start - 100.3) <= 1.875 / 2
    assert _is_downbeat(plan.b_start, TRACK_B) and abs(plan.b_start - 5.0) <= 60 / 126 * 2
    assert any("manual cue" in r for r in plan.reasons)
    with pytest.raises(ValueError, match="outside track A"):
        select_cues(TRACK_A, TRACK_B, cue_a=-1.0)
    with pytest.raises(ValueError, match="cue_a"):  # 8 bars no longer fit before A ends
        select_cues(TRACK_A, TRACK_B, bars=8, cue_a=TRACK_A.duration - 3.0)


def test_beatless_tracks_fall_back_to_time_cues():
    ambient = make_analysis(64, beat_confidence=0.0, key="9A")
    plan = select_cues(TRACK_A, ambient, bars=8)
    assert plan.time_based and plan.tempo_ratio == 1.0
    assert plan.a_end == pytest.approx(TRACK_A.duration) and plan.b_start == 0.0
    assert plan.duration == pytest.approx(8 * 4 * 60 / 128)
    assert any("time-based" in w for w in plan.warnings)


def test_warnings_for_poor_key_and_far_tempo():
    far = make_analysis(64, bpm=100.0, key="3B", layout=(("intro", 16), ("drop", 48)))
    plan = select_cues(TRACK_A, far, bars=8)
    assert not plan.bpm_ok
    assert any("poor key" in w for w in plan.warnings)
    assert any("not fully compatible" in w for w in select_cues(TRACK_A, make_analysis(64, key="9B")).warnings)
    assert any("tempo outside" in w for w in plan.warnings)
    double = make_analysis(64, bpm=256.0, key="8A")
    plan = select_cues(TRACK_A, double, bars=8)
    assert plan.octave_factor == 0.5 and plan.tempo_ratio == pytest.approx(1.0) and plan.bpm_ok
    # a key read with low confidence (a sparse track's 0.45) makes the clash a note, not an alarm
    shaky = replace(far, key_confidence=0.45)
    assert any(w.endswith("(key estimate unsure)") for w in select_cues(TRACK_A, shaky, bars=8).warnings)
    assert not any("unsure" in w for w in select_cues(TRACK_A, replace(far, key_confidence=0.8), bars=8).warnings
                   if "key" in w)


# --------------------------------------------------------------------------- audio helpers


def kick(f0: float = 150.0, f1: float = 50.0, decay: float = 0.06) -> np.ndarray:
    """A pitch-swept, exponentially decaying sine: a synthetic kick drum, 0.2 s."""
    t = np.arange(int(0.2 * SR)) / SR
    freq = f1 + (f0 - f1) * np.exp(-t / 0.02)
    return (np.sin(2 * np.pi * np.cumsum(freq) / SR) * np.exp(-t / decay)).astype(np.float32)


def kick_train(seconds: float, period: float, first: float, hit=None, noise: float = 0.0, seed: int = 0):
    """`[2, N]` float32: a kick every `period` s from `first` s, plus optional white noise."""
    hit = kick() if hit is None else hit
    x = np.zeros(int(seconds * SR), dtype=np.float32)
    for t in np.arange(first, seconds - 0.2, period):
        i = int(round(t * SR))
        x[i : i + len(hit)] += hit
    if noise:
        x += noise * np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    return np.stack([x, x])


def onset_period(audio: np.ndarray) -> float:
    """Kick period (s) from a line through the low-band onset peaks."""
    env, rate = low_band_envelope(audio, SR)
    onset = np.maximum(np.diff(env), 0.0)
    peaks, _ = signal.find_peaks(onset, height=0.3 * onset.max(), distance=int(0.3 * rate))
    return float(np.polyfit(np.arange(len(peaks)), peaks / rate, 1)[0])


def acf_period(audio: np.ndarray, lo: float, hi: float) -> float:
    """Kick period (s) from the envelope autocorrelation peak between lo and hi seconds."""
    env, rate = low_band_envelope(audio, SR)
    env = env - env.mean()
    ac = signal.correlate(env, env, mode="full")[len(env) - 1 :]
    k = int(lo * rate) + int(np.argmax(ac[int(lo * rate) : int(hi * rate)]))
    y0, y1, y2 = ac[k - 1 : k + 2]
    return (k + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) / rate


# --------------------------------------------------------------------------- beatmatch


def test_dead_zone_returns_input_unchanged():
    audio = torch.randn(2, 4096)
    out, applied = beatmatch(audio, SR, 1.00005)
    assert out is audio and applied == 1.0
    out, applied = beatmatch(audio.numpy(), SR, 0.99995)
    assert applied == 1.0 and np.array_equal(out, audio.numpy())
    with pytest.raises(ValueError):
        beatmatch(audio, SR, 0.0)


@pytest.mark.parametrize("ratio", [1.02, 0.98])
def test_rubber_band_stretch_changes_period(ratio):
    pytest.importorskip("pedalboard")
    audio = kick_train(4.0, 0.5, 0.25)
    assert onset_period(audio) == pytest.approx(0.5, rel=1e-3)
    out, applied = beatmatch(torch.from_numpy(audio), SR, ratio)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape[0] == 2
    assert applied == ratio
    assert out.shape[1] == pytest.approx(audio.shape[1] / ratio, abs=2)
    # new tempo = old * ratio: the period shrinks by the ratio (within 0.2 %)
    assert 0.5 / onset_period(out.numpy()) == pytest.approx(ratio, rel=2e-3)


def test_fallback_without_pedalboard(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pedalboard", None)  # `import pedalboard` now raises ImportError
    audio = kick_train(4.0, 0.5, 0.25)
    with caplog.at_level(logging.WARNING, logger="data.cues"):
        out, applied = beatmatch(audio, SR, 1.02)
    assert "pedalboard" in caplog.text and applied == 1.02
    assert isinstance(out, np.ndarray) and out.shape[1] == pytest.approx(audio.shape[1] / 1.02, abs=2)
    # the phase vocoder smears kicks, so measure the period by autocorrelation
    assert 0.5 / acf_period(out, 0.4, 0.6) == pytest.approx(1.02, rel=5e-3)


def test_stretch_analysis_maps_times():
    stretched = stretch_analysis(TRACK_B, 1.05)
    assert stretched.bpm == pytest.approx(126 * 1.05)
    np.testing.assert_allclose(stretched.downbeats, TRACK_B.downbeats / 1.05)
    assert stretched.sections[-1].start == pytest.approx(TRACK_B.sections[-1].start / 1.05)
    assert stretched.duration == pytest.approx(TRACK_B.duration / 1.05)
    assert stretch_analysis(TRACK_B, 1.0) is TRACK_B


# --------------------------------------------------------------------------- kick-lock

BPM = 124.0
BEAT = 60.0 / BPM


@pytest.mark.parametrize("shift", [0.037, -0.037, 0.15, -0.15])
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_kick_lock_recovers_shift(shift, noise):
    """B's kicks come `shift` s before the cue-aligned A kicks: B must move later by `shift`."""
    cue_a, cue_b = 0.5 + 8 * BEAT, 1.0
    a = kick_train(12.0, BEAT, 0.5, noise=noise, seed=1)
    # a different kick in B (lower, longer): the lock must follow the attacks, not the shapes
    b = kick_train(12.0, BEAT, cue_b - shift, hit=kick(120.0, 45.0, 0.1), noise=noise, seed=2)
    offset = kick_lock_offset(a, b, SR, cue_a, cue_b, BPM)
    assert offset == pytest.approx(shift, abs=0.002)


def test_kick_lock_searches_a_whole_beat():
    """Kicks on beats 1 and 3 only: a 0.7-beat lag is unambiguous within +-1 beat and is found."""
    cue_a, cue_b, shift = 0.5 + 8 * BEAT, 2.0, -0.7 * BEAT
    a = kick_train(12.0, 2 * BEAT, 0.5)
    b = kick_train(12.0, 2 * BEAT, cue_b - shift)
    assert kick_lock_offset(a, b, SR, cue_a, cue_b, BPM) == pytest.approx(shift, abs=0.002)
    assert kick_lock_offset(a, b, SR, cue_a, cue_b, BPM, search_beats=0.5) != pytest.approx(shift, abs=0.002)


def test_kick_lock_through_tempo_ratio_and_torch():
    ratio = 1.03  # B plays slower; its envelope is read through the stretch
    cue_a, cue_b = 0.5 + 8 * BEAT, 1.0
    a = torch.from_numpy(kick_train(12.0, BEAT, 0.5))
    b = torch.from_numpy(kick_train(14.0, BEAT * ratio, cue_b - 0.037 * ratio))
    lock = kick_lock_search(a, b, SR, cue_a, cue_b, BPM, tempo_ratio=ratio)
    assert lock.offset == pytest.approx(0.037, abs=0.002) and lock.score > 0.9 and lock.trusted


def test_kick_lock_silence_gives_zero():
    silent = np.zeros((2, 8 * SR), dtype=np.float32)
    lock = kick_lock_search(silent, silent, SR, 2.0, 1.0, BPM)
    assert lock.offset == 0.0 and not lock.trusted


def test_kick_lock_distrusts_a_sub_beat_rival():
    """B's low band has a second, equally strong onset a 16th after each kick: ambiguous."""
    cue_a, cue_b = 0.5 + 8 * BEAT, 1.0
    a = kick_train(12.0, BEAT, 0.5) + kick_train(12.0, BEAT, 0.5 + BEAT / 4)
    b = kick_train(12.0, BEAT, cue_b)
    assert not kick_lock_search(a, b, SR, cue_a, cue_b, BPM).trusted


# --------------------------------------------------------------------------- plan_transition


def test_plan_transition_combines_everything():
    bpm, grid_error = 120.0, 0.03
    a_analysis = make_analysis(24, bpm=bpm, first_downbeat=0.0, layout=(("drop", 16), ("outro", 8)))
    # B's analysed downbeats are 30 ms late against its real kicks: kick-lock moves B 30 ms later.
    b_analysis = make_analysis(24, bpm=bpm, first_downbeat=0.5 + grid_error, layout=(("intro", 8), ("drop", 16)))
    audio_a = torch.from_numpy(kick_train(a_analysis.duration, 0.5, 0.0))
    audio_b = torch.from_numpy(kick_train(b_analysis.duration, 0.5, 0.5))
    plan = plan_transition(a_analysis, b_analysis, audio_a, audio_b, SR, bars=8)
    assert isinstance(plan, CuePlan)
    assert plan.a_start == pytest.approx(a_analysis.downbeats[16]) and plan.a_end == pytest.approx(48.0)
    assert plan.b_start == pytest.approx(0.5 + grid_error)
    assert plan.applied_ratio == 1.0 and plan.kick_score > 0.9
    assert plan.kick_offset == pytest.approx(grid_error, abs=0.002)
    assert plan.b_time_at(plan.a_start + plan.kick_offset) == pytest.approx(plan.b_start)
    assert any("kick-lock" in r for r in plan.reasons) and not plan.warnings


# --------------------------------------------------------------------------- synthetic tracks


def analysis_from_truth(track, grid_shift: float = 0.0) -> TrackAnalysis:
    """TrackAnalysis from data.synth ground truth; `grid_shift` s moves the beat grid later."""
    truth, mix = track.truth, track.mix
    hop = SR // 10
    frames = mix[:, : mix.shape[1] // hop * hop].reshape(2, -1, hop)
    return TrackAnalysis(
        duration=truth["duration"],
        bpm=truth["bpm"],
        beats=np.asarray(truth["beats"]) + grid_shift,
        downbeats=np.asarray(truth["downbeats"]) + grid_shift,
        key_index=truth["key_index"],
        key_confidence=1.0,
        energy=np.sqrt(np.mean(frames**2, axis=(0, 2))),
        energy_rate=10.0,
        lufs=-10.0,
        sections=[Section(s["start"], s["end"], s["label"]) for s in truth["sections"]],
        vocal_activity=[tuple(v) for v in truth["vocal_activity"]],
    )


def test_synth_tracks_end_to_end():
    synth = pytest.importorskip("data.synth")
    track_a = synth.synthesize_track(3, style="house", duration=75.0, bpm=124.0)
    track_b = synth.synthesize_track(4, style="house", duration=60.0, bpm=125.0)
    a = analysis_from_truth(track_a)
    b = analysis_from_truth(track_b, grid_shift=0.02)  # B's grid 20 ms late: kick-lock should say +20 ms
    plan = plan_transition(a, b, track_a.mix, track_b.mix, SR, bars=8)
    bar = 4 * 60.0 / a.bpm
    outro = [s for s in a.sections if s.label == "outro"][-1]
    assert _is_downbeat(plan.a_start, a) and plan.a_end <= a.duration + 1e-6
    assert plan.a_start >= outro.start - bar / 2 or plan.a_end > outro.start
    assert plan.b_start == pytest.approx(b.downbeats[0])
    assert plan.tempo_ratio == pytest.approx(124.0 / 125.0) and plan.bpm_ok
    if any("kick-lock unsure" in w for w in plan.warnings):
        assert plan.kick_offset == 0.0
    else:
        assert plan.kick_offset == pytest.approx(0.02 / plan.applied_ratio, abs=0.005)
