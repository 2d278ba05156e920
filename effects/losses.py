"""Audio losses shared by training (the audio loss) and curve fitting (analysis by synthesis)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over several STFT resolutions.

    loss(pred [..., N], target [..., N]) -> scalar. Magnitudes are floored at `eps` so silence
    gives finite gradients.
    """

    def __init__(self, fft_sizes: Sequence[int] = (2048, 1024, 512), overlap: int = 4, eps: float = 1e-5):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        self.overlap = overlap
        self.eps = eps
        for size in self.fft_sizes:
            self.register_buffer(f"window_{size}", torch.hann_window(size), persistent=False)

    def _magnitude(self, x: torch.Tensor, size: int) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        spec = torch.stft(flat, size, size // self.overlap, window=getattr(self, f"window_{size}"),
                          return_complex=True)
        return spec.abs().clamp_min(self.eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        total = pred.new_zeros(())
        for size in self.fft_sizes:
            p, t = self._magnitude(pred, size), self._magnitude(target, size)
            convergence = torch.linalg.vector_norm(t - p) / torch.linalg.vector_norm(t)
            log_mag = (p.log() - t.log()).abs().mean()
            total = total + convergence + log_mag
        return total / len(self.fft_sizes)


def snr_db(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Signal-to-noise ratio of estimate against reference, in dB."""
    noise = (estimate - reference).double().square().sum()
    return float(10 * torch.log10(reference.double().square().sum() / noise.clamp_min(1e-30)))
