"""Model speed and memory: parameter counts, DDIM sampling time, training throughput, peak memory.

    python benchmarks/bench_model.py [--presets small base] [--threads 1 2] [--steps 50] [--frames 128]
                                     [--train-batch 8] [--repeats 3] [--device cpu|cuda]

Sampling: one pair, `--frames` curve frames (and feature frames), `--steps` DDIM steps with classifier-free
guidance (scale 2: one batched [cond; null] denoiser call per step). Training: forward + backward of the
full loss on a random batch. Every measurement runs in its own spawned process so that its peak resident
memory (ru_maxrss) is its own; the baseline is the same process after building the model and inputs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(preset: str, task: str, threads: int, args: dict, queue) -> None:
    import torch

    from model import TrackFeatures, create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(args["device"])
    model = create_model(preset).to(device)
    frames = args["frames"]
    g = torch.Generator().manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if task == "sample":
        model.eval()
        a = TrackFeatures.random(1, frames, generator=g).to(device)
        b = TrackFeatures.random(1, frames, generator=g).to(device)

        def run():
            model.sample(a, b, n_frames=frames, steps=args["steps"], guidance_scale=2.0,
                         generator=torch.Generator().manual_seed(1))
    else:
        n = args["train_batch"]
        batch = {"feats_a": TrackFeatures.random(n, frames, generator=g).to(device),
                 "feats_b": TrackFeatures.random(n, frames, generator=g).to(device),
                 "curves": torch.rand(n, frames, model.config.model.n_params, generator=g).to(device)}

        def run():
            model.zero_grad(set_to_none=True)
            model(batch, generator=torch.Generator().manual_seed(1))["loss"].backward()

    baseline = _maxrss_mib()
    run()  # warm-up
    sync()
    times = []
    for _ in range(args["repeats"]):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    queue.put({"seconds": statistics.median(times), "peak_mib": _maxrss_mib(), "baseline_mib": baseline})


def measure(preset: str, task: str, threads: int, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(preset, task, threads, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = vars(parser.parse_args())

    import torch

    from model import create_model

    print(f"torch {torch.__version__}, device {args['device']}, {args['frames']} frames, "
          f"DDIM {args['steps']} steps with guidance (batch 1), training batch {args['train_batch']}")
    print()
    print(f"{'preset':<8}{'params':>10}{'encoder':>10}{'denoiser':>10}")
    for preset in args["presets"]:
        model = create_model(preset)
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        print(f"{preset:<8}{count(model):>9.2f}M{count(model.encoder):>9.2f}M{count(model.denoiser):>9.2f}M")
    print()
    header = (f"{'preset':<8}{'threads':>8}{'sample s':>10}{'peak MiB':>10}"
              f"{'train samples/s':>17}{'peak MiB':>10}{'(+ over baseline)':>19}")
    print(header)
    print("-" * len(header))
    for preset in args["presets"]:
        for threads in args["threads"]:
            sample = measure(preset, "sample", threads, args)
            train = measure(preset, "train", threads, args)
            rate = args["train_batch"] / train["seconds"]
            grow = [r["peak_mib"] - r["baseline_mib"] for r in (sample, train)]
            extra = f"+{grow[0]:.0f} / +{grow[1]:.0f}"
            print(f"{preset:<8}{threads:>8}{sample['seconds']:>10.2f}{sample['peak_mib']:>10.0f}"
                  f"{rate:>17.1f}{train['peak_mib']:>10.0f}{extra:>19}", flush=True)


if __name__ == "__main__":
    main()
