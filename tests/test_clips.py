"""data/clips.py: the stretch cache, the drum-stem lock, and splicing the rendered clip between the two mixes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.clips import DRUM_LOCK_SEARCH, Clip, crossfade_seconds, drum_lock, splice, stretch, track_b_audio
from data.cues import CuePlan

SR = 44_100


def kicks(seconds: float, bpm: float, delay: float = 0.0) -> torch.Tensor:
    """[2, N] decaying 60 Hz thumps on every beat, `delay` seconds late."""
    n = int(seconds * SR)
    t = np.arange(int(0.5 * SR)) / SR
    thump = np.exp(-t / 0.06) * np.sin(2 * np.pi * 60.0 * t)
    x = np.zeros(n + len(thump))
    for onset in np.arange(delay, seconds, 60.0 / bpm):
        i = int(round(onset * SR))
        x[i:i + len(thump)] += thump
    return torch.from_numpy(np.stack([x[:n], x[:n]]).astype(np.float32))


def test_stretch_is_cached_exactly(tmp_path):
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((2, SR)).astype(np.float32) * 0.1)
    assert stretch(audio, 1.0, cache_dir=tmp_path) is audio
    first = stretch(audio, 1.02, cache_dir=tmp_path)
    files = list((tmp_path / "stretch").glob("*.pt"))
    assert len(files) == 1
    again = stretch(audio, 1.02, cache_dir=tmp_path)
    assert torch.equal(first, again)
    assert first.shape[0] == 2 and first.shape[-1] == pytest.approx(SR / 1.02, abs=64)
    assert stretch(audio, 1.02, cache_dir=tmp_path / "none", use_cache=False).shape == first.shape
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("delay", [-0.012, 0.0, 0.017])
def test_drum_lock_finds_the_residual_offset(delay):
    bpm = 124.0
    a = torch.zeros(4, 2, 20 * SR)
    b = torch.zeros(4, 2, 20 * SR)
    a[0] = kicks(20.0, bpm, 1.0)
    b[0] = kicks(20.0, bpm, 1.0 + delay)
    b[1] = 0.3 * torch.sin(2 * torch.pi * 45.0 * torch.arange(20 * SR) / SR)  # a bass line: not in the drum stem
    lock = drum_lock(a, b, 2.0, 18.0, bpm)
    assert lock.trusted
    assert lock.offset == pytest.approx(-delay, abs=0.001)  # positive = move B later


def hats(seconds: float, bpm: float) -> torch.Tensor:
    """[2, N] short white-noise ticks on the off-beats: a drum stem with no kick."""
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    x = np.zeros(n + SR // 10)
    tick = rng.standard_normal(int(0.03 * SR)) * np.exp(-np.arange(int(0.03 * SR)) / (0.005 * SR)) * 0.5
    for onset in np.arange(30.0 / bpm, seconds, 60.0 / bpm):
        i = int(round(onset * SR))
        x[i:i + len(tick)] += tick
    return torch.from_numpy(np.stack([x[:n], x[:n]]).astype(np.float32))


def test_drum_lock_ignores_a_drum_stem_without_kicks():
    """A kick-less intro: B's drum stem is hats only, whose leak through the low-pass must not move B."""
    bpm = 130.0
    a = torch.zeros(4, 2, 20 * SR)
    b = torch.zeros(4, 2, 20 * SR)
    a[0] = kicks(20.0, bpm, 1.0)
    b[0] = hats(20.0, bpm)
    lock = drum_lock(a, b, 2.0, 18.0, bpm)
    assert not lock.trusted and lock.offset == 0.0


def test_drum_lock_undoes_a_grid_read_half_a_beat_off():
    bpm = 126.0
    half = 30.0 / bpm
    a = torch.zeros(4, 2, 20 * SR)
    b = torch.zeros(4, 2, 20 * SR)
    a[0] = kicks(20.0, bpm, 1.0)
    b[0] = kicks(20.0, bpm, 1.0 + half)  # B's kicks half a beat late
    lock = drum_lock(a, b, 2.0, 18.0, bpm)
    assert lock.trusted and lock.offset == pytest.approx(-half, abs=0.002)


@pytest.mark.parametrize("octave_factor, bpm_b", [(0.5, 174.0), (2.0, 43.5)])
def test_drum_lock_refines_but_never_rephases_a_half_or_double_time_pair(octave_factor, bpm_b):
    """87 BPM against B at twice (or half) the tempo: a small residual is found, a whole fast beat is not taken."""
    bpm = 87.0
    fast_beat = 60.0 / max(bpm, bpm_b)
    a = torch.zeros(4, 2, 20 * SR)
    a[0] = kicks(20.0, bpm, 1.0)
    for residual, expected in ((0.011, -0.011), (fast_beat, 0.0)):  # B 11 ms late; B a whole fast beat late
        b = torch.zeros(4, 2, 20 * SR)
        b[0] = kicks(20.0, bpm_b, 1.0 + residual)
        lock = drum_lock(a, b, 2.0, 18.0, bpm, octave_factor=octave_factor)
        assert abs(lock.offset) <= DRUM_LOCK_SEARCH * fast_beat + 1e-3  # never a whole fast beat
        if expected:
            assert lock.trusted and lock.offset == pytest.approx(expected, abs=0.001)


def clip_of(n_seconds: float, start_in_a: float, offset_b: float) -> Clip:
    n = int(n_seconds * SR)
    plan = CuePlan(a_start=start_in_a + 2.0, a_end=start_in_a + n_seconds - 2.0, b_start=0.0, b_end=0.0, bars=4)
    return Clip(stems_a=torch.zeros(4, 2, n), stems_b=torch.zeros(4, 2, n), plan=plan, start_in_a=start_in_a,
                blend_start=2.0, blend_end=n_seconds - 2.0, offset_b=offset_b, ratio=1.0, bpm=120.0)


def test_splice_plays_a_then_the_clip_then_b():
    a = torch.full((2, 30 * SR), 0.5)
    b = torch.full((2, 30 * SR), -0.25)
    clip = clip_of(10.0, start_in_a=12.0, offset_b=3.0)  # clip time t: A at 12 + t, B at 3 + t
    rendered = torch.full((2, clip.n_samples), 0.1)
    out = splice(rendered, a, b, clip, -5.0, 14.0)
    assert out.shape == (2, 19 * SR)
    xf = crossfade_seconds(clip)
    assert xf == pytest.approx(0.5)  # one beat at 120 BPM
    t = np.arange(out.shape[-1]) / SR - 5.0  # clip time of each output sample
    assert torch.all(out[:, t < 0] == 0.5)
    inside = (t > xf + 0.01) & (t < 10.0 - xf - 0.01)
    assert torch.allclose(out[:, inside], torch.tensor(0.1))
    assert torch.all(out[:, t >= 10.0] == -0.25)
    ramp = out[0, (t >= 0) & (t < xf)]
    assert torch.all(ramp[1:] <= ramp[:-1]) and ramp[0] > 0.49 and ramp[-1] < 0.11  # A fades into the clip


def test_track_b_audio_follows_the_clip_mapping():
    b = torch.arange(20 * SR, dtype=torch.float32).repeat(2, 1) / SR  # the value is B's own time
    clip = clip_of(8.0, start_in_a=0.0, offset_b=2.5)
    part = track_b_audio(b, clip, 6.0, 9.0)
    assert part.shape == (2, 3 * SR)
    assert part[0, 0].item() == pytest.approx(8.5, abs=2 / SR)  # B time 2.5 + 6
    assert part[0, -1].item() == pytest.approx(11.5, abs=2 / SR)
    beyond = track_b_audio(b, clip, 16.0, 19.0)  # B ends at its 20 s, clip time 17.5
    assert torch.all(beyond[:, int(1.6 * SR):] == 0)
