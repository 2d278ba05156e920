"""Checkpoints: plain dicts of tensors and Python values, written atomically, checked against the model on load.

    ema = create_ema(model, decay=cfg.train.ema_decay)                 # torch.optim.swa_utils.AveragedModel
    save_checkpoint("run/last.pt", model, ema=ema, optimizer=opt, scheduler=sched, step=step,
                    data_state=sampler.state_dict(), generators={"loss": loss_generator})
    ckpt = load_checkpoint("run/last.pt", model, ema=ema, optimizer=opt, scheduler=sched,
                           generators={"loss": loss_generator})    # resume: ckpt.step, ckpt.data_state
    model = load_model("run/last.pt", "cuda")                          # EMA weights, eval mode: for inference
    export_weights("run/last.pt", "default_model.pt")                  # EMA weights + config + layout only

Everything stored passes torch.load(path, weights_only=True). Files are written to a temporary file in the
same folder and os.replace'd, so a crash leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.config import Config, ModelConfig, config_from_dict, config_to_dict
from model.diffusion import TransitionDiffusion

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Diffusion fields a trained network depends on (sampler settings such as steps or guidance are free to change).
_DIFFUSION_FIELDS = ("train_timesteps", "schedule", "prediction")
_FREE_MODEL_FIELDS = ("dropout",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """What load_checkpoint restored and returns."""

    model: TransitionDiffusion
    step: int
    config: Config
    layout: str
    data_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def create_ema(model: nn.Module, decay: float = 0.9999) -> AveragedModel:
    """EMA of the model's parameters: call ema.update_parameters(model) after each optimiser step."""
    return AveragedModel(_unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay))


# -- RNG state as plain values -----------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Global RNG states: torch CPU (+ CUDA), numpy (legacy global, as plain Python) and Python's random."""
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}}
    state = {"torch": torch.get_rng_state(), "numpy": np_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _generator_state(gen: torch.Generator | np.random.Generator) -> Any:
    if isinstance(gen, torch.Generator):
        return gen.get_state()
    if isinstance(gen, np.random.Generator):
        return gen.bit_generator.state  # plain dict (arbitrary-size Python ints)
    raise TypeError(f"generators must be torch.Generator or numpy.random.Generator, got {type(gen).__name__}")


def _set_generator_state(gen: torch.Generator | np.random.Generator, state: Any) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(state)
    else:
        gen.bit_generator.state = state


# -- writing -----------------------------------------------------------------------------------------------------
_PLAIN = (int, float, bool, str, type(None), bytes)  # exact types: subclasses (TorchVersion, numpy scalars) fail


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value torch.load(weights_only=True) would refuse."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; keys must be str or int")
            _check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold tensors and plain Python values only")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then os.replace onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, ema: AveragedModel | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, step: int = 0,
                    config: Config | Mapping[str, Any] | None = None, data_state: Mapping[str, Any] | None = None,
                    generators: Mapping[str, torch.Generator | np.random.Generator] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write everything a resumed run needs (see the module docstring). `config` defaults to model.config."""
    net = _unwrap(model)
    config = config if config is not None else net.config
    config_dict = config_to_dict(config) if isinstance(config, Config) else dict(config)
    ckpt: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "checkpoint",
        "step": int(step),
        "config": config_dict,
        "layout": config_dict["model"].get("layout", ModelConfig.layout),
        "model": net.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_n_averaged": ema.n_averaged.detach().clone() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "generators": {name: _generator_state(g) for name, g in (generators or {}).items()},
        "data_state": dict(data_state or {}),
        "extra": dict(extra or {}),
        "torch_version": str(torch.__version__),
    }
    _check_plain(ckpt)
    return atomic_save(ckpt, path)


# -- reading -----------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any unpickling failure becomes one clear line
        # torch's own text (first sentence only) may advise weights_only=False, which is not for untrusted files
        first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated or not a torch file; "
                              f"{type(exc).__name__}{': ' + first if first else ''})") from exc
    if not isinstance(ckpt, dict) or "config" not in ckpt or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not a djmix checkpoint (no config/format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {ckpt['format_version']} is newer than this code "
                              f"({FORMAT_VERSION}); update djmix")
    return ckpt


def config_mismatches(saved: Config, current: Config) -> list[str]:
    """'field: checkpoint X, model Y' for every architecture-relevant field that differs."""
    out = []
    for name, value in config_to_dict(saved)["model"].items():
        mine = getattr(current.model, name)
        if name not in _FREE_MODEL_FIELDS and value != mine:
            out.append(f"{name}: checkpoint {value!r}, model {mine!r}")
    for name in _DIFFUSION_FIELDS:
        value, mine = getattr(saved.diffusion, name), getattr(current.diffusion, name)
        if value != mine:
            out.append(f"diffusion.{name}: checkpoint {value!r}, model {mine!r}")
    return out


def _load_state(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str,
                new_parts: tuple[str, ...] = ()) -> None:
    """load_state_dict that reports every missing, unexpected and mis-shaped tensor by name. Tensors under the
    submodule names in new_parts may be missing from the checkpoint (they keep the model's own values)."""
    own = module.state_dict()
    problems = [f"{name}: checkpoint {list(state[name].shape)}, model {list(own[name].shape)}"
                for name in state if name in own and state[name].shape != own[name].shape]
    missing = sorted(n for n in set(own) - set(state) if n.split(".")[0] not in new_parts)
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing in checkpoint: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected in checkpoint: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{path}: {what} weights do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=not new_parts)


def stored_config(ckpt: Mapping[str, Any], path: str | os.PathLike) -> Config:
    """The Config a read checkpoint was trained with; CheckpointError (one line) when it cannot be rebuilt here,
    e.g. a field this version does not know or a value its validation refuses."""
    try:
        return config_from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config does not fit this version ({error})") from None


def _build_model(config: Config, path: str | os.PathLike) -> TransitionDiffusion:
    try:
        return TransitionDiffusion(config)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise CheckpointError(f"{path}: its config does not build a model ({error})") from None


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *, ema: AveragedModel | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    generators: Mapping[str, torch.Generator | np.random.Generator] | None = None,
                    map_location: Any = "cpu", restore_rng: bool = True) -> Checkpoint:
    """Restore into the given objects (model built from the stored config when None) and return a Checkpoint.

    Raises CheckpointError naming every mismatch when the stored config or tensor shapes do not fit `model`.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    config = stored_config(ckpt, path)
    if model is None:
        model = _build_model(config, path)
        if map_location is not None and not callable(map_location) and not isinstance(map_location, Mapping):
            model.to(map_location)
    net = _unwrap(model)
    if isinstance(getattr(net, "config", None), Config):
        problems = config_mismatches(config, net.config)
        if problems:
            raise CheckpointError(f"{path}: checkpoint config does not fit the model: " + "; ".join(problems))
    state = ckpt.get("model") if ckpt.get("model") is not None else ckpt.get("ema")
    if state is None:
        raise CheckpointError(f"{path}: holds no model weights")
    _load_state(net, state, path, "model")
    if ema is not None:
        if ckpt.get("ema") is None:
            raise CheckpointError(f"{path}: holds no EMA weights but an EMA model was given to restore")
        _load_state(ema.module, ckpt["ema"], path, "EMA")
        if ckpt.get("ema_n_averaged") is not None:
            ema.n_averaged.copy_(ckpt["ema_n_averaged"])
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"{path}: holds no optimizer state")
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        if ckpt.get("scheduler") is None:
            raise CheckpointError(f"{path}: holds no LR scheduler state")
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    for name, gen in (generators or {}).items():
        if name not in ckpt.get("generators", {}):
            raise CheckpointError(f"{path}: holds no state for generator {name!r}")
        _set_generator_state(gen, ckpt["generators"][name])
    return Checkpoint(model=net, step=int(ckpt.get("step", 0)), config=config, layout=ckpt.get("layout", ""),
                      data_state=dict(ckpt.get("data_state") or {}), extra=dict(ckpt.get("extra") or {}), raw=ckpt)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TransitionDiffusion:
    """A model ready for inference: the EMA weights (never the raw ones when EMA exists), eval mode, on device."""
    ckpt = read_checkpoint(path, "cpu")
    model = _build_model(stored_config(ckpt, path), path)
    return load_weights(model, ckpt, path).to(device).eval()


def load_weights(model: nn.Module, ckpt: Mapping[str, Any], path: str | os.PathLike,
                 new_parts: tuple[str, ...] = ()) -> nn.Module:
    """Put a read checkpoint's EMA weights (its raw ones, with a warning, when it has none) into `model`;
    tensors are cast to the model's dtype (exported fp16 weights load into a float32 model). new_parts: names of
    submodules the checkpoint may lack (e.g. ("move_head",) when fitting a move head to a trained model)."""
    path = Path(path)
    net = _unwrap(model)
    if ckpt.get("ema") is not None:
        _load_state(net, ckpt["ema"], path, "EMA", new_parts)
    elif ckpt.get("model") is not None:
        log.warning("%s holds no EMA weights; loading the raw training weights", path)
        _load_state(net, ckpt["model"], path, "model", new_parts)
    else:
        raise CheckpointError(f"{path}: holds no model weights")
    return model


def export_weights(path_in: str | os.PathLike, path_out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Ship a model: EMA weights (optionally cast, e.g. torch.float16) + config + layout; no optimizer, no RNG."""
    ckpt = read_checkpoint(path_in, "cpu")
    weights = ckpt.get("ema")
    if weights is None:
        log.warning("%s holds no EMA weights; exporting the raw training weights", path_in)
        weights = ckpt["model"]
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    out = {"format_version": FORMAT_VERSION, "kind": "weights", "step": int(ckpt.get("step", 0)),
           "config": ckpt["config"], "layout": ckpt.get("layout", ""), "ema": weights, "model": None}
    return atomic_save(out, path_out)


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare network under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif not isinstance(model, AveragedModel) and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def main(argv: list[str] | None = None) -> int:
    """`python -m model.checkpoint IN OUT [--fp16]`: export a run's EMA weights for shipping."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m model.checkpoint", description=export_weights.__doc__)
    p.add_argument("checkpoint", help="training checkpoint (e.g. runs/default/best.pt)")
    p.add_argument("output", help="weights file to write (e.g. checkpoints/default.pt)")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export_weights(args.checkpoint, args.output, torch.float16 if args.fp16 else None)
    except (OSError, CheckpointError, KeyError) as exc:
        log.error("error: %s: %s", args.checkpoint, str(exc).splitlines()[0])
        return 1
    log.info("wrote %s (%.1f MiB)", out, out.stat().st_size / 2**20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
