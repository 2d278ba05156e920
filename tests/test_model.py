"""Model tests: shapes, adaLN-Zero init, per-sample guidance dropout, one batched CFG forward per DDIM step,
determinism, training on toy problems (v and epsilon), full-range outputs that follow the conditioning,
other frame counts, masking. Tiny configs, one torch thread: fast on a loaded 2-core machine."""

from __future__ import annotations

import json

import pytest
import torch

from model import (
    Conditioning,
    Config,
    TrackFeatures,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    create_model,
    get_config,
    smoothness_penalty,
)
from model.diffusion import median_smooth, tv_smooth

P = 58  # the full layout


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> Config:
    return get_config("tiny", **overrides)


def feats(batch: int, n_frames: int = 12, seed: int = 0) -> TrackFeatures:
    return TrackFeatures.random(batch, n_frames, generator=torch.Generator().manual_seed(seed))


def make_batch(batch: int = 4, n_frames: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"feats_a": feats(batch, seed=seed), "feats_b": feats(batch, seed=seed + 1),
            "curves": torch.rand(batch, n_frames, P, generator=g)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- config -------------------------------------------------------------------------------------------------------
def test_config_presets_round_trip_and_overrides():
    for name in ("tiny", "small", "base"):
        cfg = get_config(name)
        d = config_to_dict(cfg)
        assert config_from_dict(d) == cfg
        assert config_from_dict(json.loads(json.dumps(d))) == cfg  # plain values only
        assert cfg.model.n_params == P
    cfg = get_config("small").override({"model.hidden_dim": 96, "train.lr": 1e-4})
    assert (cfg.model.hidden_dim, cfg.train.lr) == (96, 1e-4)
    cfg = apply_overrides(cfg, ["diffusion.prediction=epsilon", "model.n_layers=3", "train.betas=[0.9, 0.95]"])
    assert (cfg.diffusion.prediction, cfg.model.n_layers, cfg.train.betas) == ("epsilon", 3, (0.9, 0.95))
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="hidden_size"):
        cfg.override({"model.hidden_size": 3})
    with pytest.raises(ValueError, match="prediction"):
        cfg.override({"diffusion.prediction": "x0"})
    with pytest.raises(ValueError, match="unknown layout"):
        cfg.override({"model.layout": "nope"})


def test_parameter_counts_of_presets():
    counts = {name: sum(p.numel() for p in create_model(name).parameters()) for name in ("small", "base")}
    assert 2e6 < counts["small"] < 6e6, counts
    assert 10e6 < counts["base"] < 15e6, counts


# -- features -----------------------------------------------------------------------------------------------------
def test_track_features_batching_pads_and_masks():
    a = TrackFeatures.random(1, 10, generator=gen(0))
    b = TrackFeatures.random(1, 14, generator=gen(1))
    items = [a.index_select([0])._map(lambda _, v: v[0]), b._map(lambda _, v: v[0])]  # unbatched
    batch = TrackFeatures.stack(items).validate()
    assert batch.stem_mels.shape == (2, 4, 128, 14) and batch.structure.shape == (2, 14, 6)
    assert batch.mask.tolist() == [[True] * 10 + [False] * 4, [True] * 14]
    assert torch.equal(batch.stem_mels[0, ..., :10], a.stem_mels[0])
    assert batch.repeat_interleave(3).batch_size == 6
    assert torch.equal(batch.index_select([1]).bpm, b.bpm)
    bad = TrackFeatures(**{**batch.__dict__, "key": torch.zeros(2, 12)})
    with pytest.raises(ValueError, match="key"):
        bad.validate()


# -- shapes and init ----------------------------------------------------------------------------------------------
def test_shapes_end_to_end_loss_and_sample():
    model = create_model(tiny())
    out = model(make_batch(), generator=gen(0))
    assert set(out) == {"loss", "mse", "smooth", "audio", "move", "cond_dropped"}
    assert out["loss"].shape == () and out["cond_dropped"].shape == (4,)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    curves = model.sample(feats(2), feats(2, seed=5), n_frames=20, steps=4, generator=gen(0))
    assert curves.shape == (2, 20, P) and curves.min() >= 0 and curves.max() <= 1


def test_adaln_zero_init_gives_exactly_zero_output():
    model = create_model(tiny())
    cond = model.encode(feats(3), feats(3, seed=1))
    x = torch.randn(3, 16, P)
    out = model.denoiser(x, torch.tensor([0, 500, 999]), cond)
    assert torch.equal(out, torch.zeros_like(out))
    block = model.denoiser.blocks[0]
    h = torch.randn(3, 8, model.config.model.hidden_dim)
    c = torch.randn(3, model.config.model.hidden_dim)
    assert torch.equal(block(h, c, cond.tokens, cond.mask), h)  # each block starts as the identity


# -- guidance dropout and CFG -------------------------------------------------------------------------------------
def test_conditioning_dropout_is_per_sample_and_uses_null_tokens():
    model = create_model(tiny(diffusion__cond_dropout=0.5))
    seen = {}
    model.denoiser.register_forward_hook(lambda mod, args, out: seen.update(cond=args[2]))
    out = model(make_batch(batch=64), generator=gen(3))
    dropped = out["cond_dropped"]
    assert 0 < int(dropped.sum()) < 64  # some, not all: decided per sample
    cond: Conditioning = seen["cond"]
    null_tokens = model.encoder.null_tokens[0, 0]
    null_pooled = model.encoder.null_pooled
    for i in range(64):
        is_null = bool(torch.all(cond.tokens[i] == null_tokens)) and torch.equal(cond.pooled[i], null_pooled)
        assert is_null == bool(dropped[i]), i
    other = model(make_batch(batch=64), generator=gen(4))["cond_dropped"]
    assert not torch.equal(dropped, other)


def test_cfg_is_one_batched_forward_per_step_and_encoder_runs_once():
    model = create_model(tiny())
    calls, encodes = [], []
    model.denoiser.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    model.encoder.register_forward_hook(lambda mod, args, out: encodes.append(1))
    model.sample(feats(3), feats(3, seed=1), n_frames=16, steps=7, guidance_scale=2.0, generator=gen(0))
    assert calls == [6] * 7 and len(encodes) == 1  # [cond; null] in one call per step
    calls.clear(), encodes.clear()
    model.sample(feats(3), feats(3, seed=1), n_frames=16, steps=5, guidance_scale=1.0, generator=gen(0))
    assert calls == [3] * 5 and len(encodes) == 1


def test_sampling_is_seeded_and_deterministic():
    model = create_model(tiny())
    torch.nn.init.normal_(model.denoiser.final_layer.linear.weight, std=0.1)  # a non-trivial network
    a, b = feats(2), feats(2, seed=1)
    for eta in (0.0, 1.0):
        s1 = model.sample(a, b, n_frames=16, steps=6, eta=eta, generator=gen(7))
        s2 = model.sample(a, b, n_frames=16, steps=6, eta=eta, generator=gen(7))
        s3 = model.sample(a, b, n_frames=16, steps=6, eta=eta, generator=gen(8))
        assert torch.equal(s1, s2)
        assert not torch.allclose(s1, s3)


# -- training ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_v_and_epsilon_train_on_a_toy_problem(prediction):
    torch.manual_seed(0)
    model = create_model(tiny(diffusion__prediction=prediction))
    # Toy problem: each pair's curves are a ramp whose direction depends on the pair.
    batch = make_batch(batch=8)
    ramp = torch.linspace(0, 1, 16)[None, :, None].expand(8, 16, P)
    batch["curves"] = torch.where(torch.arange(8)[:, None, None] % 2 == 0, ramp, 1 - ramp)
    evaluate = lambda: model(batch, generator=gen(123))["mse"].item()  # noqa: E731 - same noise and t each time
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, foreach=True)
    before = evaluate()
    for step in range(30):
        loss = model(batch, generator=gen(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < 0.7 * before


@pytest.fixture(scope="module")
def overfit():
    """Two conditions, two opposite targets (all 0 vs all 1), ~100 steps of overfitting (v-prediction)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(tiny())
    x_a, y_a = feats(1, 8, seed=11), feats(1, 8, seed=12)
    x_a.bpm[:], y_a.bpm[:] = 90.0, 170.0
    x_b, y_b = feats(1, 8, seed=13), feats(1, 8, seed=14)
    n = 4
    batch = {"feats_a": TrackFeatures.cat([x_a.repeat_interleave(n), y_a.repeat_interleave(n)]),
             "feats_b": TrackFeatures.cat([x_b.repeat_interleave(n), y_b.repeat_interleave(n)]),
             "curves": torch.cat([torch.zeros(n, 16, P), torch.ones(n, 16, P)])}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, foreach=True)
    g = gen(0)
    for _ in range(100):
        loss = model(batch, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model, TrackFeatures.cat([x_a, y_a]), TrackFeatures.cat([x_b, y_b])


@pytest.mark.parametrize("n_frames", [16, 64, 200, 33])
def test_outputs_span_full_range_and_follow_conditioning(overfit, n_frames):
    model, feats_a, feats_b = overfit
    curves = model.sample(feats_a, feats_b, n_frames=n_frames, steps=20, generator=gen(5))
    assert curves.shape == (2, n_frames, P)
    assert curves[0].abs().mean() < 0.1, "condition X must give curves near 0"
    assert (1 - curves[1]).abs().mean() < 0.1, "condition Y must give curves near 1"
    assert curves[0].quantile(0.9) < 0.1 and curves[1].quantile(0.1) > 0.9  # not squeezed toward the middle
    # Swapping the pairs swaps the outputs: the model reads its conditioning, not a fixed answer.
    swapped = model.sample(TrackFeatures.cat([feats_a.index_select([1]), feats_a.index_select([0])]),
                           TrackFeatures.cat([feats_b.index_select([1]), feats_b.index_select([0])]),
                           n_frames=n_frames, steps=20, generator=gen(5))
    assert swapped[0].mean() > 0.9 and swapped[1].mean() < 0.1


def test_guidance_scale_zero_is_unconditional(overfit):
    model, feats_a, feats_b = overfit
    other_a, other_b = feats(2, 8, seed=40), feats(2, 8, seed=41)
    s1 = model.sample(feats_a, feats_b, n_frames=16, steps=5, guidance_scale=0.0, generator=gen(1))
    s2 = model.sample(other_a, other_b, n_frames=16, steps=5, guidance_scale=0.0, generator=gen(1))
    assert torch.allclose(s1, s2)  # only the NULL branch counts


def test_denoiser_runs_on_other_frame_counts():
    model = create_model(tiny())
    for block in model.denoiser.blocks:  # leave the zero init so outputs depend on positions
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    torch.nn.init.normal_(model.denoiser.final_layer.linear.weight, std=0.05)
    cond = model.encode(feats(2), feats(2, seed=1))
    stds = []
    for n_frames in (64, 200, 31):
        out = model.denoiser(torch.randn(2, n_frames, P, generator=gen(n_frames)), torch.tensor([300, 700]), cond)
        assert out.shape == (2, n_frames, P) and torch.isfinite(out).all()
        stds.append(out.std().item())
    assert max(stds) < 3 * min(stds)


# -- masking -------------------------------------------------------------------------------------------------------
def test_loss_ignores_padding_frames():
    model = create_model(tiny())
    for block in model.denoiser.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    torch.nn.init.normal_(model.denoiser.final_layer.linear.weight, std=0.05)
    batch = make_batch(batch=3, n_frames=16)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[0, 11:] = False  # an odd valid length: a patch straddles the boundary
    mask[2, 6:] = False
    batch["mask"] = mask
    base = model(batch, generator=gen(9))
    changed = dict(batch, curves=torch.where(mask[..., None], batch["curves"], 1 - batch["curves"]))
    again = model(changed, generator=gen(9))
    for key in ("mse", "smooth", "loss"):
        assert torch.allclose(base[key], again[key], rtol=1e-5, atol=1e-7), key
    valid_changed = batch["curves"].clone()
    valid_changed[0, 3] = 1 - valid_changed[0, 3]
    assert not torch.allclose(model(dict(batch, curves=valid_changed), generator=gen(9))["mse"], base["mse"])


def test_param_loss_weights_weigh_the_named_parameters():
    from effects.params import FULL

    only_master = {name: 0.0 for name in FULL.names if name != "master_gain"}
    model = create_model(tiny(train__param_loss_weights=only_master))
    assert model.param_weights.mean().item() == pytest.approx(1.0) and model.param_weights.max().item() == P
    batch = make_batch(batch=2, n_frames=16)
    base = model(batch, generator=gen(3))["mse"]
    col = FULL.names.index("master_gain")
    other, master = batch["curves"].clone(), batch["curves"].clone()
    other[..., col - 1] = 1 - other[..., col - 1]
    master[..., col] = 1 - master[..., col]
    assert torch.equal(model(dict(batch, curves=other), generator=gen(3))["mse"], base)  # weight 0: not seen
    assert not torch.allclose(model(dict(batch, curves=master), generator=gen(3))["mse"], base)
    plain = create_model(tiny())
    assert torch.equal(plain.param_weights, torch.ones(P)) and "param_weights" not in plain.state_dict()
    with pytest.raises(ValueError, match="no parameter"):
        create_model(tiny(train__param_loss_weights={"master_volume": 2.0}))
    with pytest.raises(ValueError, match="param_loss_weights"):
        tiny(train__param_loss_weights={"master_gain": -1.0})


def test_conditioning_ignores_padded_feature_frames():
    model = create_model(tiny())
    a, b = feats(2, 12), feats(2, 12, seed=1)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False
    a.mask = mask
    noisy = TrackFeatures(**{**a.__dict__, "stem_mels": torch.where(mask[:, None, None], a.stem_mels, 50.0),
                             "energy": torch.where(mask, a.energy, 9.0)})
    c1, c2 = model.encode(a, b), model.encode(noisy, b)
    valid = c1.mask
    assert torch.allclose(c1.pooled, c2.pooled, atol=1e-5)
    assert torch.allclose(c1.tokens[valid], c2.tokens[valid], atol=1e-5)


def test_smoothness_penalty_prefers_smooth_curves_and_respects_mask():
    ramp = torch.linspace(0, 1, 32)[None, :, None].expand(2, 32, 3)
    jagged = ramp + 0.05 * torch.randn(2, 32, 3, generator=gen(0))
    assert smoothness_penalty(jagged) > 10 * smoothness_penalty(ramp)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[:, 20:] = False
    wild = torch.where(mask[..., None], ramp, torch.rand(2, 32, 3, generator=gen(1)))
    assert torch.allclose(smoothness_penalty(wild, mask), smoothness_penalty(ramp, mask))


def test_median_smooth_keeps_steps_and_ramps_and_removes_wiggles():
    t = torch.arange(40, dtype=torch.float32)
    step = (t >= 19).float()  # a fader switch on one frame
    ramp = (t / 39) ** 2
    clean = torch.stack([step, ramp], dim=-1)[None]  # [1, 40, 2]
    assert torch.equal(median_smooth(clean, 5), clean)  # root signals: unchanged, the switch keeps its frame
    wiggle = torch.zeros(1, 40, 2)
    wiggle[0, 3:36:6] = 0.2  # isolated one-frame spikes, none next to the switch or an edge
    smoothed = median_smooth(clean + wiggle, 5)
    assert torch.equal(smoothed[..., 0], step[None])  # the step comes back exactly
    assert (smoothed[..., 1] - ramp).abs().max() <= 2 * (ramp[1:] - ramp[:-1]).max()  # within two frames of rise
    assert torch.equal(median_smooth(clean + wiggle, 1), clean + wiggle)  # width 1 = off
    with pytest.raises(ValueError, match="median_frames"):
        tiny(diffusion__median_frames=4)


def test_tv_smooth_rests_a_wobbling_knob_and_keeps_steps_and_ramps():
    t = torch.arange(128, dtype=torch.float32)
    step = (t >= 64).float()  # a fader switch on one frame
    ramp = t / 127
    still = torch.full_like(t, 0.5)
    clean = torch.stack([step, ramp, still], dim=-1)[None]  # [1, 128, 3]
    wobble = 0.004 * torch.sin(t * 0.7)[None, :, None] + 0.002 * torch.randn(1, 128, 3, generator=gen(0))
    smoothed = tv_smooth(clean + wobble, 0.01)

    def tv(x):
        return (x[:, 1:] - x[:, :-1]).abs().sum(dim=1)[0]

    assert tv(smoothed)[2] < 0.02 * tv(clean + wobble)[2]  # the resting knob rests
    assert tv(smoothed)[0] == pytest.approx(1.0, abs=0.01) and tv(smoothed)[1] == pytest.approx(1.0, abs=0.03)
    assert (smoothed - clean).abs().max() < 0.02  # nothing moves further than the wobble was
    jump = smoothed[0, 1:, 0] - smoothed[0, :-1, 0]
    assert int(jump.argmax()) == 63 and jump.max() > 0.95  # the switch keeps its frame and its height
    assert torch.equal(tv_smooth(clean + wobble, 0.0), clean + wobble)  # weight 0 = off
    with pytest.raises(ValueError, match="tv_weight"):
        tiny(diffusion__tv_weight=-0.1)


def test_style_label_and_its_free_token():
    model = create_model(tiny(model__n_styles=3))
    a, b = feats(2), feats(2, seed=1)
    free = model.encode(a, b)
    assert torch.equal(model.encode(a, b, style=torch.tensor([-1, -1])).pooled, free.pooled)
    styled = model.encode(a, b, style=torch.tensor([0, 2]))
    assert not torch.allclose(styled.pooled, free.pooled)
    with pytest.raises(ValueError, match="style"):
        model.encode(a, b, style=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="n_styles=0"):
        create_model(tiny()).encode(a, b, style=torch.tensor([0, 0]))
    dropped = model.encoder(a, b, style=torch.tensor([0, 2]), drop=torch.tensor([True, False]))
    null = model.encoder.null_like(free)
    assert torch.equal(dropped.pooled[0], null.pooled[0])  # a dropped sample loses its style too


def test_forced_styles_are_never_hidden():
    model = create_model(tiny(model__n_styles=3, diffusion__style_dropout=1.0, diffusion__cond_dropout=0.0))
    seen = {}
    model.encoder.register_forward_hook(lambda mod, args, kwargs, out: seen.update(style=kwargs["style"]),
                                        with_kwargs=True)
    batch = make_batch(batch=6)
    batch["style"] = torch.tensor([0, 1, 2, 0, 1, 2])
    batch["style_forced"] = torch.tensor([True, False, True, False, False, False])
    model(batch, generator=gen(0))
    assert seen["style"].tolist() == [0, -1, 2, -1, -1, -1]  # dropout 1 hides every label but the imposed ones


def test_imposed_labels_have_their_own_tokens():
    """model.imposed_styles: an asked-for move (imposed) and the music's own move are different tokens; the flag is
    inert without it (old checkpoints hold n_styles + 1 rows), and training reaches the row the sample used."""
    model = create_model(tiny(model__n_styles=3, model__imposed_styles=True))
    assert model.encoder.style_embed.num_embeddings == 7  # 3 own, free, 3 imposed
    a, b = feats(2), feats(2, seed=1)
    labels = torch.tensor([0, 2])
    own, asked = model.encode(a, b, style=labels), model.encode(a, b, style=labels, imposed=True)
    mixed = model.encode(a, b, style=labels, imposed=torch.tensor([False, True]))
    assert not torch.allclose(own.pooled, asked.pooled)
    assert torch.equal(mixed.pooled[0], own.pooled[0]) and torch.equal(mixed.pooled[1], asked.pooled[1])
    free = model.encode(a, b, style=torch.tensor([-1, -1]), imposed=True)
    assert torch.equal(free.pooled, model.encode(a, b).pooled)  # 'free' is free whatever the flag
    plain = create_model(tiny(model__n_styles=3))
    assert plain.encoder.style_embed.num_embeddings == 4
    assert torch.equal(plain.encode(a, b, style=labels, imposed=True).pooled, plain.encode(a, b, style=labels).pooled)
    with pytest.raises(ValueError, match="imposed_styles"):
        tiny(model__imposed_styles=True)

    model = create_model(tiny(model__n_styles=3, model__imposed_styles=True, diffusion__style_dropout=0.0,
                              diffusion__cond_dropout=0.0))
    with torch.no_grad():  # off adaLN-Zero's init, where the conditioning gets no gradient
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen(3)))
    batch = make_batch(batch=2)
    batch["style"], batch["style_forced"] = torch.tensor([1, 2]), torch.tensor([True, False])
    model(batch, generator=gen(0))["loss"].backward()
    rows = model.encoder.style_embed.weight.grad.abs().sum(-1).nonzero().flatten().tolist()
    assert rows == [2, 5]  # the music's own 2, the imposed 1 (row 3 + 1 + 1)


def test_audio_loss_hook_only_for_samples_with_target_audio():
    model = create_model(tiny())
    torch.nn.init.normal_(model.denoiser.final_layer.linear.weight, std=0.05)
    batch = make_batch(batch=2)
    g = gen(0)
    n = 8192
    batch.update(stems_a=0.1 * torch.randn(2, 4, 2, n, generator=g), stems_b=0.1 * torch.randn(2, 4, 2, n, generator=g),
                 target_audio=0.1 * torch.randn(2, 2, n, generator=g), has_audio=torch.tensor([True, False]))
    out = model(batch, generator=gen(1), audio_weight=1.0)
    assert out["audio"] > 0
    out["loss"].backward()
    assert model.denoiser.final_layer.linear.weight.grad.abs().sum() > 0
    none = model(dict(batch, has_audio=torch.tensor([False, False])), generator=gen(1), audio_weight=1.0)
    assert none["audio"] == 0
    assert model(batch, generator=gen(1))["audio"] == 0  # weight 0 (the default): the mixer never runs


def test_tracks_of_different_lengths_and_swapped_roles():
    model = create_model(tiny())
    a, b = feats(2, 12), feats(2, 17, seed=1)
    cond = model.encode(a, b)
    assert cond.tokens.shape == (2, 2 * 9, 32) and cond.mask.shape == (2, 18)
    assert cond.mask[:, :9].sum() == 2 * 6 and cond.mask[:, 9:].all()  # A: 6 tokens of 9 valid, B: 9
    curves = model.sample(a, b, n_frames=16, steps=3, generator=gen(0))
    assert torch.isfinite(curves).all()
    assert not torch.allclose(model.encode(b, a).pooled, cond.pooled)  # A and B are not interchangeable


# -- the move head -------------------------------------------------------------------------------------------------
def _leveled(late_loud: torch.Tensor, n_frames: int = 32, seed: int = 0) -> tuple[TrackFeatures, TrackFeatures]:
    """Random features whose A is 6 dB louder in its second half where late_loud [B] is True."""
    a, b = feats(len(late_loud), n_frames, seed), feats(len(late_loud), n_frames, seed + 1)
    boost = torch.zeros(len(late_loud), n_frames)
    boost[:, n_frames // 2:] = late_loud[:, None].float() * 6.0 / 10 * 2.302585  # +6 dB in natural-log power
    mels = a.stem_mels + boost[:, None, None, :]
    return TrackFeatures(**{**a.__dict__, "stem_mels": mels, "energy": a.energy * (1 + boost).sqrt()}), b


def test_move_head_loss_only_counts_the_musics_own_labels():
    model = create_model(tiny(model__n_styles=3, model__move_head=True))
    a, b = feats(4), feats(4, seed=1)
    head = model.move_head
    logits = head(a, b)
    assert logits.shape == (4, 3)
    style, forced = torch.tensor([0, -1, 2, 1]), torch.tensor([False, False, True, False])
    expected = torch.nn.functional.cross_entropy(logits[[0, 3]], style[[0, 3]])
    assert torch.allclose(head.loss(a, b, style, forced), expected)
    none = head.loss(a, b, torch.tensor([-1, -1, -1, -1]))
    none.backward()  # no labelled sample: zero, and still differentiable
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="n_styles"):
        tiny(model__move_head=True)


def test_move_head_learns_a_level_rule_and_sampling_follows_its_choice():
    model = create_model(tiny(model__n_styles=3, model__move_head=True))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.move_head.parameters(), lr=3e-3)
    for step in range(120):
        loud = torch.rand(16, generator=g) < 0.5
        a, b = _leveled(loud, seed=step)
        loss = model.move_head.loss(a, b, torch.where(loud, 2, 0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    loud = torch.tensor([True, False] * 16)
    a, b = _leveled(loud, seed=999)
    choice = model.move_probs(a, b).argmax(-1)
    assert (choice == torch.where(loud, 2, 0)).float().mean() > 0.9
    with torch.no_grad():  # off adaLN-Zero's init, where the denoiser's output ignores the conditioning
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    four = torch.arange(4)
    a, b, choice = a.index_select(four), b.index_select(four), choice[:4]
    auto = model.sample(a, b, n_frames=16, steps=3, generator=gen(1))
    chosen = model.sample(a, b, n_frames=16, steps=3, generator=gen(1), style=choice)
    free = model.sample(a, b, n_frames=16, steps=3, generator=gen(1), style=torch.full((4,), -1))
    assert torch.equal(auto, chosen) and not torch.equal(auto, free)


def test_candidates_play_the_heads_move_then_leave_it_to_the_sampler():
    model = create_model(tiny(model__n_styles=3, model__move_head=True))
    with torch.no_grad():
        model.move_head.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 20.0]))
    a, b = feats(2), feats(2, seed=1)
    probs = model.move_probs(a, b)
    assert model.candidate_styles(probs, 4).tolist() == [2, 2, -1, -1, 2, 2, -1, -1]
    assert model.candidate_styles(probs, 1).tolist() == [2, 2] and model.candidate_styles(probs, 3).tolist()[:3] == [
        2, 2, -1]
    plain = create_model(tiny(model__n_styles=3))
    assert plain.candidate_styles(plain.move_probs(a, b), 4) is None


def test_train_only_move_head_computes_only_its_loss():
    model = create_model(tiny(model__n_styles=3, model__move_head=True, train__train_only="move_head"))
    batch = make_batch()
    batch["style"] = torch.tensor([0, 1, 2, 0])
    out = model(batch, generator=gen(0))
    assert out["mse"].item() == 0.0 and out["loss"].item() == out["move"].item() > 0
    out["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("move_head.") for n in grads)
    with pytest.raises(ValueError, match="train_only"):
        tiny(train__train_only="encoder")
