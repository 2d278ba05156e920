"""Conditioning: two tracks' features -> tokens [B, N, cond_dim] (+ key padding mask) and a pooled vector [B, cond_dim].

    feats = TrackFeatures(stem_mels, structure, beats, downbeats, bpm, key, energy, mask)   # per DESIGN
    cond = ConditioningEncoder(cfg)(feats_a, feats_b, style=None, drop=None)            # Conditioning

Per track: a MelEncoder shared by every stem of both tracks (conv over mel frequency, per frame, plus a
learned stem embedding) and a MetadataEncoder (structure, beats, downbeats, energy per frame; BPM and key
per track) give one token per frame (or per `cond_pool` frames), plus a track embedding (A or B) and the
frame's normalised clip position. A<->B blocks then let A attend to B and B to A. A learned NULL
conditioning replaces the tokens of samples whose conditioning is dropped (classifier-free guidance);
the optional style label has its own learned 'free' token for "no style asked" (and, with
model.imposed_styles, a second token per label for a move that was imposed rather than the music's own).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.config import ModelConfig
from model.denoiser import Attention, Mlp, frame_positions, sincos_embedding

N_STRUCTURE = 6  # intro, verse, chorus, drop, bridge, outro
N_KEYS = 24  # 0..11 major C..B, 12..23 minor C..B (data/keys.py convention)
_TIME_AXIS = {"stem_mels": 3, "structure": 1, "beats": 1, "downbeats": 1, "energy": 1, "mask": 1}


@dataclass
class TrackFeatures:
    """One track's features on the frame grid of its transition window (batched).

    stem_mels [B, 4, n_mels, T] log-mel per stem (drums, bass, vocals, other; any log scale: normalised inside),
    structure [B, T, 6] section one-hot, beats [B, T], downbeats [B, T] (0/1), bpm [B, 1], key [B, 24] one-hot,
    energy [B, T] (RMS, >= 0), mask [B, T] bool (True = valid frame) or None when every frame is valid.
    """

    stem_mels: torch.Tensor
    structure: torch.Tensor
    beats: torch.Tensor
    downbeats: torch.Tensor
    bpm: torch.Tensor
    key: torch.Tensor
    energy: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.stem_mels.shape[0]

    @property
    def n_frames(self) -> int:
        return self.stem_mels.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.stem_mels.device

    def _map(self, fn) -> TrackFeatures:
        return TrackFeatures(**{f.name: None if (v := getattr(self, f.name)) is None else fn(f.name, v)
                                for f in fields(self)})

    def to(self, device=None, dtype: torch.dtype | None = None) -> TrackFeatures:
        """Move every tensor; dtype applies to the floating-point ones (the mask stays bool)."""
        return self._map(lambda _, v: v.to(device, dtype) if dtype is not None and v.is_floating_point()
                         else v.to(device))

    def index_select(self, index: torch.Tensor | Sequence[int]) -> TrackFeatures:
        """Rows `index` of the batch (e.g. the samples whose conditioning is kept)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return self._map(lambda _, v: v.index_select(0, index))

    def repeat_interleave(self, repeats: int) -> TrackFeatures:
        """Each sample `repeats` times in a row (several transitions per pair in one batch)."""
        return self._map(lambda _, v: v.repeat_interleave(repeats, dim=0))

    def validate(self) -> TrackFeatures:
        """Raise a ValueError naming the first field whose shape breaks the contract; returns self."""
        if self.stem_mels.dim() != 4:
            raise ValueError(f"stem_mels must be [B, 4, n_mels, T], got {tuple(self.stem_mels.shape)}")
        b, t = self.batch_size, self.n_frames
        expected = {"structure": (b, t, N_STRUCTURE), "beats": (b, t), "downbeats": (b, t), "bpm": (b, 1),
                    "key": (b, N_KEYS), "energy": (b, t), "mask": (b, t)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"TrackFeatures.{name} must be {list(shape)} (B={b}, T={t}), got {list(value.shape)}")
        if self.mask is not None and self.mask.dtype != torch.bool:
            raise ValueError(f"TrackFeatures.mask must be bool (True = valid), got {self.mask.dtype}")
        return self

    @classmethod
    def cat(cls, items: Sequence[TrackFeatures]) -> TrackFeatures:
        """Concatenate batched features along the batch; shorter windows are zero-padded and masked."""
        if not items:
            raise ValueError("TrackFeatures.cat needs at least one item")
        t_max = max(item.n_frames for item in items)
        if all(item.n_frames == t_max and item.mask is None for item in items):
            return cls(**{f.name: None if f.name == "mask" else torch.cat([getattr(i, f.name) for i in items])
                          for f in fields(cls)})
        padded = []
        for item in items:
            mask = item.mask if item.mask is not None else torch.ones(
                item.batch_size, item.n_frames, dtype=torch.bool, device=item.device)
            item = TrackFeatures(**{**{f.name: getattr(item, f.name) for f in fields(item)}, "mask": mask})
            pad = t_max - item.n_frames
            padded.append(item._map(lambda name, v, pad=pad: _pad_time(v, _TIME_AXIS.get(name), pad)))
        return cls(**{f.name: torch.cat([getattr(i, f.name) for i in padded]) for f in fields(cls)})

    @classmethod
    def stack(cls, items: Sequence[TrackFeatures]) -> TrackFeatures:
        """Batch UNbatched features (stem_mels [4, n_mels, T], bpm [1], key [24], ...), padding to the longest T."""
        return cls.cat([item._map(lambda _, v: v.unsqueeze(0)) for item in items])

    collate = stack

    @classmethod
    def random(cls, batch: int, n_frames: int, n_mels: int = 128, generator: torch.Generator | None = None,
               device=None) -> TrackFeatures:
        """Plausible random features (tests, benchmarks, smoke runs)."""
        def rand(*shape):
            return torch.rand(*shape, generator=generator)

        section = torch.randint(0, N_STRUCTURE, (batch, n_frames), generator=generator)
        beats = (torch.arange(n_frames) % 4 == 0).float().expand(batch, n_frames).clone()
        key = torch.randint(0, N_KEYS, (batch,), generator=generator)
        feats = cls(
            stem_mels=torch.log(rand(batch, 4, n_mels, n_frames) + 1e-3),
            structure=F.one_hot(section, N_STRUCTURE).float(),
            beats=beats,
            downbeats=(torch.arange(n_frames) % 16 == 0).float().expand(batch, n_frames).clone(),
            bpm=80.0 + 100.0 * rand(batch, 1),
            key=F.one_hot(key, N_KEYS).float(),
            energy=rand(batch, n_frames),
        )
        return feats.to(device)


def _pad_time(x: torch.Tensor, axis: int | None, pad: int) -> torch.Tensor:
    """Zero-pad (False for bool) `pad` frames at the end of the time axis (None: not a per-frame field)."""
    if pad == 0 or axis is None:
        return x
    widths = [0, 0] * (x.dim() - 1 - axis) + [0, pad]
    return F.pad(x, widths)


@dataclass
class Conditioning:
    """Encoder output: tokens [B, N, D], pooled [B, D], mask [B, N] (True = valid) or None (all valid).

    kv: the denoiser's per-block cross-attention keys/values of these tokens (DiT.prepare), or None.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor | None = None
    kv: tuple | None = None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def full_mask(self) -> torch.Tensor:
        if self.mask is not None:
            return self.mask
        return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)

    @classmethod
    def cat(cls, items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch (e.g. [cond, null] for one batched guidance forward)."""
        mask = None if all(i.mask is None for i in items) else torch.cat([i.full_mask() for i in items])
        return cls(torch.cat([i.tokens for i in items]), torch.cat([i.pooled for i in items]), mask)

    def index_select(self, index: torch.Tensor) -> Conditioning:
        mask = None if self.mask is None else self.mask.index_select(0, index)
        return Conditioning(self.tokens.index_select(0, index), self.pooled.index_select(0, index), mask)


# -- encoders -------------------------------------------------------------------------------------------------------
def _masked_standardise(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(x - mean) / std per sample over all of x [B, ..., T], statistics over valid frames (mask [B, T]) only."""
    b, t = x.shape[0], x.shape[-1]
    flat = x.reshape(b, -1, t)
    if mask is None:
        var, mean = torch.var_mean(flat.reshape(b, -1), dim=1, correction=0)
        return (x - mean.view(b, *([1] * (x.dim() - 1)))) / (var + 1e-5).sqrt().view(b, *([1] * (x.dim() - 1)))
    m = mask.to(x.dtype)[:, None, :]
    count = (m.sum(-1) * flat.shape[1]).clamp_min(1.0)  # [B, 1]
    mean = (flat * m).sum((1, 2)).view(b, 1) / count
    var = ((flat - mean[..., None]).square() * m).sum((1, 2)).view(b, 1) / count
    out = (flat - mean[..., None]) / (var[..., None] + 1e-5).sqrt() * m
    return out.reshape(x.shape)


class MelEncoder(nn.Module):
    """Log-mel [B, S, n_mels, T] -> per-frame embeddings [B, T, E]; one set of weights for every stem and track.

    Per frame and stem, the spectrum is cut into bands of `band` mel bins; each band is embedded by one
    shared linear map plus a learned band embedding (a patch embedding over frequency), the bands are
    flattened into one vector, tagged with a learned stem embedding, passed through a shared MLP and
    summed over stems. All matmuls, no convolutions: cheap on CPU. Time context comes from the attention
    blocks after it. The input is standardised per track over stems, bins and valid frames, so dB or
    natural-log mels both work and the balance between stems (a silent vocal stem) survives.
    """

    band = 8

    def __init__(self, n_mels: int = 128, n_stems: int = 4, channels: int = 32, embed_dim: int = 256):
        super().__init__()
        n_bands = n_mels // self.band
        self.patch = nn.Linear(self.band, channels)
        self.band_embed = nn.Parameter(torch.randn(n_bands, channels) * 0.02)
        self.proj = nn.Linear(n_bands * channels, embed_dim)
        self.stem_embed = nn.Parameter(torch.randn(n_stems, embed_dim) * 0.02)
        self.mix = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU(),
                                 nn.Linear(embed_dim, embed_dim))

    def forward(self, mels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = _masked_standardise(mels.float(), mask)
        bands = rearrange(x, "b s (n k) t -> b s t n k", k=self.band)
        h = F.gelu(self.patch(bands) + self.band_embed)  # [B, S, T, n_bands, C]
        h = self.proj(h.flatten(-2)) + self.stem_embed[:, None, :]  # [B, S, T, E]
        return self.mix(h).sum(1)  # [B, T, E]


def _camelot_table() -> torch.Tensor:
    """[24, 3]: (sin, cos) of the key's Camelot-wheel angle and a minor flag; relative keys share the angle."""
    rows = []
    for index in range(N_KEYS):
        pc, minor = index % 12, index >= 12
        number = (7 * pc + (5 if minor else 8)) % 12  # C major = 8B, A minor = 8A, one fifth = one step
        angle = 2 * math.pi * number / 12
        rows.append([math.sin(angle), math.cos(angle), float(minor)])
    return torch.tensor(rows)


class MetadataEncoder(nn.Module):
    """Structure, beats, downbeats, energy per frame + BPM and key per track -> per-frame tokens [B, T, D].

    BPM enters as b = log2(bpm / 120) and a few of its harmonics (half/double tempo sit one unit apart);
    the key as its one-hot and its Camelot-wheel angle (compatibility is wheel distance).
    """

    n_frame_features = N_STRUCTURE + 5  # + beats, downbeats, relative energy, log energy, valid
    n_bpm_features = 9

    def __init__(self, dim: int):
        super().__init__()
        self.frame = nn.Linear(self.n_frame_features, dim)
        self.bpm = nn.Sequential(nn.Linear(self.n_bpm_features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.key = nn.Linear(N_KEYS + 3, dim)
        self.register_buffer("camelot", _camelot_table(), persistent=False)

    def forward(self, feats: TrackFeatures) -> torch.Tensor:
        valid = feats.mask.float() if feats.mask is not None else torch.ones_like(feats.energy)
        energy = feats.energy.float().clamp_min(0.0) * valid
        peak = energy.amax(1, keepdim=True).clamp_min(1e-6)
        frame = torch.cat([feats.structure.float(), feats.beats.float()[..., None], feats.downbeats.float()[..., None],
                           (energy / peak)[..., None], (torch.log10(energy + 1e-4) / 4)[..., None],
                           valid[..., None]], dim=-1)
        b = torch.log2(feats.bpm.float().clamp_min(1.0) / 120.0)  # [B, 1]
        k = torch.arange(1, 5, device=b.device, dtype=b.dtype) * math.pi
        bpm = torch.cat([b, torch.sin(b * k), torch.cos(b * k)], dim=-1)
        key = feats.key.float()
        key = torch.cat([key, key @ self.camelot], dim=-1)
        return self.frame(frame) + (self.bpm(bpm) + self.key(key)).unsqueeze(1)


class TrackCrossBlock(nn.Module):
    """Self-attention within a track, cross-attention to the other track, MLP (pre-LN, shared by A and B)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2, self.norm_other, self.norm3 = (nn.LayerNorm(dim) for _ in range(4))
        self.attn = Attention(dim, heads, dropout=dropout)
        self.cross = Attention(dim, heads, context_dim=dim, dropout=dropout)
        self.mlp = Mlp(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor, mask: torch.Tensor | None,
                other_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask=mask)
        x = x + self.cross(self.norm2(x), self.norm_other(other), other_mask)
        return x + self.mlp(self.norm3(x))


class ConditioningEncoder(nn.Module):
    """encoder(feats_a, feats_b, style=None, drop=None, imposed=None) -> Conditioning(tokens [B, 2N, D], pooled
    [B, D], mask).

    style [B] long: a label in 0..n_styles-1, or -1 for none (the learned 'free' token). drop [B] bool:
    samples whose conditioning is replaced by the learned NULL conditioning (tokens, pooled and style).
    imposed [B] bool (or one bool): the label was imposed (an asked-for move), not the music's own; with
    model.imposed_styles such labels use their own tokens, without it the flag changes nothing.
    Style rows: 0..n-1 the music's own moves, n 'free', n+1..2n imposed moves (old checkpoints are the prefix).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.cond_dim
        self.mel = MelEncoder(cfg.n_mels, cfg.n_stems, cfg.mel_channels, cfg.audio_embed_dim)
        self.audio_proj = nn.Linear(cfg.audio_embed_dim, d)
        self.meta = MetadataEncoder(d)
        self.track_embed = nn.Parameter(torch.randn(2, d) * 0.02)  # A, B
        self.blocks = nn.ModuleList(TrackCrossBlock(d, cfg.cond_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.cond_layers))
        self.norm = nn.LayerNorm(d)
        self.pool = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.null_tokens = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(d) * 0.02)
        rows = cfg.n_styles + 1 + (cfg.n_styles if cfg.imposed_styles else 0)
        self.style_embed = nn.Embedding(rows, d) if cfg.n_styles else None
        if self.style_embed is not None:
            nn.init.normal_(self.style_embed.weight, std=0.02)

    def encode_track(self, feats: TrackFeatures, which: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One track -> tokens [B, T / cond_pool, D] and their mask (None if all valid)."""
        mask = feats.mask
        h = self.audio_proj(self.mel(feats.stem_mels, mask)) + self.meta(feats)
        h = h + self.track_embed[which] + sincos_embedding(frame_positions(feats.n_frames, mask, feats.device),
                                                           h.shape[-1], self.config.n_frames)
        pool = self.config.cond_pool
        if pool > 1:  # masked average over groups of `pool` frames; a token is valid if any of its frames is
            t = feats.n_frames
            w = (mask.float() if mask is not None else torch.ones(h.shape[:2], device=h.device))[..., None]
            pad = (-t) % pool
            h, w = F.pad(h * w, (0, 0, 0, pad)), F.pad(w, (0, 0, 0, pad))
            h = rearrange(h, "b (n p) d -> b n p d", p=pool).sum(2)
            w = rearrange(w, "b (n p) d -> b n p d", p=pool).sum(2)
            h = h / w.clamp_min(1.0)
            mask = (w[..., 0] > 0) if mask is not None else None
        return h, mask

    def forward(self, feats_a: TrackFeatures, feats_b: TrackFeatures, style: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, imposed: torch.Tensor | bool | None = None) -> Conditioning:
        if feats_a.batch_size != feats_b.batch_size:
            raise ValueError(f"track A has batch {feats_a.batch_size}, track B {feats_b.batch_size}")
        a, mask_a = self.encode_track(feats_a, 0)
        b, mask_b = self.encode_track(feats_b, 1)
        batch, n = a.shape[0], max(a.shape[1], b.shape[1])
        if a.shape[1] != b.shape[1] or (mask_a is None) != (mask_b is None):  # pad to a common length
            masks = []
            for h, m in ((a, mask_a), (b, mask_b)):
                m = m if m is not None else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
                masks.append(F.pad(m, (0, n - h.shape[1]), value=False))
            a, b = (F.pad(h, (0, 0, 0, n - h.shape[1])) for h in (a, b))
            mask_a, mask_b = masks
        # A attends to B and B to A in one batched pass: [A; B] against [B; A].
        x = torch.cat([a, b])
        mask = None if mask_a is None else torch.cat([mask_a, mask_b])
        other_mask = None if mask_a is None else torch.cat([mask_b, mask_a])
        for block in self.blocks:
            x = block(x, torch.cat([x[batch:], x[:batch]]), mask, other_mask)
        x = self.norm(x)
        tokens = torch.cat([x[:batch], x[batch:]], dim=1)  # [B, 2n, D]
        mask = None if mask_a is None else torch.cat([mask_a, mask_b], dim=1)
        weights = mask.float()[..., None] if mask is not None else torch.ones_like(tokens[..., :1])
        pooled = self.pool((tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0))
        cond = Conditioning(tokens, pooled, mask)
        if drop is not None:
            cond = self.drop(cond, drop)
        return self._add_style(cond, style, drop, imposed)

    def null_like(self, cond: Conditioning) -> Conditioning:
        """The NULL conditioning with cond's batch size and token count (the unconditional branch of CFG)."""
        batch, n, d = cond.tokens.shape
        null = Conditioning(self.null_tokens.expand(batch, n, d), self.null_pooled.expand(batch, d), None)
        return self._add_style(null, None, None)

    def drop(self, cond: Conditioning, drop: torch.Tensor) -> Conditioning:
        """Replace the samples where drop [B] is True by the NULL conditioning (per sample, not per batch)."""
        drop = drop.to(cond.tokens.device, torch.bool)
        tokens = torch.where(drop[:, None, None], self.null_tokens.to(cond.tokens.dtype), cond.tokens)
        pooled = torch.where(drop[:, None], self.null_pooled.to(cond.pooled.dtype), cond.pooled)
        mask = None if cond.mask is None else cond.mask | drop[:, None]
        return Conditioning(tokens, pooled, mask)

    def _add_style(self, cond: Conditioning, style: torch.Tensor | None, drop: torch.Tensor | None,
                   imposed: torch.Tensor | bool | None = None) -> Conditioning:
        if self.style_embed is None:
            if style is not None:
                raise ValueError("a style label was given but the model has n_styles=0")
            return cond
        free = self.config.n_styles
        if style is None:
            style = torch.full((cond.batch_size,), free, dtype=torch.long, device=cond.pooled.device)
        else:
            style = torch.as_tensor(style, dtype=torch.long, device=cond.pooled.device).reshape(-1)
            if style.numel() == 1 and cond.batch_size > 1:
                style = style.expand(cond.batch_size)
            if bool(((style < -1) | (style >= free)).any()):
                raise ValueError(f"style labels must be in 0..{free - 1} or -1 (none), got {style.tolist()}")
            own = style
            style = torch.where(style < 0, torch.full_like(style, free), style)
            if imposed is not None and self.config.imposed_styles:
                imposed = torch.as_tensor(imposed, dtype=torch.bool, device=style.device).reshape(-1)
                style = torch.where(imposed.expand_as(style) & (own >= 0), own + free + 1, style)
        if drop is not None:  # a dropped sample is fully unconditional: no style either
            style = torch.where(drop.to(style.device), torch.full_like(style, free), style)
        return Conditioning(cond.tokens, cond.pooled + self.style_embed(style), cond.mask)
