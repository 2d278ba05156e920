"""Analysis by synthesis: find the mixer curves that reproduce a target mix, by gradient descent.

This is how a real DJ mix excerpt gets parameter labels: the mixer is differentiable, so Adam on
the curves (through the same mixer that renders the training data) recovers what the DJ did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from effects.losses import MultiResolutionSTFTLoss, snr_db
from effects.mixer import BpmLike, DifferentiableDJMixer
from effects.params import ParamLayout, get_layout

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    curves: torch.Tensor  # [B, F, P] model space, detached
    losses: list[float] = field(default_factory=list)
    snr_db: float = float("nan")  # rendition against the target
    stft_distance: float = float("nan")  # the spectral loss alone (no penalties) of the final rendition


def tie_stems(layout: str | ParamLayout = "full") -> torch.Tensor:
    """[P] group index per column that moves each per-stem control of a track as one (a DJ's channel EQ,
    filter and fader act on the whole track); track and global controls keep a group of their own."""
    layout = get_layout(layout)
    groups: dict[str, int] = {}
    keys = [f"{p.track}.{p.control}" if p.stem is not None else p.name for p in layout.params]
    return torch.tensor([groups.setdefault(k, len(groups)) for k in keys])


def monotone_faders(layout: str | ParamLayout = "full") -> torch.Tensor:
    """[P] direction per column for the fader-monotonicity penalty: A's faders only close (-1), B's only
    open and the crossfader only travels towards B (+1), everything else free (0)."""
    layout = get_layout(layout)
    direction = torch.zeros(len(layout))
    for i, p in enumerate(layout.params):
        if p.control == "gain":
            direction[i] = -1.0 if p.track == "a" else 1.0
        elif p.control == "crossfader":
            direction[i] = 1.0
    return direction


def fit_curves(
    mixer: DifferentiableDJMixer,
    stems_a: torch.Tensor,
    stems_b: torch.Tensor,
    target: torch.Tensor,
    n_frames: int,
    layout: str | ParamLayout = "full",
    init: torch.Tensor | None = None,
    bpm: BpmLike = None,
    steps: int = 300,
    lr: float = 0.03,
    smoothness: float = 0.0,
    waveform_weight: float = 1.0,
    loss_fn: torch.nn.Module | None = None,
    progress: bool = False,
    monotone: torch.Tensor | None = None,
    monotonicity: float = 0.0,
    tie: torch.Tensor | None = None,
) -> FitResult:
    """Adam on the curves so that mixer(stems_a, stems_b, curves) matches target [B, 2, N].

    The loss is a multi-resolution STFT loss plus `waveform_weight` times the relative waveform
    error (the mixer is phase-exact, so the waveform term sharpens the final fit), plus
    `smoothness` times the mean squared first difference of the curves, plus `monotonicity` times
    the squared moves against `monotone` ([P] directions: +1 may only rise over the frames, -1 only
    fall, 0 free; see `monotone_faders`), summed over frames and averaged over those columns.
    `tie` ([P] group indices, see `tie_stems`; -1 = frozen at the start value) makes columns of one
    group a single free curve, started at the group's mean. Starts from `init` (model space
    [B, F, P]) or the neutral curves.
    """
    layout = get_layout(layout)
    batch = stems_a.shape[0]
    start = (init.detach().clone() if init is not None else layout.neutral_curves(n_frames, batch, stems_a.device))
    expand = _tied(start, tie)
    free = expand.free.requires_grad_(True)
    loss_fn = loss_fn or MultiResolutionSTFTLoss().to(stems_a.device)
    optimizer = torch.optim.Adam([free], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.05)
    target_energy = target.square().mean().clamp_min(1e-12)
    direction = None if monotone is None or not monotonicity else monotone.to(stems_a.device, torch.float32)
    losses = []
    for _ in tqdm(range(steps), desc="fitting curves", disable=not progress, leave=False):
        optimizer.zero_grad(set_to_none=True)
        curves = expand(free)
        rendition = mixer(stems_a, stems_b, curves, layout=layout, bpm=bpm)
        loss = loss_fn(rendition, target)
        if waveform_weight:
            loss = loss + waveform_weight * (rendition - target).square().mean() / target_energy
        if smoothness and curves.shape[1] > 1:
            loss = loss + smoothness * curves.diff(dim=1).square().mean()
        if direction is not None and curves.shape[1] > 1 and direction.any():
            against = torch.relu(-curves.diff(dim=1) * direction)[..., direction != 0]
            loss = loss + monotonicity * against.square().sum(dim=1).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            free.clamp_(0.0, 1.0)  # stay where the mixer's mapping is defined
        losses.append(loss.item())
    with torch.no_grad():
        curves = expand(free)
        final = mixer(stems_a, stems_b, curves, layout=layout, bpm=bpm)
        distance = float(loss_fn(final, target))
    result = FitResult(curves.detach(), losses, snr_db(final, target), distance)
    log.info("curve fit: loss %.4f -> %.4f, SNR %.1f dB", losses[0], losses[-1], result.snr_db)
    return result


class _tied:
    """free [B, F, G] <-> curves [B, F, P]: column j follows group tie[j]; tie[j] = -1 keeps the start value."""

    def __init__(self, start: torch.Tensor, tie: torch.Tensor | None):
        self.start, self.tie = start, tie
        if tie is None:
            self.free = start.clone()
            return
        tie = tie.to(start.device)
        n_groups = int(tie.max()) + 1 if (tie >= 0).any() else 0
        sums = start.new_zeros(*start.shape[:-1], n_groups)
        counts = start.new_zeros(n_groups)
        live = tie >= 0
        sums.index_add_(-1, tie[live], start[..., live])
        counts.index_add_(0, tie[live], torch.ones_like(tie[live], dtype=start.dtype))
        self.free = sums / counts.clamp_min(1)
        self.index, self.live = tie.clamp_min(0), live

    def __call__(self, free: torch.Tensor) -> torch.Tensor:
        if self.tie is None:
            return free
        return torch.where(self.live, free[..., self.index], self.start)
