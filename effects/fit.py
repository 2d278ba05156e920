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
) -> FitResult:
    """Adam on the curves so that mixer(stems_a, stems_b, curves) matches target [B, 2, N].

    The loss is a multi-resolution STFT loss plus `waveform_weight` times the relative waveform
    error (the mixer is phase-exact, so the waveform term sharpens the final fit), plus
    `smoothness` times the mean squared first difference of the curves. Starts from `init`
    (model space [B, F, P]) or the neutral curves.
    """
    layout = get_layout(layout)
    batch = stems_a.shape[0]
    curves = (init.detach().clone() if init is not None else layout.neutral_curves(n_frames, batch, stems_a.device))
    curves.requires_grad_(True)
    loss_fn = loss_fn or MultiResolutionSTFTLoss().to(stems_a.device)
    optimizer = torch.optim.Adam([curves], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.05)
    target_energy = target.square().mean().clamp_min(1e-12)
    losses = []
    for _ in tqdm(range(steps), desc="fitting curves", disable=not progress, leave=False):
        optimizer.zero_grad(set_to_none=True)
        rendition = mixer(stems_a, stems_b, curves, layout=layout, bpm=bpm)
        loss = loss_fn(rendition, target)
        if waveform_weight:
            loss = loss + waveform_weight * (rendition - target).square().mean() / target_energy
        if smoothness and curves.shape[1] > 1:
            loss = loss + smoothness * curves.diff(dim=1).square().mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            curves.clamp_(0.0, 1.0)  # stay where the mixer's mapping is defined
        losses.append(loss.item())
    with torch.no_grad():
        final = mixer(stems_a, stems_b, curves, layout=layout, bpm=bpm)
    result = FitResult(curves.detach(), losses, snr_db(final, target))
    log.info("curve fit: loss %.4f -> %.4f, SNR %.1f dB", losses[0], losses[-1], result.snr_db)
    return result
