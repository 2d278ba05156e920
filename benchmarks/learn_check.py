"""Does the model learn from its input? Train on synthetic pairs, then measure held-out pairs against baselines.

    python benchmarks/learn_check.py --model-size small --train-pairs 300 --eval-pairs 40 --steps 3000
    python benchmarks/learn_check.py --model-size tiny --train-pairs 32 --eval-pairs 12 --steps 300   # cheap

Steps:
1. pairs: train.py's own synthetic training set (--synthetic --synthetic-fixed --synthetic-cache), made once
   in a process pool before training so training reads cached items; held-out pairs from another seed, made
   here with their TransitionContext (needed by the rule measures) and cached under --cache too.
2. training: train.py main(argv), nothing else (the EMA weights of OUTPUT/last.pt are what is measured); a new
   run each time, --overwrite replacing the previous check's run in OUTPUT (--skip-train measures it instead).
3. measures on the held-out pairs (model space [0, 1], MSE over valid frames and all parameters):
   - mean curve: the per-frame, per-parameter mean of the TRAIN curves, the best input-independent
     prediction under MSE. Its error is the baseline of every ratio. The mean curve of the pair's
     recipe (style label) is reported too: the best prediction from the style label alone, without audio.
   - "+ style" rows give the model the pair's recipe label (its optional style conditioning). With
     --teacher sample the recipe is drawn at random, so without the label E[curves | A, B] is a mixture
     over recipes; with --teacher decide the move and its details follow plain facts of the audio
     (data.transitions.choose_recipe, TypicalChoices), so the audio alone can tell the answer.
   - x0 at pure noise (t = T-1): the network's one-shot estimate of E[curves | A, B], conditioned and with the
     NULL conditioning (the same network made input-independent). This is the fair "learns from input"
     metric: a regression target, directly comparable to the mean curve.
   - x0 at t = T/2 (moderate noise), conditioned vs NULL: the denoiser also sees the noised answer here, so
     the NULL branch, not the mean curve, is the right comparison.
   - DDIM samples (guidance 0 / 1 / 2): one sample per pair. Note that a *perfect* sampler's expected MSE is
     twice the conditional variance (sample vs an independent teacher draw), and the teacher mixes several
     recipes, so a sample can be right in kind and still far in MSE; the mean of K samples per pair
     (--mean-of) approximates E[curves | A, B] and is reported too.
   - rules on samples (data.transitions): bass handover within one beat of a downbeat (NaN = no handover
     counts as a miss), vocal clash (vocal_overlap == 0 fraction and mean), also for the teacher and the mean
     curve for reference.
   - seed diversity: two seeds per pair at guidance 2, MSE between them, and the fraction of pairs where both
     samples keep both rules.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train as train_cli  # noqa: E402
from data import transitions as T  # noqa: E402
from dataset import (  # noqa: E402
    TEACHER_REVISIONS,
    TEACHERS,
    SyntheticDataset,
    collate,
    format_track_duration,
)
from effects.params import FULL, get_layout  # noqa: E402
from model import load_model  # noqa: E402
from model.checkpoint import export_weights, read_checkpoint  # noqa: E402

EVAL_SEED_OFFSET = train_cli.VAL_SEED_OFFSET + 17  # held-out pairs: neither a training nor train.py's val pair


# -- data ----------------------------------------------------------------------------------------------------
class ContextSynthetic(SyntheticDataset):
    """SyntheticDataset whose items also carry the pair's TransitionContext (as a dict, key "context")."""

    def make(self, index: int) -> dict:
        captured = {}
        original = T.pair_from_tracks

        def spy(*args, **kwargs):
            pair = original(*args, **kwargs)
            captured["ctx"], captured["label"] = pair.context, pair.label
            return pair

        T.pair_from_tracks = spy  # SyntheticDataset.make imports it from the module at call time
        try:
            item = super().make(index)
        finally:
            T.pair_from_tracks = original
        item["context"] = captured["ctx"].to_dict()
        item["recipe"] = captured["label"]
        return item


_WORK: dict = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _make_train(index: int) -> None:
    _WORK["train"][(0, index)]  # PairItems writes the cache entry


def _make_eval(index: int) -> dict:
    path = _WORK["eval_dir"] / f"i{index}.pt"
    if path.is_file():
        return train_cli._item_from_plain(torch.load(path, weights_only=True))
    item = _WORK["eval"][index]
    train_cli._atomic_torch_save(train_cli._item_to_plain(item), path)
    return item


def _pool_map(fn, indices: list[int], jobs: int) -> list:
    if jobs <= 1 or len(indices) <= 1:
        return [fn(i) for i in indices]
    with mp.get_context("fork").Pool(jobs, initializer=_init_worker) as pool:
        return pool.map(fn, indices, chunksize=1)


def train_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--synthetic", "--synthetic-fixed", "--synthetic-length", str(args.train_pairs),
            "--synthetic-val-length", "0", "--synthetic-cache", str(args.cache), "--track-duration",
            format_track_duration(args.track_duration), "--model-size", args.model_size, "--steps", str(args.steps),
            "--seed", str(args.seed), "--output", str(args.output), "--num-workers", str(args.num_workers),
            "--device", "cpu", "--keep", "0", "--log-every", str(max(1, args.steps // 20)),
            "--save-every", str(args.steps), "--val-every", str(args.steps), "--teacher", args.teacher,
            "--style-share", str(args.style_share),
            "--overwrite"]  # re-runnable: each check trains a new run into the same --output
    if args.init is not None:
        argv += ["--init", str(args.init)]
    for flag in ("batch_size", "lr", "warmup_steps", "ema_decay"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for override in args.config:
        argv += ["--config", override]
    return argv


def prepare_data(args: argparse.Namespace) -> tuple[list[dict], list[dict], object]:
    """(train items, held-out items with contexts, config); every pair made at most once (cached)."""
    targs = train_cli.parse_args(train_argv(args))
    train_cli.fill_run_flags(targs, {})
    cfg = train_cli.build_config(targs, None)
    train_set, _, _ = train_cli.make_datasets(targs, cfg)
    m = cfg.model
    eval_dir = Path(args.cache) / (f"learn_check_eval_s{args.seed + EVAL_SEED_OFFSET}_F{m.n_frames}_M{m.n_mels}"
                                   f"_d{format_track_duration(args.track_duration).replace(':', '-')}"
                                   + ("" if args.teacher == "sample" else f"_{args.teacher}")
                                   + (f"_r{TEACHER_REVISIONS[args.teacher]}" if TEACHER_REVISIONS[args.teacher] > 1
                                      else ""))
    eval_dir.mkdir(parents=True, exist_ok=True)
    _WORK.update(train=train_set, eval_dir=eval_dir,
                 eval=ContextSynthetic(length=args.eval_pairs, seed=args.seed + EVAL_SEED_OFFSET, n_frames=m.n_frames,
                                       n_mels=m.n_mels, track_duration=args.track_duration, cache=False,
                                       teacher=args.teacher))
    t0 = time.perf_counter()
    _pool_map(_make_train, list(range(len(train_set))), args.jobs)  # with --style-share, the forced pairs too
    train_items = [train_set[(0, i)] for i in range(args.train_pairs)]  # the measures' train distribution
    eval_items = _pool_map(_make_eval, list(range(args.eval_pairs)), args.jobs)
    print(f"data: {args.train_pairs} train + {args.eval_pairs} held-out pairs ready in "
          f"{time.perf_counter() - t0:.0f} s (cache {args.cache})", flush=True)
    return train_items, eval_items, cfg


# -- measures ------------------------------------------------------------------------------------------------
def _mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per-pair MSE over valid frames and all parameters: pred, target [B, F, P], mask [B, F]."""
    m = mask.to(pred.dtype)[..., None]
    return (((pred - target) ** 2 * m).sum((1, 2)) / (m.sum((1, 2)) * pred.shape[-1]).clamp_min(1)).numpy()


def _full(curves: torch.Tensor, layout) -> np.ndarray:
    if layout is FULL:
        return curves.numpy()
    return layout.expand_to(curves, FULL).numpy()


def rule_measures(curves: np.ndarray, contexts: list[T.TransitionContext]) -> dict[str, float]:
    """Bass handover on a downbeat (within one beat) and vocal clash over pairs; curves [B, F, 58]."""
    on_beat, clash, handed = [], [], []
    for u, ctx in zip(curves, contexts):
        t = T.bass_handover_time(u, ctx)
        handed.append(not math.isnan(t))
        if math.isnan(t) or not len(ctx.downbeats):
            on_beat.append(False)
        else:
            on_beat.append(float(np.min(np.abs(ctx.downbeats - t))) <= ctx.beat + 1e-9)
        clash.append(float(T.vocal_overlap(u, ctx)))
    clash = np.asarray(clash)
    return {"handover_on_downbeat": float(np.mean(on_beat)), "handover_exists": float(np.mean(handed)),
            "no_vocal_clash": float(np.mean(clash == 0)), "vocal_overlap_mean": float(clash.mean()),
            "_ok": np.asarray(on_beat) & (clash == 0)}


@torch.no_grad()
def x0_prediction(model, batch: dict, t: int, seed: int, null: bool, style: torch.Tensor | None = None) -> torch.Tensor:
    """Clean-curve estimate [B, F, P] in [0, 1] from x_t of the teacher curves at timestep t (style [B] or None)."""
    gen = torch.Generator().manual_seed(seed)
    curves = batch["curves"]
    x0 = curves * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    tt = torch.full((x0.shape[0],), t, dtype=torch.long)
    x_t = model.schedule.add_noise(x0, noise, tt)
    drop = torch.full((x0.shape[0],), null, dtype=torch.bool)
    cond = model.encoder(batch["feats_a"], batch["feats_b"], style=None if null else style, drop=drop)
    out = model.denoiser(x_t, tt, cond, batch["mask"])
    return ((model.schedule.predict_x0(x_t, out, tt).clamp(-1, 1) + 1) / 2)


def measure(args: argparse.Namespace, model, train_items: list[dict], eval_items: list[dict]) -> dict:
    layout = model.layout
    mean_curve = torch.stack([i["curves"] for i in train_items]).mean(0)  # [F, P] over the TRAIN pairs
    by_style: dict[int, list] = {}
    for i in train_items:
        by_style.setdefault(int(i["style"]), []).append(i["curves"])
    style_mean = {k: torch.stack(v).mean(0) for k, v in by_style.items()}  # the style label alone, no audio
    styled = model.config.model.n_styles > 0  # trained with --config model.n_styles=9 (the recipe labels)
    contexts = [T.TransitionContext.from_dict(i["context"]) for i in eval_items]
    results: dict[str, dict] = {}
    teacher_all, mse_all = [], {}
    move_right: list[np.ndarray] = []  # per chunk: did the move head pick the teacher's move (labelled pairs)
    head_style = ", move head's style" if model.move_head is not None else ""  # what sample(style=None) means

    def add(name: str, per_pair: np.ndarray, curves: torch.Tensor | None = None, **extra) -> None:
        row = results.setdefault(name, {"mse": [], "rules": []})
        row["mse"].append(per_pair)
        if curves is not None:
            row["rules"].append(_full(curves, layout))
        row.update(extra)

    for start in range(0, len(eval_items), args.eval_batch):
        chunk = eval_items[start:start + args.eval_batch]
        batch = collate(chunk)
        target, mask, n = batch["curves"], batch["mask"], len(chunk)
        teacher_all.append(_full(target, layout))
        add("mean curve (train)", _mse(mean_curve.expand_as(target), target, mask), mean_curve.expand_as(target))
        style = batch["style"]
        per_style = torch.stack([style_mean.get(int(k), mean_curve) for k in style])
        add("mean curve of the style (train)", _mse(per_style, target, mask), per_style)
        T_last = model.schedule.timesteps - 1
        for t, label in ((T_last, "pure noise"), (model.schedule.timesteps // 2, "t=T/2")):
            for null in (False, True):
                pred = x0_prediction(model, batch, t, args.seed + start, null)
                add(f"x0 @ {label}, {'NULL' if null else 'cond'}", _mse(pred, target, mask))
            if styled:
                pred = x0_prediction(model, batch, t, args.seed + start, False, style)
                add(f"x0 @ {label}, cond + style", _mse(pred, target, mask))
        fa, fb = batch["feats_a"], batch["feats_b"]
        probs = model.move_probs(fa, fb)  # None without a move head
        if probs is not None:  # its choice against the teacher's label, on the pairs that have one
            move_right.append((probs.argmax(-1) == style)[style >= 0].float().numpy())
        if styled:
            gen = torch.Generator().manual_seed(args.seed + 1000 + start)
            s = model.sample(fa, fb, n_frames=target.shape[1], steps=args.sample_steps,
                             guidance_scale=args.guidance[-1], generator=gen, style=style)
            add(f"DDIM sample, guidance {args.guidance[-1]:g}, + style", _mse(s, target, mask), s)
        for scale in args.guidance:
            gen = torch.Generator().manual_seed(args.seed + 1000 + start)
            s = model.sample(fa, fb, n_frames=target.shape[1], steps=args.sample_steps, guidance_scale=scale,
                             generator=gen)
            add(f"DDIM sample, guidance {scale:g}{head_style}", _mse(s, target, mask), s)
            if probs is not None and scale == args.guidance[-1]:  # the same noise with the style left free
                gen = torch.Generator().manual_seed(args.seed + 1000 + start)
                free = model.sample(fa, fb, n_frames=target.shape[1], steps=args.sample_steps, guidance_scale=scale,
                                    generator=gen, style=torch.full((n,), -1))
                add(f"DDIM sample, guidance {scale:g}, style free", _mse(free, target, mask), free)
            if scale == args.guidance[-1]:
                samples = [s]
                for k in range(1, max(args.mean_of, 2)):
                    gen = torch.Generator().manual_seed(args.seed + 1000 + start + 7919 * k)
                    samples.append(model.sample(fa, fb, n_frames=target.shape[1], steps=args.sample_steps,
                                                guidance_scale=scale, generator=gen))
                other = samples[1]
                add(f"DDIM sample, guidance {scale:g}, 2nd seed", _mse(other, target, mask), other)
                mse_all.setdefault("seed_diff", []).append(_mse(s, other, mask))
                if args.mean_of > 1:
                    avg = torch.stack(samples[:args.mean_of]).mean(0)
                    add(f"mean of {args.mean_of} samples, guidance {scale:g}", _mse(avg, target, mask))
        print(f"  measured {start + n}/{len(eval_items)} held-out pairs", flush=True)

    baseline = float(np.concatenate(results["mean curve (train)"]["mse"]).mean())
    table = {}
    for name, row in results.items():
        mse = float(np.concatenate(row["mse"]).mean())
        entry = {"mse": mse, "ratio_to_mean_curve": mse / baseline}
        if row["rules"]:
            entry.update(rule_measures(np.concatenate(row["rules"]), contexts))
        table[name] = entry
    teacher = rule_measures(np.concatenate(teacher_all), contexts)
    table["teacher (reference)"] = {"mse": 0.0, "ratio_to_mean_curve": 0.0, **teacher}
    last = args.guidance[-1]
    a, b = table[f"DDIM sample, guidance {last:g}{head_style}"], table[f"DDIM sample, guidance {last:g}, 2nd seed"]
    both_ok = float(np.mean(a["_ok"] & b["_ok"]))
    diversity = {"seed_mse": float(np.concatenate(mse_all["seed_diff"]).mean()), "both_seeds_keep_rules": both_ok,
                 "guidance": last}
    for entry in table.values():
        entry.pop("_ok", None)
    report = {"baseline_mse": baseline, "table": table, "diversity": diversity}
    if move_right:
        right = np.concatenate(move_right)
        accuracy = float(right.mean()) if right.size else float("nan")
        report["move_head"] = {"accuracy": accuracy, "pairs": int(right.size)}
    return report


def print_table(report: dict) -> None:
    print(f"\n{'prediction on held-out pairs':44s} {'MSE':>8s} {'/mean':>6s} {'hand@db':>8s} {'no clash':>8s} "
          f"{'voc.ovl':>8s}")
    for name, e in report["table"].items():
        rules = (f"{e['handover_on_downbeat']:8.2f} {e['no_vocal_clash']:8.2f} {e['vocal_overlap_mean']:8.3f}"
                 if "no_vocal_clash" in e else f"{'-':>8s} {'-':>8s} {'-':>8s}")
        print(f"{name:44s} {e['mse']:8.4f} {e['ratio_to_mean_curve']:6.2f} {rules}")
    d = report["diversity"]
    print(f"seed diversity (guidance {d['guidance']:g}): MSE between two seeds {d['seed_mse']:.4f}; "
          f"both seeds keep both rules on {d['both_seeds_keep_rules']:.2f} of pairs")
    if "move_head" in report:
        m = report["move_head"]
        print(f"move head: the teacher's move on {m['accuracy']:.3f} of {m['pairs']} held-out pairs")
    print("hand@db: fraction of pairs whose bass handover is within one beat of a downbeat (no handover = miss); "
          "no clash: fraction with vocal_overlap == 0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-size", default="small", choices=("tiny", "small", "base"))
    p.add_argument("--train-pairs", type=int, default=300)
    p.add_argument("--eval-pairs", type=int, default=40)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--config", action="append", default=[], help="train.py --config override (repeatable)")
    p.add_argument("--init", type=Path, help="train.py --init: fine-tune this checkpoint instead of starting afresh")
    p.add_argument("--track-duration", type=train_cli._track_duration, default=40.0,
                   help="seconds of each synthetic track, or MIN:MAX to draw each track's length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", choices=TEACHERS, default="decide",
                   help="train.py --teacher: recipes drawn at random, selected by quality (the music picks the move), "
                        "or decided (selected, with each recipe's typical choices: a function of the music)")
    p.add_argument("--style-share", type=float, default=0.0,
                   help="train.py --style-share: extra pairs with an imposed, always-shown recipe label")
    p.add_argument("--cache", type=Path, default=Path("/tmp/djmix_learn_cache"), help="pairs made once, reused")
    p.add_argument("--output", type=Path, default=Path("/tmp/djmix_learn_run"), help="train.py run folder")
    p.add_argument("--jobs", type=int, default=2, help="processes making pairs")
    p.add_argument("--num-workers", type=int, default=0, help="train.py DataLoader workers (pairs are cached)")
    p.add_argument("--skip-train", action="store_true", help="measure OUTPUT/last.pt as it is")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="guidance scales; last = main")
    p.add_argument("--mean-of", type=int, default=4, help="samples averaged per pair (approximates E[curves|A,B])")
    p.add_argument("--eval-batch", type=int, default=20)
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--export", type=Path, help="also write the run's EMA weights here in float16, as inference.py "
                                               "loads them (python -m model.checkpoint OUTPUT/last.pt PATH --fp16)")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_items, eval_items, cfg = prepare_data(args)
    t0 = time.perf_counter()
    if not args.skip_train:
        code = train_cli.main(train_argv(args))
        if code:
            raise SystemExit(f"train.py failed with exit code {code}")
    train_s = time.perf_counter() - t0
    if args.export:
        print(f"exported the EMA weights: {export_weights(args.output / 'last.pt', args.export, torch.float16)}")
    model = load_model(args.output / "last.pt", "cpu")
    steps_done = int(read_checkpoint(args.output / "last.pt", "cpu").get("step", -1))  # < steps after SIGTERM
    assert get_layout(model.config.model.layout) is model.layout
    t1 = time.perf_counter()
    report = measure(args, model, train_items, eval_items)
    report.update(sizes={"model_size": args.model_size, "train_pairs": args.train_pairs,
                         "eval_pairs": args.eval_pairs, "steps": args.steps,
                         "steps_done": steps_done, "batch_size": model.config.train.batch_size,
                         "n_frames": model.config.model.n_frames,
                         "parameters": sum(p.numel() for p in model.parameters()),
                         "sample_steps": args.sample_steps, "track_duration": args.track_duration},
                  train_seconds=train_s, measure_seconds=time.perf_counter() - t1)
    print(f"\n{json.dumps(report['sizes'])}; training {train_s:.0f} s, measuring {report['measure_seconds']:.0f} s")
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    run()
