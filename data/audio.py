"""Audio input/output: load anything soundfile (or librosa/audioread) reads as 44.1 kHz stereo float32.

Inside the system audio is a torch float32 tensor `[2, samples]` at 44_100 Hz (see DESIGN.md).
`load_audio` gets any file into that shape and validates it; `save_audio` writes WAV/FLAC
atomically (temporary file in the same folder, then `os.replace`), so a crash never leaves a
half-written file behind. Every problem with an input file raises `AudioError`, whose message
names the file and the problem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import julius
import numpy as np
import soundfile as sf
import torch

logger = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
SILENCE_PEAK = 1e-5  # linear peak below which a file counts as silent (-100 dBFS)
_DB_FLOOR = -200.0  # what peak_db / rms_db return for digital silence instead of -inf

# Default subtypes when the caller gives none: float WAV keeps float32 audio bit-exact and
# never clips; FLAC has no float subtype, 24-bit is its lossless best.
_DEFAULT_SUBTYPE = {"WAV": "FLOAT", "FLAC": "PCM_24", "OGG": "VORBIS"}

# -3 dB, the ITU-R BS.775 weight of the centre and surround channels in a stereo downmix.
_M3DB = 1.0 / np.sqrt(2.0)


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""


DC_OFFSET_MAX = 1e-2  # a channel whose mean over the file exceeds this (-40 dBFS) has a DC offset (music: < 1e-3)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    allow_silence: bool = False,
) -> torch.Tensor:
    """Read an audio file as stereo float32 at `sample_rate`.

    Args:
        path: any format soundfile reads (WAV, FLAC, OGG, MP3, AIFF, ...); other formats go
            through librosa/audioread when a backend for them is installed.
        sample_rate: output rate in Hz; the file is resampled with `julius.resample_frac`.
        allow_silence: accept files whose peak is below `SILENCE_PEAK` (-100 dBFS).

    Returns:
        `[2, N]` float32 tensor in [-1, 1] for fixed-point files (float files keep their values).
        Mono is duplicated to both channels; more than two channels are downmixed (`downmix`). A DC
        offset (a channel mean above DC_OFFSET_MAX) is removed, with a warning.

    Raises:
        AudioError: missing file, unreadable/corrupt file, no samples, non-finite samples,
            or (unless `allow_silence`) a silent file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")

    data, file_rate = _read(path)  # [C, N] float32
    if data.shape[1] == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: contains non-finite samples (NaN or Inf)")
    offset = data.mean(axis=1, keepdims=True, dtype=np.float64)
    if float(np.abs(offset).max()) > DC_OFFSET_MAX:  # a click where playback starts, and lost headroom
        logger.warning("%s: removed a DC offset of %.3f", path, float(np.abs(offset).max()))
        data = (data - offset).astype(np.float32)
    peak = float(np.max(np.abs(data)))
    if peak < SILENCE_PEAK and not allow_silence:
        raise AudioError(f"{path}: audio is silent (peak {peak:.2g} < {SILENCE_PEAK:g})")
    audio = torch.from_numpy(downmix(data))
    if file_rate != sample_rate:
        audio = resample(audio, file_rate, sample_rate)
    return audio.contiguous()


@contextlib.contextmanager
def _quiet_decoders():
    """Silence C decoders (libmpg123 prints 'Illegal Audio-MPEG-Header', 'Xing stream size off') that write to
    file descriptor 2 directly; Python's own stderr is restored afterwards. A no-op without a real stderr."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced stderr (pytest, notebooks)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Decode a file to `([channels, N] float32, sample_rate)`; soundfile first, librosa second."""
    try:
        with _quiet_decoders():
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(rate)
    except Exception as sf_error:  # libsndfile raises several types for corrupt input
        first_error = sf_error
    try:
        import librosa

        with warnings.catch_warnings(), _quiet_decoders():
            # librosa warns when it falls back to audioread; that is exactly what we want here.
            warnings.simplefilter("ignore")
            data, rate = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
    except Exception as fallback_error:
        first = _short(first_error)
        if path.is_file() and "does not exist" in first:  # libsndfile's words for a file it cannot decode
            first = "not a decodable audio file"
        raise AudioError(
            f"{path}: unreadable or corrupt audio file ({first}; fallback decoder: {_short(fallback_error)})"
        ) from fallback_error
    data = np.atleast_2d(np.asarray(data, dtype=np.float32))
    logger.debug("%s: decoded with librosa/audioread after soundfile failed: %s", path, first_error)
    return data, int(rate)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]


def downmix(data: np.ndarray) -> np.ndarray:
    """Any channel count -> stereo.

    Args:
        data: `[C, N]` float32 in the WAV channel order (L, R, C, LFE, BL, BR, SL, SR).

    Returns:
        `[2, N]` float32. Mono is duplicated. 3 to 8 channels use the ITU-R BS.775 matrix
        (centre and surrounds at -3 dB, LFE dropped); other counts send even channels left and
        odd channels right. Each output row is normalised by the sum of its weights, so a signal
        present at the same level in every channel keeps its level and the downmix never clips.
    """
    n_channels = data.shape[0]
    if n_channels == 1:
        return np.repeat(data, 2, axis=0)
    if n_channels == 2:
        return data
    matrix = _downmix_matrix(n_channels)  # [2, C]
    matrix = matrix / matrix.sum(axis=1, keepdims=True)
    return (matrix.astype(np.float32) @ data).astype(np.float32)


def _downmix_matrix(n_channels: int) -> np.ndarray:
    """`[2, C]` weights; WAVE_FORMAT_EXTENSIBLE default channel order."""
    left, right = np.zeros(n_channels), np.zeros(n_channels)
    left[0], right[1] = 1.0, 1.0
    layouts = {
        3: {"centre": [2]},  # L R C
        4: {"surround": [(2, 3)]},  # L R BL BR (quad)
        5: {"centre": [2], "surround": [(3, 4)]},  # L R C BL BR
        6: {"centre": [2], "surround": [(4, 5)]},  # 5.1: L R C LFE BL BR
        7: {"centre": [2], "surround": [(4, 5)], "centre_back": [6]},  # 6.1: ... BC
        8: {"centre": [2], "surround": [(4, 5), (6, 7)]},  # 7.1: ... BL BR SL SR
    }
    if n_channels not in layouts:
        left[0::2], right[1::2] = 1.0, 1.0
        return np.stack([left, right])
    layout = layouts[n_channels]
    for c in layout.get("centre", []) + layout.get("centre_back", []):
        left[c] = right[c] = _M3DB
    for l_idx, r_idx in layout.get("surround", []):
        left[l_idx], right[r_idx] = _M3DB, _M3DB
    return np.stack([left, right])


# julius builds one sinc kernel per output phase: fine for the usual rates (44.1/48 kHz: 147/160 after the gcd),
# gigabytes for a rate that shares no large factor with 44.1 kHz (44 101 Hz: 44 100 phases). Beyond this many
# phases a polyphase FIR (scipy) does it in a fraction of a second.
_JULIUS_MAX_PHASES = 1000


def resample(audio: torch.Tensor, old_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of `[..., N]` float32: `julius.resample_frac` (sinc, 24 zeros) for rates with a
    large common factor, `scipy.signal.resample_poly` (Kaiser-windowed sinc) for the rest."""
    old_rate, new_rate = int(old_rate), int(new_rate)
    if old_rate == new_rate:
        return audio
    g = math.gcd(old_rate, new_rate)
    up, down = new_rate // g, old_rate // g
    if max(up, down) <= _JULIUS_MAX_PHASES:
        return julius.resample_frac(audio, old_rate, new_rate)
    from scipy import signal

    out = signal.resample_poly(audio.detach().cpu().numpy(), up, down, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(audio.device)


def save_audio(
    path: str | os.PathLike,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    subtype: str | None = None,
) -> Path:
    """Write `[2, N]` (or `[N]`, `[C, N]`) audio to WAV/FLAC/OGG, atomically.

    The format comes from the extension. Default subtypes: WAV 32-bit float (bit-exact, no
    clipping), FLAC 24-bit, OGG Vorbis. Fixed-point subtypes clip at full scale (logged).
    Missing parent folders are created.

    Raises:
        AudioError: unknown extension, empty or non-finite audio.
    """
    path = Path(path)
    fmt = _format_for(path)
    data = _as_numpy(audio, path)  # [C, N]
    subtype = subtype or _DEFAULT_SUBTYPE.get(fmt)
    if subtype and not subtype.upper().startswith(("FLOAT", "DOUBLE", "VORBIS", "OPUS")):
        peak = float(np.max(np.abs(data)))
        if peak > 1.0:
            logger.warning("%s: peak %.2f exceeds full scale; %s will clip", path, peak, subtype)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp_name, data.T, int(sample_rate), subtype=subtype, format=fmt)
        os.chmod(tmp_name, 0o644)  # mkstemp makes files 0600; an audio file is an ordinary readable file
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    return path


def _format_for(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    formats = {"wav": "WAV", "wave": "WAV", "flac": "FLAC", "ogg": "OGG", "oga": "OGG"}
    if ext not in formats:
        raise AudioError(f"{path}: cannot write '.{ext}' files (use .wav, .flac or .ogg)")
    return formats[ext]


def _as_numpy(audio: torch.Tensor | np.ndarray, path: Path) -> np.ndarray:
    """`[N]` or `[C, N]` tensor/array -> `[C, N]` float32 numpy, validated."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2:
        raise AudioError(f"{path}: audio must be [N] or [channels, N], got shape {tuple(data.shape)}")
    if data.shape[1] == 0:
        raise AudioError(f"{path}: refusing to write empty audio")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: refusing to write non-finite samples (NaN or Inf)")
    return data


def to_mono(audio: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """`[C, N]` -> `[N]` channel mean (a `[N]` input is returned as is); keeps the array type."""
    if audio.ndim == 1:
        return audio
    return audio.mean(0) if isinstance(audio, torch.Tensor) else np.mean(audio, axis=0)


def peak_db(audio: torch.Tensor | np.ndarray) -> float:
    """Sample peak in dBFS over all channels (-200 for digital silence)."""
    peak = float(torch.as_tensor(audio).abs().max()) if _size(audio) else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else _DB_FLOOR


def rms_db(audio: torch.Tensor | np.ndarray) -> float:
    """RMS level in dBFS over all channels and samples (-200 for digital silence)."""
    if not _size(audio):
        return _DB_FLOOR
    x = torch.as_tensor(audio, dtype=torch.float64)
    rms = float(torch.sqrt(torch.mean(x * x)))
    return 20.0 * np.log10(rms) if rms > 0 else _DB_FLOOR


def _size(audio: torch.Tensor | np.ndarray) -> int:
    return int(audio.numel() if isinstance(audio, torch.Tensor) else np.size(audio))


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write `data` as JSON to `path` atomically (temporary file in the same folder, then os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
