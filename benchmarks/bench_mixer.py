"""Mixer speed: real-time factors, the ratio to the STFT floor, and pedalboard for reference.

    python benchmarks/bench_mixer.py [--seconds 30] [--frames 128] [--repeats 3] [--device cpu|cuda|mps]

Two tracks x 4 stereo stems, random curves in the full layout. The floor is the work no STFT-domain
mixer can avoid: one STFT of all 16 stem channels plus one inverse STFT of the stereo output.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effects.mixer import DifferentiableDJMixer  # noqa: E402
from effects.params import FULL  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pedalboard_chain_seconds(stems: np.ndarray, sample_rate: int, repeats: int) -> float | None:
    """The same static chain in pedalboard: per stem 3-band EQ, HPF, LPF and gain; per track reverb and delay."""
    try:
        import pedalboard as pb
    except ImportError:
        return None

    def run():
        out = np.zeros_like(stems[0, 0])
        for track in stems:
            channel = np.zeros_like(track[0])
            for stem in track:
                board = pb.Pedalboard([
                    pb.LowShelfFilter(200, -6, 0.7071), pb.PeakFilter(1000, 3, 0.7),
                    pb.HighShelfFilter(4000, -3, 0.7071),
                    pb.HighpassFilter(80), pb.HighpassFilter(80), pb.LowpassFilter(12_000), pb.LowpassFilter(12_000),
                    pb.Gain(-3),
                ])
                channel += board(stem, sample_rate)
            sends = pb.Pedalboard([pb.Reverb(room_size=0.6, wet_level=0.3), pb.Delay(0.234, 0.5, 0.3)])
            out += channel + sends(channel, sample_rate)
        return out

    return timed(run, repeats, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    mixer = DifferentiableDJMixer().to(device)
    cfg = mixer.config
    n = int(args.seconds * cfg.sample_rate)
    gen = torch.Generator().manual_seed(0)
    stems_a = (torch.randn(1, 4, 2, n, generator=gen) * 0.1).to(device)
    stems_b = (torch.randn(1, 4, 2, n, generator=gen) * 0.1).to(device)
    curves = torch.rand(1, args.frames, len(FULL), generator=gen).to(device)

    def forward():
        with torch.no_grad():
            mixer(stems_a, stems_b, curves, bpm=126.0)

    def forward_backward():
        c = curves.clone().requires_grad_(True)
        mixer(stems_a, stems_b, c, bpm=126.0).square().mean().backward()

    window = torch.hann_window(cfg.n_fft, device=device)
    flat = torch.cat([stems_a, stems_b], dim=1).reshape(-1, n)

    def floor():
        with torch.no_grad():
            spec = torch.stft(flat, cfg.n_fft, cfg.hop_length, window=window, return_complex=True)
            torch.istft(spec[:2], cfg.n_fft, cfg.hop_length, window=window, length=n)

    t_floor = timed(floor, args.repeats, device)
    t_fwd = timed(forward, args.repeats, device)
    t_fb = timed(forward_backward, args.repeats, device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.seconds:.0f} s clip, "
          f"{args.frames} frames, layout full ({len(FULL)} parameters), n_fft {cfg.n_fft}, hop {cfg.hop_length}")
    print(f"floor (STFT of 16 stem channels + ISTFT of stereo out): {t_floor:.3f} s")
    print(f"forward:          {t_fwd:.3f} s  = {args.seconds / t_fwd:6.1f}x real time   (target >= 20x)")
    print(f"forward+backward: {t_fb:.3f} s  = {args.seconds / t_fb:6.1f}x real time   (target >= 8x)")
    print(f"forward / floor:  {t_fwd / t_floor:.2f}                           (target <= 2.0)")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    else:
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    t_pb = pedalboard_chain_seconds(torch.stack([stems_a, stems_b], 1)[0].cpu().numpy(), cfg.sample_rate,
                                    args.repeats)
    if t_pb is not None:
        print(f"pedalboard static chain (8 stems EQ/filters/gain, 2 reverb+delay sends, CPU): {t_pb:.3f} s "
              f"= {args.seconds / t_pb:.1f}x real time (reference; not differentiable, no automation)")


if __name__ == "__main__":
    main()
