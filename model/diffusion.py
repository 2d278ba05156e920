"""Diffusion over mixer curves: cosine schedule, v/epsilon targets, the training loss and a DDIM sampler.

Clean curves u live in model space [0, 1]; the diffusion runs on x = 2u - 1, so both ends of every
control are as reachable as its middle. The sample is mapped back by (x + 1) / 2 and a plain clamp to
[0, 1] at the very end: no sigmoid anywhere (it would squeeze outputs away from 0 and 1).

    model = create_model("small")
    out = model(batch)                      # training: {"loss", "mse", "smooth", "audio", "cond_dropped"}
    curves = model.sample(feats_a, feats_b, n_frames=128, steps=50, generator=torch.Generator().manual_seed(0))

The sampler (`DDIMSampler`) knows nothing about the network: it calls model_fn(x, t) once per step.
`TransitionDiffusion.sample` encodes the conditioning once and, for classifier-free guidance, evaluates
the conditional and the NULL branch in ONE batched denoiser call per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from effects.params import get_layout
from model.conditioning import Conditioning, ConditioningEncoder, TrackFeatures
from model.config import Config, get_config
from model.denoiser import DiT
from model.move import MoveHead


# -- schedule ----------------------------------------------------------------------------------------------------
def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar[t], t = 0..T-1 (Nichol & Dhariwal 2021): betas from f(t) = cos^2((t/T + s) / (1 + s) * pi/2)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def split_prediction(x_t: torch.Tensor, out: torch.Tensor, a, s, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Network output -> (x0, eps), with a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar) (floats or broadcastable)."""
    if prediction == "v":  # v = a * eps - s * x0
        return a * x_t - s * out, s * x_t + a * out
    return (x_t - s * out) / a, out


class NoiseSchedule(nn.Module):
    """Cosine schedule over `timesteps` training steps and the training-side algebra (batched timesteps t [B])."""

    def __init__(self, timesteps: int = 1000, prediction: str = "v"):
        super().__init__()
        self.timesteps, self.prediction = timesteps, prediction
        alphas_cumprod = cosine_alphas_cumprod(timesteps)
        self.alphas_cumprod_host = alphas_cumprod.tolist()  # float64 python values for the sampler (no syncs)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> sqrt(alpha_bar), sqrt(1 - alpha_bar), each [B, 1, 1]."""
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        return ab.sqrt(), (1 - ab).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coefficients(t)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        a, s = self.coefficients(t)
        return a * noise - s * x0

    def predict_x0(self, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return split_prediction(x_t, out, *self.coefficients(t), self.prediction)[0]


def _randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (reproducible), then moved."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


# -- sampler -----------------------------------------------------------------------------------------------------
class DDIMSampler:
    """DDIM (Song et al. 2021) over `steps` of the training timesteps, from T-1 down to 0 ("trailing").

    eta = 0 is deterministic; eta = 1 matches DDPM's posterior variance. x0 predictions are clamped to
    [-1, 1] (the curve range) and eps is re-derived from the clamped x0, which keeps early steps stable.
    """

    def __init__(self, schedule: NoiseSchedule, clip_x0: bool = True):
        self.schedule, self.clip_x0 = schedule, clip_x0

    def timesteps(self, steps: int) -> list[int]:
        steps = max(1, min(steps, self.schedule.timesteps))
        return torch.linspace(self.schedule.timesteps - 1, 0, steps).round().long().tolist()

    def step(self, out: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, eta: float = 0.0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One update x_t -> x_{t_prev} (t_prev = -1: the clean end). Returns (x_prev, x0 estimate)."""
        acp = self.schedule.alphas_cumprod_host
        ab, ab_prev = acp[t], acp[t_prev] if t_prev >= 0 else 1.0
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        x0, eps = split_prediction(x, out, a, s, self.schedule.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a * x0) / s
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) if eta > 0 else 0.0
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * _randn(x.shape, generator, x.device)
        return x_prev, x0

    def sample(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
               steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None, device=None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Run the reverse process from pure noise; model_fn(x [B, F, P], t [B] long) -> output. Returns x0."""
        x = noise.to(device) if noise is not None else _randn(shape, generator, device)
        ts = self.timesteps(steps)
        for i, t in enumerate(ts):
            out = model_fn(x, torch.full((shape[0],), t, device=x.device, dtype=torch.long))
            x, _ = self.step(out, t, ts[i + 1] if i + 1 < len(ts) else -1, x, eta, generator)
        return x  # the last step (t_prev = -1) lands exactly on its (clamped) x0


def median_smooth(curves: torch.Tensor, width: int) -> torch.Tensor:
    """Running median over frames of curves [B, F, P] (odd width; edges replicate-padded).

    Steps and monotone ramps pass unchanged (they are root signals of a median filter), so a fader switch on a
    downbeat keeps its frame; isolated wiggles shorter than width // 2 + 1 frames, the residue of a finite
    number of DDIM steps, go.
    """
    if width <= 1 or curves.shape[1] < width:
        return curves
    half = width // 2
    padded = torch.cat([curves[:, :1].expand(-1, half, -1), curves, curves[:, -1:].expand(-1, half, -1)], dim=1)
    return padded.unfold(1, width, 1).median(dim=-1).values


def tv_smooth(curves: torch.Tensor, weight: float, iterations: int = 300) -> torch.Tensor:
    """Total-variation denoising over frames of curves [B, F, P]: argmin_x 1/2 |x - y|^2 + weight sum_f |x[f+1] - x[f]|
    per curve (FISTA on the dual, differences clipped to [-weight, weight]).

    Wobble whose swing is below about `weight` flattens to a steady value; a step or a ramp keeps its place and
    shape (a step of height h and the plateaus around it move by at most weight / plateau length), so a knob that
    should rest rests, the way a DJ's hand leaves it. weight <= 0 returns the curves as they are.
    """
    if weight <= 0 or curves.shape[1] < 2:
        return curves
    y = curves.float()
    p = torch.zeros_like(y[:, 1:])
    q, t = p.clone(), 1.0

    def primal(dual: torch.Tensor) -> torch.Tensor:  # x = y - D^T dual, D x = x[1:] - x[:-1]
        pad = torch.nn.functional.pad(dual, (0, 0, 1, 1))
        return y + pad[:, 1:] - pad[:, :-1]

    for _ in range(iterations):
        x = primal(q)
        p_next = (q + 0.25 * (x[:, 1:] - x[:, :-1])).clamp(-weight, weight)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        q = p_next + ((t - 1.0) / t_next) * (p_next - p)
        p, t = p_next, t_next
    return primal(p).clamp(0.0, 1.0).to(curves.dtype)


# -- losses ------------------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x [B, F, ...] over frames where mask [B, F] is True (all frames when mask is None)."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * m).sum() / (m.sum() * x[0, 0].numel()).clamp_min(1.0)


def smoothness_penalty(curves: torch.Tensor, mask: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared first + second frame differences of curves [B, F, P] over valid frame pairs/triples.

    weight [B] scales each sample (the training loss passes alpha_bar_t: at high noise the x0 estimate is
    a blur, and for epsilon-prediction it is unbounded, so it must not dominate there). Frame jitter of
    std sigma costs about 8 sigma^2; one 0 -> 1 step in one of P curves about 3 / (F P), so deliberate
    cuts (a bass swap on the downbeat) survive while chatter does not.
    """
    if curves.shape[1] < 3:
        return curves.new_zeros(())
    if weight is not None:
        curves = curves * weight.sqrt().view(-1, 1, 1)
    d1 = curves[:, 1:] - curves[:, :-1]
    d2 = d1[:, 1:] - d1[:, :-1]
    m1 = None if mask is None else mask[:, 1:] & mask[:, :-1]
    m2 = None if m1 is None else m1[:, 1:] & m1[:, :-1]
    return masked_mean(d1.square(), m1) + masked_mean(d2.square(), m2)


class AudioLoss(nn.Module):
    """curves [B, F, P] in [0, 1] -> DifferentiableDJMixer(stems) -> multi-resolution STFT loss vs the target mix."""

    def __init__(self, layout: str = "full", mixer_config=None, fft_sizes=(2048, 1024, 512)):
        super().__init__()
        from effects.losses import MultiResolutionSTFTLoss
        from effects.mixer import DifferentiableDJMixer

        self.layout = layout
        self.mixer = DifferentiableDJMixer(mixer_config)
        self.stft = MultiResolutionSTFTLoss(fft_sizes)

    def forward(self, curves: torch.Tensor, stems_a: torch.Tensor, stems_b: torch.Tensor, target: torch.Tensor,
                bpm: torch.Tensor | None = None) -> torch.Tensor:
        return self.stft(self.mixer(stems_a, stems_b, curves, layout=self.layout, bpm=bpm), target)


def param_loss_weights(layout, weights: Mapping[str, float]) -> torch.Tensor:
    """[P] per-parameter weights of the diffusion loss: `weights` by name, 1 elsewhere, scaled to a mean of 1 (so
    the loss keeps its scale and the learning rate its meaning). Unknown names raise ValueError."""
    unknown = sorted(set(weights) - set(layout.names))
    if unknown:
        raise ValueError(f"train.param_loss_weights: no parameter {unknown} in layout {layout.name!r}")
    w = torch.tensor([float(weights.get(name, 1.0)) for name in layout.names])
    if not w.sum() > 0:
        raise ValueError("train.param_loss_weights: at least one parameter needs a weight above 0")
    return w / w.mean()


# -- the model ---------------------------------------------------------------------------------------------------
class TransitionDiffusion(nn.Module):
    """Conditioning encoder + DiT denoiser + cosine schedule; `forward(batch)` is the training loss.

    batch (a Mapping):
        feats_a, feats_b   TrackFeatures (batch B)
        curves             [B, F, P] clean curves in model space [0, 1] (P = the config's layout)
        mask               [B, F] bool, True = valid frame (optional; padding frames are out of every loss term)
        style              [B] long style label, -1 = none (optional; needs n_styles > 0)
        stems_a, stems_b   [B, 4, 2, N] and target_audio [B, 2, N] (optional, for the audio loss only)
        has_audio          [B] bool: which samples have target audio (optional, default all)
        mix_bpm            [B] or [B, 1] tempo for the mixer's delay (optional, default feats_a.bpm)
    """

    def __init__(self, config: Config | str = "base"):
        super().__init__()
        self.config = cfg = get_config(config) if isinstance(config, str) else config
        self.layout = get_layout(cfg.model.layout)
        self.encoder = ConditioningEncoder(cfg.model)
        self.denoiser = DiT(cfg.model)
        self.move_head = MoveHead(cfg.model.n_styles) if cfg.model.move_head else None
        self.schedule = NoiseSchedule(cfg.diffusion.train_timesteps, cfg.diffusion.prediction)
        self.sampler = DDIMSampler(self.schedule, cfg.diffusion.clip_x0)
        self.register_buffer("param_weights", param_loss_weights(self.layout, cfg.train.param_loss_weights),
                             persistent=False)  # not in checkpoints: the config holds it
        # Built here, not on first use: a submodule added later would differ from the EMA copy's.
        # It holds no parameters and only non-persistent buffers, so checkpoints are unchanged.
        self.audio_loss_fn = AudioLoss(self.layout.name)

    # -- training ------------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                smoothness_weight: float | None = None, audio_weight: float | None = None,
                cond_dropout: float | None = None, style_dropout: float | None = None) -> dict[str, torch.Tensor]:
        """Training loss. Weights and dropout probabilities default to the config (a validation loss as at
        inference: cond_dropout=0, style_dropout=1, i.e. full track conditioning and the style left free).
        Returns {"loss", "mse", "smooth", "audio", "move"} (scalars; "mse" weighted per parameter by
        train.param_loss_weights; "move" the move head's cross-entropy, 0 without one) and "cond_dropped" ([B]
        bool: samples trained with the NULL conditioning, drawn per sample). With train.train_only="move_head"
        only the move head's loss is computed (no random draws; the rest of the model gets no gradient)."""
        cfg, dcfg = self.config, self.config.diffusion
        cond_dropout = dcfg.cond_dropout if cond_dropout is None else cond_dropout
        style_dropout = dcfg.style_dropout if style_dropout is None else style_dropout
        smoothness_weight = cfg.train.smoothness_weight if smoothness_weight is None else smoothness_weight
        audio_weight = cfg.train.audio_loss_weight if audio_weight is None else audio_weight
        curves, mask = batch["curves"], batch.get("mask")
        batch_size, _, n_params = curves.shape
        if n_params != len(self.layout):
            raise ValueError(f"batch curves have {n_params} parameters, layout {self.layout.name!r} has "
                             f"{len(self.layout)}")
        device = curves.device
        mask = None if mask is None else mask.to(device, torch.bool)
        move = curves.new_zeros((), dtype=torch.float32)
        if self.move_head is not None:
            move = self.move_head.loss(batch["feats_a"].to(device), batch["feats_b"].to(device), batch.get("style"),
                                       batch.get("style_forced"))
        if cfg.train.train_only == "move_head":
            if self.move_head is None:
                raise ValueError("train.train_only='move_head' needs a model with model.move_head=True")
            zero = move.new_zeros(())
            return {"loss": move, "mse": zero, "smooth": zero, "audio": zero, "move": move.detach(),
                    "cond_dropped": torch.zeros(batch_size, dtype=torch.bool, device=device)}

        # Every random draw, in a fixed order, from one generator: a resumed run draws the same numbers.
        t = (_rand((batch_size,), generator, device) * self.schedule.timesteps).long().clamp_max(
            self.schedule.timesteps - 1)
        noise = _randn(curves.shape, generator, device)
        drop = _rand((batch_size,), generator, device) < cond_dropout  # per SAMPLE, never per batch
        hide_style = _rand((batch_size,), generator, device) < style_dropout
        if batch.get("style_forced") is not None:  # an imposed recipe is never shown as the music's own choice
            hide_style = hide_style & ~batch["style_forced"].to(device, torch.bool)
        style = batch.get("style")
        if style is not None:
            style = torch.where(hide_style, torch.full_like(style, -1), style.to(device))

        cond = self.encoder(batch["feats_a"], batch["feats_b"], style=style, drop=drop,
                            imposed=batch.get("style_forced"))
        x0 = curves.float() * 2 - 1
        x_t = self.schedule.add_noise(x0, noise, t)
        out = self.denoiser(x_t, t, cond, mask)
        mse = masked_mean((out - self.schedule.target(x0, noise, t)).square() * self.param_weights, mask)

        curves_pred = (self.schedule.predict_x0(x_t, out, t) + 1) / 2  # unclamped: gradients everywhere
        smooth = mse.new_zeros(())
        if smoothness_weight > 0:
            smooth = smoothness_penalty(curves_pred, mask, weight=self.schedule.alphas_cumprod[t])
        audio = mse.new_zeros(())
        if audio_weight > 0 and batch.get("target_audio") is not None:
            audio = self._audio_loss(batch, curves_pred)
        loss = mse + smoothness_weight * smooth + audio_weight * audio + cfg.train.move_loss_weight * move
        return {"loss": loss, "mse": mse.detach(), "smooth": smooth.detach(), "audio": audio.detach(),
                "move": move.detach(), "cond_dropped": drop}

    def loss(self, batch: Mapping[str, Any], **kwargs) -> dict[str, torch.Tensor]:
        """Alias of forward (under DDP call the wrapper, ddp_model(batch), so gradients are synchronised)."""
        return self(batch, **kwargs)

    def _audio_loss(self, batch: Mapping[str, Any], curves_pred: torch.Tensor) -> torch.Tensor:
        has = batch.get("has_audio")
        index = (torch.arange(curves_pred.shape[0], device=curves_pred.device) if has is None
                 else torch.nonzero(has.to(curves_pred.device), as_tuple=False).flatten())
        if index.numel() == 0:
            return curves_pred.new_zeros(())
        bpm = batch.get("mix_bpm", batch["feats_a"].bpm)
        pick = lambda x: x.index_select(0, index.to(x.device))  # noqa: E731
        return self.audio_loss_fn(pick(curves_pred), pick(batch["stems_a"]), pick(batch["stems_b"]),
                                  pick(batch["target_audio"]), bpm=pick(bpm.reshape(-1)))

    # -- inference -----------------------------------------------------------------------------------------------
    def encode(self, feats_a: TrackFeatures, feats_b: TrackFeatures, style=None, imposed=None) -> Conditioning:
        return self.encoder(feats_a, feats_b, style=style, imposed=imposed)

    @torch.no_grad()
    def move_probs(self, feats_a: TrackFeatures, feats_b: TrackFeatures) -> torch.Tensor | None:
        """[B, n_styles] the move head's probability of each style label, or None without a move head."""
        if self.move_head is None:
            return None
        was_training = self.training
        self.eval()
        try:
            return self.move_head(feats_a.to(self._device()), feats_b.to(self._device())).float().softmax(-1)
        finally:
            self.train(was_training)

    @staticmethod
    def candidate_styles(probs: torch.Tensor | None, k: int) -> torch.Tensor | None:
        """[B * k] style labels for k candidates per pair (repeat_interleave order) from move_probs' [B, n_styles],
        or None for None (no move head).

        The first ceil(k / 2) candidates of a pair play the head's move, the rest leave the move to the sampler
        (-1): one sample is the head's choice, and a ranking of k (--candidates) still has other moves to pick
        from where the head is wrong."""
        if probs is None:
            return None
        head = probs.argmax(-1).cpu()
        free = torch.arange(k) >= (k + 1) // 2
        return torch.where(free[None, :], torch.full((len(head), k), -1, dtype=torch.long), head[:, None]).reshape(-1)

    @torch.no_grad()
    def sample(self, feats_a: TrackFeatures, feats_b: TrackFeatures, n_frames: int | None = None,
               steps: int | None = None, eta: float | None = None, guidance_scale: float | None = None,
               generator: torch.Generator | None = None, style=None, noise: torch.Tensor | None = None,
               median_frames: int | None = None, tv_weight: float | None = None, imposed=False) -> torch.Tensor:
        """Curves [B, n_frames, P] in [0, 1] for each pair (defaults from the config). Runs in eval mode.

        The conditioning is encoded once; each DDIM step is one denoiser call on [x; x] with [cond; null]
        (guidance_scale == 1 skips the NULL half). Same generator seed -> same curves. The result goes through
        median_smooth (config.diffusion.median_frames) then tv_smooth (config.diffusion.tv_weight); with 1 and 0
        it is the raw DDIM output. style: labels [B] or [1], -1 = left free; None = the move head's choice where
        the model has one (model.move_head), else free. imposed: the labels are asked for, not the music's own
        (bool or [B]; their own tokens with model.imposed_styles), e.g. a user's --style; never the head's choice.
        """
        dcfg = self.config.diffusion
        if style is None and self.move_head is not None:
            style, imposed = self.move_probs(feats_a, feats_b).argmax(-1), False
        n_frames = n_frames or self.config.model.n_frames
        steps = steps or dcfg.inference_steps
        eta = dcfg.eta if eta is None else eta
        scale = dcfg.guidance_scale if guidance_scale is None else guidance_scale
        median_frames = dcfg.median_frames if median_frames is None else median_frames
        tv_weight = dcfg.tv_weight if tv_weight is None else tv_weight
        was_training = self.training
        self.eval()
        try:
            cond = self.encode(feats_a.to(self._device()), feats_b.to(self._device()), style, imposed)  # once
            batch = cond.batch_size
            guided = scale != 1.0
            both = Conditioning.cat([cond, self.encoder.null_like(cond)]) if guided else cond
            both = self.denoiser.prepare(both)  # cross-attention keys/values once, not once per step

            def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                if not guided:
                    return self.denoiser(x, t, both)
                out_cond, out_null = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
                return out_null + scale * (out_cond - out_null)

            x0 = self.sampler.sample(model_fn, (batch, n_frames, len(self.layout)), steps, eta, generator,
                                     self._device(), noise)
        finally:
            self.train(was_training)
        return tv_smooth(median_smooth(((x0 + 1) / 2).clamp(0.0, 1.0), median_frames), tv_weight)

    generate = sample  # the published README's name

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def create_model(config: Config | str = "base", **overrides: Any) -> TransitionDiffusion:
    """A fresh model from a Config or a preset name, with optional get_config-style overrides."""
    if isinstance(config, str):
        config = get_config(config, **overrides)
    elif overrides:
        config = config.override({k.replace("__", "."): v for k, v in overrides.items()})
    return TransitionDiffusion(config)
