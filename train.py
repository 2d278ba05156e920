"""Train the transition diffusion model on processed pairs or on on-the-fly synthetic ones.

    python train.py --synthetic --model-size tiny --steps 200 --output runs/smoke
    python train.py --data processed --model-size small --output runs/small --wandb djmix/small
    torchrun --nproc_per_node=4 train.py --data processed --model-size base --amp --output runs/base
    python train.py --output runs/small --resume auto       # continue exactly where it stopped
    python train.py --data processed --init checkpoints/default.pt --lr 1e-4 --steps 2000 --output runs/ft

--output receives config.json (the full config as a plain dict, plus this run's flags), metrics.jsonl (one
JSON line per logged step and per validation), last.pt, best.pt (lowest validation loss of the EMA weights,
which are what inference loads), the newest --keep checkpoint_{step}.pt, previews/ and wandb/ with --wandb.
An --output that already holds a run (last.pt, best.pt, checkpoint_*.pt or metrics.jsonl) is refused before any
work unless --resume continues it or --overwrite replaces it: --overwrite deletes those files of the old run
(nothing else in the folder) before the new run writes anything, so pruning and a later --resume auto never mix
two runs. --init starts a new run, so it needs --overwrite there too.

Exact resume: a run stopped after step k and resumed gives the same parameters and losses, bit for bit on
CPU, as a run that never stopped.
  - Data order is a pure function of (seed, epoch, rank): DistributedSampler's permutation for epoch e, cut
    into full batches. The checkpoint stores (epoch, batches consumed) and the batch sampler starts there;
    nothing is loaded to be skipped. Items are pure functions of (epoch, index): synthetic pairs are seeded
    by (seed, index, epoch), augmentation by (seed, epoch, index).
  - Every random draw of a step comes from seeds derived from (seed, rank, step): the loss's generator
    (timesteps, noise, per-sample conditioning dropout) and the global torch RNG (dropout) are reseeded at
    each step, so nothing depends on how the run reached step k, and DDP ranks need no stored RNG state.
  - Model, EMA, optimizer, LR scheduler and the global RNG states come back through model.checkpoint.
  - Validation and previews run between a saved and a restored RNG state; they never touch the training stream.
Flags left out on resume take the values stored in the checkpoint (data source, --keep, --wandb, ...); the
config comes from the checkpoint too, so `--resume auto` alone continues the run. A model flag that changes
the architecture makes the resume fail with one line naming the mismatched fields.

Fine-tuning (--init PATH): a new run (step 0, fresh optimizer and LR schedule) whose model and EMA both start
from the checkpoint's EMA weights (its raw ones when it has none) and whose config is the checkpoint's, so an
exported model (checkpoints/default.pt) can be trained further on other data. A later --resume of that run
continues it as any other run; --init is then ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dataset import (
    STYLE_LABELS,
    TEACHER_REVISIONS,
    TEACHERS,
    DataError,
    KindWeighted,
    SyntheticDataset,
    TransitionDataset,
    augment_item,
    collate,
    parse_track_duration,
    seed_arg,
)
from effects.params import FULL, get_layout
from model import (
    CheckpointError,
    Config,
    TrackFeatures,
    TransitionDiffusion,
    apply_overrides,
    config_from_dict,
    config_mismatches,
    config_to_dict,
    create_ema,
    get_config,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from model.checkpoint import atomic_save, read_checkpoint, rng_state, set_rng_state
from model.config import PRESETS

log = logging.getLogger("train")

VAL_SEED_OFFSET = 1_000_003  # the synthetic validation set's seed is seed + this: never a training pair
STYLE_SEED_OFFSET = 2_000_029  # ... and the style-forced pairs' (--style-share): other tracks than the main set
# Run flags (not config fields) that a resumed run takes from its checkpoint unless given again.
RUN_DEFAULTS: dict[str, Any] = {
    "data": None, "synthetic": False, "synthetic_length": 2048, "synthetic_val_length": 64, "track_duration": 40.0,
    "synthetic_fixed": False, "synthetic_cache": None, "teacher": "decide", "style_share": 0.0,
    "augment": None, "grad_accum": 1, "amp": False,
    "val_every": 1000, "keep": 3, "sample_steps": 25, "wandb": None, "kind_weights": None, "audio_loss_on": "all",
}
_PATH_FLAGS = ("data", "synthetic_cache")


class UsageError(Exception):
    """Bad input (flags, data folder): main prints the message as one line and exits with status 2."""


class TrainingError(Exception):
    """Training cannot go on (non-finite gradients): one line, exit status 1, the checkpoints kept as they were."""


# -- arguments and config ----------------------------------------------------------------------------------------
def _track_duration(text: str):
    try:
        return parse_track_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description="Train the DJ-transition diffusion model.")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="processed folder with manifest.json (splits 'train' and 'val')")
    g.add_argument("--synthetic", action="store_true", default=None, help="on-the-fly synthetic pairs, no folder")
    g.add_argument("--synthetic-length", type=int, help="synthetic training pairs per epoch (2048)")
    g.add_argument("--synthetic-val-length", type=int, help="held-out synthetic pairs, another seed (64)")
    g.add_argument("--track-duration", type=_track_duration, metavar="SECONDS|MIN:MAX",
                   help="seconds of each synthetic track (40), or a range each track's length is drawn from")
    g.add_argument("--synthetic-fixed", action="store_true", default=None,
                   help="draw the synthetic pairs once and reuse them every epoch (default: fresh pairs each epoch)")
    g.add_argument("--synthetic-cache", type=Path,
                   help="folder that keeps made synthetic pairs (shared by runs, ranks and workers; with the "
                        "audio loss each pair holds its stems, tens of MB)")
    g.add_argument("--teacher", choices=TEACHERS,
                   help="synthetic teacher: 'decide' (default): plain facts of the clips pick the move and every "
                        "detail takes its typical value, so the curves are a function of the music alone (learnable); "
                        "'select' renders a random draw of each recipe of a shortlist and keeps the best by "
                        "evaluate.py's composite (~4 renders a pair); 'sample' draws a recipe and its details")
    g.add_argument("--style-share", type=float,
                   help="with --teacher select or decide: this share of extra synthetic pairs (another seed) get "
                        "a recipe drawn from the whole mixture and always show their style label, so every --style "
                        "is learnt while the style-free model learns the music's choice (default 0)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="window jitter and per-track gain, seeded by (seed, epoch, index) (default: on for --data)")
    g.add_argument("--num-workers", type=int, help="DataLoader worker processes (config train.num_workers)")
    g.add_argument("--kind-weights", metavar="KIND=W,...",
                   help="draw --data training pairs by kind in these proportions, e.g. real=1,synthetic=3 "
                        "(default: as they come)")
    g.add_argument("--audio-loss-on", choices=("all", "real"),
                   help="pairs that get the audio loss (with --audio-loss-weight > 0): all (default) or only "
                        "real ones, whose curves were fitted to the audio")
    g = p.add_argument_group("model and optimisation (config fields)")
    g.add_argument("--model-size", choices=sorted(PRESETS), help="config preset (default small, or the checkpoint's)")
    g.add_argument("--config", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override, e.g. model.n_mels=64 or diffusion.prediction=epsilon (repeatable)")
    g.add_argument("--batch-size", type=int, help="pairs per micro-batch per process")
    g.add_argument("--lr", type=float, help="peak learning rate (after warmup; cosine decay to lr/10)")
    g.add_argument("--steps", type=int, help="optimizer steps in total (also the length of the LR schedule)")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (1)")
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--audio-loss-weight", type=float, help="weight of the rendered-audio STFT loss (0 = off)")
    g.add_argument("--seed", type=seed_arg)
    g = p.add_argument_group("run")
    g.add_argument("--output", type=Path, default=Path("runs/default"), help="run folder (runs/default)")
    g.add_argument("--resume", metavar="PATH|auto", help="checkpoint to continue; auto = OUTPUT/last.pt if any")
    g.add_argument("--overwrite", action="store_true",
                   help="OUTPUT holds a run: delete its checkpoints and metrics.jsonl and start a new one "
                        "(default: refuse)")
    g.add_argument("--init", type=Path, metavar="PATH",
                   help="fine-tune: start a new run from this checkpoint's EMA weights and config (fresh optimizer)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--amp", action="store_true", default=None, help="bf16 autocast (CUDA only)")
    g.add_argument("--val-every", type=int, help="steps between validations (1000)")
    g.add_argument("--save-every", type=int, help="steps between checkpoints (config train.checkpoint_every)")
    g.add_argument("--keep", type=int, help="numbered checkpoints to keep (3; 0 = only last.pt and best.pt)")
    g.add_argument("--log-every", type=int, help="steps between metric lines (config train.log_every)")
    g.add_argument("--stop-after", type=int, help="stop (and save) after this many steps of this invocation")
    g.add_argument("--wandb", metavar="PROJECT[/RUN]", help="log to Weights & Biases (WANDB_MODE=offline works)")
    g.add_argument("--sample-steps", type=int, help="DDIM steps of the validation preview (25)")
    return p.parse_args(argv)


def fill_run_flags(args: argparse.Namespace, stored: dict[str, Any]) -> None:
    """Flags not given: the checkpoint's value when resuming, else RUN_DEFAULTS."""
    if args.data is not None or args.synthetic:  # a data source on the command line replaces the stored one
        stored = {k: v for k, v in stored.items() if k not in ("data", "synthetic")}
    for name, default in RUN_DEFAULTS.items():
        if getattr(args, name) is None:
            value = stored.get(name, default)
            setattr(args, name, Path(value) if name in _PATH_FLAGS and value is not None else value)
    if bool(args.data) == bool(args.synthetic):
        raise UsageError("give exactly one data source: --data PROCESSED_FOLDER or --synthetic")
    if args.augment is None:
        args.augment = args.data is not None
    if args.kind_weights is not None:
        if args.synthetic:
            raise UsageError("--kind-weights weighs the pair kinds of a --data folder; --synthetic has one kind")
        parse_kind_weights(args.kind_weights)


def parse_kind_weights(text: str) -> dict[str, float]:
    """'real=1,synthetic=3' -> {'real': 1.0, 'synthetic': 3.0}."""
    weights = {}
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        try:
            weights[kind.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not kind.strip() or weights[kind.strip()] < 0:
            raise UsageError(f"--kind-weights {text!r}: expected KIND=WEIGHT,... with weights >= 0")
    return weights


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: str(v) if isinstance(v := getattr(args, name), Path) else v for name in RUN_DEFAULTS}


def build_config(args: argparse.Namespace, saved: dict[str, Any] | None) -> Config:
    """The checkpoint's config (or a preset), then --model-size, --config overrides and the flags, in that order."""
    try:
        if saved is None:
            cfg = get_config(args.model_size or "small")
        else:
            cfg = config_from_dict(saved)
            if args.model_size:
                cfg = cfg.replace(model=get_config(args.model_size).model, name=args.model_size)
        cfg = apply_overrides(cfg, args.config)
        flags = {"train.batch_size": args.batch_size, "train.lr": args.lr, "train.steps": args.steps,
                 "train.warmup_steps": args.warmup_steps, "train.ema_decay": args.ema_decay,
                 "train.audio_loss_weight": args.audio_loss_weight, "train.seed": args.seed,
                 "train.num_workers": args.num_workers, "train.checkpoint_every": args.save_every,
                 "train.log_every": args.log_every}
        cfg = cfg.override({k: v for k, v in flags.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise UsageError(f"bad config: {exc}") from None
    t = cfg.train
    if min(t.batch_size, t.steps, t.checkpoint_every, t.log_every, args.grad_accum) < 1 or t.num_workers < 0:
        raise UsageError("batch size, steps, grad-accum, save-every and log-every must be >= 1, num-workers >= 0")
    if 0 < cfg.model.n_styles < len(STYLE_LABELS):
        raise UsageError(f"model.n_styles={cfg.model.n_styles} is fewer than the {len(STYLE_LABELS)} style labels")
    return cfg


# -- data --------------------------------------------------------------------------------------------------------
class PairItems(Dataset):
    """Item (epoch, index): the base dataset's pair `index` as drawn for `epoch`, curves in the model's layout.

    Augmentation draws from a generator seeded by (seed, epoch, index), never from a stateful one, so an item
    is the same in a resumed run. `refresh=False` reuses epoch 0's synthetic pairs every epoch. `cache_dir`
    keeps made items as .pt files (synthetic pairs cost seconds each).
    """

    def __init__(self, base: Dataset, layout: str, seed: int, augment: bool = False, refresh: bool = True,
                 cache_dir: Path | None = None):
        self.base, self.layout, self.seed = base, get_layout(layout), seed
        self.augment, self.refresh, self.cache_dir = augment, refresh, cache_dir

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        item = self._load(epoch if self.refresh else 0, index)
        if self.augment:
            item = augment_item(item, np.random.default_rng([self.seed, epoch, index]))
        return item

    def _load(self, epoch: int, index: int) -> dict:
        path = self.cache_dir / f"e{epoch}_i{index}.pt" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                return _item_from_plain(torch.load(path, weights_only=True))
            except Exception as exc:  # a damaged cache entry is remade, not fatal
                log.warning("%s: unreadable cache entry (%s); remaking it", path, exc)
        if hasattr(self.base, "set_epoch") and getattr(self.base, "epoch", None) != epoch:
            self.base.set_epoch(epoch)
        item = dict(self.base[index])
        curves = item.get("curves")
        if curves is not None and curves.shape[-1] == len(FULL) and self.layout is not FULL:
            item["curves"] = curves[:, [FULL.index(name) for name in self.layout.names]]
        if path is not None:
            with contextlib.suppress(OSError):
                _atomic_torch_save(_item_to_plain(item), path)
        return item


class ConcatItems(Dataset):
    """Several PairItems end to end: item (epoch, index) of the whole is (epoch, index - offset) of one part."""

    def __init__(self, parts: list[PairItems]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][(epoch, index - int(self.starts[part]))]


def _item_to_plain(item: dict) -> dict:
    return {k: {"__features__": vars(v)} if isinstance(v, TrackFeatures) else v for k, v in item.items()}


def _item_from_plain(data: dict) -> dict:
    return {k: TrackFeatures(**v["__features__"]) if isinstance(v, dict) and "__features__" in v else v
            for k, v in data.items()}


# Cache entries are written like checkpoints (atomically, mode 0644); benchmarks/learn_check.py uses this name too.
_atomic_torch_save = atomic_save


class EpochBatches(Sampler):
    """Batches of (epoch, index) keys, forever, from batch `start` of epoch `epoch` on.

    Epoch e is this rank's share of DistributedSampler's permutation for seed + e, cut into full batches
    (a partial last batch is dropped), so the order is a pure function of (seed, epoch, rank, world size).
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int, world: int, epoch: int = 0,
                 start: int = 0):
        self.sampler = DistributedSampler(range(n_items), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.epoch, self.start = batch_size, epoch, start
        self.per_epoch = len(self.sampler) // batch_size

    def __iter__(self):
        epoch, start = self.epoch, self.start
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for b in range(start, self.per_epoch):
                yield [(epoch, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
            epoch, start = epoch + 1, 0


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves a checkpoint and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_datasets(args: argparse.Namespace, cfg: Config) -> tuple[PairItems, PairItems | None, Dataset | None]:
    """(train, val or None, preview dataset with audio or None)."""
    m, seed = cfg.model, cfg.train.seed
    with_audio = cfg.train.audio_loss_weight > 0
    if args.synthetic:
        if with_audio and args.audio_loss_on == "real":
            log.warning("--audio-loss-on real: synthetic pairs only, so no pair gets the audio loss")
            with_audio = False
        def synthetic(length: int, data_seed: int, audio: bool, forced: bool = False) -> SyntheticDataset:
            return SyntheticDataset(length=length, seed=data_seed, n_frames=m.n_frames, n_mels=m.n_mels,
                                    track_duration=args.track_duration, with_audio=audio,
                                    teacher="sample" if forced else args.teacher, style_forced=forced)

        def cache(data_seed: int, audio: bool, forced: bool = False) -> Path | None:
            if args.synthetic_cache is None:
                return None
            key = {"kind": "synthetic", "format": 1, "seed": data_seed, "n_frames": m.n_frames, "n_mels": m.n_mels,
                   "track_duration": args.track_duration, "with_audio": audio}
            if args.teacher != "sample" and not forced:  # sampled sets keep their old key: their caches stay valid
                key["teacher"] = args.teacher
                if TEACHER_REVISIONS[args.teacher] > 1:
                    key["teacher_revision"] = TEACHER_REVISIONS[args.teacher]
            if forced:
                key["style_forced"] = True
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            return Path(args.synthetic_cache) / digest

        if min(args.synthetic_length, args.synthetic_val_length) < 0 or args.synthetic_length < 1:
            raise UsageError("--synthetic-length must be >= 1 and --synthetic-val-length >= 0")
        train = PairItems(synthetic(args.synthetic_length, seed, with_audio), m.layout, seed, args.augment,
                          refresh=not args.synthetic_fixed, cache_dir=cache(seed, with_audio))
        if not 0.0 <= args.style_share < 1.0:
            raise UsageError(f"--style-share must be in [0, 1), got {args.style_share}")
        n_forced = round(args.synthetic_length * args.style_share / (1.0 - args.style_share))
        if n_forced:
            forced_seed = seed + STYLE_SEED_OFFSET
            train = ConcatItems([train, PairItems(synthetic(n_forced, forced_seed, with_audio, forced=True), m.layout,
                                                  seed, args.augment, refresh=not args.synthetic_fixed,
                                                  cache_dir=cache(forced_seed, with_audio, forced=True))])
        val_seed = seed + VAL_SEED_OFFSET
        val = preview = None
        if args.synthetic_val_length:
            val = PairItems(synthetic(args.synthetic_val_length, val_seed, with_audio), m.layout, seed,
                            refresh=False, cache_dir=cache(val_seed, with_audio))
            preview = PairItems(synthetic(1, val_seed, True), m.layout, seed, refresh=False,
                                cache_dir=cache(val_seed, True))
        return train, val, preview

    def split(name: str, audio: bool | tuple[str, ...]) -> TransitionDataset:
        return TransitionDataset(args.data, name, n_frames=m.n_frames, n_mels=m.n_mels, layout=m.layout,
                                 augment=False, with_audio=audio, seed=seed)

    if with_audio and args.audio_loss_on == "real":
        with_audio = ("real",)  # the other pairs come without audio: has_audio False, no audio loss for them
    try:
        base = split("train", with_audio)
        if args.kind_weights is not None:
            base = KindWeighted(base, parse_kind_weights(args.kind_weights), seed)
            log.info("training pairs by kind: %s", {k: base.kinds.count(k) for k in sorted(set(base.kinds))})
        train = PairItems(base, m.layout, seed, args.augment)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = f"{args.data}/manifest.json: " if isinstance(exc, (KeyError, TypeError)) else ""
        raise UsageError(f"{where}{exc}".replace("\n", " ")) from None
    try:
        val = PairItems(split("val", with_audio), m.layout, seed)
        preview = PairItems(split("val", True), m.layout, seed)
    except ValueError as exc:
        log.warning("no validation: %s", exc)
        val = preview = None
    return train, val, preview


LOGGED_LOSSES = ("loss", "mse", "smooth", "audio", "move")  # TransitionDiffusion.forward's scalars, as logged


def model_batch(batch: dict, device: torch.device, use_style: bool) -> dict[str, Any]:
    """dataset.collate's batch (TransitionDiffusion's keys) on the device; style only for a style-aware model."""
    if "curves" not in batch:
        raise UsageError(f"unlabelled pairs in a training batch ({batch.get('pair_id')}): params.npy is missing")
    out = {k: v.to(device) for k, v in batch.items() if isinstance(v, (torch.Tensor, TrackFeatures))}
    if not use_style:
        out.pop("style", None)
    return out


# -- helpers -----------------------------------------------------------------------------------------------------
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, rank, step, ...): independent streams, no state to store."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).astype(np.uint64)
               .dot(np.array([1 << 32, 1], dtype=np.uint64)) >> np.uint64(1))


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation, previews) without moving any global RNG the training steps see."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class StopSignal:
    """SIGINT/SIGTERM set `received`; the loop finishes the step (and a validation due at it), saves a checkpoint
    and exits 0. A second signal aborts."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        if self.received is not None:
            raise SystemExit(128 + signum)
        self.received = signum
        log.warning("%s: saving a checkpoint after this step, then stopping (send it again to abort)",
                    signal.Signals(signum).name)


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available")
    return torch.device(name)


def link_atomic(src: Path, dst: Path) -> None:
    """dst becomes the same file as src (a hard link, or a copy where links fail), atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def numbered_checkpoints(folder: Path) -> list[Path]:
    """folder's checkpoint_{step}.pt, oldest step first."""
    return [p for _, p in sorted((int(p.stem.split("_")[1]), p) for p in folder.glob("checkpoint_*.pt")
                                 if p.stem.split("_")[1].isdigit())]


def _auto_resume(out: Path) -> tuple[Path | None, dict | None]:
    """--resume auto: (path, checkpoint) of out/last.pt, or of the newest readable checkpoint_N.pt when last.pt
    is unreadable (a disk fault, a copy cut short), with a warning; (None, None) for a fresh run."""
    last = out / "last.pt"
    if not last.is_file():
        return None, None
    try:
        return last, read_checkpoint(last)
    except CheckpointError as error:
        for path in reversed(numbered_checkpoints(out)):
            try:
                saved = read_checkpoint(path)
            except CheckpointError:
                continue
            log.warning("%s; resuming from %s instead", str(error).split(" (")[0], path.name)
            return path, saved
        raise CheckpointError(f"{error} (and no readable checkpoint_N.pt in {out} to resume from)") from None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoint_{step}.pt."""
    numbered = numbered_checkpoints(folder)
    for path in numbered[:max(0, len(numbered) - keep)]:
        path.unlink(missing_ok=True)


def run_files(folder: Path) -> list[Path]:
    """The files in folder that make it hold a run (last.pt, best.pt, checkpoint_{step}.pt, metrics.jsonl)."""
    if not folder.is_dir():
        return []
    named = [folder / name for name in ("last.pt", "best.pt")]
    found = [*named, *numbered_checkpoints(folder), folder / "metrics.jsonl"]
    return [p for p in found if p.exists() or p.is_symlink()]


def check_output(args: argparse.Namespace) -> None:
    """Refuse (UsageError) a new run into a folder that holds one, unless --overwrite; --resume continues it."""
    if args.overwrite and args.resume:
        raise UsageError("--overwrite starts a new run, --resume continues one: give one of them")
    existing = args.output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--output {args.output}: cannot be a run folder ({existing} is a file)")
    found = run_files(args.output)
    if found and not args.resume and not args.overwrite:
        raise UsageError(f"{args.output} already holds a run ({', '.join(p.name for p in found)}); continue it "
                         "with --resume auto, replace it with --overwrite, or choose another --output")


class MetricsLog:
    """metrics.jsonl: one JSON object per line. On resume, lines past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.is_file():
            lines = [line for line in path.read_text().splitlines()
                     if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write("".join(line + "\n" for line in lines))
            os.chmod(tmp, 0o644)  # mkstemp makes files 0600; keep metrics.jsonl as readable as the other outputs
            os.replace(tmp, path)
        elif resume_step is None:
            path.unlink(missing_ok=True)
        self.file = open(path, "a")  # noqa: SIM115 (closed by close())

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _reduce_mean(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)
        values = values / world
    return values


# -- validation and previews -------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(nets: dict[str, TransitionDiffusion], loader: DataLoader, device: torch.device, cfg: Config,
             world: int, amp: bool) -> dict[str, float]:
    """Mean validation loss per network; the same timesteps, noise and dropped conditionings at every call."""
    results = {}
    with preserved_rng():
        gen = torch.Generator(device=device)
        for name, net in nets.items():
            was_training = net.training
            net.eval()
            total = torch.zeros(2, device=device)
            for i, batch in enumerate(loader):
                gen.manual_seed(derive_seed(cfg.train.seed, 7, i))
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    # As at inference: full track conditioning, style left free (no dropout draws in the loss).
                    out = net(model_batch(batch, device, cfg.model.n_styles > 0), generator=gen,
                              cond_dropout=0.0, style_dropout=1.0)
                n = batch["curves"].shape[0]
                total += torch.stack([out["loss"].float() * n, torch.tensor(float(n), device=device)])
            if world > 1:
                dist.all_reduce(total)
            net.train(was_training)
            results[name] = float(total[0] / total[1].clamp_min(1.0))
    return results


PREVIEW_PANELS = (("drums gain", "{}.drums.gain"), ("bass gain", "{}.bass.gain"), ("vocals gain", "{}.vocals.gain"),
                  ("other gain", "{}.other.gain"), ("bass eq low", "{}.bass.eq_low"), ("other hpf", "{}.other.hpf"),
                  ("reverb send", "{}.reverb_send"), ("crossfader", "crossfader"))


def curve_figure(sampled: torch.Tensor, teacher: torch.Tensor | None, layout, title: str):
    """Sampled curves (solid) against the teacher's (dashed) for a few telling parameters, A blue and B orange."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(2, 4, sharex=True, sharey=True).flatten()
    for ax, (label, pattern) in zip(axes, PREVIEW_PANELS):
        for track, colour in (("a", "tab:blue"), ("b", "tab:orange")):
            name = pattern.format(track)
            if name not in layout:
                continue
            i = layout.index(name)
            ax.plot(sampled[:, i].numpy(), color=colour, label=f"{track.upper()} sampled" if "{}" in pattern else
                    "sampled")
            if teacher is not None:
                ax.plot(teacher[:, i].numpy(), color=colour, linestyle="--", alpha=0.7,
                        label=f"{track.upper()} teacher" if "{}" in pattern else "teacher")
            if "{}" not in pattern:
                break
        ax.set_title(label, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


@torch.no_grad()
def preview(ema_net: TransitionDiffusion, item: dict, cfg: Config, steps: int, seed: int, out_dir: Path,
            step: int) -> dict[str, Any]:
    """wandb media: a curve plot of a sampled transition vs the teacher and the mixer's rendition of both."""
    import wandb

    from effects.mixer import DifferentiableDJMixer

    device = next(ema_net.parameters()).device
    feats_a = TrackFeatures.stack([item["features_a"]]).to(device)
    feats_b = TrackFeatures.stack([item["features_b"]]).to(device)
    with preserved_rng():
        curves = ema_net.sample(feats_a, feats_b, n_frames=cfg.model.n_frames, steps=steps,
                                generator=torch.Generator(device=device).manual_seed(seed))[0].float().cpu()
    teacher = item.get("curves")
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = curve_figure(curves, teacher, ema_net.layout, f"step {step}: sampled (solid) vs teacher (dashed)")
    png = out_dir / f"curves_{step}.png"
    fig.savefig(png, dpi=80)
    media: dict[str, Any] = {"preview/curves": wandb.Image(str(png))}
    if "stems_a" in item:
        mixer = DifferentiableDJMixer()
        audio = mixer(item["stems_a"][None], item["stems_b"][None], curves[None], layout=ema_net.layout,
                      bpm=item["bpm"])[0]
        audio = audio / max(1.0, float(audio.abs().max()))
        media["preview/sampled_mix"] = wandb.Audio(audio.T.numpy(), sample_rate=44_100, caption=f"step {step}")
        if "target" in item:
            target = item["target"] / max(1.0, float(item["target"].abs().max()))
            media["preview/teacher_mix"] = wandb.Audio(target.T.numpy(), sample_rate=44_100, caption="teacher")
    return media


# -- the run -----------------------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> int:
    check_output(args)  # before any work: a refused run leaves the folder exactly as it was
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(args.device, local_rank)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with contextlib.ExitStack() as cleanup:  # closes metrics.jsonl and finishes wandb, also on errors
            return _train(args, rank, world, device, cleanup)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device,
           cleanup: contextlib.ExitStack) -> int:
    out = args.output
    master = rank == 0

    # Resume point: read (and check) the checkpoint before anything is written.
    resume_path, saved = None, None
    if args.resume == "auto":
        resume_path, saved = _auto_resume(out)
        log.info("--resume auto: %s", resume_path or f"no {out / 'last.pt'} yet, starting fresh")
    elif args.resume:
        resume_path = Path(args.resume)
        saved = read_checkpoint(resume_path)
    saved_extra = dict(saved.get("extra") or {}) if saved else {}
    fill_run_flags(args, dict(saved_extra.get("run") or {}))
    init, new_parts = None, ()
    if args.init is not None and resume_path is None:
        init = read_checkpoint(args.init)
        cfg = build_config(args, init["config"])
        if cfg.train.train_only and not any(c.split("=")[0].strip() == "train.train_only" for c in args.config):
            # what the checkpoint's run trained is no default for a new run (a fitted head would freeze the rest)
            cfg = cfg.override({"train.train_only": ""})
        init_cfg = config_from_dict(init["config"])
        if cfg.model.move_head and not init_cfg.model.move_head:  # a move head fitted to a trained model
            new_parts = ("move_head",)
            init_cfg = init_cfg.replace(model=init_cfg.model.replace(move_head=True))
        problems = config_mismatches(init_cfg, cfg)
        if problems:
            raise UsageError(f"--init {args.init}: the flags change the model it holds: " + "; ".join(problems))
    else:
        if args.init is not None:
            log.info("resuming %s: --init %s is not used again", resume_path, args.init)
        cfg = build_config(args, saved["config"] if saved else None)
    del saved  # the full state is read again by load_checkpoint below
    tc = cfg.train
    amp = bool(args.amp) and device.type == "cuda"
    if args.amp and not amp:
        log.warning("--amp is bf16 autocast on CUDA; ignored on %s", device)

    train_set, val_set, preview_set = make_datasets(args, cfg)
    batches_per_epoch = (math.ceil(len(train_set) / world)) // tc.batch_size
    if batches_per_epoch < 1:
        raise UsageError(f"{len(train_set)} training pairs over {world} process(es) do not fill one batch of "
                         f"{tc.batch_size}")

    torch.manual_seed(tc.seed)
    net = TransitionDiffusion(cfg).to(device)
    if init is not None:  # both copies start from the weights inference would use
        load_weights(net, init, args.init, new_parts=new_parts)
        log.info("fine-tuning from %s (step %s of its run)", args.init, init.get("step", "?"))
        del init
    if tc.train_only == "move_head":  # everything else frozen: the model's curves stay exactly as they were
        if net.move_head is None:
            raise UsageError("train.train_only=move_head needs --config model.move_head=true")
        for name, p in net.named_parameters():
            p.requires_grad_(name.startswith("move_head."))
        log.info("fitting the move head only (%d parameters); every other weight is frozen",
                 sum(p.numel() for p in net.move_head.parameters()))
    ema = create_ema(net, tc.ema_decay)
    decay, no_decay = [], []
    for p in (p for p in net.parameters() if p.requires_grad):
        (decay if p.dim() >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tuple(tc.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.steps))
    step, epoch, start_batch = 0, 0, 0
    best, best_step = math.inf, None
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, net, ema=ema, optimizer=optimizer, scheduler=scheduler,
                               map_location=device)
        step = ckpt.step
        best = saved_extra.get("best_val") if saved_extra.get("best_val") is not None else math.inf
        best_step = saved_extra.get("best_step")
        data = ckpt.data_state
        epoch, start_batch = int(data.get("epoch", 0)), int(data.get("batch", 0))
        layout_now = {"world_size": world, "batch_size": tc.batch_size, "items": len(train_set)}
        layout_then = {k: data.get(k) for k in layout_now}
        if layout_then != layout_now:
            log.warning("data order cannot continue exactly (was %s, now %s): starting the next epoch",
                        layout_then, layout_now)
            epoch, start_batch = epoch + (start_batch > 0), 0
        log.info("resumed %s at step %d (epoch %d, batch %d)", resume_path, step, epoch, start_batch)
    if start_batch >= batches_per_epoch:
        epoch, start_batch = epoch + 1, 0
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net

    sampler = EpochBatches(len(train_set), tc.batch_size, tc.seed, rank, world, epoch, start_batch)
    workers = tc.num_workers
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        pin_memory=device.type == "cuda", worker_init_fn=_ignore_sigint if workers else None,
                        generator=torch.Generator().manual_seed(tc.seed))  # a generator: no global RNG draw
    val_loader = None
    if val_set is not None:
        val_loader = DataLoader(val_set, batch_size=tc.batch_size, sampler=list(range(rank, len(val_set), world)),
                                collate_fn=collate, num_workers=workers, persistent_workers=workers > 0,
                                worker_init_fn=_ignore_sigint if workers else None,
                                generator=torch.Generator().manual_seed(tc.seed))

    # Outputs (rank 0): config.json, metrics.jsonl, wandb.
    run = None
    metrics = None
    if master:
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite:  # only now, once the new run has checked its inputs: a failed start keeps the old run
            old = run_files(out)
            for path in old:
                path.unlink()
            if old:
                log.info("--overwrite: deleted %s of the previous run in %s", ", ".join(p.name for p in old), out)
        # Temporaries of saves a kill interrupted (.last.pt.x1y2.tmp, up to a checkpoint's size each): no process of
        # this run writes any yet, so every one left is stale.
        stale = [p for pattern in (".last.pt.*.tmp", ".best.pt.*.tmp", ".checkpoint_*.pt.*.tmp", ".config.json.*.tmp",
                                   ".metrics.jsonl.*.tmp") for p in out.glob(pattern) if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary file(s) of interrupted saves in %s", len(stale), out)
        config_json = {**config_to_dict(cfg), "run": {**run_flags(args), "world_size": world,
                                                      "device": str(device)}}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".config.json.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(config_json, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / "config.json")
        metrics = cleanup.enter_context(contextlib.closing(MetricsLog(out / "metrics.jsonl",
                                                                       step if resume_path else None)))
        if args.wandb:
            import wandb

            project, _, name = args.wandb.partition("/")
            run_id = saved_extra.get("wandb_id") if resume_path else None
            run = wandb.init(project=project, name=name or None, dir=str(out), config=config_json,
                             id=run_id, resume="allow" if run_id else None)
            cleanup.push(lambda exc_type, *_: run.finish(exit_code=1 if exc_type else 0))
    per_step = tc.batch_size * args.grad_accum * world
    log.info("%s model, %.2f M parameters, %d process(es) on %s, %d pairs/step (%d x %d accum x %d), "
             "%d steps%s", cfg.name, sum(p.numel() for p in net.parameters()) / 1e6, world, device, per_step,
             tc.batch_size, args.grad_accum, world, tc.steps, f", from step {step}" if step else "")

    def save(path: Path, reason: str) -> Path:
        extra = {"run": run_flags(args), "best_val": None if math.isinf(best) else best, "best_step": best_step,
                 "wandb_id": run.id if run is not None else None, "reason": reason}
        epoch_now, batch_now = divmod(consumed, batches_per_epoch)
        data_state = {"epoch": epoch_now, "batch": batch_now, "world_size": world, "batch_size": tc.batch_size,
                      "items": len(train_set), "seed": tc.seed}
        return save_checkpoint(path, net, ema=ema, optimizer=optimizer, scheduler=scheduler, step=step, config=cfg,
                               data_state=data_state, extra=extra)

    def save_last(reason: str) -> Path:
        """checkpoint_{step}.pt (newest --keep kept) and last.pt as a link to it; only last.pt with --keep 0."""
        if args.keep <= 0:
            return save(out / "last.pt", reason)
        path = save(out / f"checkpoint_{step}.pt", reason)
        link_atomic(path, out / "last.pt")
        prune_checkpoints(out, args.keep)
        return path

    consumed = epoch * batches_per_epoch + start_batch  # batches this rank has taken, counted from epoch 0
    first_step = step
    gen = torch.Generator(device=device)
    sums = torch.zeros(6, device=device)  # loss, mse, smooth, audio, move, grad norm over the logging interval
    n_summed, busy, rate = 0, 0.0, None  # busy: seconds spent in steps (data + compute) since the last log
    batches = iter(loader)
    bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=not master)
    cleanup.callback(bar.close)  # an error line after the bar starts on a line of its own
    with StopSignal() as stop, logging_redirect_tqdm():
        while step < tc.steps:
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            torch.manual_seed(derive_seed(tc.seed, rank, step, 0))  # dropout: a function of (seed, rank, step)
            for micro in range(args.grad_accum):
                batch = model_batch(next(batches), device, cfg.model.n_styles > 0)
                consumed += 1
                gen.manual_seed(derive_seed(tc.seed, rank, step, micro + 1))
                sync = micro == args.grad_accum - 1 or world == 1
                with contextlib.nullcontext() if sync else model.no_sync():
                    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                        losses = model(batch, generator=gen)
                    (losses["loss"] / args.grad_accum).backward()
                sums[:5] += torch.stack([losses[k].detach().float() for k in LOGGED_LOSSES]) / args.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
            if not torch.isfinite(grad_norm):  # stop before the weights (and then every checkpoint) turn NaN
                raise TrainingError(f"non-finite gradients at step {step + 1} (a pair with NaN/Inf values, or a "
                                    f"learning rate too high); the checkpoints in {out} are from before it")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            ema.update_parameters(net)
            step += 1
            sums[5] += grad_norm.detach().float()
            n_summed += 1
            dt = time.perf_counter() - t0
            busy += dt
            rate = per_step / dt if rate is None else 0.9 * rate + 0.1 * per_step / dt
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.steps:
                mean = _reduce_mean(sums / n_summed, world).tolist()
                record = {"kind": "train", "step": step, "epoch": consumed / batches_per_epoch, "loss": mean[0],
                          "mse": mean[1], "smooth": mean[2], "audio": mean[3], "move": mean[4], "grad_norm": mean[5],
                          "lr": lr,
                          "samples_per_s": per_step * n_summed / busy}
                sums.zero_()
                n_summed, busy = 0, 0.0
                if master:
                    metrics.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                    if run is not None:
                        run.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "step")}, step=step)

            signalled = stop.received is not None
            if world > 1:  # a signal to any rank stops every rank at the same step
                flag = torch.tensor([float(signalled)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signalled = bool(flag.item())
            stopping = signalled or (args.stop_after is not None and step - first_step >= args.stop_after)
            improved = False
            # A due validation runs even after a signal: a resumed run starts past this step and would never
            # validate it (best.pt and metrics.jsonl would differ from an uninterrupted run's).
            if val_loader is not None and (step % args.val_every == 0 or step == tc.steps):
                val = evaluate({"loss": net, "ema_loss": ema.module}, val_loader, device, cfg, world, amp)
                improved = val["ema_loss"] < best
                if improved:
                    best, best_step = val["ema_loss"], step
                if master:
                    record = {"kind": "val", "step": step, "val_loss": val["loss"], "val_ema_loss": val["ema_loss"],
                              "best_val_ema_loss": best}
                    metrics.write(record)
                    log.info("step %d: val loss %.4f, EMA %.4f%s", step, val["loss"], val["ema_loss"],
                             " (best)" if improved else "")
                    if run is not None:
                        media = {}
                        if preview_set is not None:
                            media = preview(ema.module, preview_set[0], cfg, args.sample_steps, tc.seed,
                                            out / "previews", step)
                        run.log({"val/loss": val["loss"], "val/ema_loss": val["ema_loss"], **media}, step=step)
            if master:
                path = None
                if step % tc.checkpoint_every == 0 or step == tc.steps or stopping:
                    path = save_last("stop" if stopping else "periodic")
                if improved:  # best.pt: the same file as this step's checkpoint, or its own save
                    if path is not None:
                        link_atomic(path, out / "best.pt")
                    else:
                        save(out / "best.pt", "best")
            if stopping:
                break
    bar.close()
    if master:
        reason = "stopped by signal" if stop.received is not None else "stopped" if step < tc.steps else "done"
        log.info("%s at step %d; checkpoints in %s", reason, step, out)
    if world > 1:
        dist.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return train(args)
    except (UsageError, CheckpointError) as exc:
        print(f"train.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (TrainingError, DataError) as exc:
        print(f"train.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk or lost permissions mid-run: one line (last.pt stays the last good one)
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
