"""The output stage: loudness compensation over a blend and a true-peak limiter.

The mixer is linear and has no limiter (see effects/mixer.py); what leaves the system passes here.

Loudness compensation. Two uncorrelated tracks crossfaded at equal amplitude sag in the middle of
the blend (a linear fade loses 3 dB there, a filter sweep more). The energy-fair level at blend
progress t in [0, 1] is `sqrt((1 - t) RMS_A^2 + t RMS_B^2)`, with RMS_A and RMS_B the short-term
RMS of the two *unprocessed* sources at that moment. `loudness_gain` measures the short-term RMS
of both sources and of the blend, and returns the gain that brings the blend to that level,
smoothed over about 250 ms (in dB) and clipped to 0.75..1.45 (-2.5..+3.2 dB) so that deliberate
moves (a filter sweep, an echo-out gap) are evened out but never undone.

True-peak limiting. The peak of the reconstructed analog signal can lie between samples
(inter-sample peaks, up to +3 dB above the sample peak for a sine at fs/4). `true_peak_envelope`
estimates it per sample by 4x polyphase oversampling (as ITU-R BS.1770-4 annex 2 does for its
true-peak meter, with a longer interpolation filter); `limit_true_peak` turns the excess over the
ceiling into a gain reduction with a look-ahead attack (the reduction is in place before the peak
arrives) and an exponential release, so the output's true peak stays at or below the ceiling
(-1 dBFS by default) while everything more than a release time away from an over is untouched
(gain exactly 1).

Arrays: `[channels, N]` (or `[N]`) numpy or torch float; results keep the input's type and device.
Only numpy/scipy inside: this runs once per transition, on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, signal

__all__ = [
    "GAIN_LIMITS",
    "blend_progress",
    "limit_true_peak",
    "loudness_compensate",
    "loudness_gain",
    "short_term_rms",
    "true_peak_db",
    "true_peak_envelope",
]

GAIN_LIMITS = (0.75, 1.45)  # loudness-compensation gain range (about -2.5 .. +3.2 dB)
RMS_WINDOW_S = 0.4  # short-term RMS window (the EBU R128 momentary window)
SMOOTH_S = 0.25  # smoothing of the compensation gain
HOP = 256  # samples between RMS frames (5.8 ms at 44.1 kHz)
SILENCE_RMS = 1e-4  # -80 dBFS: below this on both sides the gain stays at 1
OVERSAMPLE = 4
_CHUNK = 1 << 18  # samples per oversampling chunk (bounds memory on whole-track inputs)
# Interpolation filter length per phase. BS.1770-4's meter uses 12 (48 taps at 4x), whose transition band
# under-reads full-band material (hi-hats up to Nyquist): limited white noise peaked 1.4 dB over the ceiling
# by a 32x reference; with 48 per phase 0.45 dB, for about twice the (blockwise, loud-only) cost.
_TAPS_PER_PHASE = 48
_PAD = 64  # context samples each side of a chunk (> the interpolation filter's half-length)
_GAIN_CHUNK = 1 << 20  # samples per chunk of the limiter's gain computation


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _like(y: np.ndarray, x):
    """y with the array type (and torch device) of x."""
    if isinstance(x, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(x.device)
    return y.astype(np.float32, copy=False)


def _channels(x) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim == 1:
        return a[None]
    if a.ndim != 2:
        raise ValueError(f"audio must be [channels, N] or [N], got shape {tuple(a.shape)}")
    return a


# ------------------------------------------------------------------------------------------------
# Loudness compensation
# ------------------------------------------------------------------------------------------------


def short_term_rms(audio, sample_rate: int, window_s: float = RMS_WINDOW_S, hop: int = HOP) -> np.ndarray:
    """RMS over all channels in a centred `window_s` window, every `hop` samples: [ceil(N / hop)] float64.

    Frame k is centred on sample k * hop; the signal counts as zero outside its ends.
    """
    x = _channels(audio).astype(np.float64)
    power = np.mean(x * x, axis=0)
    width = max(1, int(round(window_s * sample_rate)))
    mean = ndimage.uniform_filter1d(power, size=width, mode="constant")
    return np.sqrt(np.maximum(mean[::hop], 0.0))


def blend_progress(n_samples: int, sample_rate: int, start_s: float, end_s: float, hop: int = HOP) -> np.ndarray:
    """Blend progress t per RMS frame: 0 before `start_s`, rising linearly to 1 at `end_s`, 1 after."""
    times = np.arange(0, n_samples, hop) / sample_rate
    if end_s <= start_s:
        return (times >= start_s).astype(np.float64)
    return np.clip((times - start_s) / (end_s - start_s), 0.0, 1.0)


def loudness_gain(
    blend,
    source_a,
    source_b,
    progress: np.ndarray,
    sample_rate: int,
    window_s: float = RMS_WINDOW_S,
    smooth_s: float = SMOOTH_S,
    limits: tuple[float, float] = GAIN_LIMITS,
    hop: int = HOP,
) -> np.ndarray:
    """Per-sample gain [N] that makes `blend` follow sqrt((1 - t) RMS_A^2 + t RMS_B^2).

    Args:
        blend: the rendered mix `[C, N]`.
        source_a, source_b: the two unprocessed sources on the same timeline (e.g. each track's stem
            sum, B already beatmatched and placed), `[C, N]`.
        progress: blend progress t per RMS frame (`blend_progress`), [ceil(N / hop)].
        window_s: short-term RMS window; smooth_s: length of the moving average applied to the
            gain in dB; limits: the gain is clipped to this range before and after smoothing.

    Where the blend and the target are both below -80 dBFS the gain is 1.
    """
    n = _channels(blend).shape[-1]
    rms_mix, rms_a, rms_b = (short_term_rms(x, sample_rate, window_s, hop) for x in (blend, source_a, source_b))
    t = np.asarray(progress, dtype=np.float64)
    if t.shape != rms_mix.shape:
        raise ValueError(f"progress has {t.shape[0]} frames, expected {rms_mix.shape[0]} (hop {hop})")
    target = np.sqrt((1.0 - t) * rms_a**2 + t * rms_b**2)
    floor = SILENCE_RMS
    gain = np.sqrt((target**2 + floor**2) / (rms_mix**2 + floor**2))
    low, high = limits
    gain_db = 20.0 * np.log10(np.clip(gain, low, high))
    frames = max(1, int(round(smooth_s * sample_rate / hop)))
    gain_db = ndimage.uniform_filter1d(gain_db, size=frames, mode="nearest")
    gain = np.clip(10.0 ** (gain_db / 20.0), low, high)
    return np.interp(np.arange(n), np.arange(len(gain)) * hop, gain)


def loudness_compensate(blend, source_a, source_b, sample_rate: int, blend_start: float, blend_end: float,
                        **options):
    """`blend` times `loudness_gain` for a blend from `blend_start` to `blend_end` (seconds); returns
    (audio of the input's type, gain [N] numpy). `options` go to `loudness_gain`."""
    x = _channels(blend)
    hop = options.get("hop", HOP)
    progress = blend_progress(x.shape[-1], sample_rate, blend_start, blend_end, hop)
    gain = loudness_gain(x, source_a, source_b, progress, sample_rate, **options)
    out = x * gain[None].astype(np.float32)
    return _like(out.reshape(_to_numpy(blend).shape), blend), gain


# ------------------------------------------------------------------------------------------------
# True peak
# ------------------------------------------------------------------------------------------------


def _interpolator(oversample: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass for `oversample`x interpolation, `_TAPS_PER_PHASE` taps per phase."""
    n = 2 * (_TAPS_PER_PHASE // 2) * oversample + 1
    return signal.firwin(n, 1.0 / oversample, window=("kaiser", 6.0))


def true_peak_envelope(audio, oversample: int = OVERSAMPLE, floor: float = 0.0) -> np.ndarray:
    """Per-sample true-peak estimate [N]: the largest |value| over channels of sample n and of the
    `oversample` - 1 interpolated points between samples n and n + 1 (polyphase Kaiser-windowed sinc).

    floor: only blocks whose sample peak reaches `floor` are oversampled (elsewhere the sample peak
    is returned); inter-sample peaks of music stay within a few dB of the sample peaks, so a
    limiter passes half its ceiling (-6 dB) and skips the quiet majority of the samples.
    """
    x = _channels(audio)
    n = x.shape[-1]
    env = np.abs(x).max(axis=0)
    if oversample <= 1 or n < 2:
        return env
    taps = _interpolator(oversample)
    block = 4096
    loud = np.flatnonzero(np.maximum.reduceat(env, np.arange(0, n, block)) >= floor)
    # Runs of consecutive loud blocks, each processed in chunks of at most _CHUNK samples.
    spans: list[tuple[int, int]] = []
    for k in loud:
        start, stop = int(k) * block, min(n, (int(k) + 1) * block)
        if spans and spans[-1][1] == start and stop - spans[-1][0] <= _CHUNK:
            spans[-1] = (spans[-1][0], stop)
        else:
            spans.append((start, stop))
    for start, stop in spans:
        lo, hi = max(0, start - _PAD), min(n, stop + _PAD)
        up = signal.resample_poly(x[:, lo:hi], oversample, 1, axis=-1, window=taps)  # [C, oversample * (hi - lo)]
        up = np.abs(up).max(axis=0).reshape(hi - lo, oversample).max(axis=1)
        env[start:stop] = np.maximum(env[start:stop], up[start - lo: stop - lo])
    return env


def true_peak_db(audio, oversample: int = OVERSAMPLE) -> float:
    """True peak in dBFS (4x oversampled estimate); -200 for digital silence."""
    peak = float(true_peak_envelope(audio, oversample).max()) if _channels(audio).size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -200.0


@dataclass
class LimiterReport:
    """What `limit_true_peak` did: true peaks before/after (dBFS) and the largest gain reduction (dB)."""

    peak_in_db: float
    peak_out_db: float
    max_reduction_db: float
    limited_fraction: float  # share of samples whose gain is below 1


def _reduction_chunks(env: np.ndarray, ceiling: float, sample_rate: int, lookahead_s: float, release_s: float,
                      chunk: int = _GAIN_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """(start, gain reduction in dB [<= chunk] >= 0) over consecutive chunks of `env`: together the reduction that
    brings every value down to `ceiling` (see limit_true_peak). Chunked so that a two-hour mix needs no
    full-length float64 arrays: the release is carried from chunk to chunk and the filters read `width` samples
    beyond each side, so the result is the whole-signal computation's."""
    n = len(env)
    width = 2 * max(1, int(round(lookahead_s * sample_rate))) + 1
    chunk = max(chunk, 2 * width)
    log_a = -1.0 / max(1.0, release_s * sample_rate)
    held_before = 0.0  # the held reduction at the sample before the region
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lo, hi = max(0, start - width), min(n, stop + width)  # max then mean filter: width // 2 each way
        nxt = max(0, stop - width)  # the next region's first sample
        env_r = env[lo:hi].astype(np.float64)
        need = np.where(env_r > ceiling, 20.0 * np.log10(np.maximum(env_r, 1e-30) / ceiling), 0.0)
        if held_before < 1e-4 and not need.any():  # nothing to reduce here (values below 1e-4 dB are zeroed)
            held_before *= math.exp(log_a * (nxt - lo))
            yield start, np.zeros(stop - start)
            continue
        # Exponential release: r[n] = max(need[n], r[n - 1] * a), computed as a running maximum in the
        # log domain: log r[n] = n log a + max_{m <= n} (log need[m] - m log a); r[-1] = held_before.
        idx = np.arange(hi - lo, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_need = np.log(need)
        if held_before > 0:
            log_need[0] = max(log_need[0], math.log(held_before) + log_a)
        held = np.exp(np.maximum.accumulate(log_need - idx * log_a) + idx * log_a)
        reduction = ndimage.uniform_filter1d(ndimage.maximum_filter1d(held, size=width, mode="nearest"),
                                             size=width, mode="nearest")[start - lo:stop - lo]
        reduction = np.maximum(reduction, 0.0)
        reduction[(reduction < 1e-4) & (need[start - lo:stop - lo] == 0)] = 0.0  # far below audibility: unity
        held_before = float(held[nxt - 1 - lo]) if nxt > lo else held_before
        yield start, reduction


def limit_true_peak(
    audio,
    sample_rate: int,
    ceiling_db: float = -1.0,
    lookahead_s: float = 0.005,
    release_s: float = 0.08,
    oversample: int = OVERSAMPLE,
    passes: int = 3,
) -> tuple[object, LimiterReport]:
    """Keep the true peak at or below `ceiling_db` dBFS; returns (audio of the input's type, LimiterReport).

    Gain reduction in dB, per sample: the required reduction (true-peak excess over the ceiling)
    is held with an exponential release (time constant `release_s`), widened by a moving maximum
    of +-`lookahead_s` and smoothed by a moving average of the same width; a moving average whose
    half-width does not exceed the maximum's never falls below the requirement, so the ceiling
    holds at every sample, and the reduction ramps in over `2 * lookahead_s` before each over.
    The interpolated peaks of a gain-modulated signal differ slightly from the unmodulated
    estimate, so the output is re-measured where the gain moved and limited again (up to `passes`
    times; a last resort scales by the remainder). Samples more than the release tail away from
    any over keep their exact values.
    """
    x = _channels(audio)
    ceiling = 10.0 ** (ceiling_db / 20.0)
    guard = ceiling * 10.0 ** (-6.0 / 20.0)  # inter-sample peaks of music stay well within 6 dB
    env = true_peak_envelope(x, oversample, floor=guard)
    peak_in = float(env.max()) if env.size else 0.0
    out = x
    total = np.zeros(x.shape[-1], np.float32)  # reduction applied, dB (float32: a two-hour mix is 1.3 GB less)
    target = ceiling * 10.0 ** (-0.001 / 20.0)  # 0.001 dB under: float32 rounding cannot cross the ceiling
    for _ in range(max(1, passes)):
        first = last = None
        for start, reduction in _reduction_chunks(env, target, sample_rate, lookahead_s, release_s):
            changed = np.flatnonzero(reduction > 0)
            if not changed.size:
                continue
            if out is x:
                out = x.copy()
            stop = start + len(reduction)
            total[start:stop] += reduction
            out[:, start:stop] *= (10.0 ** (-reduction / 20.0)).astype(np.float32)[None]
            first = start + int(changed[0]) if first is None else first
            last = start + int(changed[-1])
        if first is None:
            break
        lo, hi = max(0, first - _PAD), min(out.shape[-1], last + 1 + _PAD)
        env[lo:hi] = true_peak_envelope(out[:, lo:hi], oversample, guard)  # elsewhere the output is unchanged
    peak_out = float(env.max()) if env.size else 0.0
    if peak_out > ceiling:
        out = out * np.float32(ceiling / peak_out * (1.0 - 1e-6))
        peak_out = float(true_peak_envelope(out, oversample, guard).max())
    report = LimiterReport(
        peak_in_db=20.0 * math.log10(peak_in) if peak_in > 0 else -200.0,
        peak_out_db=20.0 * math.log10(peak_out) if peak_out > 0 else -200.0,
        max_reduction_db=float(total.max()) if total.size else 0.0,
        limited_fraction=float(np.mean(total > 0)) if total.size else 0.0,
    )
    if out is x and isinstance(audio, torch.Tensor):
        return audio, report
    return _like(out.reshape(_to_numpy(audio).shape), audio), report
