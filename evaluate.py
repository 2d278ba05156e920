"""evaluate.py: objective transition metrics, and the baselines side by side on held-out pairs.

    python evaluate.py --data processed --split test --model runs/small/best.pt --out eval/
    python evaluate.py --data processed --split test --model model.pt --candidates 1 --limit 20   # one sample
    python evaluate.py --pool eval_a/results.csv eval_b/results.csv --out eval_pooled   # several sets as one

Every method draws curves [F, 58] (the full layout) on the same clip geometry; the mixer renders them
and each track's contribution alone (the mixer is linear in the audio, so A's contribution is exactly
mixer(stems_a, 0, curves)); the metrics compare the rendered blend with its sources. Methods: a hard cut
on the downbeat nearest the blend middle, a linear and an equal-power crossfade across the blend, the
rule planner's bass-swap handover (data/transitions.RECIPES["bass_swap"]), the model (one sample) and,
with --candidates K > 1 (default 4, as inference.py), the best of K samples by the composite score (what
inference.py outputs); the pair's teacher curves are shown
as a reference row. Writes results.md, results.csv (per pair per method) and metrics.png to --out and
prints the markdown. Every metric and its formula is documented in the README ("Evaluation").

Library use (inference.py ranks candidates with it):

    from evaluate import score_transition
    scores = score_transition(mixer, stems_a, stems_b, curves, bpm, (blend_start, blend_end))
    scores["composite"]   # higher is better; the other keys are the individual metrics
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.signal as ss
import torch

from effects.mixer import DifferentiableDJMixer
from effects.params import EQ_DB_RANGE, FULL, SAMPLE_RATE, STEMS

log = logging.getLogger("evaluate")

# -- metric settings (documented in the README) ---------------------------------------------------------------------
N_FFT, HOP = 4096, 1024  # level analysis: 10.8 Hz bins, 23 ms frames
LOW_BAND_HZ = 200.0  # the low band of the bass clash: STFT bins below this
LOUDNESS_WINDOW_S = 1.0  # short-term window of the loudness dip
CLASH_WINDOW_S = 0.4  # short-term window of the clashes and of the overlap
CLASH_DB = 6.0  # "full": a contribution within this of its dry source's level
GAP_DB = 20.0  # clash gains are read frame by frame where the dry frame is within this of its windowed level
PRESENT_DB = 30.0  # a source is present where its level is within this of its own maximum over the clip
AUDIBLE_DB = 20.0  # overlap: both contributions within this of their dry levels
FLOOR_POWER = 1e-8  # -80 dBFS: quieter counts as silence
MAX_DIP_DB = 60.0  # the dip is capped here (a cut into digital silence would be infinite)
ONSET_N_FFT, ONSET_HOP = 1024, 128  # onset envelopes: 2.9 ms frames
N_MELS = 40
NOVELTY_POOL = 4  # STFT frames per novelty frame (93 ms)
NOVELTY_HALF_S = 2.0  # half-width of the checkerboard kernel
NOVELTY_PERCENTILE = 95.0
TEMPO_TOLERANCE = 0.04  # tempo stability: lags within +-4 % of the beat period count as the beat
PATTERN_BINS = 16  # beat-synchronous onset pattern: bins per beat
RHYTHM_WEIGHTS = {"tempo": 0.4, "pattern": 0.3, "alignment": 0.2, "strength": 0.1}
PHASE_HARMONICS = 4  # beat-phase error: beat harmonics of the folded cross-correlation (up to 16th notes)
PHASE_TIE = 0.1  # ... a peak within this share of its range of the best counts as a tie (the smaller lag wins)
PHASE_SCALE_MS = 20.0  # beat-phase score 1 / (1 + (err / 20 ms)^2)
TV_SCALE = 2.0  # smoothness score 1 / (1 + tv / 2 per second)
# Composite: weighted mean of per-metric scores in [0, 1]; missing metrics (NaN) drop out and the rest renormalise.
COMPOSITE_WEIGHTS = {
    "loudness_dip_db": 0.20,
    "bass_clash": 0.20,
    "vocal_clash": 0.15,
    "beat_phase_ms": 0.10,
    "seam_novelty": 0.15,
    "rhythmic_consistency": 0.15,
    "curve_tv": 0.05,
}
METRICS = ("loudness_dip_db", "bass_clash", "vocal_clash", "beat_phase_ms", "seam_novelty", "rhythmic_consistency",
           "curve_tv", "curve_error", "composite")
HIGHER_IS_BETTER = {"rhythmic_consistency", "composite"}
_VOCALS = STEMS.index("vocals")


# ======================================================================================================================
# Signal analysis
# ======================================================================================================================
def _audio(x) -> torch.Tensor:
    """[C, N] or [N] (torch or numpy, any device) -> float32 CPU [C, N]."""
    x = torch.as_tensor(x).detach().float().cpu()
    return x[None] if x.dim() == 1 else x


@lru_cache(maxsize=8)
def _mel_basis(n_fft: int, sample_rate: int) -> torch.Tensor:
    import librosa

    fmax = min(16_000.0, sample_rate / 2)
    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=N_MELS, fmin=30.0, fmax=fmax))


def power_spectrogram(x, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """[K, M] one-sided power per bin and frame (frame m centred on sample m * hop, zero-padded ends), averaged
    over channels and scaled so that the bins of a frame sum to the frame's windowed mean square (a full-scale
    sine sums to 0.5)."""
    x = _audio(x)
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    power = spec.real.square().add_(spec.imag.square()).mean(0)  # [K, M]
    weight = torch.full((power.shape[0], 1), 2.0)
    weight[0] = weight[-1] = 1.0
    return (power * weight / (n_fft * window.square().sum())).numpy().astype(np.float64)


@dataclass
class Bands:
    """Per-frame powers of one signal on the level grid (N_FFT / HOP)."""

    full: np.ndarray  # [M] mean square
    low: np.ndarray  # [M] mean square below LOW_BAND_HZ
    mel: np.ndarray | None = None  # [N_MELS, M]


def bands(x, sample_rate: int = SAMPLE_RATE, with_mel: bool = False) -> Bands:
    p = power_spectrogram(x)
    low_bins = int(np.ceil(LOW_BAND_HZ * N_FFT / sample_rate))
    mel = _mel_basis(N_FFT, sample_rate).double().numpy() @ p if with_mel else None
    return Bands(full=p.sum(0), low=p[:low_bins].sum(0), mel=mel)


def moving_average(p: np.ndarray, window_s: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Centred moving average of per-frame powers over window_s seconds (shorter at the clip ends)."""
    n = max(1, int(round(window_s * sample_rate / HOP)))
    n += 1 - n % 2  # odd: centred
    kernel = np.ones(n)
    return np.convolve(p, kernel, mode="same") / np.convolve(np.ones_like(p), kernel, mode="same")


def frame_times(n_frames: int, sample_rate: int = SAMPLE_RATE, hop: int = HOP) -> np.ndarray:
    return np.arange(n_frames) * hop / sample_rate


def _present(power: np.ndarray, below_max_db: float = PRESENT_DB) -> np.ndarray:
    """Frames where a source is present: above FLOOR_POWER and within below_max_db of its maximum."""
    top = float(power.max()) if power.size else 0.0
    return power > max(FLOOR_POWER, top * 10.0 ** (-below_max_db / 10.0))


def onset_envelope(x, sample_rate: int = SAMPLE_RATE, start_s: float | None = None,
                   end_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(times [T] s, envelope [T]): log-mel spectral flux, sum over N_MELS bands of max(0, d/dt ln(mel + floor)),
    on ONSET_HOP frames (2.9 ms), for frames inside [start_s, end_s] (the whole signal by default)."""
    x = _audio(x)
    n = x.shape[-1]
    start_s = 0.0 if start_s is None else max(0.0, start_s)
    end_s = n / sample_rate if end_s is None else min(end_s, n / sample_rate)
    lo = max(0, int(start_s * sample_rate) - ONSET_N_FFT)
    hi = min(n, int(math.ceil(end_s * sample_rate)) + ONSET_N_FFT)
    if hi - lo < ONSET_N_FFT:
        return np.zeros(0), np.zeros(0)
    p = power_spectrogram(x[:, lo:hi], ONSET_N_FFT, ONSET_HOP)
    log_mel = np.log(_mel_basis(ONSET_N_FFT, sample_rate).double().numpy() @ p + FLOOR_POWER)
    flux = np.maximum(np.diff(log_mel, axis=1), 0.0).sum(0)
    times = (lo + np.arange(1, p.shape[1]) * ONSET_HOP) / sample_rate
    keep = (times >= start_s - 1e-9) & (times <= end_s + 1e-9)
    if lo > 0:  # the first frames of a slice see its zero-padded edge
        keep &= times >= (lo + ONSET_N_FFT) / sample_rate
    return times[keep], flux[keep]


# -- novelty ---------------------------------------------------------------------------------------------------------
def _novelty_features(mel: np.ndarray) -> np.ndarray:
    """[M', N_MELS + 1] unit rows: the spectral shape log(1 + 1e6 mel) minus its mean over the bands (a level change
    alone is no novelty), pooled over NOVELTY_POOL frames, plus a constant 1 so that silent frames are alike (the
    constant) and unlike music."""
    m = mel.shape[1] // NOVELTY_POOL * NOVELTY_POOL
    pooled = mel[:, :m].reshape(mel.shape[0], -1, NOVELTY_POOL).mean(-1)
    shape = np.log1p(1e6 * pooled).T
    f = np.concatenate([shape - shape.mean(1, keepdims=True), np.ones((pooled.shape[1], 1))], axis=1)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _novelty_kernel(half: int) -> np.ndarray:
    """Foote's checkerboard kernel [2h, 2h] with a Gaussian taper, normalised to sum(|K|) = 1."""
    offsets = np.arange(-half, half) + 0.5
    sign = np.sign(offsets)
    taper = np.exp(-0.5 * (offsets / (0.5 * half)) ** 2)
    kernel = np.outer(sign * taper, sign * taper)
    return kernel / np.abs(kernel).sum()


def novelty_curve(mel: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(times [M'] s, novelty [M']): Foote novelty of the cosine self-similarity of the features; NaN where the
    kernel does not fit inside the signal. Times are the centres of the pooled frames."""
    f = _novelty_features(mel)
    sim = f @ f.T
    half = _novelty_half(sample_rate)
    kernel = _novelty_kernel(half)
    out = np.full(len(f), np.nan)
    for i in range(half, len(f) - half + 1):
        out[i] = max(0.0, float((kernel * sim[i - half:i + half, i - half:i + half]).sum()))
    times = (np.arange(len(f)) * NOVELTY_POOL + (NOVELTY_POOL - 1) / 2) * HOP / sample_rate
    return times, out


def _novelty_half(sample_rate: int) -> int:
    return max(2, int(round(NOVELTY_HALF_S * sample_rate / (HOP * NOVELTY_POOL))))


def _pooled_activity(power: np.ndarray, n_pooled: int) -> np.ndarray:
    """[M'] bool: the source is present (within 40 dB of its maximum) throughout each pooled novelty frame."""
    return _present(power[:n_pooled * NOVELTY_POOL], 40.0).reshape(-1, NOVELTY_POOL).all(1)


def _near(flags: np.ndarray, half: int) -> np.ndarray:
    """[M'] bool: some flag lies within the kernel span [i - half, i + half) of frame i."""
    out = np.zeros(len(flags), dtype=bool)
    for i in np.flatnonzero(flags):
        out[max(0, i - half + 1):i + half + 1] = True
    return out


def _reference_novelty(mel: np.ndarray, power: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(novelty values of a dry source where it plays throughout the kernel's span, [M'] bool: frames whose span
    holds an edge of its audio, where the music itself starts or stops in the clip)."""
    _, nov = novelty_curve(mel, sample_rate)
    active = _pooled_activity(power, len(nov))
    edges = np.zeros(len(nov), dtype=bool)
    edges[1:] = active[1:] != active[:-1]
    half = _novelty_half(sample_rate)
    ok = np.isfinite(nov) & active & ~_near(~active, half)
    return nov[ok], _near(edges, half)


# ======================================================================================================================
# Sources: what every method is measured against (computed once per pair)
# ======================================================================================================================
@dataclass
class SourceAnalysis:
    """Method-independent analysis of one clip's two dry sources (stem sums and vocal stems)."""

    sample_rate: int
    n_samples: int
    bpm: float | None
    blend: tuple[float, float]
    times: np.ndarray  # [M] level-frame times (s)
    loud_a: np.ndarray  # [M] short-term (LOUDNESS_WINDOW_S) mean square of A's dry stem sum
    loud_b: np.ndarray
    level_a: np.ndarray  # [M] CLASH_WINDOW_S mean square of the dry stem sums, full band ...
    level_b: np.ndarray
    low_a: np.ndarray  # [M] per-frame (unsmoothed) mean square of the dry stem sums below LOW_BAND_HZ
    low_b: np.ndarray
    vocal_a: np.ndarray | None  # [M] per-frame mean square of the dry vocal stems (None: no vocal in the blend)
    vocal_b: np.ndarray | None
    novelty_p95: float  # NOVELTY_PERCENTILE of the sources' own novelty (NaN: too little music to tell)
    source_edges: np.ndarray  # [M'] bool, novelty frames near a start or stop of a source's own audio
    beat_phase: float  # A's beat phase (radians, relative to blend start) over the rhythm span; NaN: no pulse
    bpm_b: float | None = None  # B's tempo in the clip (2 bpm or bpm / 2) in a half/double-time mix, else None

    @property
    def duration(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def phase_beat(self) -> float | None:
        """The period the beat phase is folded on: the beat, or the faster track's beat when one track plays at
        double the other's tempo (its every other beat lands on the slower one's off-beats by design)."""
        return 60.0 / max(self.bpm, self.bpm_b) if self.bpm and self.bpm_b else self.beat

    @property
    def beat(self) -> float | None:
        return 60.0 / self.bpm if self.bpm else None

    def blend_mask(self, times: np.ndarray | None = None) -> np.ndarray:
        t = self.times if times is None else times
        return (t >= self.blend[0]) & (t <= self.blend[1])

    def rhythm_span(self) -> tuple[float, float]:
        """The blend plus one bar either side (the entry and the exit), inside the clip."""
        bar = 4 * (self.beat or 0.5)
        return max(0.0, self.blend[0] - bar), min(self.duration, self.blend[1] + bar)


def _check_clip(stems_a, stems_b, blend, sample_rate) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    a, b = (torch.as_tensor(s).detach().float() for s in (stems_a, stems_b))
    for name, s in (("stems_a", a), ("stems_b", b)):
        if s.dim() != 3 or s.shape[:2] != (len(STEMS), 2):
            raise ValueError(f"{name} must be [4, 2, N] (stems {STEMS}, stereo), got {tuple(s.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"stems_a {tuple(a.shape)} and stems_b {tuple(b.shape)} differ in shape")
    duration = a.shape[-1] / sample_rate
    start, end = (float(v) for v in blend)
    if not (0.0 <= start < end) or start >= duration:
        raise ValueError(f"blend {blend} must satisfy 0 <= start < end inside the {duration:.2f} s clip")
    return a, b, (start, min(end, duration))


def double_time_bpm(bpm: float | None, bpm_b: float | None) -> float | None:
    """2 bpm or bpm / 2 when bpm_b is about that (within 10 %: a half/double-time mix, B beatmatched to A, so the
    relation is exact in the clip), else None."""
    if not (bpm and bpm_b and float(bpm) > 0 and float(bpm_b) > 0):
        return None
    octaves = math.log2(float(bpm_b) / float(bpm))
    return float(bpm) * 2.0 ** round(octaves) if abs(abs(octaves) - 1.0) < math.log2(1.1) else None


def analyse_sources(stems_a, stems_b, bpm: float | None, blend: tuple[float, float],
                    sample_rate: int = SAMPLE_RATE, bpm_b: float | None = None) -> SourceAnalysis:
    """Everything the metrics need from the dry sources (stems [4, 2, N], B beatmatched and aligned). bpm is the
    clip's (A's) tempo; bpm_b, B's tempo in the clip, matters only when it is half or double A's."""
    a, b, blend = _check_clip(stems_a, stems_b, blend, sample_rate)
    bpm = float(bpm) if bpm and float(bpm) > 0 else None
    sum_a, sum_b = a.sum(0), b.sum(0)
    bands_a, bands_b = bands(sum_a, sample_rate, with_mel=True), bands(sum_b, sample_rate, with_mel=True)
    times = frame_times(len(bands_a.full), sample_rate)
    blend_mask = (times >= blend[0]) & (times <= blend[1])

    def vocal(stems: torch.Tensor) -> np.ndarray | None:
        lo, hi = int(blend[0] * sample_rate), int(math.ceil(blend[1] * sample_rate))
        if float(stems[_VOCALS, :, lo:hi].abs().max()) < 1e-5:
            return None
        level = bands(stems[_VOCALS], sample_rate).full
        return level if _present(moving_average(level, CLASH_WINDOW_S, sample_rate))[blend_mask].any() else None

    (ref_a, edges_a), (ref_b, edges_b) = (_reference_novelty(x.mel, x.full, sample_rate) for x in (bands_a, bands_b))
    pooled = np.concatenate([ref_a, ref_b])
    p95 = float(np.percentile(pooled, NOVELTY_PERCENTILE)) if len(pooled) >= 10 else float("nan")
    source = SourceAnalysis(
        sample_rate=sample_rate, n_samples=a.shape[-1], bpm=bpm, blend=blend, times=times,
        loud_a=moving_average(bands_a.full, LOUDNESS_WINDOW_S, sample_rate),
        loud_b=moving_average(bands_b.full, LOUDNESS_WINDOW_S, sample_rate),
        level_a=moving_average(bands_a.full, CLASH_WINDOW_S, sample_rate),
        level_b=moving_average(bands_b.full, CLASH_WINDOW_S, sample_rate),
        low_a=bands_a.low, low_b=bands_b.low,
        vocal_a=vocal(a), vocal_b=vocal(b), novelty_p95=p95, source_edges=edges_a | edges_b, beat_phase=float("nan"),
        bpm_b=double_time_bpm(bpm, bpm_b),
    )
    if bpm:
        for dry in (sum_a, sum_b):  # A's grid; B's when A has no pulse over the span
            t, env = onset_envelope(dry, sample_rate, *source.rhythm_span())
            phasor = _beat_phasor(t, env, source.beat, blend[0])
            if abs(phasor) > 1e-9:
                source.beat_phase = float(np.angle(phasor))
                break
    return source


# ======================================================================================================================
# Metrics
# ======================================================================================================================
def loudness_dip(source: SourceAnalysis, out: Bands) -> float:
    """Worst short-term drop (dB, >= 0) of the blend below the energy-fair interpolation of the sources:
    max over blend frames of 10 log10(((1 - t) P_A + t P_B) / P_out), t = 0..1 across the blend."""
    mask = source.blend_mask() & np.isfinite(source.loud_a)
    t = np.clip((source.times - source.blend[0]) / (source.blend[1] - source.blend[0]), 0.0, 1.0)
    fair = (1.0 - t) * source.loud_a + t * source.loud_b
    mask &= fair > FLOOR_POWER
    if not mask.any():
        return float("nan")
    p_out = moving_average(out.full, LOUDNESS_WINDOW_S, source.sample_rate)
    drop = 10.0 * np.log10(fair[mask] / np.maximum(p_out[mask], 1e-30))
    return float(np.clip(drop.max(), 0.0, MAX_DIP_DB))


def full_level(contrib: np.ndarray, dry: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[M] bool: frames where a contribution plays at 'full' level, its gain contrib / dry within CLASH_DB of
    0 dB, and its dry source is present (PRESENT_DB over CLASH_WINDOW_S). The gain is read frame by frame where
    the dry frame carries sound (within GAP_DB of its CLASH_WINDOW_S average; the mixer is linear, so there the
    ratio is the gain the curves applied) and over the window in the gaps between notes; a ratio of windowed
    powers alone would smear a sharp cut into a clash as long as half the window."""
    c_avg, d_avg = (moving_average(x, CLASH_WINDOW_S, sample_rate) for x in (contrib, dry))
    sounding = dry >= d_avg * 10.0 ** (-GAP_DB / 10.0)
    gain = np.where(sounding, contrib / np.maximum(dry, 1e-30), c_avg / np.maximum(d_avg, 1e-30))
    return _present(d_avg) & (gain >= 10.0 ** (-CLASH_DB / 10.0))


def clash_share(contrib_a: np.ndarray, contrib_b: np.ndarray, dry_a: np.ndarray, dry_b: np.ndarray,
                mask: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Share of the masked frames where both contributions are full (full_level). All arguments are per-frame
    powers on the level grid, unsmoothed."""
    if not mask.any():
        return float("nan")
    both = full_level(contrib_a, dry_a, sample_rate) & full_level(contrib_b, dry_b, sample_rate)
    return float(both[mask].mean())


def overlap_mask(source: SourceAnalysis, level_a: np.ndarray, level_b: np.ndarray) -> np.ndarray:
    """Blend frames where both contributions are audible: within AUDIBLE_DB of their present dry sources."""
    ratio = 10.0 ** (-AUDIBLE_DB / 10.0)
    audible_a = _present(source.level_a, 40.0) & (level_a >= ratio * source.level_a)
    audible_b = _present(source.level_b, 40.0) & (level_b >= ratio * source.level_b)
    return audible_a & audible_b & source.blend_mask()


def _parabola(y0: float, y1: float, y2: float) -> float:
    """Offset (-0.5..0.5) of the vertex of the parabola through three samples around a local maximum y1."""
    denom = y0 - 2 * y1 + y2
    if denom >= 0 or y1 < max(y0, y2):
        return 0.0
    return float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5))


def phase_lag_ms(env_a: np.ndarray, env_b: np.ndarray, sample_rate: int = SAMPLE_RATE,
                 beat: float | None = None) -> float:
    """Lag (ms, signed: > 0 when B is late) between two onset envelopes on the same ONSET_HOP grid.

    With a beat period T: the peak in (-T/2, T/2] of their beat-periodic cross-correlation, the sum of its first
    PHASE_HARMONICS beat harmonics r(l) = sum_h Re(C_h exp(2 pi i h l / T)), C_h = E_B(h) conj(E_A(h)),
    E(h) = sum_n (e(n) - mean e) exp(-2 pi i h t_n / T). Folding on the beat keeps the estimate from jumping to
    an off-beat peak when the two tracks' patterns differ; when the best peak within a quarter beat of 0 comes
    within PHASE_TIE of the range of r to the overall best (patterns that cannot tell the two apart, such as
    8th-note hats), that one is taken. Without a tempo: the cross-correlation peak within 250 ms, refined by a
    parabola.
    """
    ea, eb = env_a - env_a.mean(), env_b - env_b.mean()
    if len(ea) < 4 or ea.std() < 1e-12 or eb.std() < 1e-12:
        return float("nan")
    fps = sample_rate / ONSET_HOP
    if beat:
        t = np.arange(len(ea)) / fps
        lags = np.linspace(-beat / 2, beat / 2, int(beat * 1e4) + 1)[1:]  # 0.1 ms steps
        r = np.zeros_like(lags)
        for h in range(1, PHASE_HARMONICS + 1):
            basis = np.exp(-2j * np.pi * h * t / beat)
            cross = np.sum(eb * basis) * np.conj(np.sum(ea * basis))
            r += np.real(cross * np.exp(2j * np.pi * h * lags / beat))
        spread = float(np.ptp(r))
        if spread < 1e-12:
            return float("nan")
        best = int(np.argmax(r))
        near = np.flatnonzero(np.abs(lags) <= beat / 4)
        close = near[int(np.argmax(r[near]))]
        if r[close] >= r[best] - PHASE_TIE * spread:  # ambiguous (e.g. 8th-note hats): the alignment near zero
            best = close
        return float(lags[best] * 1000.0)
    max_lag = max(1, int(0.25 * fps))
    xc = ss.correlate(eb, ea, mode="full", method="fft")
    lags = np.arange(-len(ea) + 1, len(eb))
    keep = np.flatnonzero(np.abs(lags) <= max_lag)
    i = keep[int(np.argmax(xc[keep]))]
    shift = _parabola(xc[i - 1], xc[i], xc[i + 1]) if keep[0] < i < keep[-1] else 0.0
    return float((lags[i] + shift) / fps * 1000.0)


def beat_phase_error(source: SourceAnalysis, audio_a, audio_b, level_a: np.ndarray, level_b: np.ndarray) -> float:
    """|lag| (ms) between A's and B's contributions' onset envelopes over their overlap in the blend, folded on
    source.phase_beat (the faster track's beat in a half/double-time mix); NaN when they overlap for less than two
    beats (one second without a tempo)."""
    overlap = overlap_mask(source, level_a, level_b)
    if overlap.sum() * HOP / source.sample_rate < 2.0 * (source.beat or 0.5):
        return float("nan")
    start, end = source.times[overlap][[0, -1]]
    _, env_a = onset_envelope(audio_a, source.sample_rate, start, end)
    _, env_b = onset_envelope(audio_b, source.sample_rate, start, end)
    n = min(len(env_a), len(env_b))
    return abs(phase_lag_ms(env_a[:n], env_b[:n], source.sample_rate, source.phase_beat))


def seam_novelty(source: SourceAnalysis, out: Bands) -> float:
    """Peak novelty of the output over the blend / the NOVELTY_PERCENTILE of the sources' own novelty. Frames
    whose kernel span holds a start or stop of a source's own audio are left out (that novelty is the music's)."""
    if not np.isfinite(source.novelty_p95):
        return float("nan")
    times, nov = novelty_curve(out.mel, source.sample_rate)
    edges = np.zeros(len(nov), dtype=bool)
    edges[:min(len(nov), len(source.source_edges))] = source.source_edges[:len(nov)]
    inside = source.blend_mask(times) & np.isfinite(nov) & ~edges
    if not inside.any():
        return float("nan")
    return float(nov[inside].max() / max(source.novelty_p95, 1e-6))


def _beat_phasor(times: np.ndarray, env: np.ndarray, beat: float, origin: float) -> complex:
    """sum_n env(n) exp(-2 pi i (t_n - origin) / beat): the beat-rate component of an onset envelope."""
    if not len(env):
        return 0j
    return complex(np.sum(env * np.exp(-2j * np.pi * (times - origin) / beat)))


def _segment_tempo_score(env: np.ndarray, fps: float, bpm: float) -> float:
    """R(T) / max_l R(l), clipped to [0, 1]: the bar's autocorrelation R (zero-mean envelope, divided by the overlap
    length) at the beat period T (or T / 2 or 2 T, each within +-TEMPO_TOLERANCE) over its maximum at lags of
    60-200 BPM; 0 for a bar without onsets."""
    e = env - env.mean()
    n = len(e)
    lo, hi = int(fps * 60.0 / 200.0), min(int(fps * 60.0 / 60.0), n // 2)
    if n < 8 or hi <= lo + 2 or e.std() < 1e-12:
        return 0.0
    acf = ss.correlate(e, e, mode="full", method="fft")[n - 1:n + hi] / (n - np.arange(hi + 1))
    peak = float(acf[lo:hi + 1].max())
    at_beat = -np.inf
    for multiple in (0.5, 1.0, 2.0):
        period = fps * 60.0 / bpm * multiple
        a = max(lo, int(math.floor(period * (1 - TEMPO_TOLERANCE))))
        b = min(hi, int(math.ceil(period * (1 + TEMPO_TOLERANCE))))
        if a <= b:
            at_beat = max(at_beat, float(acf[a:b + 1].max()))
    if peak <= 0 or not np.isfinite(at_beat):
        return 0.0
    return float(np.clip(at_beat / peak, 0.0, 1.0))


def _pattern(times: np.ndarray, env: np.ndarray, beat: float, origin: float) -> np.ndarray:
    """Mean onset envelope per PATTERN_BINS bins of the beat phase."""
    bins = np.floor(((times - origin) / beat % 1.0) * PATTERN_BINS).astype(int) % PATTERN_BINS
    counts = np.bincount(bins, minlength=PATTERN_BINS)
    sums = np.bincount(bins, weights=env, minlength=PATTERN_BINS)
    return sums / np.maximum(counts, 1)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() < 1e-12 or y.std() < 1e-12:
        return 0.0
    return max(0.0, float(np.corrcoef(x, y)[0, 1]))


def rhythmic_consistency(out, source: SourceAnalysis) -> dict[str, float]:
    """Rhythm of the output over the blend plus a bar either side, cut into one-bar segments (4 beats). Returns the
    four sub-scores in [0, 1] and their weighted sum (see RHYTHM_WEIGHTS and the README); NaN without a tempo or
    with fewer than two bars."""
    nan = {"rhythmic_consistency": float("nan"), **{f"rhythm_{k}": float("nan") for k in RHYTHM_WEIGHTS}}
    if not source.bpm:
        return nan
    beat, origin = source.beat, source.blend[0]
    start, end = source.rhythm_span()
    seg_beats = 4
    n_seg = int((end - start) / beat // seg_beats)
    if n_seg < 2:
        return nan
    times, env = onset_envelope(out, source.sample_rate, start, end)
    fps = source.sample_rate / ONSET_HOP
    tempo, patterns, align, strength = [], [], [], []
    for k in range(n_seg):
        inside = (times >= start + k * seg_beats * beat) & (times < start + (k + 1) * seg_beats * beat)
        t, e = times[inside], env[inside]
        tempo.append(_segment_tempo_score(e, fps, source.bpm))
        patterns.append(_pattern(t, e, beat, origin))
        phasor = _beat_phasor(t, e, beat, origin)
        strength.append(abs(phasor) / max(1, len(e)))
        if abs(phasor) <= 1e-12:
            align.append(0.0)
        else:
            ref = source.beat_phase if np.isfinite(source.beat_phase) else float(np.angle(phasor))
            align.append(max(0.0, math.cos(np.angle(phasor) - ref)))
    s = np.array(strength)
    parts = {
        "tempo": float(np.mean(tempo)),
        "pattern": float(np.mean([_correlation(p, q) for p, q in zip(patterns[:-1], patterns[1:])])),
        "alignment": float(np.mean(align)),
        "strength": float(np.clip(1.0 - s.std() / s.mean(), 0.0, 1.0)) if s.mean() > 1e-12 else 0.0,
    }
    score = sum(RHYTHM_WEIGHTS[k] * v for k, v in parts.items())
    return {"rhythmic_consistency": float(score), **{f"rhythm_{k}": v for k, v in parts.items()}}


def _model_space(curves) -> np.ndarray:
    u = curves.detach().float().cpu().numpy() if isinstance(curves, torch.Tensor) else np.asarray(curves, np.float32)
    if u.ndim != 2 or u.shape[1] != len(FULL):
        raise ValueError(f"curves must be [F, {len(FULL)}] in the full layout, got {tuple(u.shape)}")
    return np.clip(u.astype(np.float64), 0.0, 1.0)


def curve_total_variation(curves, duration: float) -> float:
    """sum over parameters and frames of |u[f + 1] - u[f]| (model space) per second of clip."""
    u = _model_space(curves)
    return float(np.abs(np.diff(u, axis=0)).sum() / duration)


def _resample(u: np.ndarray, n_frames: int) -> np.ndarray:
    if len(u) == n_frames:
        return u
    x_old, x_new = np.linspace(0.0, 1.0, len(u)), np.linspace(0.0, 1.0, n_frames)
    return np.stack([np.interp(x_new, x_old, u[:, j]) for j in range(u.shape[1])], axis=1)


def curve_error(curves, teacher) -> float:
    """Mean squared error in model space against the teacher (resampled to the curves' frames)."""
    u, v = _model_space(curves), _model_space(teacher)
    return float(np.mean((u - _resample(v, len(u))) ** 2))


def metric_scores(metrics: dict[str, float]) -> dict[str, float]:
    """Per-metric scores in [0, 1], higher is better (NaN where the metric is missing); see the README."""
    m = {k: float(metrics.get(k, float("nan"))) for k in COMPOSITE_WEIGHTS}
    return {
        "loudness_dip_db": 10.0 ** (-m["loudness_dip_db"] / 20.0),
        "bass_clash": 1.0 - m["bass_clash"],
        "vocal_clash": 1.0 - m["vocal_clash"],
        "beat_phase_ms": 1.0 / (1.0 + (m["beat_phase_ms"] / PHASE_SCALE_MS) ** 2),
        "seam_novelty": 1.0 / max(1.0, m["seam_novelty"]) if np.isfinite(m["seam_novelty"]) else float("nan"),
        "rhythmic_consistency": m["rhythmic_consistency"],
        "curve_tv": 1.0 / (1.0 + m["curve_tv"] / TV_SCALE),
    }


def composite_score(metrics: dict[str, float]) -> float:
    """sum_k w_k s_k / sum_k w_k over the metrics present (COMPOSITE_WEIGHTS, metric_scores)."""
    scores = metric_scores(metrics)
    present = [k for k, v in scores.items() if np.isfinite(v)]
    if not present:
        return float("nan")
    total = sum(COMPOSITE_WEIGHTS[k] for k in present)
    return float(sum(COMPOSITE_WEIGHTS[k] * scores[k] for k in present) / total)


# ======================================================================================================================
# Rendering and scoring
# ======================================================================================================================
def render_parts(mixer: DifferentiableDJMixer, stems_a: torch.Tensor, stems_b: torch.Tensor, curves,
                 bpm: float | None, vocals: tuple[bool, bool] = (True, True)) -> dict[str, torch.Tensor]:
    """Each track's contribution ('a', 'b'), their sum ('out', the rendered transition) and, where asked, each
    vocal stem's contribution ('vocal_a', 'vocal_b'): [2, N] CPU tensors. The mixer is linear in the audio, so
    the contributions sum to the mix exactly."""
    device = mixer.window.device
    a, b = stems_a.to(device)[None], stems_b.to(device)[None]
    zeros = torch.zeros_like(a)
    c = torch.as_tensor(curves, dtype=torch.float32).to(device)[None]

    def deck(track: str, stems: torch.Tensor) -> torch.Tensor:  # one deck at a time: the silent one costs no FFT
        ins = (stems, zeros) if track == "a" else (zeros, stems)
        return mixer(*ins, c, layout=FULL, bpm=bpm)[0].cpu()

    with torch.no_grad():
        parts = {"a": deck("a", a), "b": deck("b", b)}
        parts["out"] = parts["a"] + parts["b"]
        for name, stems, wanted in (("a", a, vocals[0]), ("b", b, vocals[1])):
            if wanted:
                only = torch.zeros_like(stems)
                only[:, _VOCALS] = stems[:, _VOCALS]
                parts[f"vocal_{name}"] = deck(name, only)
    return parts


def score_parts(source: SourceAnalysis, parts: dict[str, torch.Tensor], curves, teacher=None) -> dict[str, float]:
    """All metrics of one rendered transition (see render_parts) against its sources."""
    sr = source.sample_rate
    out = bands(parts["out"], sr, with_mel=True)
    band_a, band_b = bands(parts["a"], sr), bands(parts["b"], sr)
    blend = source.blend_mask()
    avg = lambda p: moving_average(p, CLASH_WINDOW_S, sr)  # noqa: E731
    level_a, level_b = avg(band_a.full), avg(band_b.full)
    metrics = {
        "loudness_dip_db": loudness_dip(source, out),
        "bass_clash": clash_share(band_a.low, band_b.low, source.low_a, source.low_b, blend, sr),
        "vocal_clash": 0.0,
        "beat_phase_ms": beat_phase_error(source, parts["a"], parts["b"], level_a, level_b),
        "seam_novelty": seam_novelty(source, out),
    }
    if source.vocal_a is not None and source.vocal_b is not None:
        va, vb = (bands(parts[f"vocal_{t}"], sr).full for t in ("a", "b"))
        metrics["vocal_clash"] = clash_share(va, vb, source.vocal_a, source.vocal_b, blend, sr)
    metrics.update(rhythmic_consistency(parts["out"], source))
    metrics["curve_tv"] = curve_total_variation(curves, source.duration)
    metrics["curve_error"] = curve_error(curves, teacher) if teacher is not None else float("nan")
    metrics["composite"] = composite_score(metrics)
    return metrics


def score_curves(mixer: DifferentiableDJMixer, stems_a, stems_b, curves_list: Sequence, bpm: float | None,
                 blend: tuple[float, float], sample_rate: int = SAMPLE_RATE, teacher=None,
                 source: SourceAnalysis | None = None, bpm_b: float | None = None) -> list[dict[str, float]]:
    """score_transition for several curve sets on one clip (the sources are analysed once)."""
    a, b, blend = _check_clip(stems_a, stems_b, blend, sample_rate)
    if sample_rate != mixer.config.sample_rate:
        raise ValueError(f"sample_rate {sample_rate} differs from the mixer's {mixer.config.sample_rate}")
    source = source or analyse_sources(a, b, bpm, blend, sample_rate, bpm_b)
    vocals = (source.vocal_a is not None and source.vocal_b is not None,) * 2
    results = []
    for curves in curves_list:
        _model_space(curves)  # shape check before rendering
        parts = render_parts(mixer, a, b, curves, source.bpm, vocals)
        results.append(score_parts(source, parts, curves, teacher))
    return results


def score_transition(mixer: DifferentiableDJMixer, stems_a: torch.Tensor, stems_b: torch.Tensor,
                     curves: torch.Tensor, bpm: float, blend: tuple[float, float], sample_rate: int = 44100,
                     teacher: torch.Tensor | None = None, bpm_b: float | None = None) -> dict[str, float]:
    """Every metric of one transition, and the composite score (higher is better).

    Args:
        mixer: the DifferentiableDJMixer that renders the curves (its device is used).
        stems_a, stems_b: [4, 2, N] the clip's stems (B already beatmatched and aligned).
        curves: [F, 58] model-space curves in the full layout.
        bpm: the clip's tempo (beats per minute; None or <= 0 when unknown: rhythm metrics are then NaN).
        blend: (start_s, end_s) of the blend in the clip.
        teacher: optional [F', 58] teacher curves (adds curve_error).
        bpm_b: B's tempo in the clip; only used when it is half or double bpm (a half/double-time mix: the beat
            phase is then folded on the faster beat).

    Returns {"loudness_dip_db", "bass_clash", "vocal_clash", "beat_phase_ms", "seam_novelty",
    "rhythmic_consistency", "rhythm_tempo", "rhythm_pattern", "rhythm_alignment", "rhythm_strength", "curve_tv",
    "curve_error", "composite"}; NaN marks a metric that does not apply (e.g. no overlap for the phase).
    """
    return score_curves(mixer, stems_a, stems_b, [curves], bpm, blend, sample_rate, teacher, bpm_b=bpm_b)[0]


def composite_scorer(stems_a, stems_b, context, mixer: DifferentiableDJMixer | None = None,
                     sample_rate: int = SAMPLE_RATE) -> Callable[[Sequence], list[float]]:
    """curves list -> composite scores on this clip (the teacher's judge, data.transitions.select_recipe).

    stems_a, stems_b: [4, 2, N] (numpy or torch) clip windows; context: the clip's TransitionContext (its bpm and
    blend). The sources are analysed once, here.
    """
    a, b = (torch.as_tensor(np.asarray(s)) for s in (stems_a, stems_b))
    blend = (context.blend_start, context.blend_end)
    mixer = mixer or DifferentiableDJMixer()
    source = analyse_sources(a, b, context.bpm, blend, sample_rate)

    def score(curves_list: Sequence) -> list[float]:
        results = score_curves(mixer, a, b, curves_list, context.bpm, blend, sample_rate, source=source)
        return [r["composite"] for r in results]

    return score


# ======================================================================================================================
# Baselines: curve generators in the full layout on the clip geometry
# ======================================================================================================================
_XF, _MASTER = FULL.index("crossfader"), FULL.index("master_gain")


def clip_frame_times(n_frames: int, duration: float) -> np.ndarray:
    """Clip time (s) of each curve frame: frames span the clip end to end (data/transitions.py convention)."""
    return np.linspace(0.0, duration, n_frames)


def curves_from_levels(level_a: np.ndarray, level_b: np.ndarray) -> torch.Tensor:
    """[F, 58] curves realising per-frame track levels (amplitudes) with the constant-power crossfader plus
    master gain, every other control at neutral: x = atan2(lb, la) / (pi / 2), master = hypot(la, lb)."""
    la, lb = np.clip(level_a, 0.0, 1.0), np.clip(level_b, 0.0, 1.0)
    norm = np.hypot(la, lb)
    out = FULL.neutral_curves(len(la)).numpy().astype(np.float64)
    out[:, _XF] = np.where(norm > 0, np.arctan2(lb, la) / (0.5 * np.pi), 0.5)
    db = np.clip(20.0 * np.log10(np.maximum(norm, 1e-6)), *EQ_DB_RANGE)
    out[:, _MASTER] = np.where(norm > 0, (db - EQ_DB_RANGE[0]) / (EQ_DB_RANGE[1] - EQ_DB_RANGE[0]), 0.0)
    return torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float32))


def _blend_progress(t: np.ndarray, blend: tuple[float, float]) -> np.ndarray:
    return np.clip((t - blend[0]) / (blend[1] - blend[0]), 0.0, 1.0)


def cut_time(blend: tuple[float, float], downbeats: Sequence[float] | None = None,
             beats: Sequence[float] | None = None) -> float:
    """The downbeat nearest the blend middle (a beat without downbeats, the middle itself without a grid)."""
    middle = 0.5 * (blend[0] + blend[1])
    for grid in (downbeats, beats):
        g = np.asarray(grid if grid is not None else [], dtype=np.float64)
        g = g[(g >= blend[0] - 1e-6) & (g <= blend[1] + 1e-6)]
        if len(g):
            return float(g[np.argmin(np.abs(g - middle))])
    return middle


def hard_cut_curves(n_frames: int, duration: float, blend: tuple[float, float],
                    downbeats: Sequence[float] | None = None, beats: Sequence[float] | None = None) -> torch.Tensor:
    """A alone up to the cut, B alone from it (frames at or after the cut time): crossfader 0 -> 1, master 0 dB."""
    t = clip_frame_times(n_frames, duration)
    after = (t >= cut_time(blend, downbeats, beats)).astype(np.float64)
    return curves_from_levels(1.0 - after, after)


def linear_crossfade_curves(n_frames: int, duration: float, blend: tuple[float, float]) -> torch.Tensor:
    """Track levels linear in amplitude across the blend: A 1 - r, B r (r = 0..1); -6 dB each mid-way."""
    r = _blend_progress(clip_frame_times(n_frames, duration), blend)
    return curves_from_levels(1.0 - r, r)


def equal_power_curves(n_frames: int, duration: float, blend: tuple[float, float]) -> torch.Tensor:
    """The crossfader moves linearly from A to B across the blend (constant power: A cos, B sin), master 0 dB."""
    r = _blend_progress(clip_frame_times(n_frames, duration), blend)
    return curves_from_levels(np.cos(0.5 * np.pi * r), np.sin(0.5 * np.pi * r))


def rule_bass_swap_curves(context, seed: int = 0) -> torch.Tensor:
    """The rule planner's bass-swap handover (data/transitions.RECIPES['bass_swap']) on a TransitionContext."""
    from data.transitions import RECIPES

    return torch.from_numpy(np.asarray(RECIPES["bass_swap"](context, np.random.default_rng(seed)), np.float32))


def baseline_curves(context, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every baseline's [F, 58] curves on a TransitionContext's geometry (frames, duration, blend, grid)."""
    f, d, blend = context.n_frames, context.duration, (context.blend_start, context.blend_end)
    return {
        "hard_cut": hard_cut_curves(f, d, blend, context.downbeats, context.beats),
        "linear_crossfade": linear_crossfade_curves(f, d, blend),
        "equal_power": equal_power_curves(f, d, blend),
        "rule_bass_swap": rule_bass_swap_curves(context, seed),
    }


# ======================================================================================================================
# The CLI: every method on the held-out pairs of a processed dataset
# ======================================================================================================================
LABELS = {
    "hard_cut": "hard cut (downbeat)",
    "linear_crossfade": "linear crossfade",
    "equal_power": "equal-power crossfade",
    "rule_bass_swap": "rule bass swap",
    "model": "model",
    "model_best": "model, best of {k}",
    "teacher": "teacher (reference)",
}
COLUMNS = {  # metric: (header, format)
    "loudness_dip_db": ("loudness dip (dB) ↓", "{:.2f}"),
    "bass_clash": ("bass clash ↓", "{:.3f}"),
    "vocal_clash": ("vocal clash ↓", "{:.3f}"),
    "beat_phase_ms": ("beat phase (ms) ↓", "{:.1f}"),
    "seam_novelty": ("seam novelty ↓", "{:.2f}"),
    "rhythmic_consistency": ("rhythmic consistency ↑", "{:.3f}"),
    "curve_tv": ("curve TV (/s) ↓", "{:.3f}"),
    "curve_error": ("curve error ↓", "{:.4f}"),
    "composite": ("composite ↑", "{:.3f}"),
}


class EvalError(Exception):
    """Bad input for the CLI: one line, non-zero exit."""


@dataclass
class EvalPair:
    id: str
    recipe: str | None
    stems_a: torch.Tensor
    stems_b: torch.Tensor
    bpm: float | None
    blend: tuple[float, float]
    context: object  # data.transitions.TransitionContext
    teacher: torch.Tensor | None  # [F, 58] full layout
    meta: dict
    bpm_b: float | None = None  # B's tempo in the clip (after the stretch)


def load_pair(root: Path, entry: dict, n_frames: int) -> EvalPair:
    """One pair of a processed folder, its clip geometry on an n_frames curve grid, its teacher curves."""
    from data.stems import load_stems
    from data.transitions import TransitionContext, context_from_analyses
    from dataset import _safe_join
    from effects.params import get_layout

    folder = _safe_join(root, entry["path"])
    meta = json.loads((folder / "analysis.json").read_text())
    stems_a, stems_b = load_stems(folder / "track_a_stems"), load_stems(folder / "track_b_stems")
    n = min(stems_a.shape[-1], stems_b.shape[-1])
    stems_a, stems_b = stems_a[..., :n], stems_b[..., :n]
    duration = n / SAMPLE_RATE
    clip = meta.get("clip", {})
    ctx_dict = meta.get("context")
    blend = (float(clip.get("blend_start", ctx_dict and ctx_dict["blend_start"])),
             float(clip.get("blend_end", ctx_dict and ctx_dict["blend_end"])))
    teacher = None
    if (folder / "params.npy").is_file():
        stored = torch.from_numpy(np.load(folder / "params.npy")).float()
        teacher = get_layout(meta.get("layout", "full")).to_full(stored)
        n_frames = teacher.shape[0]
    if ctx_dict is not None:
        context = TransitionContext.from_dict({**ctx_dict, "n_frames": n_frames, "duration": duration})
    else:
        tracks = meta["tracks"]
        context = context_from_analyses(tracks["a"], tracks["b"], 0.0, 0.0, duration, *blend, n_frames)
    bpm = meta.get("bpm") or context.bpm
    bpm_b = (meta.get("tracks") or {}).get("b", {}).get("bpm")
    return EvalPair(entry["id"], entry.get("recipe") or meta.get("recipe"), stems_a, stems_b,
                    float(bpm) if bpm else None, blend, context, teacher, meta,
                    float(bpm_b) if isinstance(bpm_b, (int, float)) and bpm_b > 0 else None)


def model_curves(model, pair: EvalPair, k: int, steps: int | None, guidance: float | None,
                 seed: int) -> torch.Tensor:
    """[k, F, 58] model samples for a pair (features built from its stems and clip-time analysis)."""
    from dataset import build_track_features
    from model import TrackFeatures

    n_frames, n_mels = pair.context.n_frames, model.config.model.n_mels
    feats = [TrackFeatures.stack([build_track_features(stems, pair.meta["tracks"][t], n_frames, n_mels)])
             for t, stems in (("a", pair.stems_a), ("b", pair.stems_b))]
    generator = torch.Generator().manual_seed(seed)
    style = model.candidate_styles(model.move_probs(*feats), k)  # a move head's choice, as inference.py makes it
    curves = model.sample(feats[0].repeat_interleave(k), feats[1].repeat_interleave(k), n_frames=n_frames,
                          steps=steps, guidance_scale=guidance, generator=generator, style=style)
    return model.layout.to_full(curves.float().cpu())  # the same mix in the full layout


def _mean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def common_pairs(by_pair: dict[str, dict[str, dict]], methods: Sequence[str], key: str) -> list[str]:
    """The pairs on which every one of `methods` that has `key` anywhere has it (a method without it on any pair,
    such as the hard cut's beat phase, does not count): means over these compare like with like. A method whose
    metric is NaN on a pair (no overlap for a phase, say) would otherwise be averaged over an easier set."""
    finite = lambda r: r is not None and np.isfinite(r[key])  # noqa: E731
    having = [m for m in methods if any(finite(results.get(m)) for results in by_pair.values())]
    return [p for p, results in by_pair.items() if all(finite(results.get(m)) for m in having)]


def _by_pair(rows: list[dict]) -> dict[str, dict[str, dict]]:
    by_pair: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_pair.setdefault(row["pair"], {})[row["method"]] = row
    return by_pair


def summarise(rows: list[dict], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method: the mean of every metric over the pairs where all the compared methods have it (common_pairs;
    the teacher does not narrow the set, its mean is over the same pairs where it has a value), 'wins' (pairs
    where its composite is the best among the compared methods, the teacher excluded; ties count for each),
    'best_on' (how many of the seven individual metrics of the composite its mean is the best on) and 'n_<metric>'
    (the number of pairs behind each mean)."""
    by_pair = _by_pair(rows)
    compared = [m for m in methods if m != "teacher"]
    summary: dict[str, dict[str, float]] = {m: {} for m in methods}
    for k in METRICS:
        pairs = common_pairs(by_pair, compared, k)
        for m in methods:
            values = [by_pair[p][m][k] for p in pairs if m in by_pair[p]]
            summary[m][k] = _mean(values)
            summary[m][f"n_{k}"] = int(np.isfinite(values).sum()) if values else 0
    for m in methods:
        summary[m]["wins"] = 0
        summary[m]["best_on"] = 0
    for results in by_pair.values():
        scores = {m: results[m]["composite"] for m in compared if m in results and np.isfinite(results[m]["composite"])}
        if scores:
            top = max(scores.values())
            for m, s in scores.items():
                summary[m]["wins"] += int(s >= top - 1e-12)
    for k in COMPOSITE_WEIGHTS:  # the individual quality metrics (not the composite, not the teacher imitation)
        values = {m: summary[m][k] for m in compared if np.isfinite(summary[m][k])}
        if len(values) > 1:
            best = (max if k in HIGHER_IS_BETTER else min)(values.values())
            for m, v in values.items():
                summary[m]["best_on"] += int(abs(v - best) <= 1e-12)
    return summary


def markdown_table(summary: dict[str, dict[str, float]], labels: dict[str, str], header: str = "") -> str:
    """The results table: mean per metric per method, best compared value in bold, wins and metrics won."""
    compared = [m for m in summary if m != "teacher"]
    best = {}
    for k in METRICS:
        values = [summary[m][k] for m in compared if np.isfinite(summary[m][k])]
        if values:
            best[k] = (max if k in HIGHER_IS_BETTER else min)(values)
    lines = [header, ""] if header else []
    lines.append("| method | " + " | ".join(COLUMNS[k][0] for k in METRICS) + " | wins | best on |")
    lines.append("|---|" + "---:|" * (len(METRICS) + 2))
    for m, values in summary.items():
        cells = []
        for k in METRICS:
            v = values[k]
            text = COLUMNS[k][1].format(v) if np.isfinite(v) else "n/a"
            if m != "teacher" and k in best and np.isfinite(v) and abs(v - best[k]) <= 1e-12:
                text = f"**{text}**"
            cells.append(text)
        wins = "-" if m == "teacher" else str(values["wins"])
        best_on = "-" if m == "teacher" else str(values["best_on"])
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + f" | {wins} | {best_on} |")
    n_all = max((int(v.get("n_composite", 0)) for m, v in summary.items() if m != "teacher"), default=0)
    fewer = [f"{COLUMNS[k][0].split(' (')[0].rstrip(' ↑↓')} over {n} of {n_all} pairs" for k in METRICS
             if 0 < (n := max(int(summary[m].get(f"n_{k}", n_all)) for m in compared)) < n_all]
    if fewer:
        lines += ["", "Each mean is over the pairs where every compared method has the metric: "
                  + "; ".join(fewer) + "."]
    return "\n".join(lines) + "\n"


BASELINES = ("hard_cut", "linear_crossfade", "equal_power", "rule_bass_swap")
HEAD_TO_HEAD = tuple(k for k in METRICS if k != "composite")  # the individual metrics: 7 of quality + curve error
SIGNIFICANCE = 0.05  # a win whose paired sign-flip test gives p below this is marked significant
EXACT_FLIPS = 16  # up to this many pairs the sign-flip test enumerates all 2^n patterns; beyond, RANDOM_FLIPS
RANDOM_FLIPS = 20000


def paired_p_value(diff: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip (permutation) test of 'the mean per-pair difference is 0': under
    the null each pair's difference is as likely negative, so p is the share of sign patterns whose |mean| reaches
    the observed one (all 2^n up to EXACT_FLIPS pairs; RANDOM_FLIPS seeded random patterns beyond, counting the
    observed one). It answers whether a win on the means is carried by the pairs or by one or two of them.
    NaN differences drop out; NaN when none is left, 1 when the mean is 0."""
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    observed = abs(d.mean())
    if observed <= 1e-12:
        return 1.0
    n = len(d)
    if n <= EXACT_FLIPS:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        return float((np.abs(signs @ d) / n >= observed * (1 - 1e-9)).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(RANDOM_FLIPS, n))
    return float(((np.abs(signs @ d) / n >= observed * (1 - 1e-9)).sum() + 1) / (RANDOM_FLIPS + 1))


def paired_tests(rows: list[dict], methods: Sequence[str], method: str) -> dict[str, dict[str, float]]:
    """Per baseline among `methods`: {metric: p} of paired_p_value over the per-pair differences between `method`
    and the baseline, on the pairs that summarise's means use (common_pairs of the compared methods), for the
    HEAD_TO_HEAD metrics and the composite."""
    by_pair = _by_pair(rows)
    compared = [m for m in methods if m != "teacher"]
    keys = (*HEAD_TO_HEAD, "composite")
    common = {k: common_pairs(by_pair, compared, k) for k in keys}
    out: dict[str, dict[str, float]] = {}
    for base in (b for b in BASELINES if b in methods):
        out[base] = {}
        for k in keys:
            pairs = [p for p in common[k] if method in by_pair[p] and base in by_pair[p]]
            out[base][k] = paired_p_value([by_pair[p][method][k] - by_pair[p][base][k] for p in pairs])
    return out


def head_to_head(summary: dict[str, dict[str, float]], method: str,
                 p_values: dict[str, dict[str, float]] | None = None) -> dict[str, dict]:
    """Per baseline present: does `method` beat it on the mean composite, and on which individual metrics (means,
    HEAD_TO_HEAD; a metric either side lacks, or a tie, is no win). With p_values (paired_tests), also
    'significant': the metrics won at p < SIGNIFICANCE, and 'composite_p'."""
    def better(k: str, a: float, b: float) -> bool:
        if not (np.isfinite(a) and np.isfinite(b)) or abs(a - b) <= 1e-12:
            return False
        return a > b if k in HIGHER_IS_BETTER else a < b

    mine = summary[method]
    out = {}
    for base in (b for b in BASELINES if b in summary):
        row = {"composite": better("composite", mine["composite"], summary[base]["composite"]),
               "metrics": [k for k in HEAD_TO_HEAD if better(k, mine[k], summary[base][k])]}
        if p_values is not None and base in p_values:
            row["significant"] = [k for k in row["metrics"] if p_values[base].get(k, np.nan) < SIGNIFICANCE]
            row["composite_p"] = p_values[base].get("composite", float("nan"))
        out[base] = row
    return out


def head_to_head_table(summary: dict[str, dict[str, float]], labels: dict[str, str], need: int = 4,
                       rows: list[dict] | None = None) -> str:
    """Markdown: each model row against each baseline (composite, individual metrics won), and whether it beats
    every baseline on the composite and on at least `need` individual metrics. With the per-pair rows, each win
    also gets its paired sign-flip test (paired_tests): significant wins are marked, counted and judged apart."""
    lines = []
    methods = list(summary)
    for method in (m for m in ("model", "model_best") if m in summary):
        p_values = paired_tests(rows, methods, method) if rows else None
        table = head_to_head(summary, method, p_values)
        if not table:
            continue
        verdict = all(r["composite"] and len(r["metrics"]) >= need for r in table.values())
        text = (f"{labels.get(method, method)} against each baseline (means over the pairs): beats every baseline on "
                f"the composite and on at least {need} individual metrics: **{'yes' if verdict else 'no'}**.")
        header = "| baseline | composite | individual metrics won | which |"
        if p_values is not None:
            strict = all(r["composite"] and r["composite_p"] < SIGNIFICANCE and len(r["significant"]) >= need
                         for r in table.values())
            text += (f" Counting only wins that a paired sign-flip test over the pairs finds significant "
                     f"(p < {SIGNIFICANCE:g}, marked †): **{'yes' if strict else 'no'}**.")
            header += " significant |"
        lines += ["", text, "", header, "|---|---|---:|---|" + ("---:|" if p_values is not None else "")]
        for base, r in table.items():
            comp = f"{summary[method]['composite']:.3f} vs {summary[base]['composite']:.3f} "
            outcome = "won" if r["composite"] else "lost"
            if p_values is not None:
                outcome += f", p = {r['composite_p']:.3g}"
            names = [COLUMNS[k][0].split(" (")[0].rstrip(" ↑↓") + ("†" if k in r.get("significant", ()) else "")
                     for k in r["metrics"]]
            line = (f"| {labels.get(base, base)} | {comp}({outcome}) | {len(r['metrics'])} of {len(HEAD_TO_HEAD)} | "
                    f"{', '.join(names) or '-'} |")
            if p_values is not None:
                line += f" {len(r['significant'])} |"
            lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def _atomic_write(path: Path, write: Callable[[str], None], suffix: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["pair", "recipe", "method", *[k for k in rows[0] if k not in ("pair", "recipe", "method")]]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    _atomic_write(path, write, ".csv")


def plot_metrics(path: Path, rows: list[dict], methods: Sequence[str], labels: dict[str, str]) -> None:
    """One bar chart per metric: mean over the pairs per method, with the standard error as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in METRICS if any(np.isfinite(r[k]) for r in rows)]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(shown) / cols), cols, figsize=(5 * cols, 3.2 * math.ceil(len(shown) / cols)),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, k in zip(axes.flat, shown):
        means, errs = [], []
        for m in methods:
            v = np.array([r[k] for r in rows if r["method"] == m], dtype=np.float64)
            v = v[np.isfinite(v)]
            means.append(v.mean() if len(v) else np.nan)
            errs.append(v.std() / math.sqrt(len(v)) if len(v) > 1 else 0.0)
        ax.bar(range(len(methods)), means, yerr=errs, color=[colours(i) for i in range(len(methods))], capsize=3)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([labels.get(m, m) for m in methods], rotation=30, ha="right", fontsize=8)
        ax.set_title(COLUMNS[k][0], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), ".png")
    plt.close(fig)


def _resolve_device(name: str) -> torch.device:
    from inference import InferenceError, resolve_device  # one rule for --device across the CLIs

    try:
        return resolve_device(name)
    except InferenceError as error:
        raise EvalError(str(error)) from None


def _output_folder(path: str | os.PathLike) -> Path:
    """--out, created now (an existing file in the way, or no permission, is an EvalError)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvalError(f"--out {out}: cannot create the folder ({error.strerror or error})") from None
    return out


def evaluate(args: argparse.Namespace) -> str:
    """Run the comparison and write the outputs; returns the markdown. Raises EvalError on bad input."""
    from dataset import read_manifest

    root = Path(args.data)
    if not root.is_dir():
        raise EvalError(f"--data {root}: not a folder (make one with pipeline.py)")
    try:
        manifest = read_manifest(root)
    except (FileNotFoundError, ValueError) as error:
        raise EvalError(str(error)) from None
    entries = [p for p in manifest.get("pairs", []) if p.get("split") == args.split]
    if not entries:
        counts = ", ".join(f"{k} {v}" for k, v in manifest.get("splits", {}).items())
        raise EvalError(f"{root}: no pairs in split {args.split!r}" + (f" ({counts})" if counts else ""))
    if args.limit is not None:
        entries = entries[:args.limit]

    device = _resolve_device(args.device)
    out = _output_folder(args.out)  # before the work: an unusable --out fails now, not after the last pair
    model = None
    if args.model is None:
        log.info("no --model given: evaluating the baselines only")
    elif not Path(args.model).is_file():  # a mistyped path must not pass for a baselines-only report
        raise EvalError(f"--model {args.model}: no such file (omit --model to evaluate the baselines only)")
    else:
        from model import CheckpointError, load_model

        try:
            model = load_model(args.model, device)
        except CheckpointError as error:  # torch's unpickling errors run over several lines: keep the first
            raise EvalError(str(error).strip().splitlines()[0]) from None
    from inference import DEFAULT_CANDIDATES

    k = args.candidates or DEFAULT_CANDIDATES
    methods = list(BASELINES)
    if model is not None:
        methods += ["model"] + (["model_best"] if k > 1 else [])
    labels = {**LABELS, "model_best": LABELS["model_best"].format(k=k)}
    mixer = DifferentiableDJMixer().to(device)
    n_frames = int(manifest.get("n_frames") or 128)  # a --transitions folder records none (each pair has its own)

    from tqdm.auto import tqdm

    rows, skipped = [], []
    with_teacher = False
    for index, entry in enumerate(tqdm(entries, desc=f"evaluating {args.split}", unit="pair")):
        try:
            pair = load_pair(root, entry, n_frames)
        except (OSError, ValueError, KeyError, TypeError) as error:  # AudioError is a ValueError
            log.warning("skipped %s: %s", entry.get("id"), error)
            skipped.append(entry.get("id"))
            continue
        try:  # a pair whose geometry the metrics cannot take (a cut with no blend) is skipped, not the run
            if not pair.blend[1] > pair.blend[0]:
                raise ValueError(f"its blend {pair.blend[0]:.2f}-{pair.blend[1]:.2f} s has no length")
            curves = baseline_curves(pair.context, seed=args.seed)
            if model is not None:
                samples = model_curves(model, pair, k, args.steps, args.guidance, seed=args.seed * 1_000_003 + index)
            source = analyse_sources(pair.stems_a, pair.stems_b, pair.bpm, pair.blend, bpm_b=pair.bpm_b)
            names = list(curves)
            sets = [curves[m] for m in names]
            if model is not None:
                names += [f"model#{i}" for i in range(k)]
                sets += list(samples)
            if pair.teacher is not None:
                names.append("teacher")
                sets.append(pair.teacher)
            scores = dict(zip(names, score_curves(mixer, pair.stems_a, pair.stems_b, sets, pair.bpm, pair.blend,
                                                  teacher=pair.teacher, source=source)))
        except ValueError as error:
            log.warning("skipped %s: %s", pair.id, error)
            skipped.append(pair.id)
            continue
        with_teacher = with_teacher or pair.teacher is not None
        if model is not None:
            candidates = [scores.pop(f"model#{i}") for i in range(k)]
            scores["model"] = candidates[0]
            if k > 1:
                scores["model_best"] = max(candidates, key=lambda s: s["composite"] if np.isfinite(s["composite"])
                                           else -np.inf)
        for m, metrics in scores.items():
            rows.append({"pair": pair.id, "recipe": pair.recipe or "", "method": m, **metrics})
    if not rows:
        raise EvalError(f"{root}: none of the {len(entries)} pair(s) in split {args.split!r} could be read")
    if with_teacher:
        methods.append("teacher")
    n_pairs = len({r["pair"] for r in rows})
    summary = summarise(rows, methods)
    source_line = "baselines only (no model)"
    if model is not None:
        dcfg = model.config.diffusion
        guidance = dcfg.guidance_scale if args.guidance is None else args.guidance
        source_line = (f"model `{args.model}` ({k} candidate(s), {args.steps or dcfg.inference_steps} DDIM steps, "
                       f"guidance {guidance})")
    header = f"Evaluation on {n_pairs} pair(s) of `{root}` split `{args.split}`; {source_line}."
    text = markdown_table(summary, labels, header) + head_to_head_table(summary, labels, rows=rows)
    if skipped:
        text += (f"\n{len(skipped)} pair(s) could not be read or scored and were skipped: "
                 f"{', '.join(map(str, skipped))}\n")
    _atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text), ".md")
    write_csv(out / "results.csv", rows)
    plot_metrics(out / "metrics.png", rows, methods, labels)
    log.info("wrote %s, %s and %s", out / "results.md", out / "results.csv", out / "metrics.png")
    return text


def read_results(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The per-pair rows of earlier runs' results.csv files, pooled: each pair id is prefixed with its file's
    folder name ('eval_a/pair_x') so that sets evaluated apart stay apart. Raises EvalError on a missing or
    malformed file, or on the same pair and method twice."""
    rows, seen = [], set()
    for path in map(Path, paths):
        if not path.is_file():
            raise EvalError(f"{path}: no such results file (evaluate.py writes results.csv to --out)")
        try:
            with open(path, newline="") as handle:
                records = list(csv.DictReader(handle))
            for record in records:
                row = {"pair": f"{path.parent.name}/{record['pair']}", "recipe": record.get("recipe", ""),
                       "method": record["method"], **{k: float(record[k]) for k in METRICS}}
                if (row["pair"], row["method"]) in seen:
                    raise EvalError(f"{path}: pair {record['pair']} ({row['method']}) appears twice in the pool")
                seen.add((row["pair"], row["method"]))
                rows.append(row)
        except (KeyError, ValueError, UnicodeDecodeError, csv.Error) as error:
            raise EvalError(f"{path}: not an evaluate.py results.csv ({type(error).__name__}: {error})") from None
        if not records:
            raise EvalError(f"{path}: no rows")
    return rows


def pool(args: argparse.Namespace) -> str:
    """Re-summarise earlier runs (--pool): the table and head to head over all their pairs, without rendering."""
    out = _output_folder(args.out)
    rows = read_results(args.pool)
    present = {r["method"] for r in rows}
    methods = [m for m in (*BASELINES, "model", "model_best", "teacher") if m in present]
    k = args.candidates if args.candidates and args.candidates > 1 else "K"  # results.csv does not record K
    labels = {**LABELS, "model_best": LABELS["model_best"].format(k=k)}
    n_pairs = len({r["pair"] for r in rows})
    header = f"Pooled evaluation: {n_pairs} pair(s) from {len(args.pool)} results file(s)."
    summary = summarise(rows, methods)
    text = markdown_table(summary, labels, header) + head_to_head_table(summary, labels, rows=rows)
    _atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text), ".md")
    plot_metrics(out / "metrics.png", rows, methods, labels)
    log.info("wrote %s and %s", out / "results.md", out / "metrics.png")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="processed folder (pipeline.py output); required unless --pool")
    parser.add_argument("--pool", nargs="+", default=None, metavar="CSV",
                        help="re-summarise earlier runs' results.csv files over all their pairs (no rendering)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--model", default=None, help="checkpoint or exported weights; omitted: baselines only")
    from dataset import seed_arg
    from inference import DEFAULT_CANDIDATES  # evaluate what inference.py does by default

    parser.add_argument("--candidates", type=int, default=None,
                        help=f"K model samples per pair: the first is reported as the model, and with K > 1 the best "
                             f"by composite too (default {DEFAULT_CANDIDATES}, inference.py's default); with --pool, "
                             f"the K of the pooled runs, for the label")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most N pairs")
    parser.add_argument("--out", default="eval", help="folder for results.md, results.csv, metrics.png")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's config)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's config)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the model samples and the rule planner")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto (default): CUDA, else MPS, else CPU")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    for name in ("candidates", "limit", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if (args.data is None) == (args.pool is None):
        print("error: give either --data (evaluate a processed folder) or --pool (re-summarise results.csv files)",
              file=sys.stderr)
        return 2
    try:
        text = pool(args) if args.pool else evaluate(args)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # writing the results (disk full, permissions): one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
