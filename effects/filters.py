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


def three_band_eq(warped: torch.Tensor, corners: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  gains_db: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shelf_q: float, mid_q: float,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """low_shelf * peak * high_shelf (* scale) for many settings at once: gains [..., 1] -> [..., K].

    corners are the warped (low, mid, high) corner frequencies. The same magnitudes as the three
    functions above in a handful of passes: with x = (w / w0)^2 each squared magnitude is a ratio of
    polynomials whose per-bin parts (1, c x, x^2 for the shelves, c = 1/Q^2 - 2; (1 - x)^2, x for the
    peak) form a 7-row basis, so the numerators and the denominators of every setting are two matmuls.
    The three ratios combine in the log domain (no overflow, and at 0 dB every ratio is exactly 1).
    """
    x_low, x_mid, x_high = ((warped / corner).clamp(1e-4, 1e4).square() for corner in corners)
    c = 1.0 / shelf_q**2 - 2.0
    basis = torch.stack([torch.ones_like(warped), c * x_low, x_low.square(), c * x_high, x_high.square(),
                         (1.0 - x_mid).square(), x_mid])  # [7, K]
    a_low, a_mid, a_high = (_db_to_a(g)[..., 0] for g in gains_db)
    zero, one = torch.zeros_like(a_low), torch.ones_like(a_low)
    numerators = (  # coefficients on the basis, per band: low shelf, peak, high shelf
        (a_low.square(), a_low, one, zero, zero, zero, zero),  # (a - x)^2 + a x / Q^2
        (zero, zero, zero, zero, zero, one, (a_mid / mid_q).square()),  # (1 - x)^2 + (a / Q)^2 x
        (one, zero, zero, a_high, a_high.square(), zero, zero),  # (1 - a x)^2 + a x / Q^2
    )
    denominators = (
        (one, a_low, a_low.square(), zero, zero, zero, zero),  # (1 - a x)^2 + a x / Q^2
        (zero, zero, zero, zero, zero, one, (1.0 / (a_mid * mid_q)).square()),  # (1 - x)^2 + x / (a Q)^2
        (a_high.square(), zero, zero, a_high, one, zero, zero),  # (a - x)^2 + a x / Q^2
    )
    num, den = (torch.matmul(torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2), basis)
                for rows in (numerators, denominators))  # [..., 3, K]
    half = torch.full((3,), 0.5, dtype=warped.dtype, device=warped.device)
    magnitude = torch.exp(torch.matmul(half, torch.log(num / den)))  # sqrt of the product of the three ratios
    prefactor = a_low * a_high if scale is None else a_low * a_high * scale[..., 0]
    return magnitude * prefactor[..., None]


def butterworth_pair(warped: torch.Tensor, hp_corner: torch.Tensor, lp_corner: torch.Tensor, order: int,
                     hp_amount: torch.Tensor, lp_amount: torch.Tensor) -> torch.Tensor:
    """(1 - hp_amount (1 - |HP|)) (1 - lp_amount (1 - |LP|)) for corners and amounts [..., 1] -> [..., K].

    Both Butterworth responses of butterworth_highpass / butterworth_lowpass in one pass; an amount of 0
    is a bit-exact bypass (the factor is exactly 1).
    """
    slope = (torch.arange(2, device=warped.device) * 4.0 - 2.0) * order  # -2n (high-pass), 2n (low-pass)
    log_corner = torch.log(torch.cat([hp_corner, lp_corner], dim=-1))  # [..., 2]
    z = slope[:, None] * torch.log(warped) - (slope * log_corner)[..., None]  # [..., 2, K]
    amount = torch.cat([hp_amount, lp_amount], dim=-1)[..., None]
    high, low = torch.addcmul(1.0 - amount, amount, torch.exp(-0.5 * F.softplus(z))).unbind(-2)
    return high * low
