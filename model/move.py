"""The move head: which transition move (a style label) the two clips call for, from their levels.

A DJ picks the move before shaping it: A still singing late in the blend calls for an echo out, A holding
its level for a filter sweep, an outro into an intro for a bass swap. The diffusion model can learn that
choice through its curves, but there it is one faint signal among 58 x F regression targets, and its
samples play the wrong move on some pairs. This small classifier learns the same choice directly, with
cross-entropy on the pairs whose label is the music's own (never an imposed `--style`); at inference its
argmax becomes the style the denoiser is conditioned on, so the sampler's noise varies the details, not the
move. It reads levels, not timbre: per frame, each stem's log power, the mix's log energy and where the
track has audio, for A and B.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.conditioning import TrackFeatures

LEVEL_CHANNELS = 6  # per track: 4 stem log powers, mix log energy, validity mask
_POSITIONS = 32  # the head sees the clip at this many positions, whatever its frame count


def level_features(feats: TrackFeatures) -> torch.Tensor:
    """[B, 6, F] per-frame levels of one track: each stem's log power (natural log, /10), the mix's log energy
    (/10) and the validity mask (1 where the track has audio in the clip)."""
    stems = torch.logsumexp(feats.stem_mels.float(), dim=2)  # [B, 4, F]: sum of mel powers, in log
    energy = torch.log(feats.energy.float().square() + 1e-10)[:, None]
    mask = (feats.mask if feats.mask is not None
            else torch.ones(feats.energy.shape, dtype=torch.bool, device=feats.energy.device))[:, None].float()
    return torch.cat([stems / 10, energy / 10, mask], dim=1)


class MoveHead(nn.Module):
    """TrackFeatures of A and B -> logits [B, n_styles] over the style labels (dataset.STYLE_LABELS order).

    Three 1-D convolutions over the 12 level channels of both tracks (two of them strided), average-pooled
    to 32 positions (where in the clip a level changes is the point), then a two-layer MLP.
    """

    def __init__(self, n_styles: int, channels: int = 32, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2 * LEVEL_CHANNELS, channels, 5, padding=2), nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2), nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2), nn.GELU(),
            nn.AdaptiveAvgPool1d(_POSITIONS), nn.Flatten(),
            nn.Linear(channels * _POSITIONS, hidden), nn.GELU(), nn.Linear(hidden, n_styles))

    def forward(self, feats_a: TrackFeatures, feats_b: TrackFeatures) -> torch.Tensor:
        x = torch.cat([level_features(feats_a), level_features(feats_b)], dim=1)
        return self.net(x)

    def loss(self, feats_a: TrackFeatures, feats_b: TrackFeatures, style: torch.Tensor | None,
             forced: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy on the samples whose style [B] is the music's own: labelled (>= 0) and not imposed
        (forced [B] bool). Zero (with a gradient path) when no sample qualifies."""
        logits = self(feats_a, feats_b)
        if style is None:
            return logits.sum() * 0.0
        keep = style.to(logits.device) >= 0
        if forced is not None:
            keep = keep & ~forced.to(logits.device, torch.bool)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep], style.to(logits.device)[keep].long())
