"""Configuration: plain dataclasses, named presets, exact round trips through plain dicts.

    cfg = get_config("small")                                  # Config(model, diffusion, train)
    cfg = cfg.override({"model.hidden_dim": 192, "train.lr": 3e-4})
    cfg = apply_overrides(cfg, ["model.n_layers=8"])           # CLI strings, parsed by field type
    d = config_to_dict(cfg); assert config_from_dict(d) == cfg  # saved with every run and checkpoint

Presets: `tiny` (tests), `small` (a few million parameters, trainable on a CPU) and `base`
(about 12 M parameters, the published size).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from effects.params import get_layout


class _Replace:
    """`.replace(**changes)` returning a validated copy (dataclasses.replace with a clear error)."""

    def replace(self, **changes: Any):
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} field(s) {unknown}; expected some of {sorted(names)}")
        changes = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(self, k), tuple) else v
                   for k, v in changes.items()}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelConfig(_Replace):
    """Network shapes. Every field except `dropout` fixes the architecture (checkpoints must match it)."""

    n_mels: int = 128  # mel bins of the stem spectrograms
    n_stems: int = 4  # drums, bass, vocals, other
    mel_channels: int = 32  # channels per 8-bin mel band in the mel encoder
    audio_embed_dim: int = 256  # per-frame, per-stem mel embedding
    cond_dim: int = 256  # conditioning tokens and pooled vector
    cond_layers: int = 2  # A<->B cross-attention blocks
    cond_heads: int = 4
    cond_pool: int = 2  # average this many feature frames into one conditioning token
    hidden_dim: int = 256  # denoiser width
    n_layers: int = 6  # DiT blocks
    n_heads: int = 8
    mlp_ratio: float = 4.0
    patch_size: int = 2  # curve frames per denoiser token (DiT-style patches; halves the cost at 2)
    n_frames: int = 128  # default number of curve frames (any other count works too)
    layout: str = "full"  # effects.params layout name; sets n_params
    n_styles: int = 0  # optional transition-style labels (0 = no style embedding)
    move_head: bool = False  # a move classifier (model/move.py) picks the style when none is given; needs n_styles
    # Imposed labels (a --style-share pair's recipe, a user's --style) get tokens of their own, apart from the
    # music's own move: "this move, any details" vs "the move this music calls for, its typical details".
    imposed_styles: bool = False
    dropout: float = 0.0

    @property
    def n_params(self) -> int:
        return len(get_layout(self.layout))

    def __post_init__(self):
        get_layout(self.layout)  # unknown layout names fail here, with the list of known ones
        for name in ("hidden_dim", "cond_dim"):
            heads = self.n_heads if name == "hidden_dim" else self.cond_heads
            if getattr(self, name) % heads or getattr(self, name) % 2:
                raise ValueError(f"{name}={getattr(self, name)} must be even and divisible by its heads ({heads})")
        if self.n_mels % 8:
            raise ValueError(f"n_mels={self.n_mels} must be a multiple of 8 (the mel encoder's bands)")
        sizes = (self.n_layers, self.cond_pool, self.n_frames, self.patch_size)
        if min(sizes) < 1 or self.cond_layers < 0 or self.n_styles < 0:
            raise ValueError("n_layers, cond_pool, n_frames, patch_size must be >= 1; cond_layers, n_styles >= 0")
        if self.move_head and not self.n_styles:
            raise ValueError("move_head=True needs style labels to choose from (n_styles > 0)")
        if self.imposed_styles and not self.n_styles:
            raise ValueError("imposed_styles=True needs style labels (n_styles > 0)")


@dataclass(frozen=True)
class DiffusionConfig(_Replace):
    """Noise schedule, prediction target, sampler and guidance defaults.

    "v" is the default: with the cosine schedule alpha_bar(T-1) is ~0, so at the first DDIM steps only a
    v-model can state x0 (an epsilon-model's x0 = (x_t - s eps) / a divides by ~0 and leans on later steps).
    """

    train_timesteps: int = 1000
    schedule: str = "cosine"  # Nichol & Dhariwal 2021
    prediction: str = "v"  # "v" or "epsilon"
    inference_steps: int = 50  # DDIM steps
    eta: float = 0.0  # 0 = deterministic DDIM, 1 = DDPM-like
    guidance_scale: float = 2.0  # classifier-free guidance; 1 = conditional only
    cond_dropout: float = 0.1  # per-sample probability of training with the null conditioning
    style_dropout: float = 0.3  # per-sample probability of hiding the style label ('free' token)
    clip_x0: bool = True  # clamp x0 predictions to [-1, 1] inside DDIM
    median_frames: int = 5  # odd running-median width applied to sampled curves (1 = off); see median_smooth
    tv_weight: float = 0.01  # total-variation denoising of sampled curves after the median (0 = off); see tv_smooth

    def __post_init__(self):
        if self.prediction not in ("v", "epsilon"):
            raise ValueError(f"prediction must be 'v' or 'epsilon', got {self.prediction!r}")
        if self.schedule != "cosine":
            raise ValueError(f"schedule must be 'cosine', got {self.schedule!r}")
        if not (0.0 <= self.cond_dropout <= 1.0 and 0.0 <= self.style_dropout <= 1.0):
            raise ValueError("cond_dropout and style_dropout must be probabilities")
        if self.median_frames < 1 or self.median_frames % 2 == 0:
            raise ValueError(f"median_frames must be an odd number >= 1, got {self.median_frames}")
        if not self.tv_weight >= 0.0:
            raise ValueError(f"tv_weight must be >= 0, got {self.tv_weight}")
        if self.train_timesteps < 2 or self.inference_steps < 1:
            raise ValueError("train_timesteps must be >= 2 and inference_steps >= 1")


@dataclass(frozen=True)
class TrainConfig(_Replace):
    """Optimisation. train.py reads these; the model only needs the loss weights."""

    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    steps: int = 200_000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    smoothness_weight: float = 0.1  # first/second differences of the predicted clean curves (see smoothness_penalty)
    # Diffusion-loss weight per parameter name (others 1; renormalised to a mean of 1 over the layout). Model-space
    # MSE weighs every knob alike, so a +6 dB master ride over a few frames (0.19 of the range) is near free to miss
    # although the listener hears it first: {"master_gain": 8} asks for it.
    param_loss_weights: dict[str, float] = field(default_factory=dict)
    audio_loss_weight: float = 0.0  # multi-resolution STFT of the rendered mix (0 = off; costly)
    move_loss_weight: float = 1.0  # cross-entropy of the move head (model.move_head), added to the diffusion loss
    # "" trains everything; "move_head" fits only the move head, every other weight frozen and the diffusion loss
    # not computed (a head added to a trained model with --init: the model's curves stay bit for bit the same).
    train_only: str = ""
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 5000
    num_workers: int = 2

    def __post_init__(self):
        if self.train_only not in ("", "move_head"):
            raise ValueError(f"train_only must be '' or 'move_head', got {self.train_only!r}")
        weights = self.param_loss_weights
        if not isinstance(weights, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                for k, v in weights.items()):
            raise ValueError(f"param_loss_weights must map parameter names to finite weights >= 0, got {weights!r}")


@dataclass(frozen=True)
class Config(_Replace):
    """Everything a run needs; saved as a plain dict with every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "base"

    def override(self, changes: Mapping[str, Any]) -> Config:
        """Copy with dotted-key changes, e.g. {"model.hidden_dim": 192, "diffusion.prediction": "epsilon"}."""
        parts: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in changes.items():
            section, _, name = key.partition(".")
            if not name:
                top[section] = value
            elif section in ("model", "diffusion", "train"):
                parts.setdefault(section, {})[name] = value
            else:
                raise ValueError(f"unknown config section {section!r} in {key!r}; expected model, diffusion or train")
        new = {section: getattr(self, section).replace(**kw) for section, kw in parts.items()}
        return self.replace(**new, **top)


_TINY = dict(mel_channels=8, audio_embed_dim=32, cond_dim=32, cond_layers=1, cond_heads=2, hidden_dim=128,
             n_layers=2, n_heads=4, mlp_ratio=2.0, n_frames=32)
_SMALL = dict(mel_channels=16, audio_embed_dim=128, cond_dim=128, cond_layers=1, cond_heads=4, hidden_dim=192,
              n_layers=4, n_heads=6)
_BASE: dict[str, Any] = {}  # the ModelConfig defaults: 6 blocks of width 256

PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # name: (model fields, train fields)
    "tiny": (_TINY, dict(batch_size=8, lr=1e-3, warmup_steps=10, steps=200, ema_decay=0.99)),
    "small": (_SMALL, dict(batch_size=16, lr=3e-4, warmup_steps=500, steps=50_000, ema_decay=0.999)),
    "base": (_BASE, {}),
}


def get_config(name: str = "base", **overrides: Any) -> Config:
    """A preset by name ('tiny', 'small', 'base'), with optional dotted overrides (model__hidden_dim=...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; expected one of {sorted(PRESETS)}")
    model_kw, train_kw = PRESETS[name]
    cfg = Config(model=ModelConfig(**model_kw), diffusion=DiffusionConfig(), train=TrainConfig(**train_kw), name=name)
    return cfg.override({k.replace("__", "."): v for k, v in overrides.items()}) if overrides else cfg


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (str, int, float, bool, list) that JSON and torch.load(weights_only=True) read."""
    def plain(section) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v for f in fields(section)}

    return {"name": config.name, "model": plain(config.model), "diffusion": plain(config.diffusion),
            "train": plain(config.train)}


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of config_to_dict; missing fields take their defaults, unknown fields are an error."""
    def build(cls, values: Mapping[str, Any] | None):
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}")
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(value)
        return cls(**values)

    return Config(model=build(ModelConfig, data.get("model")), diffusion=build(DiffusionConfig, data.get("diffusion")),
                  train=build(TrainConfig, data.get("train")), name=data.get("name", "custom"))


def apply_overrides(config: Config, items: Iterable[str]) -> Config:
    """CLI overrides 'section.field=value'; the value is parsed as JSON when it can be, else kept as a string."""
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like section.field=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        changes[key.strip()] = value
    return config.override(changes)
