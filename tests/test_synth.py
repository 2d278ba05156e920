"""data/synth.py: determinism, shapes, exact truth, vocal activity, overrides, I/O, harmony in the key."""

import json

import numpy as np
import pytest

from data.analysis import SECTION_LABELS
from data.keys import camelot, key_name
from data.synth import STYLES, SynthTrack, load_track, load_truth, synthesize_track, write_track
from effects.params import SAMPLE_RATE, STEMS

DURATION = 24.0


@pytest.fixture(scope="module")
def tracks() -> dict[str, SynthTrack]:
    """One short track per style (seed = style position), rendered once for the module."""
    return {name: synthesize_track(i, style=name, duration=DURATION) for i, name in enumerate(sorted(STYLES))}


def test_same_seed_same_track_and_different_seeds_differ():
    a = synthesize_track(3, duration=12.0)
    b = synthesize_track(3, duration=12.0)
    c = synthesize_track(4, duration=12.0, style=a.truth["style"])
    assert np.array_equal(a.stems, b.stems)
    assert a.truth == b.truth
    assert not np.array_equal(a.stems, c.stems)


def test_overriding_the_drawn_style_changes_nothing_else():
    drawn = synthesize_track(5, duration=10.0)
    forced = synthesize_track(5, style=drawn.truth["style"], duration=10.0)
    assert np.array_equal(drawn.stems, forced.stems)


def test_shapes_dtype_levels_and_mix(tracks):
    n = round(DURATION * SAMPLE_RATE)
    for track in tracks.values():
        assert track.stems.shape == (len(STEMS), 2, n)
        assert track.stems.dtype == np.float32
        assert np.isfinite(track.stems).all()
        assert track.sample_rate == SAMPLE_RATE
        mix = track.mix
        assert mix.shape == (2, n) and mix.dtype == np.float32
        np.testing.assert_array_equal(mix, track.stems.sum(axis=0))
        assert 0.5 < np.abs(mix).max() < 1.0  # normalised, below 0 dBFS
        for name in ("drums", "bass", "other"):
            assert np.abs(track.stem(name)).max() > 1e-3, name


def test_kick_and_bass_are_centred_and_dominate_the_low_end(tracks):
    n = 1 << 17  # ~3 s from the end, where the drums and bass play
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    for name, track in tracks.items():
        mid = track.stems[:, :, -n:].mean(axis=1)  # [4, n]
        spectra = np.abs(np.fft.rfft(mid, axis=-1)) ** 2
        low = spectra[:, (freqs > 30) & (freqs < 120)].sum(axis=1)
        assert low[[0, 1]].sum() > 0.6 * low.sum(), name
        bass = track.stem("bass")
        np.testing.assert_allclose(bass[0], bass[1], atol=1e-6)
        side = track.stems[:, 0] - track.stems[:, 1]
        assert np.abs(side[3]).max() > 1e-3, f"{name}: the other stem has no stereo width"


def test_every_style_renders_in_its_tempo_range(tracks):
    assert {"house", "techno", "dnb", "hiphop"} <= set(STYLES)
    for name, track in tracks.items():
        lo, hi = STYLES[name].bpm_range
        assert track.truth["style"] == name
        assert lo <= track.truth["bpm"] <= hi


def test_truth_is_consistent_and_json_serialisable(tracks):
    for name, track in tracks.items():
        truth = json.loads(json.dumps(track.truth))
        duration, bpm = truth["duration"], truth["bpm"]
        assert duration == pytest.approx(DURATION)
        assert truth["sample_rate"] == SAMPLE_RATE and truth["time_signature"] == "4/4"
        beats, downbeats = np.array(truth["beats"]), np.array(truth["downbeats"])
        assert len(beats) >= 4 * 8, name  # at least 8 bars
        assert beats[0] >= 0 and beats[-1] < duration
        np.testing.assert_allclose(np.diff(beats), 60.0 / bpm, atol=2e-6)
        np.testing.assert_allclose(downbeats, beats[::4])
        assert truth["key"] == key_name(truth["key_index"])
        assert truth["camelot"] == camelot(truth["key_index"])

        sections = truth["sections"]
        assert sections[0]["start"] == 0.0 and sections[-1]["end"] == pytest.approx(duration)
        for a, b in zip(sections, sections[1:]):
            assert a["end"] == b["start"] and b["start"] > a["start"]
            assert np.min(np.abs(downbeats - b["start"])) < 1e-5, f"{name}: section not on a downbeat"
        assert all(s["label"] in SECTION_LABELS for s in sections)
        assert len(sections) >= 2, name

        vocals = truth["vocal_activity"]
        for (a, b), (c, _) in zip(vocals, vocals[1:]):
            assert a < b < c
        assert all(0 <= a < b <= duration for a, b in vocals)


def _vocal_track() -> SynthTrack:
    for seed in range(20):
        track = synthesize_track(seed, style="hiphop", duration=DURATION)
        if track.truth["vocal_activity"]:
            return track
    raise AssertionError("no hip-hop track with vocals in 20 seeds")


def test_vocal_stem_is_active_exactly_inside_vocal_activity():
    track = _vocal_track()
    sr = track.sample_rate
    vocals = track.stem("vocals")
    inside = np.zeros(vocals.shape[-1], dtype=bool)
    for a, b in track.truth["vocal_activity"]:
        inside[int(np.floor(a * sr)) : int(np.ceil(b * sr))] = True
        segment = vocals[:, int(a * sr) : int(b * sr)]
        assert np.sqrt(np.mean(segment**2)) > 0.01  # every phrase is clearly audible
    assert np.abs(vocals[:, ~inside]).max() < 1e-6  # digital silence outside
    assert inside.mean() < 0.9


def test_bpm_and_key_overrides_are_honoured():
    track = synthesize_track(7, style="house", duration=12.0, bpm=123.5, key_index=21)
    truth = track.truth
    assert truth["bpm"] == 123.5
    assert (truth["key_index"], truth["key"], truth["camelot"]) == (21, "A minor", "8A")
    np.testing.assert_allclose(np.diff(truth["beats"]), 60.0 / 123.5, atol=2e-6)
    with pytest.raises(ValueError, match="style"):
        synthesize_track(0, style="polka", duration=5.0)
    with pytest.raises(ValueError, match="key_index"):
        synthesize_track(0, key_index=24, duration=5.0)


def test_write_track_and_load_round_trip(tmp_path):
    track = synthesize_track(11, duration=8.0)
    folder = write_track(track, tmp_path / "track")
    assert folder == tmp_path / "track"
    assert (folder / "mix.wav").is_file() and (folder / "truth.json").is_file()
    assert sorted(p.name for p in (folder / "stems").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert load_truth(folder) == json.loads(json.dumps(track.truth))
    loaded = load_track(folder)
    np.testing.assert_array_equal(loaded.stems, track.stems)
    np.testing.assert_array_equal(loaded.mix, track.mix)
    assert loaded.sample_rate == track.sample_rate


# Krumhansl-Kessler key profiles, tonic first.
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _chroma(x: np.ndarray, sr: int) -> np.ndarray:
    """Pitch-class profile [12] of a mono signal: mean STFT magnitudes of 40 Hz..4 kHz folded onto C..B."""
    n_fft, hop = 16384, 4096
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    keep = (freqs > 40) & (freqs < 4000)
    pcs = np.round(12 * np.log2(freqs[keep] / 440.0) + 69).astype(int) % 12
    return np.bincount(pcs, weights=mag[keep], minlength=12)


def _best_key(chroma: np.ndarray) -> int:
    scores = [np.corrcoef(chroma, np.roll(_MAJOR, k))[0, 1] for k in range(12)]
    scores += [np.corrcoef(chroma, np.roll(_MINOR, k))[0, 1] for k in range(12)]
    return int(np.argmax(scores))


@pytest.mark.parametrize(
    "style,key_index", [("house", 0), ("trance", 21), ("disco", 7), ("dnb", 14)]
)
def test_harmony_follows_the_key(style, key_index):
    track = synthesize_track(key_index, style=style, duration=20.0, key_index=key_index)
    harmonic = (track.stem("bass") + track.stem("other")).mean(axis=0)
    assert _best_key(_chroma(harmonic, track.sample_rate)) % 12 == key_index % 12
