import math

import pytest
import torch

from effects.params import FULL, GLOBAL, PER_TRACK, STEMS, get_layout


def test_layout_sizes_and_names():
    assert (len(FULL), len(PER_TRACK), len(GLOBAL)) == (58, 54, 52)
    assert FULL.names[:6] == [f"a.drums.{c}" for c in ("gain", "eq_low", "eq_mid", "eq_high", "hpf", "lpf")]
    for name in ("a.bass.eq_low", "b.delay_send", "a.delay_feedback", "crossfader", "master_gain",
                 "reverb_return", "reverb_decay"):
        assert name in FULL
    assert "crossfader" not in PER_TRACK and "b.reverb_send" in PER_TRACK
    assert "reverb_return" in GLOBAL and "a.reverb_send" not in GLOBAL
    assert get_layout("djtransgan_v2") is PER_TRACK and get_layout("transition_model_v2") is GLOBAL


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown layout"):
        get_layout("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        FULL.index("a.bass.flanger")
    with pytest.raises(ValueError, match="unknown parameter name"):
        get_layout(["a.bass.gain", "c.bass.gain"])
    with pytest.raises(ValueError, match="unknown stem"):
        FULL.indices(stem="guitar")


def _physical(name: str, u: float) -> float:
    return float(FULL.to_physical(FULL.neutral().index_fill(0, torch.tensor([FULL.index(name)]), u))[FULL.index(name)])


def test_ranges_a_dj_needs():
    assert _physical("a.bass.eq_low", 0.0) <= -24.0
    assert _physical("a.bass.eq_low", 1.0) == pytest.approx(6.0)
    assert _physical("a.bass.eq_low", FULL.params[FULL.index("a.bass.eq_low")].neutral) == 0.0  # exactly
    assert _physical("a.bass.hpf", 0.0) == pytest.approx(20.0)
    assert _physical("a.bass.hpf", 1.0) >= 5_000.0
    assert _physical("a.bass.lpf", 1.0) == pytest.approx(20_000.0, rel=1e-5)
    assert _physical("a.bass.lpf", 0.0) <= 150.0
    assert _physical("reverb_decay", 0.0) == pytest.approx(0.2) and _physical("reverb_decay", 1.0) == pytest.approx(8.0)
    assert _physical("a.delay_feedback", 1.0) == pytest.approx(0.9)
    assert _physical("a.bass.gain", 0.0) == 0.0 and _physical("a.bass.gain", 1.0) == 1.0
    # log spacing: equal steps in u are equal frequency ratios
    ratios = [_physical("b.vocals.hpf", u + 0.1) / _physical("b.vocals.hpf", u) for u in (0.1, 0.4, 0.8)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-4)


def test_model_physical_round_trip():
    u = torch.rand(3, 10, len(FULL))
    assert torch.allclose(FULL.to_model(FULL.to_physical(u)), u, atol=1e-5)
    for p in FULL:
        assert math.isclose(p.spec.to_model(p.spec.to_physical(0.3)), 0.3, abs_tol=1e-9)


def test_slicing_lookups_and_neutral():
    assert len(FULL.indices(track="a")) == 27 and len(FULL.indices(stem="bass")) == 12
    assert len(FULL.indices(control="gain")) == 8 and len(FULL.indices(track="b", stem="vocals")) == 6
    curves = FULL.neutral_curves(7, batch=2)
    assert curves.shape == (2, 7, 58)
    assert FULL.select(curves, control=["hpf"]).eq(0.0).all() and FULL.select(curves, control="lpf").eq(1.0).all()
    named = FULL.named(curves[0], physical=True)
    assert named["a.bass.eq_mid"].eq(0.0).all() and named["crossfader"].eq(0.5).all()
    built = FULL.from_named({"crossfader": torch.linspace(0, 1, 5)}, 5)
    assert built[:, FULL.index("crossfader")].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(ValueError):
        FULL.neutral_curves(0)


def test_published_layouts_route_sensibly():
    assert PER_TRACK.crossfader_thru and not FULL.crossfader_thru
    assert GLOBAL.reverb_from_master and not FULL.reverb_from_master
    # master-fed reverb is off at neutral; send-fed reverb returns at unity
    assert GLOBAL.neutral()[GLOBAL.index("reverb_return")] == 0.0
    assert FULL.neutral()[FULL.index("reverb_return")] == 1.0
    expanded = PER_TRACK.expand_to(PER_TRACK.neutral_curves(3), FULL)
    assert expanded.shape == (3, 58) and torch.equal(expanded, FULL.neutral_curves(3))
    assert all(s in STEMS for s in ("drums", "bass", "vocals", "other"))
