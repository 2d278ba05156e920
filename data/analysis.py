"""Track analysis: tempo, beats, downbeats, key, energy, loudness, sections, vocal activity.

`analyze_track(audio)` turns a stereo track (optionally with its four stems) into a
`TrackAnalysis`. Everything is classic signal processing, no learned models:

- tempo: autocorrelation of a band-balanced spectral-flux onset envelope; a comb over beat
  multiples picks the tempo up to octave, the backbeat decides the octave (snares and claps
  repeat every two beats), then the tempo is folded into `bpm_range`;
- beats: dynamic-programming beat tracker (Ellis 2007) at that tempo; when the tracked beats sit
  on one constant grid (produced music), a least-squares grid replaces them, phased by matching
  kick and snare onsets to canonical drum patterns;
- downbeats: a 4-state bar-position Viterbi over per-beat evidence (chord and bass-note changes,
  kick, accents, the backbeat, timbre changes), so the bar phase comes from the audio;
- key: key-profile correlation (Albrecht-Shanahan by default) on a harmonic CQT chroma (the
  pitched stems when given), with the first bar of every phrase counted twice;
- energy: RMS at 10 frames/s; loudness: ITU-R BS.1770-4 integrated LUFS;
- sections: bar-level self-similarity novelty on phrase boundaries, labelled by intensity and
  position;
- vocal activity: hysteresis on the vocal stem's level (stems only).

Accuracy on data/synth.py tracks: see benchmarks/bench_analysis.py.
Internally the mix is analysed as mono at 22.05 kHz (`ANALYSIS_RATE`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import librosa
import numpy as np
import scipy.signal
import soxr
from scipy.ndimage import maximum_filter1d

from effects.params import STEMS

logger = logging.getLogger(__name__)

SECTION_LABELS = ("intro", "verse", "chorus", "drop", "bridge", "outro")


@dataclass
class Section:
    start: float  # seconds
    end: float  # seconds
    label: str  # one of SECTION_LABELS


@dataclass
class TrackAnalysis:
    """Everything the cue selection, features and evaluation need about one track.

    Times are seconds from the start of the audio that was analysed.
    """

    duration: float
    bpm: float
    beats: np.ndarray  # [n_beats] seconds
    downbeats: np.ndarray  # [n_bars] seconds, a subset of beats
    key_index: int  # 0..23, see data/keys.py
    key_confidence: float  # correlation of the best key profile, 0..1
    energy: np.ndarray  # [n_energy_frames] RMS energy (linear), frame rate `energy_rate`
    energy_rate: float  # frames per second of `energy`
    lufs: float  # integrated loudness, ITU-R BS.1770 (LUFS)
    sections: list[Section] = field(default_factory=list)
    vocal_activity: list[tuple[float, float]] | None = None  # (start, end) seconds, None = unknown
    beat_confidence: float = 1.0  # 0 = no usable beat found (tempo-free material)

    @property
    def key(self) -> str:
        from data.keys import key_name

        return key_name(self.key_index)

    @property
    def camelot(self) -> str:
        from data.keys import camelot

        return camelot(self.key_index)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (numpy arrays become lists)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = [round(float(x), 6) for x in v]
        out["key"] = self.key
        out["camelot"] = self.camelot
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TrackAnalysis:
        return cls(
            duration=float(d["duration"]),
            bpm=float(d["bpm"]),
            beats=np.asarray(d["beats"], dtype=np.float64),
            downbeats=np.asarray(d["downbeats"], dtype=np.float64),
            key_index=int(d["key_index"]),
            key_confidence=float(d.get("key_confidence", 1.0)),
            energy=np.asarray(d["energy"], dtype=np.float32),
            energy_rate=float(d["energy_rate"]),
            lufs=float(d["lufs"]),
            sections=[Section(**s) for s in d.get("sections", [])],
            vocal_activity=(
                [tuple(v) for v in d["vocal_activity"]] if d.get("vocal_activity") is not None else None
            ),
            beat_confidence=float(d.get("beat_confidence", 1.0)),
        )


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

ANALYSIS_RATE = 22_050  # Hz; tempo, beats, key and sections are computed on a mono mix at this rate
HOP = 256  # samples at ANALYSIS_RATE between onset frames (11.6 ms)
N_FFT = 1024  # short window (46 ms) so onsets are sharp in time
ONSET_GAMMA = 1e4  # log compression of the mel power for onsets: log(1 + gamma * S / ref)
CHROMA_HOP = 2048  # samples at ANALYSIS_RATE between chroma frames (93 ms)
CHROMA_GAMMA = 10.0  # log compression of the CQT: log(1 + gamma * C / max)
_CQT_MIN_SAMPLES = 2**16  # 3 s at ANALYSIS_RATE
HPSS_TIME_FRAMES = 9  # median length along time, chroma frames (0.84 s)
HPSS_FREQ_BINS = 9  # median length along frequency, CQT bins (1/4 octave)
DEFAULT_BPM_RANGE = (75.0, 180.0)  # see `analyze_track` for why
ENERGY_RATE = 10.0  # frames per second of TrackAnalysis.energy
LUFS_FLOOR = -70.0  # reported for silence: the BS.1770 absolute gate, below which nothing is measured
PRIOR_BPM = 120.0  # centre of the (weak) tempo-octave prior
BEATS_PER_BAR = 4

# Bands of the onset envelope, Hz. Kick and bass live below 150 Hz; snare body, claps, chords and
# voices between 150 Hz and 2.5 kHz; snare noise and hats above.
_BANDS = {"low": (0.0, 150.0), "mid": (150.0, 2500.0), "high": (2500.0, 11025.0)}

# Key profiles, tonic first (C major / C minor); rotated for the other keys.
KEY_PROFILES = {
    "krumhansl": (
        [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88],
        [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17],
    ),
    "temperley": (  # Kostka-Payne corpus (Temperley 2007)
        [0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400],
        [0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330],
    ),
    "albrecht": (  # Albrecht & Shanahan 2013
        [0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081],
        [0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052],
    ),
}
DEFAULT_KEY_PROFILE = "albrecht"


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def analyze_track(
    audio,
    sample_rate: int = 44_100,
    stems=None,
    bpm_range: tuple[float, float] = DEFAULT_BPM_RANGE,
    key_profile: str = DEFAULT_KEY_PROFILE,
) -> TrackAnalysis:
    """Analyse one track.

    Args:
        audio: the mix, `[2, N]`, `[C, N]` or `[N]`, torch tensor or numpy array, linear float.
        sample_rate: rate of `audio` (and `stems`) in Hz.
        stems: optional `[4, 2, N]` (or `[4, N]`) in the order `STEMS` = drums, bass, vocals, other.
            Tempo and beats always come from the mix; stems sharpen the downbeats (drums and bass),
            the key (bass + other + vocals, no drums) and give the vocal activity.
        bpm_range: the tempo is folded by octaves into `[low, high]`. Both octaves of a tempo
            can fall inside (e.g. 87 and 174); the audio then decides (see `_choose_octave`).
            The default 75..180 BPM keeps 140 BPM dubstep/grime at 140 (70 is outside) and
            house/techno unique (62 and 248 are outside), while hip-hop (75-100) and drum & bass
            (160-180) are chosen by the drum pattern.
        key_profile: one of `KEY_PROFILES`.

    Returns:
        `TrackAnalysis`. When no usable beat is found (`beat_confidence == 0`, e.g. ambient pads,
        noise, silence) `beats`/`downbeats` are a nominal grid at `bpm`, for callers that need
        one; callers should then use a tempo-free blend.
    """
    x = _as_channels(audio)  # [C, N]
    lo, hi = _check_range(bpm_range)
    duration = x.shape[1] / sample_rate
    stem_arrays = _as_stems(stems, x.shape[1]) if stems is not None else None

    def mono(signal: np.ndarray) -> np.ndarray:  # [C, N] at sample_rate -> [M] at ANALYSIS_RATE
        mid = signal.mean(0)
        if signal.shape[0] == 2:  # out-of-phase stereo (R = -L) cancels in the mid: read the side instead
            side = 0.5 * (signal[0] - signal[1])
            if float(np.dot(side, side)) > 100.0 * float(np.dot(mid, mid)):
                mid = side
        return _to_analysis_rate(mid, sample_rate)

    mix = mono(x)
    onsets = _onset_features(mix)
    grid = _tempo_and_beats(onsets, lo, hi, duration)

    # Harmony from the mix, or from the pitched stems (bass + vocals + other) when given.
    # Its bass register (below C3) then holds the bass stem, clean of the kick.
    if stem_arrays is None:
        drum_onsets, chroma = None, _chroma(mix)
    else:
        drum_onsets = _onset_features(mono(stem_arrays[STEMS.index("drums")]))
        chroma = _chroma(mono(stem_arrays.sum(0) - stem_arrays[STEMS.index("drums")]))
    if grid.confidence > 0:
        downbeats = _downbeats(grid.beats, onsets, drum_onsets, chroma, grid.steady)
    else:
        downbeats = grid.beats[::BEATS_PER_BAR]

    structure = _bar_structure(onsets, chroma, downbeats, duration)
    # In the mix the bass register also holds the (often pitched) kick; a bass stem is clean.
    bass_weight = 0.0 if stem_arrays is None else 0.5
    phrase_bars = structure.bars if grid.confidence > 0 else structure.bars[:0]
    key_index, key_conf = estimate_key(_key_vector(chroma, phrase_bars, bass_weight), key_profile)

    vocals = None
    if stem_arrays is not None:
        vocals = detect_vocal_activity(stem_arrays[STEMS.index("vocals")], sample_rate)

    return TrackAnalysis(
        duration=float(duration),
        bpm=float(grid.bpm),
        beats=grid.beats.astype(np.float64),
        downbeats=downbeats.astype(np.float64),
        key_index=int(key_index),
        key_confidence=float(key_conf),
        energy=energy_curve(x, sample_rate, ENERGY_RATE),
        energy_rate=ENERGY_RATE,
        lufs=float(integrated_loudness(x, sample_rate)),
        sections=_sections(structure, duration),
        vocal_activity=vocals,
        beat_confidence=float(grid.confidence),
    )


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def _as_channels(audio) -> np.ndarray:
    """Tensor/array `[N]` or `[C, N]` -> `[C, N]` float32 numpy (finite)."""
    if hasattr(audio, "detach"):  # torch tensor, without importing torch here
        audio = audio.detach().cpu().float().numpy()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"audio must be [N] or [channels, N] with N > 0, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains non-finite samples (NaN or Inf)")
    return x


def _as_stems(stems, n_samples: int) -> np.ndarray:
    """`[4, 2, N]` / `[4, N]` -> `[4, C, N]` float32, length-matched to the mix."""
    if hasattr(stems, "detach"):
        stems = stems.detach().cpu().float().numpy()
    s = np.asarray(stems, dtype=np.float32)
    if s.ndim == 2:
        s = s[:, None]
    if s.ndim != 3 or s.shape[0] != len(STEMS):
        raise ValueError(f"stems must be [{len(STEMS)}, channels, N] in the order {STEMS}, got {s.shape}")
    if s.shape[2] < n_samples:
        s = np.pad(s, ((0, 0), (0, 0), (0, n_samples - s.shape[2])))
    return s[:, :, :n_samples]


def _check_range(bpm_range) -> tuple[float, float]:
    lo, hi = float(bpm_range[0]), float(bpm_range[1])
    if not 0 < lo < hi:
        raise ValueError(f"bpm_range must be (low, high) with 0 < low < high, got {bpm_range}")
    return lo, hi


def _to_analysis_rate(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """`[N]` at `sample_rate` -> `[M]` float32 at ANALYSIS_RATE (soxr, the resampler librosa uses)."""
    if sample_rate == ANALYSIS_RATE:
        return mono.astype(np.float32)
    return soxr.resample(mono.astype(np.float32), int(sample_rate), ANALYSIS_RATE).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Energy and loudness
# ---------------------------------------------------------------------------------------------


def energy_curve(audio, sample_rate: int, rate: float = ENERGY_RATE) -> np.ndarray:
    """RMS energy over non-overlapping frames of `1 / rate` seconds.

    Args:
        audio: `[C, N]` or `[N]`.
    Returns:
        `[ceil(N * rate / sample_rate)]` float32, linear RMS (channel powers averaged).
    """
    x = _as_channels(audio)
    hop = sample_rate / rate
    n_frames = int(np.ceil(x.shape[1] / hop))
    edges = np.minimum(np.round(np.arange(n_frames + 1) * hop).astype(np.int64), x.shape[1])
    power = _running_sums(x.shape[1], edges, lambda c0, c1: np.mean(np.square(x[:, c0:c1], dtype=np.float64), axis=0))
    counts = np.maximum(np.diff(edges), 1)
    return np.sqrt(np.maximum(np.diff(power) / counts, 0.0)).astype(np.float32)


_SUM_CHUNK = 1 << 20  # samples per chunk of the running sums (bounds memory on hour-long DJ mixes)


def _running_sums(n: int, positions: np.ndarray, values) -> np.ndarray:
    """S(p) = sum of v[:p] at each of `positions` (non-decreasing, in [0, n]) for a length-n sequence given chunk
    by chunk, in order: values(c0, c1) -> v[c0:c1] as float64 `[..., c1 - c0]`. Returns `[..., len(positions)]`.
    In chunks of _SUM_CHUNK samples, so a long signal never needs a full-length float64 copy."""
    positions = np.asarray(positions, dtype=np.int64)
    out, total = None, None
    j = int(np.searchsorted(positions, 0, side="right"))  # S(0) = 0
    for c0 in range(0, n, _SUM_CHUNK):
        c1 = min(n, c0 + _SUM_CHUNK)
        cs = np.cumsum(values(c0, c1), axis=-1)
        if out is None:
            out = np.zeros((*cs.shape[:-1], len(positions)))
            total = np.zeros(cs.shape[:-1])
        cs += total[..., None]
        k = int(np.searchsorted(positions, c1, side="right"))
        out[..., j:k] = cs[..., positions[j:k] - c0 - 1]
        j, total = k, cs[..., -1]
    return out if out is not None else np.zeros(len(positions))


def k_weighting(sample_rate: int) -> np.ndarray:
    """ITU-R BS.1770-4 K-weighting as second-order sections `[2, 6]` for `scipy.signal.sosfilt`.

    The two biquads (a +4 dB high shelf modelling the head, and the RLB high-pass) are derived
    from their analog prototypes, so they are exact at 48 kHz (the coefficients printed in the
    standard) and correct at any other rate (the libebur128 derivation).
    """
    # Stage 1: high shelf.
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = np.tan(np.pi * f0 / sample_rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    shelf_a = [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    # Stage 2: RLB high-pass.
    f0, q = 38.13547087602444, 0.5003270373238773
    k = np.tan(np.pi * f0 / sample_rate)
    a0 = 1.0 + k / q + k * k
    hp_b = [1.0, -2.0, 1.0]
    hp_a = [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf_b + shelf_a, hp_b + hp_a])


def integrated_loudness(audio, sample_rate: int) -> float:
    """Integrated loudness in LUFS per ITU-R BS.1770-4.

    K-weighting, mean square per channel over 400 ms blocks with 75 % overlap, channel weights 1
    (L, R; more channels are summed with weight 1 too), an absolute gate at -70 LUFS and a
    relative gate 10 LU below the absolute-gated loudness.

    Args:
        audio: `[C, N]` or `[N]` linear float.
    Returns:
        LUFS; `LUFS_FLOOR` (-70) when nothing passes the absolute gate or the audio is shorter
        than one block.
    """
    x = _as_channels(audio)
    block, step = int(round(0.4 * sample_rate)), int(round(0.1 * sample_rate))
    if x.shape[1] < block:
        return LUFS_FLOOR
    sos = k_weighting(sample_rate)
    state = np.zeros((sos.shape[0], x.shape[0], 2))

    def weighted_power(c0: int, c1: int) -> np.ndarray:  # K-weighted, chunk by chunk (the filter state carried)
        nonlocal state
        y, state = scipy.signal.sosfilt(sos, x[:, c0:c1].astype(np.float64), axis=-1, zi=state)
        return y * y

    starts = np.arange(0, x.shape[1] - block + 1, step)
    positions = np.unique(np.concatenate([starts, starts + block]))
    csum = _running_sums(x.shape[1], positions, weighted_power)  # [C, len(positions)]
    ends_at, starts_at = np.searchsorted(positions, starts + block), np.searchsorted(positions, starts)
    z = (csum[:, ends_at] - csum[:, starts_at]) / block  # [C, n_blocks] mean square
    block_loudness = -0.691 + 10.0 * np.log10(np.maximum(z.sum(0), 1e-30))
    gated = block_loudness > -70.0
    if not gated.any():
        return LUFS_FLOOR
    relative_gate = -0.691 + 10.0 * np.log10(z[:, gated].mean(1).sum()) - 10.0
    gated &= block_loudness > relative_gate
    return float(-0.691 + 10.0 * np.log10(z[:, gated].mean(1).sum()))


# ---------------------------------------------------------------------------------------------
# Onset features
# ---------------------------------------------------------------------------------------------


@dataclass
class _Onsets:
    """Spectral-flux onset envelopes at `fps` frames/s (frame t is centred at t / fps seconds)."""

    fps: float
    full: np.ndarray  # [T] broadband flux (mean over all bands)
    low: np.ndarray  # [T] mean flux of the mel bands below 150 Hz (kick, bass)
    mid: np.ndarray  # [T] mean flux of the mel bands in 150 Hz - 2.5 kHz (snare body, claps, chords)
    high: np.ndarray  # [T] mean flux of the mel bands above 2.5 kHz (snare noise, claps, hats)
    kick: np.ndarray  # [T] flux of the total energy below 150 Hz (see _onset_features)
    log_mel: np.ndarray  # [n_mels, T] log-compressed mel power, for timbre features
    rms: np.ndarray  # [T] frame RMS (linear) of the analysed mono signal


def _onset_features(y: np.ndarray) -> _Onsets:
    """Log-compressed mel spectral flux per band from a mono signal at ANALYSIS_RATE."""
    fps = ANALYSIS_RATE / HOP
    n = len(y)
    if n < N_FFT:  # very short input: pad so the STFT has a full window (frames stay aligned)
        y = np.pad(y, (0, N_FFT - n))
    power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))[:, : n // HOP + 1] ** 2  # [513, T]
    fb = librosa.filters.mel(sr=ANALYSIS_RATE, n_fft=N_FFT, n_mels=64, fmin=30.0, htk=True)
    # The lowest mel filters are narrower than an FFT bin at this window; give each at least
    # its nearest bin so every band sees energy.
    freqs = librosa.fft_frequencies(sr=ANALYSIS_RATE, n_fft=N_FFT)
    centres = librosa.mel_frequencies(n_mels=66, fmin=30.0, fmax=ANALYSIS_RATE / 2, htk=True)[1:-1]
    for m in np.flatnonzero(fb.sum(1) == 0):
        fb[m, np.argmin(np.abs(freqs - centres[m]))] = 1.0
    mel = fb @ power  # [64, T]
    # log(1 + gamma * S / ref): level-independent, with a soft floor 40 dB below the loud frames
    # so noise-floor wobble does not count as onsets.
    ref = max(float(np.percentile(mel.max(0), 99)), 1e-12)
    log_mel = np.log1p(ONSET_GAMMA * mel / ref).astype(np.float32)
    # Prepend silence so that a hit on the very first frame still counts as an onset.
    flux = np.maximum(0.0, np.diff(log_mel, axis=1, prepend=0.0))

    def band(name: str) -> np.ndarray:
        lo, hi = _BANDS[name]
        return flux[(centres >= lo) & (centres < hi)].mean(0)

    # Flux of the *total* energy below 150 Hz: the kick is the loudest event there and wins,
    # while a bassline restarting under sidechain ducking (or rolling on the 16ths) raises only
    # a few narrow mel bands, which the per-band mean in "low" weighs like a kick.
    low_energy = mel[centres < _BANDS["low"][1]].sum(0)
    kick_level = np.log1p(ONSET_GAMMA * low_energy / max(float(np.percentile(low_energy, 99)), 1e-12))
    kick = np.maximum(0.0, np.diff(kick_level, prepend=0.0))

    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0]
    return _Onsets(
        fps=fps,
        full=flux.mean(0),
        low=band("low"),
        mid=band("mid"),
        high=band("high"),
        kick=kick,
        log_mel=log_mel,
        rms=rms[: flux.shape[1]],
    )


# ---------------------------------------------------------------------------------------------
# Tempo
# ---------------------------------------------------------------------------------------------


def _windowed_acf(env: np.ndarray, max_lag: int, window: int, hop: int) -> np.ndarray:
    """Mean normalised autocorrelation of `env` over windows (unbiased per lag).

    Each window is mean-removed and normalised to ACF(0) = 1, so quiet and loud passages count
    alike. Returns `[max_lag + 1]`; all zeros when the envelope is flat.
    """
    n = len(env)
    window = min(window, n)
    starts = np.arange(0, max(n - window, 0) + 1, max(hop, 1))
    frames = env[starts[:, None] + np.arange(window)[None]].astype(np.float64)  # [W, window]
    frames -= frames.mean(1, keepdims=True)
    spec = np.fft.rfft(frames, n=2 * window, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : max_lag + 1]
    ac /= np.maximum(window - np.arange(ac.shape[1]), 1)[None]  # unbiased
    usable = ac[:, 0] > 1e-12
    if not usable.any():
        return np.zeros(max_lag + 1)
    out = (ac[usable] / ac[usable, :1]).mean(0)
    return np.pad(out, (0, max_lag + 1 - len(out)))


def _acf_at(acf: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """ACF at fractional lags (linear interpolation); 0 beyond the computed range."""
    return np.interp(lags, np.arange(len(acf)), acf, right=0.0)


def _comb_salience(acf: np.ndarray, fps: float, bpms: np.ndarray) -> np.ndarray:
    """Salience of each tempo: ACF summed at 1..4 beat periods (a periodic pulse peaks at all)."""
    period = 60.0 * fps / bpms
    return sum(_acf_at(acf, k * period) for k in range(1, 5)) / 4.0


_CLASS_LOW = 80.0  # tempo classes are searched in [80, 160) BPM, each with its octaves x0.5 and x2


def _tempo_class(acf: np.ndarray, fps: float) -> float | None:
    """The tempo up to octave (a value in [80, 160) BPM), or None without periodicity.

    Each class sums the comb salience of its three octaves (x0.5, x1, x2), so a pattern that
    is strong at half or double tempo votes for its class; the octave is chosen later, from
    the drum pattern. Scoring single tempi instead lets a 3:2 grouping (the 3-3-2 kick of drum &
    bass or reggaeton) beat the true tempo once a prior favours the middle of the range.
    """
    classes = _CLASS_LOW * 2.0 ** np.linspace(0.0, 1.0, 1000, endpoint=False)
    score = sum(_comb_salience(acf, fps, classes * m) for m in (0.5, 1.0, 2.0))
    if not np.any(score > 0):
        return None
    return float(classes[int(np.argmax(score))])


def _tempo_prior(bpm: np.ndarray | float) -> np.ndarray | float:
    """Log-Gaussian preference for tempi near PRIOR_BPM (sigma one octave): a tie-breaker only."""
    return np.exp(-0.5 * np.log2(np.asarray(bpm) / PRIOR_BPM) ** 2)


@dataclass
class _BeatGrid:
    bpm: float
    beats: np.ndarray  # [n] seconds
    confidence: float  # 0..1, see _beat_confidence
    steady: bool  # one constant grid for the whole track (see _steady_grid)


def _tempo_and_beats(on: _Onsets, lo: float, hi: float, duration: float) -> _BeatGrid:
    """Tempo (folded into [lo, hi]), beat times and a beat confidence."""
    fps = on.fps
    env = _beat_envelope(on)
    max_lag = int(np.ceil(4 * 60.0 * fps / _CLASS_LOW * 2)) + 2
    acf = _windowed_acf(env, max_lag, window=int(16 * fps), hop=int(4 * fps))
    tempo_class = _tempo_class(acf, fps)
    if tempo_class is None:
        return _nominal_grid(PRIOR_BPM if lo <= PRIOR_BPM <= hi else lo, duration)
    bpm = _choose_octave(tempo_class, on, env, acf, lo, hi)

    confidence = _beat_confidence(acf, fps, bpm) if _has_onsets(on) else 0.0
    if confidence <= 0.0:
        return _nominal_grid(bpm, duration)
    frames = _track_beats(env, 60.0 * fps / bpm)
    beats = _trim_silent_beats(frames / fps, on)
    if len(beats) < 4:
        return _nominal_grid(bpm, duration)
    grid = _steady_grid(on, env, bpm, beats)
    if grid is None:
        return _BeatGrid(_bpm_from_beats(beats, bpm), beats, confidence, steady=False)
    # The grid covers the whole non-silent span, also where the tracker had too little to go on.
    period, phase = grid
    start, end = _active_span(on)
    first = phase + np.ceil((start - 0.02 - phase) / period) * period  # 20 ms for an early first hit
    beats = np.arange(first, end, period)
    return _BeatGrid(60.0 / period, beats, confidence, steady=True)


def _steady_grid(on: _Onsets, env: np.ndarray, bpm: float, beats: np.ndarray) -> tuple[float, float] | None:
    """A constant beat grid `(period s, phase s)` when the track keeps one tempo, else None.

    Electronic and most produced music runs at one fixed tempo; there one grid for the whole
    track is more reliable than beat-by-beat tracking, which slips onto the off-beats wherever
    off-beat stabs, basslines or sidechain pumping outweigh the kick. The tracked beats decide
    whether the tempo is steady: on a steady track they all sit on a constant 16th-note lattice
    (where they slipped, on off-beats or 16ths), and a least-squares fit through them gives a
    precise period. A drifting live tempo leaves many beats off that lattice and keeps the
    tracked beats. The
    phase then comes from the drum pattern (`_grid_phase`), not from the tracker.
    """
    fps = on.fps
    period = _spectral_period(env, fps, bpm)
    if len(beats) < 8:
        return None
    for _ in range(2):  # fit, then refit with the refined period
        step = period / 4.0  # 16th-note lattice: trackers slip by an 8th or a 16th
        ref = float(np.angle(np.mean(np.exp(2j * np.pi * beats / step)))) / (2 * np.pi) * step
        index = np.round((beats - ref) / step)
        residual = beats - ref - index * step
        on_lattice = np.abs(residual) < min(0.025, 0.2 * step)  # 25 ms
        if on_lattice.mean() < 0.85:
            logger.debug("tempo not steady: %.2f of the beats on a constant grid", on_lattice.mean())
            return None
        slope, _ = np.polyfit(index[on_lattice], beats[on_lattice], 1)
        period = 4.0 * float(slope)
    return period, _grid_phase(on, period)


def _spectral_period(env: np.ndarray, fps: float, bpm: float) -> float:
    """Beat period (s) near 60 / `bpm` where the envelope's spectrum at the beat rate and its
    2nd and 4th harmonics peaks (zoom FFT, 0.005 % steps)."""
    x = env - env.mean()
    f0 = bpm / 60.0
    rel = np.linspace(0.985, 1.015, 601)
    spectrum = np.zeros(len(rel))
    for k in (1, 2, 4):
        band = [k * f0 * rel[0], k * f0 * rel[-1]]
        spectrum += np.abs(scipy.signal.zoom_fft(x, band, m=len(rel), fs=fps, endpoint=True))
    return 1.0 / (f0 * rel[int(np.argmax(spectrum))])


# Canonical drum patterns for the grid phase: (beat in the bar, band, weight). The four-hit
# patterns sum to 3; the two-hit half-time pattern (kick on 1, snare on 3: dubstep, trap) to
# 2.5, because two stray syncopated hits line up with a two-hit pattern far more easily.
_RHYTHM_TEMPLATES = {
    "backbeat": ((0, "kick", 1.0), (2, "kick", 0.5), (1, "snare", 0.75), (3, "snare", 0.75)),
    "four_on_the_floor": ((0, "kick", 0.75), (1, "kick", 0.75), (2, "kick", 0.75), (3, "kick", 0.75)),
    "half_time": ((0, "kick", 1.25), (2, "snare", 1.25)),
}


def _grid_phase(on: _Onsets, period: float) -> float:
    """Beat phase (s, in [0, period)) of a constant grid, from the drum pattern.

    The kick (total energy below 150 Hz) and snare (above 2.5 kHz) onsets are folded over one
    bar and matched, at every shift, with the canonical patterns of popular rhythm
    (`_RHYTHM_TEMPLATES`: backbeat, four-on-the-floor, half-time); the shift with the best
    match of any gives the phase within the beat. Off-beat hats, stabs, basslines and
    syncopated percussion, which a plain onset sum can prefer, fit none of them.
    """
    fps = on.fps
    bar = BEATS_PER_BAR * period
    n_bins = max(int(round(bar * fps)), BEATS_PER_BAR)
    times = np.arange(len(on.low)) / fps
    bins = np.minimum((np.mod(times, bar) / bar * n_bins).astype(np.int64), n_bins - 1)
    counts = np.maximum(np.bincount(bins, minlength=n_bins), 1)

    def fold(band: np.ndarray) -> np.ndarray:
        peaks = maximum_filter1d(_unit_onsets(band), size=5, mode="nearest")
        peaks = np.maximum(peaks - np.median(peaks), 0.0)
        return np.bincount(bins, weights=peaks, minlength=n_bins) / counts

    folded = {"kick": fold(on.kick), "snare": fold(on.high)}
    beat = n_bins / BEATS_PER_BAR
    score = np.full(n_bins, -np.inf)
    for template in _RHYTHM_TEMPLATES.values():
        match = sum(w * np.roll(folded[band], -int(round(pos * beat))) for pos, band, w in template)
        score = np.maximum(score, match)
    best = int(np.argmax(score))
    return float(np.mod(best / n_bins * bar, period))


def _beat_envelope(on: _Onsets) -> np.ndarray:
    """Onset envelope for tempo and beats: kick, mid and high band fluxes at equal weight.

    Each band is normalised to unit variance first, so a snare that lives mostly above 2.5 kHz
    counts as much as the kick; a plain mean over mel bands would let the busiest region win.
    """
    env = sum(_unit_onsets(band) for band in (on.low, on.mid, on.high))
    return env / max(float(env.std()), 1e-9)


ONSET_FLOOR = 0.02  # flux std (log-mel units per frame) below which a band has no real onsets


def _unit_onsets(band: np.ndarray) -> np.ndarray:
    """A band's flux scaled to unit variance; a band without onsets (a pad, silence above 2.5 kHz)
    is scaled by ONSET_FLOOR instead, so that its numerical noise is not blown up to full weight."""
    return band / max(float(band.std()), ONSET_FLOOR)


def _octave_candidates(bpm: float, lo: float, hi: float) -> list[float]:
    """`bpm * 2**k` inside [lo, hi], slowest first (the closest one when none fits)."""
    cands = [bpm * 2.0**k for k in range(-4, 5) if lo <= bpm * 2.0**k <= hi]
    if not cands:
        cands = [min((bpm * 2.0**k for k in range(-4, 5)), key=lambda b: abs(np.log(b / np.sqrt(lo * hi))))]
    return sorted(cands)


def _choose_octave(bpm: float, on: _Onsets, env: np.ndarray, acf: np.ndarray, lo: float, hi: float) -> float:
    """Pick the metrical level of `bpm` (x 2**k) that is the beat.

    Walks up from the slowest candidate in range and moves to the faster level `2 b` when the
    evidence favours it (`_octave_evidence` > 0). The main cue is the backbeat: snares and claps
    (the band above 2.5 kHz) repeat every *two* beats in almost all popular music. Drum & bass
    at 174 (snare on 2 and 4) read at 87 would have its snare on every beat; hip-hop at 90 read
    at 180 would have its snare on every fourth beat. The balance of the interleaved halves of
    the fast grid and a weak prior around 120 BPM settle patterns without a backbeat.
    """
    fps = on.fps
    cands = [_refine_tempo(c, acf, fps) for c in _octave_candidates(bpm, lo, hi)]
    if len(cands) == 1:
        return cands[0]
    high = _unit_onsets(on.high)
    max_lag = int(np.ceil(2 * 60.0 * fps / cands[0])) + 2
    high_acf = _windowed_acf(high, max_lag, window=int(16 * fps), hop=int(4 * fps))
    choice = cands[0]
    for fast in cands[1:]:
        evidence = _octave_evidence(high_acf, env, fps, choice, fast)
        if evidence <= 0.0:
            break
        choice = fast
    return choice


def _backbeat(high_acf: np.ndarray, fps: float, bpm: float) -> float:
    """How much the snare band repeats every two beats rather than every beat: ACF(2T) - ACF(T)."""
    period = 60.0 * fps / bpm
    one, two = _acf_at(high_acf, np.array([period, 2 * period]))
    return float(two - one)


def _octave_evidence(high_acf: np.ndarray, env: np.ndarray, fps: float, slow: float, fast: float) -> float:
    """> 0 when `fast` (= 2 x `slow`) is the better beat level, < 0 when `slow` is."""
    backbeat = _backbeat(high_acf, fps, fast) - _backbeat(high_acf, fps, slow)
    balance = _fast_level_balance(env, fps, fast) - 0.5  # > 0: the off-beats of `slow` are busy
    prior = 0.5 * float(np.log(_tempo_prior(fast) / _tempo_prior(slow)))
    evidence = backbeat + 0.25 * balance + prior
    logger.debug(
        "octave %.1f vs %.1f: backbeat %+.2f, balance %+.2f, prior %+.2f",
        slow,
        fast,
        backbeat,
        balance,
        prior,
    )
    return evidence


def _fast_level_balance(env: np.ndarray, fps: float, fast_bpm: float, window_s: float = 8.0) -> float:
    """Onset strength on the odd beats of a `fast_bpm` grid relative to the even beats, 0..1.

    In 8 s windows (short enough that a small tempo error does not smear the grid) the grid
    phase with the strongest onsets is found; the weaker of its two interleaved halves over the
    stronger is the balance, averaged over windows weighted by their onset strength.
    1 = every fast beat is as strong as its neighbours; 0 = only every other one has onsets.
    """
    period = 60.0 * fps / fast_bpm
    peaks = maximum_filter1d(env, size=5, mode="nearest")
    win = int(window_s * fps)
    if len(peaks) < win:
        win = len(peaks)
    n_beats = int((win - 1) / period)
    if n_beats < 4:
        return 0.0
    phases = np.arange(0.0, period, 0.5)
    positions = phases[:, None] + np.arange(n_beats)[None] * period  # [n_phases, n_beats] frames
    total, weight = 0.0, 0.0
    for start in range(0, len(peaks) - win + 1, max(win // 2, 1)):
        seg = peaks[start : start + win]
        seg = np.maximum(seg - np.median(seg), 0.0)  # onsets above the window's floor
        values = np.interp(positions, np.arange(win), seg)
        best = values[int(np.argmax(values.sum(1)))]
        even, odd = best[0::2].mean(), best[1::2].mean()
        strong = max(even, odd)
        if strong > 1e-9:
            total += strong * min(even, odd) / strong
            weight += strong
    return total / weight if weight > 0 else 0.0


def _refine_tempo(bpm: float, acf: np.ndarray, fps: float) -> float:
    """Best comb salience within +-3 % of `bpm` (fine grid)."""
    grid = bpm * np.linspace(0.97, 1.03, 241)
    return float(grid[np.argmax(_comb_salience(acf, fps, grid))])


def _beat_confidence(acf: np.ndarray, fps: float, bpm: float) -> float:
    """Pulse clarity -> [0, 1]: the strongest onset ACF at one beat, two beats or one bar.

    Syncopated patterns (breakbeats, half-time) repeat clearly only per bar, so the bar lag
    counts too. Drum tracks reach 0.4-0.9; noise and pads stay near 0.1. Below `PULSE_MIN`
    the track has no usable beat (confidence 0); `PULSE_FULL` and above is full confidence.
    """
    period = 60.0 * fps / bpm
    clarity = float(np.max(_acf_at(acf, np.array([1, 2, BEATS_PER_BAR]) * period)))
    return float(np.clip((clarity - PULSE_MIN) / (PULSE_FULL - PULSE_MIN), 0.0, 1.0))


PULSE_MIN, PULSE_FULL = 0.15, 0.4


ATTACK_FLOOR = 0.06  # 95th percentile of the broadband flux below which a track has no attacks


def _has_onsets(on: _Onsets) -> bool:
    """Whether the track has attacks at all. Pads, drones and slow cross-fades stay below 0.04
    (their flux is slow swells and partials beating); music with any percussion or plucked or
    struck notes is above 0.1."""
    return float(np.percentile(on.full, 95)) >= ATTACK_FLOOR


def _nominal_grid(bpm: float, duration: float) -> _BeatGrid:
    """A placeholder grid at `bpm` over the whole track, with confidence 0."""
    return _BeatGrid(float(bpm), np.arange(0.0, max(duration - 1e-6, 0.0), 60.0 / bpm), 0.0, steady=True)


def _track_beats(env: np.ndarray, period: float, tightness: float = 100.0) -> np.ndarray:
    """Dynamic-programming beat tracker (Ellis 2007): beat frames on strong onsets, ~`period` apart.

    Args:
        env: `[T]` onset envelope (unit variance); period: beat period in frames.
    Returns:
        `[n_beats]` frame indices (int), increasing.
    """
    # Smooth a little (Gaussian, sigma = period / 32) so nearby peaks pull together, and
    # centre it so that a beat on a weak frame costs something.
    local = _gauss_smooth(env, period / 32.0)
    local = local - 0.5 * local.mean()
    lags = np.arange(max(1, int(round(period / 2))), int(round(2 * period)) + 1)
    penalty = -tightness * np.log(lags / period) ** 2
    n = len(local)
    score = local.copy()
    back = np.full(n, -1, dtype=np.int64)
    for t in range(int(lags[0]), n):
        prev = t - lags
        ok = prev >= 0
        cand = score[prev[ok]] + penalty[ok]
        j = int(np.argmax(cand))
        if cand[j] > 0:
            score[t] += cand[j]
            back[t] = prev[ok][j]
    # Last beat: the best cumulative score within the final period.
    tail = max(0, n - int(round(period)))
    t = tail + int(np.argmax(score[tail:]))
    beats = []
    while t >= 0:
        beats.append(t)
        t = back[t]
    return np.array(beats[::-1], dtype=np.int64)


def _gauss_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.5:
        return x.astype(np.float64)
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.convolve(x, k / k.sum(), mode="same")


def _active_span(on: _Onsets) -> tuple[float, float] | None:
    """(first, last) time (s) where the track is within 50 dB of its loud frames; None if silent."""
    rms = on.rms
    loud = np.percentile(rms, 95) if len(rms) else 0.0
    if loud <= 0:
        return None
    active = np.flatnonzero(rms > loud * 10 ** (-50 / 20))
    if not len(active):
        return None
    return active[0] / on.fps - 0.05, active[-1] / on.fps + 0.05


def _trim_silent_beats(beats: np.ndarray, on: _Onsets) -> np.ndarray:
    """Drop leading/trailing beats where the track is silent."""
    span = _active_span(on)
    if span is None:
        return beats[:0]
    return beats[(beats >= span[0]) & (beats <= span[1])]


def _bpm_from_beats(beats: np.ndarray, fallback: float) -> float:
    """Tempo from a least-squares line through the beat times of steady stretches."""
    ibi = np.diff(beats)
    med = np.median(ibi)
    steady = np.abs(ibi - med) < 0.1 * med
    if steady.sum() < 4:
        return fallback
    return float(60.0 / np.mean(ibi[steady]))


# ---------------------------------------------------------------------------------------------
# Chroma and key
# ---------------------------------------------------------------------------------------------


@dataclass
class _Chroma:
    """Pitch-class salience at `fps` frames/s, split at C3 (130.8 Hz) into bass and treble."""

    fps: float
    treble: np.ndarray  # [12, T] C3 and up
    bass: np.ndarray  # [12, T] C1..B2


def _chroma(y: np.ndarray) -> _Chroma:
    """Harmonic pitch-class salience from a constant-Q transform (36 bins/octave, C1..B7).

    Three steps keep drums and overtones out of the pitch classes:
    - median filtering along time (a cheap harmonic/percussive split on the small CQT) keeps
      sustained tones and drops drum hits, whose pitched partials (tuned kicks, 808 cymbals)
      would otherwise vote for notes;
    - harmonic summation credits each note with its first six partials, so a sawtooth's fifth
      (3rd partial) and major third (5th partial) do not read as chord tones;
    - a coarse tuning correction (+-1/3 semitone) before folding to 12 pitch classes.
    """
    fps = ANALYSIS_RATE / CHROMA_HOP
    n_frames = max(1, len(y) // CHROMA_HOP + 1)
    if not np.any(y):
        return _Chroma(fps, np.zeros((12, n_frames)), np.zeros((12, n_frames)))
    if len(y) < _CQT_MIN_SAMPLES:  # the low octaves run on decimated audio and need some length
        y = np.pad(y, (0, _CQT_MIN_SAMPLES - len(y)))
    c1 = librosa.note_to_hz("C1")
    cqt = librosa.cqt(y, sr=ANALYSIS_RATE, hop_length=CHROMA_HOP, fmin=c1, n_bins=36 * 7, bins_per_octave=36)
    cqt = np.abs(cqt)
    cqt = cqt[:, :n_frames]
    x = np.log1p(CHROMA_GAMMA * cqt / max(float(cqt.max()), 1e-12))  # [252, T]
    # Harmonic/percussive split by median filtering: sustained tones are smooth along time,
    # drum hits along frequency.
    harmonic = scipy.signal.medfilt2d(x, (1, HPSS_TIME_FRAMES))
    percussive = scipy.signal.medfilt2d(x, (HPSS_FREQ_BINS, 1))
    x = x * harmonic**2 / (harmonic**2 + percussive**2 + 1e-12)
    x = _harmonic_sum(x, n_partials=6, decay=0.8)
    octaves = x.reshape(7, 36, -1)  # [octave, bin, T]
    # Which third of a semitone holds the energy: recordings tuned off A440 by up to +-50 cents
    # would otherwise smear between pitch classes.
    per_offset = octaves.sum(axis=(0, 2)).reshape(12, 3).sum(0)
    offset = (int(np.argmax(per_offset)) + 1) % 3 - 1  # -1, 0 or +1 third of a semitone
    # Regroup so each semitone is (below, centre, above) and weight the centre bin most.
    grouped = np.roll(octaves, 1 - offset, axis=1).reshape(7, 12, 3, -1)
    pitch = np.tensordot(grouped, np.array([0.5, 1.0, 0.5]), axes=([2], [0]))  # [7, 12, T]
    return _Chroma(fps, pitch[2:].sum(0), pitch[:2].sum(0))


def _harmonic_sum(x: np.ndarray, n_partials: int, decay: float) -> np.ndarray:
    """Pitch salience `[bins, T]` on a 36 bins/octave axis: sum of decay**(h-1) * x[bin + partial h]."""
    out = np.zeros_like(x)
    for h in range(1, n_partials + 1):
        shift = int(round(36 * np.log2(h)))
        out[: x.shape[0] - shift] += decay ** (h - 1) * x[shift:]
    return out


PHRASE_KEY_WEIGHT = 1.0  # weight of the phrase-start chroma relative to the whole track's


def _key_vector(chroma: _Chroma, bars: np.ndarray, bass_weight: float) -> np.ndarray:
    """`[12]` pitch-class profile for key finding: the whole track plus the first bar of each phrase.

    Loops such as i-VII-VI-VII or vi-IV-I-V hold the same notes as their relative key; what
    names the tonic is where the harmony returns at structural downbeats, i.e. the chord that
    opens each phrase (every `PHRASE_BARS` bars from the first bar). Both parts are normalised
    to sum 1 before weighting. Without bars (no beat) only the whole-track profile is used.
    """

    def profile(frames) -> np.ndarray:
        treble, bass = chroma.treble[:, frames].sum(1), chroma.bass[:, frames].sum(1)
        return treble / (treble.sum() + 1e-12) + bass_weight * bass / (bass.sum() + 1e-12)

    vector = profile(slice(None))
    if len(bars) < 2:
        return vector
    bar_len = float(np.median(np.diff(bars)))
    starts = bars[::PHRASE_BARS]
    frames = np.concatenate([np.arange(int(t * chroma.fps), int((t + bar_len) * chroma.fps)) for t in starts])
    frames = frames[(frames >= 0) & (frames < chroma.treble.shape[1])].astype(np.int64)
    if len(frames):
        vector = vector + PHRASE_KEY_WEIGHT * profile(frames)
    return vector


def estimate_key(chroma: np.ndarray, profile: str = DEFAULT_KEY_PROFILE) -> tuple[int, float]:
    """Best of 24 keys by Pearson correlation of a chroma vector with rotated key profiles.

    Args:
        chroma: `[12]` pitch-class weights (C first), or `[12, T]` (summed over time).
        profile: a name in `KEY_PROFILES`.
    Returns:
        (key index 0..23 as in data/keys.py, correlation of the best key clipped to 0..1).
    """
    if profile not in KEY_PROFILES:
        raise ValueError(f"unknown key profile {profile!r}; choose from {sorted(KEY_PROFILES)}")
    c = np.asarray(chroma, dtype=np.float64)
    c = c.sum(1) if c.ndim == 2 else c
    if not np.any(c > 0) or np.ptp(c) == 0:
        return 0, 0.0
    scores = key_scores(c, profile)
    best = int(np.argmax(scores))
    return best, float(np.clip(scores[best], 0.0, 1.0))


def key_scores(chroma: np.ndarray, profile: str = DEFAULT_KEY_PROFILE) -> np.ndarray:
    """`[24]` Pearson correlations of a `[12]` chroma with each key's profile (data/keys.py order)."""
    major, minor = (np.asarray(p, dtype=np.float64) for p in KEY_PROFILES[profile])
    c = (chroma - chroma.mean()) / (chroma.std() + 1e-12)
    out = np.empty(24)
    for mode, base in ((0, major), (12, minor)):
        for tonic in range(12):
            p = np.roll(base, tonic)
            out[mode + tonic] = float(np.mean(c * (p - p.mean()) / (p.std() + 1e-12)))
    return out


# ---------------------------------------------------------------------------------------------
# Downbeats
# ---------------------------------------------------------------------------------------------

# Per-beat downbeat evidence and where in the bar it points: each feature (z-scored over the
# beats) adds `weight[position]` to the score of "this beat is at bar position 0..3". Chords and
# bass notes change on the "1" in most popular music; the kick lands on it and a crash or new
# layer starts there (mid-band accent, timbre change); the snare/clap backbeat (the band above
# 2.5 kHz) sits on 2 and 4. The backbeat only separates {1, 3} from {2, 4}, and is weighted
# lightly, so half-time patterns (snare on 3) are outvoted by kick and harmony.
_DOWNBEAT_TEMPLATES = {
    "harmony": (1.0, 0.0, 0.0, 0.0),
    "harmony_fast": (0.5, 0.0, 0.0, 0.0),
    "bass": (0.5, 0.0, 0.0, 0.0),
    "kick": (1.0, 0.0, 0.0, 0.0),
    "accent": (0.5, 0.0, 0.0, 0.0),
    "snare": (-0.25, 0.25, -0.25, 0.25),
    "timbre": (0.5, 0.0, 0.0, 0.0),
}
SWITCH_PENALTY = 6.0  # Viterbi cost (in score units) of a bar-phase jump: several bars of evidence
STEADY_SWITCH_FACTOR = 4.0  # on a constant grid beats cannot slip; only a real meter change moves the bar


def _downbeats(
    beats: np.ndarray, on: _Onsets, drum_on: _Onsets | None, chroma: _Chroma, steady: bool
) -> np.ndarray:
    """Downbeat times (a subset of `beats`): the bar phase that the audio supports.

    Args:
        beats: `[n]` beat times (s). on: onset features of the mix; drum_on: of the drum stem.
        chroma: harmonic chroma (of the mix, or of the bass + vocals + other stems).
        steady: the beats are one constant grid, so they never slip and the bar phase can
            only change where the meter really does: switching costs more.
    """
    if len(beats) < 2 * BEATS_PER_BAR:
        return beats[::BEATS_PER_BAR]
    evidence = _downbeat_evidence(beats, on, drum_on, chroma)
    emission = np.zeros((len(beats), BEATS_PER_BAR))
    for name, values in evidence.items():
        emission += _zscore(values)[:, None] * np.asarray(_DOWNBEAT_TEMPLATES[name])[None]
    positions = _bar_positions(emission, SWITCH_PENALTY * (STEADY_SWITCH_FACTOR if steady else 1.0))
    return beats[positions == 0]


def _downbeat_evidence(
    beats: np.ndarray, on: _Onsets, drum_on: _Onsets | None, chroma: _Chroma
) -> dict[str, np.ndarray]:
    """Per-beat features `[n_beats]` each, see `_DOWNBEAT_TEMPLATES`."""
    drums = drum_on if drum_on is not None else on
    frames = np.round(beats * on.fps).astype(np.int64)
    kick = _peak_near(drums.low, frames, radius=3)
    snare = _peak_near(drums.high, frames, radius=3)
    accent = _peak_near(on.mid, frames, radius=3)  # from the mix: crashes, stabs, new layers

    treble = _beat_sync(chroma.treble, beats, chroma.fps)  # [12, n]
    bass = _beat_sync(chroma.bass, beats, chroma.fps)
    timbre = _beat_sync(on.log_mel, beats, on.fps)  # [64, n]
    return {
        "harmony": _change(treble, width=2, metric="cosine"),
        "harmony_fast": _change(treble, width=1, metric="cosine"),
        "bass": _change(bass, width=2, metric="cosine"),
        "kick": kick,
        "accent": accent,
        "snare": snare,
        "timbre": _change(timbre, width=4, metric="euclidean"),
    }


def _peak_near(env: np.ndarray, frames: np.ndarray, radius: int) -> np.ndarray:
    """Max of `env` within +-radius frames of each frame index."""
    peaks = maximum_filter1d(env, size=2 * radius + 1, mode="nearest")
    return peaks[np.clip(frames, 0, len(env) - 1)]


def _beat_sync(feature: np.ndarray, beats: np.ndarray, fps: float) -> np.ndarray:
    """`[D, T]` -> `[D, n_beats]` mean over each beat's span (the last beat spans one median period)."""
    period = np.median(np.diff(beats)) if len(beats) > 1 else 0.5
    edges = np.append(beats, beats[-1] + period)
    idx = np.clip(np.round(edges * fps).astype(np.int64), 0, feature.shape[1])
    csum = np.concatenate([np.zeros((feature.shape[0], 1)), np.cumsum(feature, axis=1)], axis=1)
    counts = np.maximum(np.diff(idx), 1)
    return (csum[:, idx[1:]] - csum[:, idx[:-1]]) / counts


def _change(features: np.ndarray, width: int, metric: str) -> np.ndarray:
    """Change at each beat: distance between the means of the `width` beats before and after it.

    `features` is `[D, n_beats]`. "cosine" compares shapes (chroma) and is scaled by how present
    the quieter side is relative to the track's typical level, so the random shape of a nearly
    silent chroma does not count as a chord change; "euclidean" compares values (log-mel).
    Returns `[n_beats]`, 0 where the window does not fit.
    """
    n = features.shape[1]
    csum = np.concatenate([np.zeros((features.shape[0], 1)), np.cumsum(features, axis=1)], axis=1)
    idx = np.arange(width, n - width + 1)
    before = (csum[:, idx] - csum[:, idx - width]) / width  # [D, m]
    after = (csum[:, idx + width] - csum[:, idx]) / width
    out = np.zeros(n)
    if metric == "cosine":
        nb, na = np.linalg.norm(before, axis=0), np.linalg.norm(after, axis=0)
        cosine = (before * after).sum(0) / np.maximum(nb * na, 1e-12)
        typical = np.median(np.linalg.norm(features, axis=0)) + 1e-12
        presence = np.clip(np.minimum(nb, na) / typical, 0.0, 1.0)
        out[idx] = (1.0 - cosine) * presence
    else:
        out[idx] = np.sqrt(np.mean((after - before) ** 2, axis=0))
    return out


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 1e-9 else np.zeros_like(x, dtype=np.float64)


def _bar_positions(emission: np.ndarray, switch_penalty: float) -> np.ndarray:
    """Viterbi over bar positions: `emission[i, p]` scores beat i being at position p (0 = downbeat).

    The position advances by one per beat; any other move (a dropped or extra beat, a bar of
    another length) costs `switch_penalty`. Returns `[n]` positions.
    """
    n, k = emission.shape
    # trans[p, q]: score of moving from position p to q.
    trans = np.full((k, k), -switch_penalty)
    trans[np.arange(k), (np.arange(k) + 1) % k] = 0.0
    score = emission[0].copy()
    back = np.zeros((n, k), dtype=np.int64)
    for i in range(1, n):
        total = score[:, None] + trans  # [p, q]
        back[i] = np.argmax(total, axis=0)
        score = total[back[i], np.arange(k)] + emission[i]
    path = np.zeros(n, dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

MIN_SECTION_BARS = 8  # shortest section; dance music phrases are 8 or 16 bars
NOVELTY_BARS = 8  # half-width of the checkerboard kernel, bars


PHRASE_BARS = 8  # bars per phrase in dance music (and most pop)


@dataclass
class _BarStructure:
    """Bar-level view of a track: bar starts and the novelty at each bar line.

    Phrases are counted from the first bar: DJ-oriented tracks start on a phrase boundary.
    (Estimating the phrase grid from novelty peaks was tried; fills and risers in the bar before
    a change make it land one bar early too often to be worth it.)
    """

    bars: np.ndarray  # [n_bars] bar start times (s)
    novelty: np.ndarray  # [n_bars] how much the music changes at the start of each bar
    intensity: np.ndarray  # [n_bars] loudness + spectral fullness + onset density, z-scored sum


def _bar_structure(on: _Onsets, chroma: _Chroma, downbeats: np.ndarray, duration: float) -> _BarStructure:
    """Bar novelty (checkerboard on the bar self-similarity plus loudness steps) and intensity."""
    bars = downbeats[downbeats < duration]
    if len(bars) < 2:
        return _BarStructure(bars, np.zeros(len(bars)), np.zeros(len(bars)))
    feats, level_db = _bar_features(on, chroma, bars)
    intensity = _bar_intensity(on, bars, level_db)
    if len(bars) < 2 * MIN_SECTION_BARS:
        return _BarStructure(bars, np.zeros(len(bars)), intensity)
    novelty = _checkerboard_novelty(feats, NOVELTY_BARS) + _step_novelty(level_db, 4)
    return _BarStructure(bars, novelty, intensity)


def _bar_intensity(on: _Onsets, bars: np.ndarray, level_db: np.ndarray) -> np.ndarray:
    """How intense each bar is, `[n_bars]`: z-scored loudness + spectral fullness + onset density.

    Mastered tracks keep their loudness nearly flat from intro to drop (a 1-3 dB difference);
    what changes is how many layers play (fullness: the mean log-mel level over all bands) and
    how busy they are (onset density in the kick, mid and high bands).
    """
    fullness = _beat_sync(on.log_mel.mean(0, keepdims=True), bars, on.fps)[0]
    bands = sum(band / (band.mean() + 1e-9) for band in (on.low, on.mid, on.high))
    density = _beat_sync(bands[None], bars, on.fps)[0]
    return _zscore(level_db) + _zscore(fullness) + _zscore(density)


def _sections(structure: _BarStructure, duration: float) -> list[Section]:
    """Section boundaries at novelty peaks on bar lines, preferring phrase starts; labelled by intensity."""
    bars, novelty = structure.bars, structure.novelty
    if len(bars) < 2 * MIN_SECTION_BARS:
        return [Section(0.0, float(duration), "verse")]
    in_phrase = np.arange(len(bars)) % PHRASE_BARS
    phrase_weight = np.where(in_phrase == 0, 1.0, np.where(in_phrase % 4 == 0, 0.7, 0.4))
    chosen = _pick_boundaries(novelty * phrase_weight, MIN_SECTION_BARS)
    edges = [0] + chosen + [len(bars)]
    intensity = [float(structure.intensity[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]
    times = [0.0] + [float(bars[j]) for j in chosen] + [float(duration)]
    return _label_sections(times, intensity)


def _bar_features(on: _Onsets, chroma: _Chroma, bars: np.ndarray):
    """Per-bar standardised features `[D, n_bars]` and bar loudness in dB `[n_bars]`."""
    mel = _beat_sync(on.log_mel, bars, on.fps)  # [64, n]
    mel = mel.reshape(16, 4, -1).mean(1)  # coarser timbre, 16 bands
    harm = _beat_sync(chroma.treble + chroma.bass, bars, chroma.fps)
    harm = harm / (np.linalg.norm(harm, axis=0, keepdims=True) + 1e-9)
    rms = _beat_sync(on.rms[None], bars, on.fps)[0]
    level_db = 20.0 * np.log10(np.maximum(rms, 1e-6))
    feats = np.concatenate([mel, harm, level_db[None] / 3.0])
    feats = (feats - feats.mean(1, keepdims=True)) / (feats.std(1, keepdims=True) + 1e-6)
    return feats, level_db


def _checkerboard_novelty(feats: np.ndarray, half: int) -> np.ndarray:
    """Foote novelty at each bar line j: within-block similarity minus across-block similarity."""
    norm = feats / (np.linalg.norm(feats, axis=0, keepdims=True) + 1e-9)
    ssm = norm.T @ norm  # [n, n] cosine similarity
    n = ssm.shape[0]
    out = np.zeros(n)
    for j in range(1, n):
        a, b = max(0, j - half), min(n, j + half)
        if j - a < 2 or b - j < 2:
            continue
        within = 0.5 * (ssm[a:j, a:j].mean() + ssm[j:b, j:b].mean())
        out[j] = max(0.0, within - ssm[a:j, j:b].mean())
    return out


def _step_novelty(level_db: np.ndarray, width: int) -> np.ndarray:
    """|mean level of the next `width` bars - previous `width` bars| / 6 dB at each bar line."""
    n = len(level_db)
    out = np.zeros(n)
    for j in range(1, n):
        before = level_db[max(0, j - width) : j]
        after = level_db[j : j + width]
        out[j] = abs(after.mean() - before.mean()) / 6.0
    return out


def _pick_boundaries(score: np.ndarray, min_bars: int) -> list[int]:
    """Greedy peak picking: strongest bar lines first, at least `min_bars` apart and from the ends."""
    n = len(score)
    if n == 0 or score.max() <= 0:
        return []
    threshold = max(0.25 * score.max(), np.median(score[score > 0]) if np.any(score > 0) else 0.0)
    chosen: list[int] = []
    for j in np.argsort(score)[::-1]:
        if score[j] < threshold:
            break
        if j < min_bars or n - j < min_bars // 2:
            continue
        if all(abs(j - c) >= min_bars for c in chosen):
            chosen.append(int(j))
    return sorted(chosen)


DROP_JUMP = 0.35  # rise in relative intensity (0..1 scale) that makes a peak section a drop
PEAK, CALM = 0.75, 0.3  # relative intensity of peak (drop/chorus) and calm (intro/bridge) sections


def _label_sections(times: list[float], intensity: list[float]) -> list[Section]:
    """Label spans by position and intensity relative to the track's range (0 = calmest, 1 = most intense).

    - peak sections (>= PEAK): "drop" when they follow a build or breakdown (not the intro) with a
      jump of at least DROP_JUMP, the dance-music drop; otherwise "chorus";
    - everything before the first peak that is calmer than a build (< 0.45) is the "intro", and
      everything after the last peak is the "outro";
    - calm sections (<= CALM) in between are a "bridge" (breakdown), the rest "verse".
    Adjacent intro (or outro) spans are merged: their boundaries only mark layers coming in.
    """
    values = np.asarray(intensity, dtype=np.float64)
    span = values.max() - values.min()
    rel = (values - values.min()) / span if span > 1e-9 else np.full(len(values), 0.5)
    peaks = np.flatnonzero(rel >= PEAK)
    first_peak, last_peak = (peaks[0], peaks[-1]) if len(peaks) else (len(rel), -1)
    labels = []
    for k in range(len(rel)):
        if rel[k] >= PEAK:
            after_build = k > 0 and labels[k - 1] != "intro"
            labels.append("drop" if after_build and rel[k] - rel[k - 1] >= DROP_JUMP else "chorus")
        elif k < first_peak and (k == 0 or labels[k - 1] == "intro") and (k == 0 or rel[k] < 0.45):
            labels.append("intro")
        elif k > last_peak and last_peak >= 0:
            labels.append("outro")
        elif rel[k] <= CALM:
            labels.append("bridge")
        else:
            labels.append("verse")
    sections: list[Section] = []
    for start, end, label in zip(times[:-1], times[1:], labels):
        if sections and sections[-1].label == label and label in ("intro", "outro"):
            sections[-1].end = float(end)
        else:
            sections.append(Section(float(start), float(end), label))
    return sections


# ---------------------------------------------------------------------------------------------
# Vocal activity
# ---------------------------------------------------------------------------------------------


def detect_vocal_activity(
    vocals,
    sample_rate: int,
    threshold_db: float = -20.0,
    hysteresis_db: float = 6.0,
    min_duration: float = 0.5,
    min_gap: float = 0.5,
    floor_db: float = -60.0,
) -> list[tuple[float, float]]:
    """Where a vocal stem is active, as `(start, end)` seconds.

    Level is the RMS over 100 ms frames every 50 ms. The stem's own reference level is its 98th
    percentile frame; a region opens above `reference + threshold_db` and closes below that minus
    `hysteresis_db` (so a voice hovering at the threshold does not flicker). Gaps shorter than
    `min_gap` (breaths) are bridged, then regions shorter than `min_duration` dropped. A stem whose
    reference is below `floor_db` dBFS (separation bleed only) has no activity.

    Args:
        vocals: `[C, N]` or `[N]` vocal stem at `sample_rate`.
    """
    x = _as_channels(vocals).astype(np.float64)
    hop = int(round(0.05 * sample_rate))
    win = 2 * hop
    power = np.mean(x * x, axis=0)
    n_frames = max(1, int(np.ceil(len(power) / hop)))
    csum = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(n_frames) * hop
    ends = np.minimum(starts + win, len(power))
    frame_power = (csum[ends] - csum[starts]) / np.maximum(ends - starts, 1)
    level = 10.0 * np.log10(np.maximum(frame_power, 1e-20))
    reference = float(np.percentile(level, 98))
    if reference < floor_db:
        return []
    on_level = reference + threshold_db
    off_level = on_level - hysteresis_db

    regions, active, begin = [], False, 0
    for i, lv in enumerate(level):
        if not active and lv >= on_level:
            active, begin = True, i
        elif active and lv < off_level:
            active = False
            regions.append([begin * hop / sample_rate, (i * hop + win) / sample_rate])
    if active:
        regions.append([begin * hop / sample_rate, len(power) / sample_rate])

    merged: list[list[float]] = []
    for start, end in regions:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    duration = len(power) / sample_rate
    return [(float(s), float(min(e, duration))) for s, e in merged if e - s >= min_duration]
