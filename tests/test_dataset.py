"""dataset.py: features on the curve grid, the on-the-fly synthetic dataset, augmentation, collate."""

import numpy as np
import pytest
import torch

from dataset import (
    STYLE_LABELS,
    SyntheticDataset,
    augment_item,
    build_track_features,
    collate,
    format_track_duration,
    frame_times,
    parse_track_duration,
)
from effects.params import FULL

SR = 44_100


def test_features_sit_on_the_curve_grid():
    n, frames = SR * 8, 33
    stems = torch.zeros(4, 2, n)
    stems[1, :, : n // 2] = 0.5 * torch.sin(2 * torch.pi * 60 * torch.arange(n // 2) / SR)  # bass, first half
    beats = np.arange(0.0, 8.0, 0.5)
    track = {"bpm": 120.0, "key_index": 21, "beats": beats, "downbeats": beats[::4],
             "sections": [{"start": 0.0, "end": 4.0, "label": "intro"}, {"start": 4.0, "end": 8.0, "label": "drop"}],
             "valid": [0.0, 6.0]}
    f = build_track_features(stems, track, frames)
    grid = frame_times(frames, n)
    assert grid[0] == 0 and abs(grid[-1] - (n - 1) / SR) < 1e-9
    assert f.stem_mels.shape == (4, 128, frames) and f.key.argmax() == 21 and f.bpm.item() == 120.0
    assert f.beats.sum() == len(beats) and f.downbeats.sum() == 4
    assert f.structure[0, 0] == 1 and f.structure[-1, 3] == 1  # intro then drop
    assert f.mask[:24].all() and not f.mask[-4:].any()  # valid only up to 6 s
    assert f.energy[: frames // 2 - 1].min() > 10 * f.energy[frames // 2 + 1:].max()  # bass stops halfway
    assert f.stem_mels[1, :8, 2].mean() > f.stem_mels[0, :8, 2].mean() + 15  # low bands of the bass stem


def test_synthetic_dataset_is_deterministic_and_labelled():
    ds = SyntheticDataset(length=3, seed=1, n_frames=48, track_duration=30.0, cache=False)
    first, again = ds[0], ds[0]
    assert torch.equal(first["curves"], again["curves"])
    assert torch.equal(first["features_a"].stem_mels, again["features_a"].stem_mels)
    assert not torch.equal(first["curves"], ds[1]["curves"])
    assert first["curves"].shape == (48, len(FULL)) and 0 <= first["curves"].min() and first["curves"].max() <= 1
    assert 0 <= first["style"] < len(STYLE_LABELS)
    ds.set_epoch(1)
    assert not torch.equal(first["curves"], ds[0]["curves"])


def test_synthetic_track_duration_range(monkeypatch):
    import data.synth

    drawn, real = [], data.synth.synthesize_track

    def recording(seed, *args, duration, **kwargs):
        drawn.append(duration)
        return real(seed, *args, duration=duration, **kwargs)

    monkeypatch.setattr(data.synth, "synthesize_track", recording)
    ds = SyntheticDataset(length=3, seed=5, n_frames=32, track_duration=(14.0, 30.0), cache=False)
    curves = [ds[i]["curves"] for i in range(3)]
    assert len(drawn) == 6 and all(14.0 <= d <= 30.0 for d in drawn) and len(set(drawn)) == 6  # per track
    first = list(drawn)
    drawn.clear()
    assert torch.equal(ds[1]["curves"], curves[1]) and drawn == first[2:4]  # the same lengths again
    assert parse_track_duration("40") == 40.0 and parse_track_duration("40:90") == (40.0, 90.0)
    assert format_track_duration(parse_track_duration("40:90")) == "40:90" and format_track_duration(40.0) == "40"
    for bad in ("90:40", "4", "forty", "1:2:3"):
        with pytest.raises(ValueError, match="MIN:MAX"):
            parse_track_duration(bad)


def test_synthetic_dataset_teachers():
    decided = SyntheticDataset(length=2, seed=1, n_frames=48, track_duration=30.0, cache=False, teacher="decide")
    assert {STYLE_LABELS[decided[i]["style"]] for i in range(2)} <= {"bass_swap", "echo_out", "filter_sweep"}
    with pytest.raises(ValueError, match="teacher"):
        SyntheticDataset(length=1, teacher="guess")


def test_augment_and_collate():
    ds = SyntheticDataset(length=2, seed=2, n_frames=40, track_duration=30.0)
    items = [augment_item(ds[i], np.random.default_rng(i), jitter=0.1) for i in range(2)]
    for item in items:
        assert item["curves"].shape == (40, len(FULL)) and 0 <= item["curves"].min() and item["curves"].max() <= 1
        assert set(item["features_a"].beats.unique().tolist()) <= {0.0, 1.0}
    batch = collate(items)
    assert batch["curves"].shape == (2, 40, len(FULL)) and batch["feats_b"].mask.shape == (2, 40)
    assert batch["mask"].shape == (2, 40) and batch["mix_bpm"].shape == (2,)
    assert batch["style"].shape == (2,)
