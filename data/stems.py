"""Stem separation for the transition windows only, cached on disk by content hash.

Contract (DESIGN.md): audio is torch float32 `[2, N]` at 44_100 Hz; stems are `[4, 2, N]` in the
order `STEMS = ("drums", "bass", "vocals", "other")`. Demucs models return their own order
(`model.sources`, e.g. drums, bass, other, vocals): outputs are mapped by NAME, never by position.

Separators (all `Separator`):
- `DemucsSeparator`: Demucs (htdemucs by default, any pretrained name, a local model repository,
  a `.th` file or an `nn.Module`). Loads lazily on the first `separate`. Sources the project has
  no stem for (htdemucs_6s: guitar, piano) are added to "other", so the stems still sum to the
  model's estimate of the mix; a model lacking one of our four stems is rejected at load time.
  Offline with no cached weights it raises `SeparatorUnavailable` within seconds (a short
  reachability probe instead of demucs' ~25 s of hub retries) with one actionable line.
- `DSPSeparator`: crude HPSS + band-split fallback for offline users; its stems sum to the input.
- `OracleSeparator`: the known stems of a synthetic track, sliced to the requested window.

Windowed API: `Separator.separate(audio, sample_rate, offset)` takes the start sample `offset`
of `audio` inside its track; model-based separators ignore it, the oracle slices by it.
`separate_windows` separates only the requested windows (plus context margins, merged where
they overlap) and caches each separated region on disk.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from data.audio import AudioError, resample, save_audio
from effects.params import SAMPLE_RATE, STEMS

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "htdemucs"
CACHE_VERSION = 1  # bump when the cached tensor layout or the key recipe changes
STEM_FORMATS = ("flac", "wav")  # load_stems looks for these extensions, in this order
# Hosts demucs downloads from (HuggingFace hub first, the legacy AWS repository second).
_HUB_HOSTS = ("huggingface.co", "dl.fbaipublicfiles.com")
_PROBE_TIMEOUT_S = 3.0
# Pretrained names demucs 4 ships; the authoritative list is read from the installed package.
_FALLBACK_PRETRAINED = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra",
                        "mdx_q", "mdx_extra_q")


class SeparatorUnavailable(RuntimeError):
    """The separator cannot run here (weights missing offline, bad model file); one-line message."""


# --------------------------------------------------------------------------------------------
# Separator interface
# --------------------------------------------------------------------------------------------


class Separator(abc.ABC):
    """Audio `[2, N]` -> stems `[4, 2, N]` in `STEMS` order.

    Subclasses implement `_separate`; `separate` validates input and output. `cache_key` names
    the model and every setting that changes the output (used in the on-disk cache key);
    `cacheable` is False for separators whose output is cheaper to recompute than to cache.
    """

    name: str = "separator"
    cacheable: bool = True

    @property
    @abc.abstractmethod
    def cache_key(self) -> str:
        """Stable string identifying model + settings; equal keys must give equal stems."""

    def separate(self, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE, offset: int = 0) -> torch.Tensor:
        """Separate `audio` `[2, N]` float32 (at `sample_rate` Hz) into `[4, 2, N]` float32.

        Args:
            offset: sample index of `audio[:, 0]` inside its track (only the oracle uses it).

        Returns:
            stems on `audio.device`, in `STEMS` order, same length as the input.
        """
        _check_audio(audio)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        stems = self._separate(audio, int(sample_rate), int(offset))
        expected = (len(STEMS), 2, audio.shape[-1])
        if tuple(stems.shape) != expected:
            raise RuntimeError(f"{self.name} returned stems of shape {tuple(stems.shape)}, expected {expected}")
        return stems.to(device=audio.device, dtype=torch.float32)

    @abc.abstractmethod
    def _separate(self, audio: torch.Tensor, sample_rate: int, offset: int) -> torch.Tensor:
        """`[2, N]` -> `[4, 2, N]`; input already validated."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cache_key})"


def _check_audio(audio: torch.Tensor) -> None:
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor [2, N], got {type(audio).__name__}")
    if audio.ndim != 2 or audio.shape[0] != 2:
        raise ValueError(f"audio must be stereo [2, N], got shape {tuple(audio.shape)}")
    if audio.dtype != torch.float32:
        raise ValueError(f"audio must be float32, got {audio.dtype}")
    if audio.shape[1] == 0:
        raise ValueError("audio is empty (0 samples)")


# --------------------------------------------------------------------------------------------
# Demucs
# --------------------------------------------------------------------------------------------


class DemucsSeparator(Separator):
    """Demucs source separation through `demucs.apply.apply_model`.

    Args:
        model: a pretrained name (`htdemucs`, `htdemucs_ft`, `htdemucs_6s`, `mdx_extra`,
            `demucs_unittest`, `hf://namespace/name`, a signature), a local model repository
            folder (the one bag `*.yaml` or model `*.th` inside it), a `NAME.yaml` inside such a
            folder, a single `.th` model package, or an already built `torch.nn.Module` /
            `BagOfModels` (random-init models for benchmarks, fakes for tests).
        device: "auto" (CUDA if available, else CPU), or any torch device string.
        shifts: random time-shift averaging passes (0 = off; >0 is slower and not deterministic).
        overlap: overlap between the model's processing chunks, in [0, 1).
        segment: chunk length in seconds (None = the model's own; transformer models cannot
            exceed their training segment, 7.8 s for htdemucs).
        progress: show demucs' own tqdm bar over chunks.
    """

    name = "demucs"

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        shifts: int = 0,
        overlap: float = 0.25,
        segment: float | None = None,
        progress: bool = False,
    ):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if shifts < 0:
            raise ValueError(f"shifts must be >= 0, got {shifts}")
        if segment is not None and segment <= 0:
            raise ValueError(f"segment must be > 0 seconds, got {segment}")
        self.model_spec = model
        self.name = f"demucs:{type(model).__name__ if isinstance(model, torch.nn.Module) else model}"
        self.device = _resolve_device(device)
        self.shifts = int(shifts)
        self.overlap = float(overlap)
        self.segment = segment
        self.progress = progress
        self._model = model if isinstance(model, torch.nn.Module) else None
        self._cache_key: str | None = None

    @property
    def model(self) -> torch.nn.Module:
        """The loaded Demucs model (loads it on first access)."""
        if self._model is None:
            start = time.perf_counter()
            self._model = _load_demucs(self.model_spec)
            logger.info("loaded Demucs model %s in %.1f s", self.model_spec, time.perf_counter() - start)
        return self._model

    @property
    def cache_key(self) -> str:
        if self._cache_key is None:
            self._cache_key = (
                f"demucs:{_model_identity(self.model_spec)}:shifts={self.shifts}:overlap={self.overlap}"
                f":segment={self.segment}"
            )
        return self._cache_key

    def _separate(self, audio: torch.Tensor, sample_rate: int, offset: int) -> torch.Tensor:
        from demucs.apply import apply_model

        model = self.model
        index = _source_index(model)
        _check_segment(model, self.segment)
        n = audio.shape[-1]
        x = audio.detach().to("cpu", torch.float32)
        model_rate = int(model.samplerate)
        x = resample(x, sample_rate, model_rate)
        # Demucs is trained on inputs normalised to unit std (demucs.separate does the same);
        # a pure scale (no mean shift) keeps the stems summing to the estimate of the input.
        scale = float(x.std())
        scale = scale if scale > 1e-8 else 1.0
        segment = self.segment or _model_segment(model)
        # apply_model(split=True) chunks at stride (1 - overlap) * segment and always runs a chunk
        # at every stride offset, so input shorter than one segment costs two chunks (htdemucs)
        # or is padded to 40 s (demucs_unittest). One pass is equivalent and up to 3x cheaper.
        split = segment is None or x.shape[-1] > segment * model_rate
        with torch.no_grad():
            out = apply_model(
                model, (x / scale)[None], shifts=self.shifts, split=split, overlap=self.overlap,
                progress=self.progress and split, device=self.device, segment=self.segment,
            )[0]  # [S, 2, n_model]
        out = out.to("cpu", torch.float32) * scale
        out = resample(out, model_rate, sample_rate)
        out = _fit_length(out, n)
        return _to_project_order(out, index)


def _model_segment(model: torch.nn.Module) -> float | None:
    """The shortest training segment (seconds) among the model or the models of a bag."""
    members = list(getattr(model, "models", [model]))
    segments = [float(m.segment) for m in members if getattr(m, "segment", None)]
    return min(segments) if segments else None


def _check_segment(model: torch.nn.Module, segment: float | None) -> None:
    """Transformer models cannot run on chunks longer than their training segment."""
    from demucs.htdemucs import HTDemucs

    limits = [float(m.segment) for m in getattr(model, "models", [model]) if isinstance(m, HTDemucs)]
    if segment is not None and limits and segment > min(limits):
        raise ValueError(f"segment {segment} s exceeds this transformer model's training segment "
                         f"{min(limits):.2f} s")


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        # MPS is left to an explicit request: some Demucs spectral ops are unsupported there.
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _fit_length(x: torch.Tensor, n: int) -> torch.Tensor:
    """Trim or zero-pad the last axis to `n` samples (resampling rounds lengths)."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def _source_index(model: torch.nn.Module) -> dict[str, list[int]]:
    """Map each of our stems to the model output rows that form it (by name).

    Extra model sources (e.g. guitar, piano in htdemucs_6s) go to "other" so nothing is lost.
    """
    sources = [str(s) for s in getattr(model, "sources", [])]
    missing = [s for s in STEMS if s not in sources]
    if missing:
        raise SeparatorUnavailable(
            f"Demucs model has sources {sources} but the project needs {list(STEMS)} (missing {missing})"
        )
    index = {stem: [sources.index(stem)] for stem in STEMS}
    extra = [i for i, s in enumerate(sources) if s not in STEMS]
    if extra:
        logger.info("adding Demucs sources %s to 'other'", [sources[i] for i in extra])
        index["other"] += extra
    return index


def _to_project_order(out: torch.Tensor, index: dict[str, list[int]]) -> torch.Tensor:
    """`[S, 2, N]` in model order -> `[4, 2, N]` in `STEMS` order."""
    return torch.stack([out[index[stem]].sum(0) for stem in STEMS]).contiguous()


def _model_identity(spec: str | os.PathLike | torch.nn.Module) -> str:
    """Cache identity of a model: its name, a local file's path+size+mtime, or a weights hash."""
    if isinstance(spec, torch.nn.Module):
        digest = hashlib.sha1(type(spec).__qualname__.encode())
        for key, value in sorted(spec.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
        return f"module-{type(spec).__name__}-{digest.hexdigest()[:16]}"
    path = Path(spec)
    if _looks_like_path(str(spec)) and path.exists():
        files = sorted(path.glob("*")) if path.is_dir() else [path]
        stamp = ",".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file())
        digest = hashlib.sha1(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:16]
        return f"path-{path.name}-{digest}"
    return str(spec)


def _looks_like_path(spec: str) -> bool:
    """Local model files/folders; 'namespace/name' that does not exist stays a hub name."""
    if spec.startswith("hf://"):
        return False
    return spec.startswith(("/", ".", "~")) or spec.endswith((".th", ".yaml")) or Path(spec).exists()


def pretrained_names() -> tuple[str, ...]:
    """Pretrained Demucs names this demucs install knows (bag yamls) plus `demucs_unittest`."""
    try:
        from demucs.pretrained import REMOTE_ROOT

        names = tuple(sorted(p.stem for p in Path(REMOTE_ROOT).glob("*.yaml")))
    except (ImportError, AttributeError, OSError):
        names = ()
    return (names or _FALLBACK_PRETRAINED) + ("demucs_unittest",)


def _load_demucs(spec: str | os.PathLike) -> torch.nn.Module:
    """Load a Demucs model from a name or local path; every failure is `SeparatorUnavailable`."""
    text = str(spec)
    if _looks_like_path(text):
        return _load_local(Path(text).expanduser())
    if text == "demucs_unittest":
        return _call_get_model(text, None, text)

    known = pretrained_names()
    hub_name = text.removeprefix("hf://")
    if text == hub_name and "/" not in text and text not in known and not _is_signature(text):
        raise SeparatorUnavailable(f"unknown Demucs model {text!r}; pretrained names: {', '.join(known)}")
    loader = cached_pretrained_loader(hub_name)
    if loader is not None:
        logger.debug("loading %s from the local weight cache", text)
        try:
            model = loader()
        except Exception as exc:  # a corrupt cache file: say which model and why
            raise SeparatorUnavailable(f"cached weights of Demucs model {text!r} fail to load: {exc}") from exc
        model.eval()
        return model
    if not _hub_reachable():
        raise SeparatorUnavailable(_offline_message(text))
    return _call_get_model(text, None, text)


def _call_get_model(name: str, repo: Path | None, what: str) -> torch.nn.Module:
    """`demucs.pretrained.get_model` with its failure modes turned into `SeparatorUnavailable`."""
    from urllib.error import URLError

    from demucs import pretrained  # looked up at call time, so tests can monkeypatch get_model

    try:
        model = pretrained.get_model(name, repo=repo)
    except SystemExit as exc:  # demucs.utils.fatal() calls sys.exit on some bad inputs
        raise SeparatorUnavailable(f"Demucs could not load {what} (demucs exited with {exc.code})") from exc
    except (URLError, ConnectionError, TimeoutError) as exc:
        raise SeparatorUnavailable(_offline_message(name, reason=str(exc))) from exc
    except Exception as exc:  # ModelLoadingError, huggingface_hub errors, torch.load errors, ...
        if _is_network_error(exc):
            raise SeparatorUnavailable(_offline_message(name, reason=str(exc))) from exc
        raise SeparatorUnavailable(f"Demucs could not load {what}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return model


def _is_network_error(exc: BaseException) -> bool:
    """huggingface_hub and requests/httpx wrap connection failures in their own types."""
    names = {type(e).__name__ for e in _exception_chain(exc)}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError",
                         "ConnectTimeout", "ReadTimeout", "URLError", "gaierror", "HfHubHTTPError"})


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _load_local(path: Path) -> torch.nn.Module:
    """A local model repository folder, a `NAME.yaml` bag in one, or a single `.th` package."""
    if not path.exists():
        raise SeparatorUnavailable(f"Demucs model path {path} does not exist")
    if path.is_file() and path.suffix == ".yaml":
        return _call_get_model(path.stem, path.parent, str(path))
    if path.is_file():
        from demucs.states import load_model

        try:
            model = load_model(path)
        except Exception as exc:
            raise SeparatorUnavailable(f"{path}: not a Demucs model package ({type(exc).__name__}: {exc})") from exc
        model.eval()
        return model
    bags = sorted(path.glob("*.yaml"))
    models = sorted(path.glob("*.th"))
    if len(bags) == 1:
        name = bags[0].stem
    elif not bags and len(models) == 1:
        name = models[0].stem.split("-", 1)[0]  # demucs names files SIG-CHECKSUM.th
    else:
        choices = ", ".join(p.name for p in bags or models) or "none"
        raise SeparatorUnavailable(
            f"{path}: expected one Demucs bag (*.yaml) or model (*.th), found: {choices}; "
            f"pass one file, e.g. demucs:{path / (bags or models or [Path('NAME.yaml')])[0].name}"
        )
    return _call_get_model(name, path, str(path))


def _is_signature(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def cached_pretrained_loader(name: str) -> Callable[[], torch.nn.Module] | None:
    """A loader for pretrained `name` that touches no network, or None if weights aren't cached.

    Looks in the HuggingFace cache (demucs >= 4.1 downloads there first) and in the torch hub
    checkpoint folder (the legacy AWS files, `~/.cache/torch/hub/checkpoints`).
    """
    for finder in (_hf_cached_loader, _torch_hub_cached_loader):
        try:
            loader = finder(name)
        except (ImportError, AttributeError, OSError, KeyError, ValueError) as exc:
            logger.debug("weight cache lookup %s failed for %s: %s", finder.__name__, name, exc)
            loader = None
        if loader is not None:
            return loader
    return None


def _hf_cached_loader(name: str) -> Callable[[], torch.nn.Module] | None:
    import yaml
    from demucs import hf
    from huggingface_hub import try_to_load_from_cache

    namespace, short = name.split("/", 1) if "/" in name else (hf.DEFAULT_NAMESPACE, name)
    repo_id = f"{namespace}/{hf.hf_repo_name(short)}"
    bag_file = try_to_load_from_cache(repo_id, f"{short}.yaml")
    if not isinstance(bag_file, str):
        return None
    bag = yaml.safe_load(Path(bag_file).read_text())
    files = [try_to_load_from_cache(repo_id, f"{sig}.safetensors") for sig in bag["models"]]
    if not all(isinstance(f, str) for f in files):
        return None

    def load() -> torch.nn.Module:
        from demucs.apply import BagOfModels

        models = [hf.load_safetensors_model(f) for f in files]
        return BagOfModels(models, bag.get("weights"), bag.get("segment"))

    return load


def _torch_hub_cached_loader(name: str) -> Callable[[], torch.nn.Module] | None:
    import yaml
    from demucs import pretrained
    from demucs.repo import AnyModelRepo, BagOnlyRepo, RemoteRepo

    urls = pretrained._parse_remote_files(Path(pretrained.REMOTE_ROOT) / "files.txt")
    bag_file = Path(pretrained.REMOTE_ROOT) / f"{name}.yaml"
    sigs = yaml.safe_load(bag_file.read_text())["models"] if bag_file.exists() else [name]
    if not all(sig in urls for sig in sigs):
        return None
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not all((checkpoints / urls[sig].rsplit("/", 1)[-1]).is_file() for sig in sigs):
        return None

    def load() -> torch.nn.Module:
        # Same path as get_model's legacy branch, minus the HuggingFace attempt: torch.hub finds
        # the cached files (and checks their hash) without any network access.
        model_repo = RemoteRepo(urls)
        return AnyModelRepo(model_repo, BagOnlyRepo(Path(pretrained.REMOTE_ROOT), model_repo)).get_model(name)

    return load


def expected_weight_files(name: str) -> list[str]:
    """File names of the legacy weights of `name` (what to copy into the torch hub cache)."""
    try:
        import yaml
        from demucs import pretrained

        urls = pretrained._parse_remote_files(Path(pretrained.REMOTE_ROOT) / "files.txt")
        bag_file = Path(pretrained.REMOTE_ROOT) / f"{name}.yaml"
        sigs = yaml.safe_load(bag_file.read_text())["models"] if bag_file.exists() else [name]
        return [urls[sig].rsplit("/", 1)[-1] for sig in sigs if sig in urls]
    except (ImportError, AttributeError, OSError, KeyError, ValueError):
        return []


def _hub_reachable(hosts: Sequence[str] = _HUB_HOSTS, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to any model host opens within `timeout` seconds.

    Runs in daemon threads because DNS resolution ignores socket timeouts; without this probe
    demucs' HuggingFace client retries for ~25 s (longer behind a silent firewall) offline.
    """
    reachable = threading.Event()

    def probe(host: str) -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                reachable.set()
        except OSError:
            pass

    threads = [threading.Thread(target=probe, args=(h,), daemon=True) for h in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if reachable.is_set():
            return True
    return reachable.is_set()


def _offline_message(name: str, reason: str | None = None) -> str:
    files = expected_weight_files(name)
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    why = f" ({reason.splitlines()[0][:120]})" if reason else ""
    copy = f"copy {', '.join(files)} into {hub_dir}" if files else f"copy its weight files into {hub_dir}"
    return (
        f"Demucs model {name!r} is not cached and cannot be downloaded (offline?){why}: run once with "
        f"internet `python -c \"from demucs.pretrained import get_model; get_model('{name}')\"`, or {copy}, "
        f"or pass a local model repo with `--separator demucs:/path/to/repo`, or use `--separator dsp`"
    )


# --------------------------------------------------------------------------------------------
# DSP fallback
# --------------------------------------------------------------------------------------------


class DSPSeparator(Separator):
    """Crude offline fallback: HPSS + band splitting with soft masks that sum to one.

    Masks on one STFT shared by both channels (keeps the stereo image), from the channel-mean
    magnitude: drums = percussive; bass = harmonic below `bass_hz` (log ramp to zero at
    `bass_hz[1]`); vocals = harmonic in `vocal_hz` (log ramps) times a "vocal-likeness" mask:
    harmonic energy above its own running median over `sustain_s` (pads and held chords are
    the median, sung notes move); other = the rest, computed as input minus the three, so the
    four stems sum back to the input to float rounding and a neutral mixer reproduces it.
    This is not a source separator in any quality sense; use Demucs where weights exist.
    """

    name = "dsp"

    def __init__(
        self,
        n_fft: int = 4096,
        hop_length: int = 1024,
        hpss_kernel: int = 17,
        bass_hz: tuple[float, float] = (150.0, 250.0),
        vocal_hz: tuple[float, float] = (300.0, 4000.0),
        sustain_s: float = 2.0,
    ):
        if not bass_hz[0] < bass_hz[1] <= vocal_hz[0] < vocal_hz[1]:
            raise ValueError(f"need bass_hz[0] < bass_hz[1] <= vocal_hz[0] < vocal_hz[1], got {bass_hz}, {vocal_hz}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.hpss_kernel = hpss_kernel
        self.bass_hz = bass_hz
        self.vocal_hz = vocal_hz
        self.sustain_s = sustain_s

    @property
    def cache_key(self) -> str:
        return (f"dsp:v2:n_fft={self.n_fft}:hop={self.hop_length}:k={self.hpss_kernel}:bass={self.bass_hz}"
                f":vocal={self.vocal_hz}:sustain={self.sustain_s}")

    def masks(self, magnitude: np.ndarray, sample_rate: int) -> np.ndarray:
        """`[F, T]` magnitude -> `[4, F, T]` soft masks in `STEMS` order, each in [0, 1], summing to 1."""
        from scipy.ndimage import median_filter

        # HPSS (Fitzgerald 2010, as librosa.decompose.hpss with margin 1): median along time
        # keeps steady partials, median along frequency keeps broadband clicks; Wiener-style
        # soft masks. Done here with scipy so the fallback needs no numba JIT (seconds per process).
        k = self.hpss_kernel
        steady = median_filter(magnitude, size=(1, k), mode="reflect")
        clicky = median_filter(magnitude, size=(k, 1), mode="reflect")
        harmonic = _soft_share(steady, clicky)
        percussive = 1.0 - harmonic
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / sample_rate)
        # Vocal band ramps up from where the bass ramp ends (so low + band <= 1) to vocal_hz[0]
        # and down over half an octave above vocal_hz[1].
        low = _log_ramp(freqs, self.bass_hz[1], self.bass_hz[0])
        band = _log_ramp(freqs, self.bass_hz[1], self.vocal_hz[0]) * _log_ramp(
            freqs, self.vocal_hz[1] * 1.5, self.vocal_hz[1])
        rows = np.flatnonzero(band > 0)
        vocal_like = np.zeros_like(magnitude)
        if rows.size:
            h_mag = (harmonic * magnitude)[rows]
            frames = max(1, int(round(self.sustain_s * sample_rate / self.hop_length))) | 1
            sustained = median_filter(h_mag, size=(1, frames), mode="nearest")
            vocal_like[rows] = _soft_share(np.maximum(h_mag - sustained, 0.0), sustained)
        drums = percussive
        bass = harmonic * low[:, None]
        vocals = harmonic * band[:, None] * vocal_like
        other = np.clip(1.0 - drums - bass - vocals, 0.0, 1.0)
        return np.stack([drums, bass, vocals, other]).astype(np.float32)

    def _separate(self, audio: torch.Tensor, sample_rate: int, offset: int) -> torch.Tensor:
        x = audio.detach().to("cpu", torch.float32)
        n = x.shape[-1]
        stems = torch.zeros(len(STEMS), 2, n)
        if n <= self.n_fft:  # too short for the STFT: all of it is "other"
            stems[STEMS.index("other")] = x
            return stems
        window = torch.hann_window(self.n_fft)
        spec = torch.stft(x, self.n_fft, self.hop_length, window=window, return_complex=True)  # [2, F, T]
        masks = torch.from_numpy(self.masks(spec.abs().mean(0).numpy(), sample_rate))
        for i in range(len(STEMS) - 1):  # drums, bass, vocals; "other" is the exact remainder
            stems[i] = torch.istft(spec * masks[i], self.n_fft, self.hop_length, window=window, length=n)
        stems[-1] = x - stems[:-1].sum(0)
        return stems


def _soft_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^2 / (a^2 + b^2), 0.5 where both are zero; in [0, 1]."""
    a2, b2 = np.square(a, dtype=np.float32), np.square(b, dtype=np.float32)
    total = a2 + b2
    return np.where(total > 0, a2 / np.maximum(total, np.finfo(np.float32).tiny), 0.5).astype(np.float32)


def _log_ramp(freqs: np.ndarray, zero_hz: float, one_hz: float) -> np.ndarray:
    """0 at `zero_hz`, 1 at `one_hz`, linear in log-frequency between, clamped outside."""
    f = np.maximum(freqs, 1.0)
    t = (np.log(f) - math.log(zero_hz)) / (math.log(one_hz) - math.log(zero_hz))
    return np.clip(t, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------


class OracleSeparator(Separator):
    """The true stems of a synthetic track: `separate(window, offset=s)` returns `stems[..., s:s+n]`.

    Args:
        stems: `[4, 2, N]` float32 stems of the FULL track, in `STEMS` order.
        sample_rate: their rate; asking for another rate is an error (no silent resampling).
    """

    name = "oracle"
    cacheable = False  # slicing is free; caching would only duplicate the stems on disk

    def __init__(self, stems: torch.Tensor, sample_rate: int = SAMPLE_RATE):
        if stems.ndim != 3 or stems.shape[:2] != (len(STEMS), 2):
            raise ValueError(f"oracle stems must be [4, 2, N], got shape {tuple(stems.shape)}")
        self.stems = stems.to(torch.float32)
        self.sample_rate = int(sample_rate)
        self._cache_key: str | None = None

    @property
    def cache_key(self) -> str:
        if self._cache_key is None:
            data = self.stems.detach().to("cpu").contiguous().numpy().tobytes()
            self._cache_key = f"oracle:{hashlib.sha1(data).hexdigest()[:16]}"
        return self._cache_key

    def _separate(self, audio: torch.Tensor, sample_rate: int, offset: int) -> torch.Tensor:
        if sample_rate != self.sample_rate:
            raise ValueError(f"oracle stems are at {self.sample_rate} Hz, asked for {sample_rate} Hz")
        end = offset + audio.shape[-1]
        if end > self.stems.shape[-1]:
            raise ValueError(
                f"window [{offset}, {end}) exceeds the oracle stems ({self.stems.shape[-1]} samples)"
            )
        return self.stems[..., offset:end].clone()


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def get_separator(spec: str, device: str | torch.device = "auto", **options) -> Separator:
    """Build a separator from a CLI string.

    Specs: 'htdemucs' (or any pretrained name, see `pretrained_names()`), 'demucs' (= htdemucs),
    'demucs:NAME_OR_PATH' (pretrained name, `hf://...`, model repo folder, `.yaml`, `.th`),
    'dsp'. 'oracle' needs the true stems and is built in code: `OracleSeparator(stems)`.
    `options` go to the separator's constructor (e.g. shifts=1 for Demucs).
    """
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.lower()
    if kind == "dsp" and not sep:
        return DSPSeparator(**options)
    if kind == "oracle":
        raise ValueError(
            "the 'oracle' separator needs the known stems of a synthetic track: build "
            "OracleSeparator(stems) in code; on the command line use 'htdemucs', 'demucs:NAME_OR_PATH' or 'dsp'"
        )
    if kind == "demucs":
        if sep and not arg.strip():
            raise ValueError("'demucs:' needs a model name or path, e.g. demucs:htdemucs_ft or demucs:/path/to/repo")
        return DemucsSeparator(arg.strip() or DEFAULT_MODEL, device=device, **options)
    if not sep and text in pretrained_names():
        return DemucsSeparator(text, device=device, **options)
    raise ValueError(
        f"unknown separator {spec!r}: use one of {', '.join(pretrained_names())}, "
        "'demucs:NAME_OR_PATH' or 'dsp'"
    )


# --------------------------------------------------------------------------------------------
# Windowed separation with an on-disk cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$DJMIX_CACHE` if set, else `~/.cache/djmix/stems`."""
    env = os.environ.get("DJMIX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "djmix" / "stems"


def separate_windows(
    audio: torch.Tensor,
    windows: Sequence[tuple[float, float]],
    separator: Separator,
    cache_dir: str | os.PathLike | None = None,
    margin: float = 1.0,
    track_id: str | None = None,
    sample_rate: int = SAMPLE_RATE,
    use_cache: bool = True,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Separate only the given windows of a track, with context margins, cached on disk.

    Each window `(start_s, end_s)` is clipped to the track and extended by `margin` seconds on
    both sides (clipped at the track edges) so the separator has context; extended windows that
    overlap or touch are merged into one region and separated once; the margins are trimmed off.

    Args:
        audio: the full track `[2, N]` float32 at `sample_rate`.
        windows: list of `(start, end)` in seconds, `start < end`.
        cache_dir: cache folder (None = `default_cache_dir()`); one `<sha1>.pt` per region,
            keyed by the region's float32 bytes, `sample_rate`, `separator.cache_key` and the
            region bounds. A hit never touches the separator (no model load).
        track_id: name for logs and the progress bar only (the key is the audio content).
        use_cache: False to neither read nor write the cache.
        progress: tqdm bar over regions when there is more than one.

    Returns:
        one `[4, 2, n_i]` float32 tensor per window (same order), `n_i` = window length in samples.
    """
    _check_audio(audio)
    if margin < 0:
        raise ValueError(f"margin must be >= 0 seconds, got {margin}")
    n = audio.shape[-1]
    spans = [_window_samples(w, i, n, sample_rate) for i, w in enumerate(windows)]
    pad = int(round(margin * sample_rate))
    regions = _merge([(max(0, s - pad), min(n, e + pad)) for s, e in spans])
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    use_cache = use_cache and separator.cacheable
    label = track_id or "track"

    separated: list[torch.Tensor] = []
    bar = tqdm(regions, desc=f"stems {label}", unit="window", disable=not progress or len(regions) <= 1)
    for start, end in bar:
        chunk = audio[:, start:end]
        path = cache / f"{_cache_digest(chunk, sample_rate, separator.cache_key, start, end)}.pt" if use_cache else None
        stems = _read_cache(path, (len(STEMS), 2, end - start)) if path is not None else None
        if stems is None:
            logger.debug("%s: separating %.2f-%.2f s with %s", label, start / sample_rate, end / sample_rate,
                         separator.name)
            stems = separator.separate(chunk, sample_rate, offset=start)
            if path is not None:
                write_cache(path, stems)
        else:
            logger.debug("%s: stems %.2f-%.2f s from cache %s", label, start / sample_rate, end / sample_rate, path)
        separated.append(stems.to(audio.device))

    out = []
    for s, e in spans:
        k = next(i for i, (r0, r1) in enumerate(regions) if r0 <= s and e <= r1)
        out.append(separated[k][..., s - regions[k][0]: e - regions[k][0]].contiguous())
    return out


def _window_samples(window: tuple[float, float], i: int, n: int, sample_rate: int) -> tuple[int, int]:
    """`(start_s, end_s)` -> sample bounds clipped to `[0, n]`; errors name the window."""
    try:
        start_s, end_s = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"window {i} must be (start_s, end_s), got {window!r}") from exc
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s >= end_s:
        raise ValueError(f"window {i} ({start_s}, {end_s}) must be finite with start < end (seconds)")
    start = min(max(0, int(round(start_s * sample_rate))), n)
    end = min(max(0, int(round(end_s * sample_rate))), n)
    if start >= end:
        raise ValueError(f"window {i} ({start_s:.2f}-{end_s:.2f} s) lies outside the track "
                         f"(0-{n / sample_rate:.2f} s)")
    return start, end


def _merge(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of overlapping or touching `[start, end)` sample ranges, sorted."""
    merged: list[list[int]] = []
    for start, end in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _cache_digest(chunk: torch.Tensor, sample_rate: int, key: str, start: int, end: int) -> str:
    digest = hashlib.sha1(f"djmix-stems-v{CACHE_VERSION}|{sample_rate}|{key}|{start}|{end}|".encode())
    digest.update(chunk.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached stems, or None when absent or unusable (then they are recomputed)."""
    if not path.is_file():
        return None
    try:
        stems = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated/corrupt file: recompute rather than fail
        logger.warning("ignoring unreadable stem cache %s: %s", path, exc)
        return None
    if not isinstance(stems, torch.Tensor) or tuple(stems.shape) != shape or stems.dtype != torch.float32:
        logger.warning("ignoring stem cache %s: unexpected content", path)
        return None
    return stems


def write_cache(path: Path, audio: torch.Tensor, what: str = "stem") -> None:
    """A float32 CPU copy of `audio` torch.saved to a temp file in the same folder, then os.replace (atomic, mode
    0644); failures only warn ("could not write {what} cache"): the caller still has its result."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save(audio.detach().to("cpu", torch.float32).contiguous(), handle)
        os.chmod(tmp, 0o644)  # mkstemp makes files 0600; a shared cache must be readable by others
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:  # read-only or full disk
        logger.warning("could not write %s cache %s: %s", what, path, exc)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------
# Stem folders
# --------------------------------------------------------------------------------------------


def save_stems(
    folder: str | os.PathLike, stems: torch.Tensor, sample_rate: int = SAMPLE_RATE, fmt: str = "flac"
) -> Path:
    """Write `[4, 2, N]` stems as `folder/{drums,bass,vocals,other}.{fmt}` (each atomically).

    FLAC is 24-bit and would clip above full scale, so stems that peak above it are written as 32-bit float WAV
    instead (bit-exact; separated stems of a loud master can exceed the mix's own peak), and a stem file of the
    other format left in the folder is removed (load_stems would read it first). `fmt="wav"` always writes float.
    """
    if stems.ndim != 3 or stems.shape[:2] != (len(STEMS), 2):
        raise ValueError(f"stems must be [4, 2, N], got shape {tuple(stems.shape)}")
    if fmt not in STEM_FORMATS:
        raise ValueError(f"stem format must be one of {STEM_FORMATS}, got {fmt!r}")
    folder = Path(folder)
    values = torch.as_tensor(stems)
    peak = float(values.abs().max()) if values.numel() else 0.0
    if fmt == "flac" and peak > 1.0:
        logger.info("%s: stems peak at %.3f, above full scale: written as float WAV, not 24-bit FLAC", folder, peak)
        fmt = "wav"
    for stem, audio in zip(STEMS, stems):
        save_audio(folder / f"{stem}.{fmt}", audio, sample_rate)
        for other in STEM_FORMATS:
            if other != fmt:
                (folder / f"{stem}.{other}").unlink(missing_ok=True)
    return folder


def load_stems(folder: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read `folder/{drums,bass,vocals,other}.{flac,wav}` -> `[4, 2, N]` float32 at `sample_rate`.

    Mono stems are duplicated to stereo; stems at another (common) rate are resampled.

    Raises:
        AudioError: a missing or unreadable stem file, more than 2 channels, or stems whose
            sample rates or lengths differ (the message names the folder and the files).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"{folder}: stem folder not found")
    arrays, rates, names = [], [], []
    for stem in STEMS:
        path = next((folder / f"{stem}.{ext}" for ext in STEM_FORMATS if (folder / f"{stem}.{ext}").is_file()), None)
        if path is None:
            raise AudioError(f"{folder}: missing stem file {stem}.flac or {stem}.wav")
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile raises several types for corrupt input
            raise AudioError(f"{path}: unreadable stem file ({exc})") from exc
        data = data.T  # [C, N]
        if not np.all(np.isfinite(data)):
            raise AudioError(f"{path}: contains non-finite samples (NaN or Inf)")
        if data.shape[0] == 1:
            data = np.repeat(data, 2, axis=0)
        elif data.shape[0] != 2:
            raise AudioError(f"{path}: stems must be mono or stereo, got {data.shape[0]} channels")
        arrays.append(np.ascontiguousarray(data))
        rates.append(int(rate))
        names.append(path.name)
    if len(set(rates)) > 1:
        raise AudioError(f"{folder}: stems have different sample rates: {dict(zip(names, rates))}")
    lengths = [a.shape[1] for a in arrays]
    if len(set(lengths)) > 1:
        raise AudioError(f"{folder}: stems have different lengths (samples): {dict(zip(names, lengths))}")
    stems = torch.from_numpy(np.stack(arrays))
    return resample(stems, rates[0], sample_rate).contiguous()
