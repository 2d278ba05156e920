"""The output stage (effects/output.py): loudness compensation over a blend, true-peak estimate and limiter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

import effects.output as output_module
from effects.output import (
    GAIN_LIMITS,
    HOP,
    blend_progress,
    limit_true_peak,
    loudness_compensate,
    loudness_gain,
    short_term_rms,
    true_peak_db,
    true_peak_envelope,
)

SR = 44_100


def noise(seconds: float, rms: float, seed: int) -> np.ndarray:
    return (rms * np.random.default_rng(seed).standard_normal((2, int(seconds * SR)))).astype(np.float32)


def test_short_term_rms_of_a_steady_signal():
    x = noise(3.0, 0.1, 0)
    rms = short_term_rms(x, SR)
    assert rms.shape == (int(np.ceil(x.shape[-1] / HOP)),)
    inner = rms[len(rms) // 4: -len(rms) // 4]
    assert np.allclose(inner, 0.1, rtol=0.03)


def test_blend_progress_ramps_from_start_to_end():
    t = blend_progress(10 * SR, SR, 2.0, 6.0)
    times = np.arange(len(t)) * HOP / SR
    assert np.all(t[times < 2.0] == 0.0) and np.all(t[times > 6.0] == 1.0)
    assert t[np.argmin(np.abs(times - 4.0))] == pytest.approx(0.5, abs=0.01)


def test_loudness_gain_lifts_the_sag_of_a_linear_fade():
    """Two uncorrelated equal-level tracks crossfaded linearly lose 3 dB at the midpoint; the gain puts it back."""
    a, b = noise(12.0, 0.1, 1), noise(12.0, 0.1, 2)
    t = np.clip((np.arange(a.shape[-1]) / SR - 2.0) / 8.0, 0.0, 1.0).astype(np.float32)
    blend = a * (1 - t) + b * t
    out, gain = loudness_compensate(blend, a, b, SR, 2.0, 10.0)
    assert gain[6 * SR] == pytest.approx(np.sqrt(2.0), rel=0.03)
    assert gain[1 * SR] == pytest.approx(1.0, abs=0.01) and gain[11 * SR] == pytest.approx(1.0, abs=0.01)
    mid = slice(5 * SR, 7 * SR)
    assert np.sqrt(np.mean(out[:, mid] ** 2)) == pytest.approx(0.1, rel=0.03)


def test_loudness_gain_is_clipped_and_smooth():
    """A gap (echo-out silence) is lifted at most to the upper limit, a doubled level cut at most to the lower."""
    a, b = noise(10.0, 0.1, 3), noise(10.0, 0.1, 4)
    blend = a.copy()
    blend[:, 3 * SR: 5 * SR] *= 0.01  # a deliberate gap
    blend[:, 7 * SR: 9 * SR] *= 3.0  # far too loud
    progress = np.zeros(int(np.ceil(a.shape[-1] / HOP)))
    gain = loudness_gain(blend, a, b, progress, SR)
    assert gain.min() >= GAIN_LIMITS[0] - 1e-9 and gain.max() <= GAIN_LIMITS[1] + 1e-9
    assert gain[4 * SR] == pytest.approx(GAIN_LIMITS[1]) and gain[8 * SR] == pytest.approx(GAIN_LIMITS[0])
    # ~250 ms smoothing: no jumps (a full 0.75 -> 1.45 swing takes at least ~0.2 s)
    assert np.abs(np.diff(gain)).max() < (GAIN_LIMITS[1] - GAIN_LIMITS[0]) / (0.2 * SR)


def test_loudness_gain_leaves_silence_alone():
    z = np.zeros((2, 2 * SR), dtype=np.float32)
    _, gain = loudness_compensate(z, z, z, SR, 0.5, 1.5)
    assert np.all(gain == 1.0)


def test_loudness_compensate_keeps_torch_type():
    a = torch.from_numpy(noise(2.0, 0.1, 5))
    out, gain = loudness_compensate(a, a, a, SR, 0.5, 1.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == a.shape
    assert torch.allclose(out, a, atol=1e-6)


def test_true_peak_finds_the_peak_between_samples():
    """A sine at fs/4 sampled 45 degrees off its crest: samples reach 0.707 of the true peak (-3 dB)."""
    n = np.arange(SR)
    x = 0.5 * np.sin(2 * np.pi * n / 4 + np.pi / 4)
    assert 20 * np.log10(np.abs(x).max() / 0.5) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_db(x) == pytest.approx(20 * np.log10(0.5), abs=0.2)
    env = true_peak_envelope(np.stack([x, 0 * x]))
    assert env.shape == (SR,) and env[SR // 2] == pytest.approx(0.5, abs=0.02)


def test_limiter_holds_the_ceiling_and_leaves_the_rest_untouched():
    x = noise(6.0, 0.05, 6)
    t = np.arange(x.shape[-1]) / SR
    burst = (t > 3.0) & (t < 3.05)
    x[:, burst] += (1.2 * np.sin(2 * np.pi * SR / 4 * t[burst] + np.pi / 4)).astype(np.float32)  # +1.6 dBFS true peak
    out, report = limit_true_peak(x, SR, ceiling_db=-1.0)
    assert report.peak_in_db > 1.0
    assert true_peak_db(out) <= -1.0 + 1e-3
    assert report.peak_out_db <= -1.0 + 1e-3 and report.max_reduction_db > 2.0
    far = (t < 2.9) | (t > 4.5)  # look-ahead before, release after the burst
    assert np.array_equal(out[:, far], x[:, far])


def test_limiter_ceiling_holds_on_full_band_material():
    """White noise at -10 dBFS RMS (energy up to Nyquist, as bright hi-hats have): by a 32x reference
    interpolator the limited output stays within 0.6 dB of the ceiling (measured 0.45), where BS.1770's
    12-tap-per-phase filter let it through by 1.4 dB."""
    x = noise(3.0, 0.3, 11)
    out, report = limit_true_peak(x, SR, ceiling_db=-1.0)
    reference = signal.resample_poly(out, 32, 1, axis=-1, window=signal.firwin(32 * 128 + 1, 1 / 32,
                                                                               window=("kaiser", 8.0)))
    assert report.max_reduction_db > 1.0
    assert 20 * np.log10(np.abs(reference).max()) <= -1.0 + 0.6


def test_limiter_gain_in_chunks_is_the_whole_signal_computation(monkeypatch):
    """The gain reduction is computed chunk by chunk (a two-hour --full-mix needs no full-length float64 arrays):
    with overs and releases across chunk edges it equals one chunk over the whole signal, and so does the output."""
    x = noise(4.0, 0.05, 3)
    t = np.arange(x.shape[-1]) / SR
    for at in (0.5, 1.0, 1.02, 2.7, 3.99):  # bursts near chunk edges, one at the very end
        burst = (t > at) & (t < at + 0.01)
        x[:, burst] += (1.5 * np.sin(2 * np.pi * 3000 * t[burst])).astype(np.float32)
    env = output_module.true_peak_envelope(x, floor=0.3)
    args = (env, 0.89, SR, 0.005, 0.08)
    whole = np.concatenate([r for _, r in output_module._reduction_chunks(*args, chunk=len(env))])
    pieces = list(output_module._reduction_chunks(*args, chunk=5000))
    assert [start for start, _ in pieces] == list(range(0, len(env), 5000))
    chunked = np.concatenate([r for _, r in pieces])
    assert whole.max() > 3.0 and np.count_nonzero(whole) > 0.02 * len(whole)
    assert np.allclose(chunked, whole, rtol=1e-9, atol=1e-12) and np.array_equal(chunked > 0, whole > 0)
    out_whole, report_whole = limit_true_peak(x, SR)
    monkeypatch.setattr(output_module._reduction_chunks, "__defaults__", (7000,))
    out_chunked, report_chunked = limit_true_peak(x, SR)
    assert np.allclose(out_chunked, out_whole, rtol=1e-6, atol=1e-7)
    assert report_chunked.max_reduction_db == pytest.approx(report_whole.max_reduction_db, abs=1e-6)
    assert report_chunked.peak_out_db <= -1.0 + 1e-3


def test_limiter_passes_quiet_audio_bit_exact():
    x = torch.from_numpy(noise(2.0, 0.05, 7))
    out, report = limit_true_peak(x, SR)
    assert isinstance(out, torch.Tensor) and torch.equal(out, x)
    assert report.max_reduction_db == 0.0 and report.limited_fraction == 0.0
