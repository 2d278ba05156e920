"""Checkpoint tests: bitwise round trip, weights_only loading, atomic writes, clear mismatch errors,
EMA weights for inference, exact resume (same loss curve), weight export."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import model.checkpoint as ckpt_mod
from model import (
    CheckpointError,
    TrackFeatures,
    create_ema,
    create_model,
    export_weights,
    get_config,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from model.checkpoint import read_checkpoint

P = 58


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(seed: int = 0, size: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"feats_a": TrackFeatures.random(size, 8, generator=g),
            "feats_b": TrackFeatures.random(size, 8, generator=g),
            "curves": torch.rand(size, 16, P, generator=g)}


def training_state(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = get_config("tiny", **overrides)
    model = create_model(cfg)
    ema = create_ema(model, decay=0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    return model, ema, opt, sched


def train_steps(model, ema, opt, sched, generator, n: int, data_seed: int = 0) -> list[float]:
    losses = []
    for i in range(n):
        loss = model(batch(data_seed + i), generator=generator)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(model)
        losses.append(loss.item())
    return losses


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_is_bitwise_and_weights_only(tmp_path):
    model, ema, opt, sched = training_state()
    g = torch.Generator().manual_seed(1)
    train_steps(model, ema, opt, sched, g, 2)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, ema=ema, optimizer=opt, scheduler=sched, step=2,
                           data_state={"epoch": 0, "order": [3, 1, 2]}, generators={"loss": g},
                           extra={"note": "x"})
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == ckpt_mod.FORMAT_VERSION and raw["layout"] == "full"
    assert isinstance(raw["config"], dict) and raw["config"]["model"]["hidden_dim"] == 128

    model2, ema2, opt2, sched2 = training_state(seed=5)
    g2 = torch.Generator().manual_seed(99)
    loaded = load_checkpoint(path, model2, ema=ema2, optimizer=opt2, scheduler=sched2, generators={"loss": g2})
    assert loaded.step == 2 and loaded.data_state == {"epoch": 0, "order": [3, 1, 2]}
    assert loaded.config == model.config and loaded.extra == {"note": "x"}
    assert same_state(model.state_dict(), model2.state_dict())
    assert same_state(ema.module.state_dict(), ema2.module.state_dict())
    assert torch.equal(ema.n_averaged, ema2.n_averaged)
    assert sched2.state_dict() == sched.state_dict()
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert all(same_state(s1["state"][k], s2["state"][k]) for k in s1["state"])
    assert torch.equal(g.get_state(), g2.get_state())


def test_rng_states_are_restored(tmp_path):
    model = create_model(get_config("tiny"))
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np_gen = np.random.default_rng(4)
    path = save_checkpoint(tmp_path / "c.pt", model, generators={"np": np_gen})
    expected = (torch.rand(3), np.random.rand(3), random.random(), np_gen.random(3))
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    np_gen2 = np.random.default_rng(0)
    load_checkpoint(path, model, generators={"np": np_gen2})
    got = (torch.rand(3), np.random.rand(3), random.random(), np_gen2.random(3))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and np.array_equal(expected[3], got[3])


def test_resume_continues_the_same_loss_curve(tmp_path):
    model, ema, opt, sched = training_state()
    g = torch.Generator().manual_seed(1)
    train_steps(model, ema, opt, sched, g, 2)
    save_checkpoint(tmp_path / "c.pt", model, ema=ema, optimizer=opt, scheduler=sched, step=2, generators={"loss": g})
    reference = train_steps(model, ema, opt, sched, g, 3, data_seed=2)

    model2, ema2, opt2, sched2 = training_state(seed=7)
    g2 = torch.Generator()
    start = load_checkpoint(tmp_path / "c.pt", model2, ema=ema2, optimizer=opt2, scheduler=sched2,
                            generators={"loss": g2}).step
    resumed = train_steps(model2, ema2, opt2, sched2, g2, 3, data_seed=start)
    assert resumed == reference
    assert same_state(ema.module.state_dict(), ema2.module.state_dict())


def test_atomic_write_leaves_no_temp_files_and_survives_a_failed_write(tmp_path, monkeypatch):
    model = create_model(get_config("tiny"))
    path = save_checkpoint(tmp_path / "c.pt", model, step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert load_checkpoint(path, model).step == 1


def test_non_plain_values_are_refused_before_writing(tmp_path):
    model = create_model(get_config("tiny"))
    with pytest.raises(TypeError, match=r"data_state.*'order'.*ndarray"):
        save_checkpoint(tmp_path / "c.pt", model, data_state={"order": np.arange(3)})
    assert not any(tmp_path.iterdir())


def test_config_mismatch_names_the_field(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", create_model(get_config("tiny")))
    wider = create_model(get_config("tiny", model__hidden_dim=64))
    with pytest.raises(CheckpointError, match="hidden_dim: checkpoint 128, model 64"):
        load_checkpoint(path, wider)
    eps = create_model(get_config("tiny", diffusion__prediction="epsilon"))
    with pytest.raises(CheckpointError, match="diffusion.prediction: checkpoint 'v', model 'epsilon'"):
        load_checkpoint(path, eps)
    # Sampler settings and dropout may differ: they do not change the weights.
    load_checkpoint(path, create_model(get_config("tiny", diffusion__guidance_scale=4.0, model__dropout=0.1)))


def test_tensor_shape_mismatch_names_the_parameter(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", create_model(get_config("tiny")))
    raw = torch.load(path, weights_only=True)
    raw["model"]["denoiser.x_embedder.weight"] = torch.zeros(3, 3)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"denoiser\.x_embedder\.weight: checkpoint \[3, 3\], model \[128, 116\]"):
        load_checkpoint(path, create_model(get_config("tiny")))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


def test_a_config_this_version_cannot_build_is_a_checkpoint_error(tmp_path):
    """A checkpoint from another version (a field unknown here) or with a config its validation refuses fails in
    one line naming the file, through load_model and load_checkpoint alike (the CLIs catch CheckpointError)."""
    path = save_checkpoint(tmp_path / "c.pt", create_model(get_config("tiny")))
    raw = torch.load(path, weights_only=True)
    unknown = {**raw, "config": {**raw["config"], "model": {**raw["config"]["model"], "bogus_field": 1}}}
    torch.save(unknown, tmp_path / "unknown.pt")
    for load in (load_model, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"unknown\.pt: its config does not fit this version.*bogus_field"):
            load(tmp_path / "unknown.pt")
    bad = {**raw, "config": {**raw["config"], "model": {**raw["config"]["model"], "hidden_dim": 999}}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: its config") as error:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(error.value)


def test_load_model_uses_ema_weights_in_eval_mode(tmp_path):
    model, ema, opt, sched = training_state()
    train_steps(model, ema, opt, sched, torch.Generator().manual_seed(0), 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # raw weights now far from the EMA
    path = save_checkpoint(tmp_path / "c.pt", model, ema=ema, optimizer=opt, step=2)
    loaded = load_model(path)
    assert not loaded.training
    assert same_state(loaded.state_dict(), ema.module.state_dict())
    assert not same_state(loaded.state_dict(), model.state_dict())
    built = load_checkpoint(path)  # no model given: built from the stored config, raw weights
    assert same_state(built.model.state_dict(), model.state_dict())


def test_export_weights_is_small_and_loads_the_ema(tmp_path):
    model, ema, opt, sched = training_state()
    train_steps(model, ema, opt, sched, torch.Generator().manual_seed(0), 1)
    full = save_checkpoint(tmp_path / "c.pt", model, ema=ema, optimizer=opt, scheduler=sched, step=1)
    out = export_weights(full, tmp_path / "weights.pt")
    raw = torch.load(out, weights_only=True)
    assert raw["kind"] == "weights" and raw.get("optimizer") is None and raw["layout"] == "full"
    assert out.stat().st_size < 0.5 * full.stat().st_size
    assert same_state(load_model(out).state_dict(), ema.module.state_dict())
    half = export_weights(full, tmp_path / "half.pt", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * out.stat().st_size
    loaded = load_model(half)
    assert next(loaded.parameters()).dtype == torch.float32
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, ema.module.state_dict()[name], atol=2e-3, rtol=2e-3)


def test_export_cli_writes_half_weights_and_fails_in_one_line(tmp_path, caplog):
    model, ema, opt, sched = training_state()
    full = save_checkpoint(tmp_path / "c.pt", model, ema=ema, optimizer=opt, scheduler=sched, step=1)
    assert ckpt_mod.main([str(full), str(tmp_path / "w.pt"), "--fp16"]) == 0
    assert next(iter(torch.load(tmp_path / "w.pt", weights_only=True)["ema"].values())).dtype == torch.float16
    assert ckpt_mod.main([str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 1
    err = caplog.records[-1].getMessage()
    assert err.startswith("error:") and "missing.pt" in err and "\n" not in err and not (tmp_path / "x.pt").exists()


def test_a_corrupt_file_is_named_without_torchs_advice(tmp_path):
    """torch's message for a random file advises weights_only=False (unsafe for untrusted files): not repeated."""
    garbage = tmp_path / "last.pt"
    garbage.write_bytes(bytes(range(256)) * 12)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(garbage)
    text = str(info.value)
    assert text.startswith(f"{garbage}: not a readable checkpoint (corrupt, truncated or not a torch file")
    assert "weights_only" not in text and "\n" not in text
