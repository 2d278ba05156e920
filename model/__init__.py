"""Conditional diffusion over DJ mixer curves: a DiT denoiser, DDIM with classifier-free guidance, checkpoints.

    from model import TrackFeatures, create_model, load_model
    model = create_model("small")                                  # or load_model("model.pt", "cuda") (EMA)
    curves = model.sample(feats_a, feats_b, n_frames=128, generator=torch.Generator().manual_seed(0))
    # curves [B, 128, P] in [0, 1]; model.layout names the P columns; effects.mixer renders them
"""

from model.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_mismatches,
    create_ema,
    export_weights,
    load_checkpoint,
    load_model,
    load_weights,
    save_checkpoint,
)
from model.conditioning import (
    Conditioning,
    ConditioningEncoder,
    MelEncoder,
    MetadataEncoder,
    TrackFeatures,
)
from model.config import (
    Config,
    DiffusionConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_config,
)
from model.denoiser import DiT, DiTBlock, FinalLayer, TimestepEmbedder
from model.diffusion import (
    AudioLoss,
    DDIMSampler,
    NoiseSchedule,
    TransitionDiffusion,
    create_model,
    smoothness_penalty,
)

__all__ = [
    "AudioLoss", "Checkpoint", "CheckpointError", "Conditioning", "ConditioningEncoder", "Config", "DDIMSampler",
    "DiT", "DiTBlock", "DiffusionConfig", "FinalLayer", "MelEncoder", "MetadataEncoder", "ModelConfig",
    "NoiseSchedule", "TimestepEmbedder", "TrackFeatures", "TrainConfig", "TransitionDiffusion", "apply_overrides",
    "config_from_dict", "config_mismatches", "config_to_dict", "create_ema", "create_model", "export_weights",
    "get_config", "load_checkpoint", "load_model", "load_weights", "save_checkpoint", "smoothness_penalty",
]
