"""train.py: exact resume, signals, checkpoints (last/best/keep-K), wandb offline, DDP, one-line errors.

Runs are tiny (the 'tiny' preset with 32 mel bins, 4 synthetic pairs of 12 s tracks reused every epoch, batches
of 2) and call train.main in-process where they can. The synthetic pairs are made once per module and shared
through --synthetic-cache; torch runs single-threaded here (faster than 2 threads on a loaded machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic_cache")


def tiny_args(output: Path, cache: Path, *extra: str) -> list[str]:
    return ["--synthetic", "--synthetic-fixed", "--synthetic-cache", str(cache), "--synthetic-length", "4",
            "--synthetic-val-length", "2", "--track-duration", "12", "--model-size", "tiny",
            "--config", "model.n_mels=32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
            "--log-every", "1", "--output", str(output), *extra]


def records(output: Path, kind: str = "train") -> list[dict]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- exact resume ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory, cache) -> tuple[Path, Path]:
    """20 steps straight, and 10 steps + `--resume auto` + 10 steps, with dropout, augmentation and grad-accum on."""
    root = tmp_path_factory.mktemp("resume")
    common = ("--steps", "20", "--warmup-steps", "4", "--grad-accum", "2", "--augment", "--val-every", "5",
              "--save-every", "5", "--config", "model.dropout=0.1")
    straight, split = root / "straight", root / "split"
    assert train.main(tiny_args(straight, cache, *common)) == 0
    assert train.main(tiny_args(split, cache, *common, "--stop-after", "10")) == 0
    assert load(split / "last.pt")["step"] == 10
    assert train.main(tiny_args(split, cache, *common, "--resume", "auto")) == 0
    return straight, split


def test_resume_is_exact(resumed_runs):
    straight, split = resumed_runs
    a, b = load(straight / "last.pt"), load(split / "last.pt")
    assert a["step"] == b["step"] == 20
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"], b["ema"])
    assert torch.equal(a["ema_n_averaged"], b["ema_n_averaged"])
    assert a["data_state"] == b["data_state"]
    keys = ("step", "loss", "mse", "smooth", "grad_norm", "lr")
    losses_a = [[r[k] for k in keys] for r in records(straight)]
    losses_b = [[r[k] for k in keys] for r in records(split)]
    assert [r[0] for r in losses_a] == list(range(1, 21))
    assert losses_a == losses_b
    assert records(straight, "val") == records(split, "val")
    config = json.loads((split / "config.json").read_text())
    assert config["model"]["dropout"] == 0.1 and config["train"]["steps"] == 20 and config["run"]["grad_accum"] == 2


def test_resume_with_another_model_size_fails_in_one_line(resumed_runs, cache, tmp_path, capsys):
    _, split = resumed_runs
    before = (split / "last.pt").read_bytes()
    rc = train.main(tiny_args(tmp_path / "other", cache, "--model-size", "small", "--resume", str(split / "last.pt")))
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1
    assert "last.pt" in err and "hidden_dim: checkpoint 128, model 192" in err
    assert (split / "last.pt").read_bytes() == before
    assert not (tmp_path / "other").exists()


def test_resume_auto_picks_last_pt(tmp_path, cache, caplog):
    out = tmp_path / "run"
    common = ("--steps", "8", "--save-every", "1", "--keep", "5", "--val-every", "100")
    assert train.main(tiny_args(out, cache, *common, "--stop-after", "3")) == 0
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == [f"checkpoint_{i}.pt" for i in (1, 2, 3)]
    train.link_atomic(out / "checkpoint_2.pt", out / "last.pt")  # last.pt older than the newest numbered one
    with caplog.at_level("INFO", logger="train"):
        assert train.main(tiny_args(out, cache, *common, "--resume", "auto", "--stop-after", "1")) == 0
    assert "last.pt at step 2" in caplog.text
    assert [r["step"] for r in records(out)] == [1, 2, 3]  # step 3 was dropped and done again
    assert load(out / "last.pt")["step"] == 3


def test_resume_auto_falls_back_to_the_newest_readable_checkpoint(tmp_path, cache, caplog):
    out = tmp_path / "run"
    common = ("--steps", "6", "--save-every", "1", "--keep", "5", "--val-every", "100")
    assert train.main(tiny_args(out, cache, *common, "--stop-after", "3")) == 0
    (out / "last.pt").unlink()  # (it may be a hard link of checkpoint_3.pt: replace, do not overwrite in place)
    (out / "last.pt").write_bytes(b"\x00" * 1000)  # a copy cut short
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"\x00" * 1000)  # a save a kill interrupted
    with caplog.at_level("INFO", logger="train"):
        assert train.main(tiny_args(out, cache, *common, "--resume", "auto", "--stop-after", "1")) == 0
    assert "resuming from checkpoint_3.pt instead" in caplog.text
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4] and load(out / "last.pt")["step"] == 4
    assert not list(out.glob(".*.tmp"))  # stale temporaries removed


def test_non_finite_gradients_stop_the_run_before_the_weights_turn_nan(tmp_path, cache, monkeypatch, capsys):
    out = tmp_path / "run"
    common = ("--steps", "6", "--save-every", "1", "--val-every", "100")
    assert train.main(tiny_args(out, cache, *common, "--stop-after", "2")) == 0
    before = (out / "last.pt").read_bytes()
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: real(*a, **k) * float("nan"))
    assert train.main(tiny_args(out, cache, *common, "--resume", "auto")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: non-finite gradients at step 3"), err
    assert (out / "last.pt").read_bytes() == before  # the last good checkpoint stays


def test_a_pair_with_nan_curves_is_named_not_trained_on(tmp_path, capsys):
    import pipeline

    data = tmp_path / "processed"
    assert pipeline.main(["--synthetic", "4", "--output", str(data), "--duration", "14", "--bars", "4",
                          "--n-frames", "32", "--all-to", "train", "--max", "2", "--seed", "3"]) == 0
    pair = sorted(data.glob("pair_*"))[0]
    curves = np.load(pair / "params.npy")
    curves[3, 5] = np.nan
    np.save(pair / "params.npy", curves)
    args = ["--data", str(data), "--model-size", "tiny", "--config", "model.n_mels=32", "--config",
            "model.n_frames=32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--steps", "2",
            "--val-every", "100", "--output", str(tmp_path / "run")]
    assert train.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: ") and "params.npy: non-finite values" in err, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_signal_at_a_validation_step_still_validates_it(tmp_path, cache, monkeypatch):
    """A stop signal arriving in step 4 (validation due): the run validates step 4, saves, stops; the resumed run
    then has the same validation records and best.pt as one never interrupted."""
    common = ("--steps", "8", "--val-every", "4", "--save-every", "100")
    straight = tmp_path / "straight"
    assert train.main(tiny_args(straight, cache, *common)) == 0

    class SignalAtStep4(train.StopSignal):
        reads = 0

        @property
        def received(self):
            SignalAtStep4.reads += 1
            return 2 if SignalAtStep4.reads == 4 else None  # read once per step: SIGINT during step 4

        @received.setter
        def received(self, value):
            pass

    split = tmp_path / "split"
    monkeypatch.setattr(train, "StopSignal", SignalAtStep4)
    assert train.main(tiny_args(split, cache, *common)) == 0
    assert load(split / "last.pt")["step"] == 4 and [r["step"] for r in records(split, "val")] == [4]
    monkeypatch.undo()
    assert train.main(tiny_args(split, cache, *common, "--resume", "auto")) == 0
    assert [r["step"] for r in records(split, "val")] == [r["step"] for r in records(straight, "val")] == [4, 8]
    assert load(split / "best.pt")["step"] == load(straight / "best.pt")["step"]


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path, cache):
    out = tmp_path / "fresh"
    assert train.main(tiny_args(out, cache, "--steps", "2", "--resume", "auto", "--val-every", "100")) == 0
    assert [r["step"] for r in records(out)] == [1, 2]


OLD_RUN = ("best.pt", "checkpoint_18000.pt", "checkpoint_20000.pt", "last.pt", "metrics.jsonl")


def old_run(folder: Path) -> dict[str, bytes]:
    """A folder holding another run's files (any content: a refused or overwriting run never reads them)."""
    folder.mkdir()
    for name in (*OLD_RUN, "notes.txt"):
        (folder / name).write_bytes(f"old {name}".encode())
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_new_run_into_a_run_folder_is_refused_and_changes_nothing(tmp_path, cache, capsys):
    out = tmp_path / "run"
    before = old_run(out)
    for extra in ((), ("--init", str(tmp_path / "model.pt")), ("--overwrite", "--resume", "auto")):
        rc = train.main(tiny_args(out, cache, "--steps", "2", *extra))
        err = capsys.readouterr().err.strip()
        assert rc != 0 and len(err.splitlines()) == 1, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no file added, removed or changed
    assert err.endswith("--overwrite starts a new run, --resume continues one: give one of them")
    rc = train.main(tiny_args(out, cache, "--steps", "2"))
    assert f"error: {out} already holds a run (last.pt, best.pt, checkpoint_18000.pt, checkpoint_20000.pt, " \
           "metrics.jsonl); continue it with --resume auto, replace it with --overwrite, or choose another --output" \
           in capsys.readouterr().err


def test_overwrite_replaces_the_old_run(tmp_path, cache):
    """Its checkpoints and metrics go first (user files stay), so pruning and --resume auto see the new run only."""
    out = tmp_path / "run"
    old_run(out)
    assert train.main(tiny_args(out, cache, "--steps", "2", "--keep", "2", "--overwrite")) == 0
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_2.pt"]
    assert load(out / "last.pt")["step"] == 2 and load(out / "best.pt")["step"] == 2
    assert [r["step"] for r in records(out)] == [1, 2]
    assert (out / "notes.txt").read_bytes() == b"old notes.txt"


def test_resume_auto_continues_a_run_folder(tmp_path, cache):
    out = tmp_path / "run"
    assert train.main(tiny_args(out, cache, "--steps", "3", "--stop-after", "2", "--val-every", "100")) == 0
    assert train.main(tiny_args(out, cache, "--steps", "3", "--resume", "auto", "--val-every", "100")) == 0
    assert load(out / "last.pt")["step"] == 3
    assert [r["step"] for r in records(out)] == [1, 2, 3]


def test_init_fine_tunes_an_exported_model(resumed_runs, cache, tmp_path, capsys):
    """--init: a new run (steps from 1, fresh optimizer) whose weights start at the export's (fp16) EMA weights."""
    from model import export_weights

    straight, _ = resumed_runs
    weights = export_weights(straight / "last.pt", tmp_path / "shipped.pt", dtype=torch.float16)
    out = tmp_path / "ft"
    args = tiny_args(out, cache, "--init", str(weights), "--steps", "2", "--lr", "1e-7", "--warmup-steps", "1",
                     "--val-every", "100")
    i = args.index("--model-size")
    assert train.main(args[:i] + args[i + 2:]) == 0  # no --model-size: the model is the export's
    assert [r["step"] for r in records(out)] == [1, 2]
    start, tuned = load(weights)["ema"], load(out / "last.pt")
    assert tuned["step"] == 2 and tuned["config"]["model"]["dropout"] == 0.1  # the export's config came along
    for name, value in start.items():  # two steps at lr 1e-7 leave the weights where --init put them
        assert torch.allclose(tuned["model"][name], value.float(), atol=1e-5), name
    fresh = load(straight / "last.pt")["ema"]
    assert any(not torch.allclose(tuned["model"][k], fresh[k], atol=1e-5) for k in fresh)  # ... and fp16 casts show
    capsys.readouterr()
    rc = train.main(tiny_args(tmp_path / "other", cache, "--init", str(weights), "--model-size", "small"))
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "hidden_dim: checkpoint 128, model 192" in err
    assert not (tmp_path / "other").exists()


def test_a_move_head_fitted_to_a_trained_model_leaves_its_curves_as_they_were(cache, tmp_path):
    """--init + model.move_head + train.train_only=move_head: only the new head learns; every other weight (raw and
    EMA) is the base model's EMA, bit for bit."""
    base, out = tmp_path / "base", tmp_path / "head"
    styled = ("--config", "model.n_styles=9", "--val-every", "100")
    assert train.main(tiny_args(base, cache, *styled, "--steps", "2")) == 0
    assert train.main(tiny_args(out, cache, *styled, "--init", str(base / "last.pt"), "--config",
                                "model.move_head=true", "--config", "train.train_only=move_head", "--steps", "3",
                                "--lr", "1e-2", "--warmup-steps", "1")) == 0
    start, fitted = load(base / "last.pt")["ema"], load(out / "last.pt")
    for name, value in start.items():
        assert torch.equal(fitted["model"][name], value) and torch.equal(fitted["ema"][name], value), name
    head = [k for k in fitted["model"] if k.startswith("move_head.")]
    assert head and any(not torch.equal(fitted["model"][k], fitted["ema"][k]) for k in head)  # it trained
    assert all(r["move"] > 0 and r["mse"] == 0 for r in records(out))
    again = tmp_path / "again"  # a new run from the fitted model trains everything again
    assert train.main(tiny_args(again, cache, *styled, "--init", str(out / "last.pt"), "--config",
                                "model.move_head=true", "--steps", "1", "--warmup-steps", "1")) == 0
    assert load(again / "last.pt")["config"]["train"]["train_only"] == "" and records(again)[0]["mse"] > 0


# -- checkpoints, validation and wandb ---------------------------------------------------------------------------
SCRIPTED_VAL = [0.5, 0.3, 0.4]  # validation losses at steps 2, 4, 6: best.pt must stay at step 4


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("wandb") / "run"
    losses = iter(SCRIPTED_VAL)

    def scripted_evaluate(nets, *args, **kwargs):
        value = next(losses)
        return {name: value for name in nets}

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setattr(train, "evaluate", scripted_evaluate)
        args = tiny_args(out, cache, "--steps", "6", "--val-every", "2", "--save-every", "1", "--keep", "2",
                         "--wandb", "djmix-test/tiny", "--sample-steps", "4")
        assert train.main(args) == 0
    return out


def test_keep_k_prunes_old_checkpoints(wandb_run):
    assert sorted(p.name for p in wandb_run.glob("checkpoint_*.pt")) == ["checkpoint_5.pt", "checkpoint_6.pt"]
    assert load(wandb_run / "last.pt")["step"] == 6
    assert not list(wandb_run.glob(".*.tmp"))


def test_best_pt_follows_the_validation_loss(wandb_run):
    val = records(wandb_run, "val")
    assert [(r["step"], r["val_ema_loss"]) for r in val] == list(zip((2, 4, 6), SCRIPTED_VAL))
    best = load(wandb_run / "best.pt")
    assert best["step"] == 4
    assert best["extra"]["best_val"] == pytest.approx(0.3)
    assert load(wandb_run / "last.pt")["extra"]["best_step"] == 4


def test_wandb_offline_run_holds_the_metrics_and_media(wandb_run):
    runs = list((wandb_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    for key in (b"train/loss", b"train/lr", b"val/ema_loss", b"preview/curves", b"preview/sampled_mix"):
        assert key in data, key
    media = {p.suffix for p in (runs[0] / "files" / "media").rglob("*") if p.is_file()}
    assert {".png", ".wav"} <= media
    config = json.loads((wandb_run / "config.json").read_text())
    assert config["name"] == "tiny" and config["run"]["wandb"] == "djmix-test/tiny"


# -- signals, bad input, DDP -------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_sigint_saves_a_checkpoint_and_exits_0(tmp_path, cache):
    out = tmp_path / "run"
    args = tiny_args(out, cache, "--steps", "100000", "--save-every", "100000", "--val-every", "100000")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no training step within the time limit"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ckpt = load(out / "last.pt")
    assert ckpt["step"] >= 1 and ckpt["step"] == records(out)[-1]["step"]
    assert ckpt["extra"]["reason"] == "stop"
    assert "SIGINT" in err
    assert not list(out.glob(".*.tmp"))


def test_bad_input_is_one_line_and_non_zero(tmp_path, cache, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{not json")
    cases = [(["--data", str(tmp_path / "missing")], "manifest.json"),
             (["--data", str(corrupt)], "not valid JSON"),
             (["--synthetic", "--resume", str(tmp_path / "nope.pt")], "no such checkpoint"),
             ([], "--data PROCESSED_FOLDER or --synthetic")]
    for extra, message in cases:
        rc = train.main([*extra, "--output", str(tmp_path / "out"), "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("in the way")
    assert train.main(["--synthetic", "--output", str(tmp_path / "a_file" / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a_file is a file" in err, err


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, cache):
    out = tmp_path / "ddp"
    args = tiny_args(out, cache, "--steps", "4", "--val-every", "2", "--save-every", "2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]  # rank 0 writes, once per step
    assert [r["step"] for r in records(out, "val")] == [2, 4]
    ckpt = load(out / "last.pt")
    assert ckpt["step"] == 4 and ckpt["data_state"]["world_size"] == 2
    assert json.loads((out / "config.json").read_text())["run"]["world_size"] == 2


@pytest.mark.slow
def test_audio_loss_and_style_labels_train(tmp_path, cache):
    """The audio loss renders through the mixer (its buffers must exist before the EMA copy); styles are labels."""
    out = tmp_path / "audio"
    args = tiny_args(out, cache, "--steps", "2", "--val-every", "2", "--audio-loss-weight", "0.1",
                     "--config", "model.n_styles=9")
    assert train.main(args) == 0
    assert all(r["audio"] > 0 for r in records(out))
    assert load(out / "last.pt")["step"] == 2


def test_style_share_adds_forced_style_pairs(tmp_path, cache):
    """--style-share: extra pairs of another seed whose imposed recipe keeps its label (style_forced)."""
    args = train.parse_args(tiny_args(tmp_path / "run", cache, "--style-share", "0.5", "--config", "model.n_styles=9"))
    train.fill_run_flags(args, {})
    cfg = train.build_config(args, None)
    train_set, _, _ = train.make_datasets(args, cfg)
    assert len(train_set) == 8  # 4 + 4 * 0.5 / (1 - 0.5)
    main, extra = [train_set[(0, i)] for i in range(4)], [train_set[(0, i)] for i in range(4, 8)]
    assert not any(i["style_forced"] for i in main) and all(i["style_forced"] for i in extra)
    assert all(i["style"] >= 0 for i in extra)
    assert {i["pair_id"] for i in main}.isdisjoint({i["pair_id"] for i in extra})
    with pytest.raises(IndexError):
        train_set[(0, 8)]
    bad = train.parse_args(tiny_args(tmp_path / "bad", cache, "--style-share", "1"))
    train.fill_run_flags(bad, {})
    with pytest.raises(train.UsageError, match="style-share"):
        train.make_datasets(bad, cfg)


@pytest.mark.slow
def test_a_trained_model_answers_its_input_not_a_fixed_curve(tmp_path):
    """Issue 4's claim in miniature (benchmarks/learn_check.py measures it on held-out pairs): a tiny model trained
    on 16 synthetic pairs samples, for each of them, curves far closer to that pair's own teacher than the mean
    curve (the best fixed answer) and than the same network given the NULL conditioning."""
    from dataset import collate
    from model import load_model

    out = tmp_path / "run"
    args = ["--synthetic", "--synthetic-fixed", "--synthetic-cache", str(tmp_path / "cache"), "--synthetic-length",
            "16", "--synthetic-val-length", "0", "--track-duration", "12", "--model-size", "tiny", "--config",
            "model.n_mels=32", "--batch-size", "16", "--num-workers", "0", "--device", "cpu", "--steps", "800",
            "--lr", "2e-3", "--warmup-steps", "20", "--ema-decay", "0.98", "--keep", "0", "--save-every", "800",
            "--val-every", "800", "--log-every", "100", "--output", str(out)]
    assert train.main(args) == 0
    parsed = train.parse_args(args)
    train.fill_run_flags(parsed, {})
    items, _, _ = train.make_datasets(parsed, train.build_config(parsed, None))
    batch = collate([items[(0, i)] for i in range(16)])
    model = load_model(out / "last.pt")
    curves = batch["curves"]

    def mse(pred: torch.Tensor) -> float:
        return float((pred - curves).square().mean())

    kwargs = {"n_frames": curves.shape[1], "steps": 20}
    cond = model.sample(batch["feats_a"], batch["feats_b"], guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(0), **kwargs)
    null = model.sample(batch["feats_a"], batch["feats_b"], guidance_scale=0.0,
                        generator=torch.Generator().manual_seed(0), **kwargs)
    fixed = mse(curves.mean(0, keepdim=True).expand_as(curves))
    assert mse(cond) < 0.5 * fixed, (mse(cond), fixed)
    assert mse(cond) < 0.5 * mse(null), (mse(cond), mse(null))


def test_learn_check_trains_measures_and_exports_the_weights_inference_loads(tmp_path, cache):
    """The default model's recipe is one command: benchmarks/learn_check.py makes the pairs, trains, measures and
    (--export) writes the run's EMA weights in float16 where inference.py reads them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import learn_check

    from model import load_model
    from model.checkpoint import read_checkpoint

    out, weights = tmp_path / "run", tmp_path / "checkpoints" / "default.pt"
    report = learn_check.run(["--model-size", "tiny", "--config", "model.n_mels=32", "--train-pairs", "4",
                              "--eval-pairs", "2", "--steps", "2", "--batch-size", "2", "--track-duration", "12",
                              "--cache", str(cache), "--output", str(out), "--guidance", "0", "1", "--mean-of", "1",
                              "--jobs", "1",
                              "--sample-steps", "2", "--export", str(weights), "--json", str(tmp_path / "r.json")])
    assert report["sizes"]["steps_done"] == 2 and json.loads((tmp_path / "r.json").read_text())["sizes"]
    stored = read_checkpoint(weights)
    assert {t.dtype for t in stored["ema"].values() if t.is_floating_point()} == {torch.float16}
    ema = read_checkpoint(out / "last.pt")["ema"]
    model = load_model(weights)
    for name, value in model.state_dict().items():  # the EMA weights, to float16 rounding
        assert torch.allclose(value, ema[name], atol=1e-3), name
