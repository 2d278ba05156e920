"""DiT denoiser over mixer curves: noisy curves [B, F, P] + timestep + conditioning -> prediction [B, F, P].

After facebookresearch/DiT `models.py`, with one cross-attention per block for the conditioning tokens.
adaLN-Zero: every residual branch is scaled by a gate regressed from (timestep + pooled conditioning)
by a zero-initialised linear layer, so each block starts as the identity and the network as zero.
Two departures, both for low-dimensional curves: frames are grouped in patches of `patch_size` (DiT's
patchify in 1-D, half the tokens at 2), and the FinalLayer adds a learned, timestep-dependent skip
gain(c) * x_t (a learned c_skip), which lets the blocks skip re-learning the identity: on a toy problem
it cut the steps to fit per-element denoising several-fold.

Frame positions are sinusoids of the *normalised* position in [0, 1] of a frame within the clip (its
valid part when a frame mask is given), so a model trained on 128 frames runs on 64 or 200 frames:
they are the same clip sampled more coarsely or finely, not positions it has never seen.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.config import ModelConfig

if TYPE_CHECKING:
    from model.conditioning import Conditioning


# -- shared building blocks (the conditioning encoder uses them too) ----------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, N, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def frame_positions(n_frames: int, mask: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Normalised positions [B or 1, n_frames] in [0, 1]: frame i -> i / (L - 1), L = valid frames (or all)."""
    index = torch.arange(n_frames, device=device if mask is None else mask.device, dtype=torch.float32)
    length = torch.full((1, 1), float(n_frames), device=index.device) if mask is None else mask.sum(1, keepdim=True)
    return index[None] / (length.float() - 1).clamp_min(1.0)


def sincos_embedding(pos: torch.Tensor, dim: int, max_frames: int) -> torch.Tensor:
    """pos [..., N] in [0, 1] -> [..., N, dim]; frequencies from half a cycle to max_frames/2 cycles per clip."""
    half = dim // 2
    freqs = math.pi * torch.exp(torch.linspace(0.0, math.log(max(max_frames, 2)), half, device=pos.device))
    angles = pos.unsqueeze(-1).float() * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def _safe_key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, N] (True = attend) -> [B, 1, 1, N] for SDPA; an all-padding row attends everywhere instead of NaN."""
    if mask is None:
        return None
    mask = mask | ~mask.any(-1, keepdim=True)
    return mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention (torch SDPA): self-attention when context_dim is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout, self.cross = heads, dropout, context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, heads, M, d] of a cross-attention context [B, M, context_dim] (cacheable)."""
        k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        return k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, N, dim], context [B, M, context_dim] (or its precomputed kv), key_mask [B, M or N] -> [B, N, dim]."""
        if self.cross:
            q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
            k, v = kv if kv is not None else self.context_kv(context)
        else:
            q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_safe_key_mask(key_mask),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- DiT -----------------------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """Scalar diffusion timesteps [B] -> [B, hidden]: sinusoidal frequencies, then a 2-layer MLP (as in DiT)."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_dim))


class DiTBlock(nn.Module):
    """Self-attention over frames, cross-attention to conditioning tokens, MLP; each branch adaLN-Zero modulated."""

    def __init__(self, hidden: int, heads: int, cond_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(hidden, heads, context_dim=cond_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, mlp_ratio, dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 9 * hidden))  # shift, scale, gate x 3

    def forward(self, x: torch.Tensor, c: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None,
                frame_mask: torch.Tensor | None = None, kv: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """x [B, N, H], c [B, H], tokens [B, M, cond_dim], token_mask [B, M], frame_mask [B, N] -> [B, N, H]."""
        (shift1, scale1, gate1, shift2, scale2, gate2,
         shift3, scale3, gate3) = self.adaLN_modulation(c).chunk(9, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), key_mask=frame_mask)
        x = x + gate2.unsqueeze(1) * self.cross(modulate(self.norm2(x), shift2, scale2), tokens, token_mask, kv)
        return x + gate3.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift3, scale3))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a projection to the patch's curve values, plus a learned input skip.

    The skip adds gain(c) * x_t per output channel: a timestep-dependent c_skip (Karras et al. 2022), the
    linear part of any denoiser, so the blocks only learn the rest. All of it starts at zero.
    """

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden + out_dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """x [B, N, hidden], c [B, hidden], x_in [B, N, out_dim] (the noisy input tokens) -> [B, N, out_dim]."""
        shift, scale, gain = self.adaLN_modulation(c).split([x.shape[-1], x.shape[-1], self.out_dim], dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale)) + gain.unsqueeze(1) * x_in


class DiT(nn.Module):
    """denoiser(x_t [B, F, P], t [B], cond: Conditioning, frame_mask [B, F] | None) -> [B, F, P].

    The output is the diffusion target (v or epsilon, per DiffusionConfig). Frames are grouped into
    patches of `patch_size` (one token each, as DiT patchifies images; F need not be a multiple).
    `frame_mask` (True = valid) zeroes padding frames, keeps them out of the self-attention and sets the
    normalised positions over the valid frames, so padding cannot change the valid frames' output.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        p = cfg.patch_size
        self.x_embedder = nn.Linear(p * cfg.n_params, cfg.hidden_dim)
        self.t_embedder = TimestepEmbedder(cfg.hidden_dim)
        self.c_embedder = nn.Linear(cfg.cond_dim, cfg.hidden_dim)  # pooled conditioning -> adaLN input
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.hidden_dim, cfg.n_heads, cfg.cond_dim, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.final_layer = FinalLayer(cfg.hidden_dim, p * cfg.n_params)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: gates (and shifts/scales) start at 0, so every block is the identity and the output is 0.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def prepare(self, cond: Conditioning) -> Conditioning:
        """cond with every block's cross-attention keys/values precomputed (they are the same at every step)."""
        kv = tuple(block.cross.context_kv(cond.tokens) for block in self.blocks)
        return dataclasses.replace(cond, kv=kv)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, n_frames, n_params = x.shape
        if n_params != self.config.n_params:
            raise ValueError(f"curves have {n_params} parameters, the model's layout "
                             f"{self.config.layout!r} has {self.config.n_params}")
        p = self.config.patch_size
        pad = (-n_frames) % p
        mask = frame_mask
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
            x = x * mask[..., None].to(x.dtype)
        if pad:  # repeat the last frame up to a whole patch; the extra frames are cropped from the output
            x = torch.cat([x, x[:, -1:].expand(batch, pad, n_params)], dim=1)
            real = torch.ones(batch, n_frames, dtype=torch.bool, device=x.device) if mask is None else mask
            mask_padded = F.pad(real, (0, pad), value=False)
        else:
            mask_padded = mask
        pos = frame_positions(n_frames + pad, mask_padded, device=x.device)  # per frame, valid frames span [0, 1]
        pos = rearrange(pos, "b (n p) -> b n p", p=p).mean(-1)
        token_mask = None if mask is None else rearrange(mask_padded, "b (n p) -> b n p", p=p).any(-1)

        tokens = rearrange(x, "b (n p) c -> b n (p c)", p=p)
        h = self.x_embedder(tokens)
        h = h + sincos_embedding(pos, self.config.hidden_dim, self.config.n_frames)
        c = self.t_embedder(t) + self.c_embedder(cond.pooled)
        kvs = cond.kv if cond.kv is not None else (None,) * len(self.blocks)
        for block, kv in zip(self.blocks, kvs):
            h = block(h, c, cond.tokens, cond.mask, token_mask, kv)
        out = rearrange(self.final_layer(h, c, tokens), "b n (p c) -> b (n p) c", p=p)
        return out[:, :n_frames]
