"""Magnitude responses of the mixer's filters, evaluated per frame on the STFT bins.

Each filter is an RBJ-cookbook biquad (or a Butterworth cascade of them). The digital response of
a bilinear-transformed analog prototype at angular frequency w equals the prototype at
x = tan(w/2) / tan(w0/2), so we evaluate the *analog prototype* at that warped frequency: the same
magnitude the digital biquad (pedalboard/JUCE, scipy.signal) has, computed from ratios only, which
stays accurate in float32 even for a 20 Hz corner at 44.1 kHz (the expanded digital polynomial
would cancel catastrophically there).

All functions take `warped` = tan(w/2) for the bins [K] and corner values broadcastable against
[..., K]; they return linear magnitudes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Keeps tan(w/2) finite at Nyquist and the DC bin at a tiny positive frequency (a true zero would
# make log/ratio gradients infinite); both bins sit far outside the audible band.
_MAX_HALF_ANGLE = math.pi / 2 - 1e-3


def warped_bins(n_fft: int, sample_rate: int, device=None) -> torch.Tensor:
    """tan(w/2) for the n_fft // 2 + 1 rFFT bins [K]; DC is nudged to a quarter bin."""
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float32, device=device)
    k[0] = 0.25
    half_angle = (math.pi * k / n_fft).clamp(max=_MAX_HALF_ANGLE)
    return torch.tan(half_angle)


def warp(freq_hz: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Corner frequency (Hz) -> tan(w0/2)."""
    half_angle = (math.pi * freq_hz / sample_rate).clamp(max=_MAX_HALF_ANGLE)
    return torch.tan(half_angle)


def _db_to_a(gain_db: torch.Tensor) -> torch.Tensor:
    """RBJ's A = 10^(dB/40): the square root of the linear gain."""
    return torch.pow(10.0, gain_db / 40.0)


def low_shelf(warped: torch.Tensor, corner: torch.Tensor, gain_db: torch.Tensor, q: float) -> torch.Tensor:
    """RBJ low shelf H(s) = A (s^2 + sqrt(A)/Q s + A) / (A s^2 + sqrt(A)/Q s + 1)."""
    a = _db_to_a(gain_db)
    x2 = (warped / corner).clamp(1e-4, 1e4).square()
    damping = a / (q * q) * x2
    num = (a - x2).square() + damping
    den = (1.0 - a * x2).square() + damping
    return a * torch.sqrt(num / den)


def high_shelf(warped: torch.Tensor, corner: torch.Tensor, gain_db: torch.Tensor, q: float) -> torch.Tensor:
    """RBJ high shelf H(s) = A (A s^2 + sqrt(A)/Q s + 1) / (s^2 + sqrt(A)/Q s + A)."""
    a = _db_to_a(gain_db)
    x2 = (warped / corner).clamp(1e-4, 1e4).square()
    damping = a / (q * q) * x2
    num = (1.0 - a * x2).square() + damping
    den = (a - x2).square() + damping
    return a * torch.sqrt(num / den)


def peak(warped: torch.Tensor, center: torch.Tensor, gain_db: torch.Tensor, q: float) -> torch.Tensor:
    """RBJ peaking EQ H(s) = (s^2 + (A/Q) s + 1) / (s^2 + s / (A Q) + 1)."""
    a = _db_to_a(gain_db)
    x2 = (warped / center).clamp(1e-4, 1e4).square()
    base = (1.0 - x2).square()
    num = base + (a / q).square() * x2
    den = base + (1.0 / (a * q)).square() * x2
    return torch.sqrt(num / den)


def butterworth_highpass(warped: torch.Tensor, corner: torch.Tensor, order: int) -> torch.Tensor:
    """|H| = (1 + (wc/w)^(2n))^(-1/2), in log space so that no power overflows float32."""
    log_ratio = torch.log(warped) - torch.log(corner)
    return torch.exp(-0.5 * F.softplus(-2.0 * order * log_ratio))


def butterworth_lowpass(warped: torch.Tensor, corner: torch.Tensor, order: int) -> torch.Tensor:
    """|H| = (1 + (w/wc)^(2n))^(-1/2)."""
    log_ratio = torch.log(warped) - torch.log(corner)
    return torch.exp(-0.5 * F.softplus(2.0 * order * log_ratio))
