"""Stem separation: name mapping, windows-only separation, the cache, fallbacks, offline errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data import stems as S
from data.audio import AudioError
from effects.params import SAMPLE_RATE, STEMS

SR = SAMPLE_RATE


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run these tests on one torch thread, restoring the setting afterwards.

    On a loaded shared machine, OpenMP workers of a 2-thread pool spin against other processes:
    demucs_unittest's tiny LSTMs then took 10-20 s per call instead of 0.5 s on one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synth_track(seconds: float, seed: int = 0) -> torch.Tensor:
    """Kick-like thumps every 0.5 s + a 55 Hz bass sine + a little noise, `[2, N]` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    kick = np.zeros_like(t)
    for onset in np.arange(0.0, seconds, 0.5):
        tk = t[t >= onset] - onset
        # Pitch drops 150 -> 50 Hz within ~20 ms, amplitude decays in ~80 ms.
        phase = 2 * np.pi * (50 * tk + 100 * 0.02 * (1 - np.exp(-tk / 0.02)))
        kick[t >= onset] += 0.8 * np.exp(-tk / 0.08) * np.sin(phase)
    bass = 0.3 * np.sin(2 * np.pi * 55.0 * t)
    noise = 0.02 * rng.standard_normal((2, t.size))
    return torch.from_numpy((kick + bass + noise).astype(np.float32))


class CountingSeparator(S.Separator):
    """Stem k = (k + 1) * input; records every call's length and offset."""

    name = "counting"

    def __init__(self, key: str = "counting:v1"):
        self.calls: list[tuple[int, int]] = []
        self._key = key

    @property
    def cache_key(self) -> str:
        return self._key

    def _separate(self, audio, sample_rate, offset):
        self.calls.append((audio.shape[-1], offset))
        return torch.stack([audio * (k + 1) for k in range(len(STEMS))])


class FakeDemucs(torch.nn.Module):
    """A 'Demucs' whose source s outputs `CODES[s] * mix`, in a permuted source order."""

    CODES = {"drums": 1.0, "bass": 2.0, "vocals": 3.0, "other": 4.0, "guitar": 10.0}

    def __init__(self, sources=("vocals", "other", "drums", "bass"), samplerate=SR):
        super().__init__()
        self.sources = list(sources)
        self.samplerate = samplerate
        self.audio_channels = 2
        self.segment = 1.0
        self.seen_lengths: list[int] = []
        self.codes = torch.nn.Parameter(torch.tensor([self.CODES[s] for s in self.sources]), requires_grad=False)

    def forward(self, mix):  # [B, 2, T] -> [B, S, 2, T]
        self.seen_lengths.append(mix.shape[-1])
        return mix[:, None] * self.codes[None, :, None, None]


# ------------------------------------------------------------------------------------------
# Demucs
# ------------------------------------------------------------------------------------------


def test_demucs_unittest_separates_into_stems_order():
    audio = synth_track(2.0)
    stems = S.DemucsSeparator("demucs_unittest", device="cpu").separate(audio)
    assert stems.shape == (4, 2, audio.shape[-1])
    assert stems.dtype == torch.float32
    assert torch.isfinite(stems).all()


def test_demucs_maps_sources_by_name_not_position():
    audio = synth_track(2.0)
    model = FakeDemucs(sources=("vocals", "other", "drums", "bass"))
    stems = S.DemucsSeparator(model, device="cpu").separate(audio)
    for i, stem in enumerate(STEMS):
        torch.testing.assert_close(stems[i], audio * FakeDemucs.CODES[stem], atol=1e-4, rtol=1e-4)


def test_extra_demucs_sources_are_added_to_other():
    audio = synth_track(1.5)
    model = FakeDemucs(sources=("bass", "guitar", "drums", "other", "vocals"))
    stems = S.DemucsSeparator(model, device="cpu").separate(audio)
    expected_other = audio * (FakeDemucs.CODES["other"] + FakeDemucs.CODES["guitar"])
    torch.testing.assert_close(stems[STEMS.index("other")], expected_other, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stems[STEMS.index("bass")], audio * 2.0, atol=1e-4, rtol=1e-4)


def test_demucs_model_lacking_a_stem_is_a_clear_error():
    model = FakeDemucs(sources=("drums", "bass", "other"))
    with pytest.raises(S.SeparatorUnavailable, match="missing \\['vocals'\\]"):
        S.DemucsSeparator(model, device="cpu").separate(synth_track(1.0))


def test_demucs_resamples_to_the_model_rate_and_back():
    t = torch.arange(2 * SR) / SR
    audio = torch.stack([0.5 * torch.sin(2 * np.pi * 220 * t), 0.3 * torch.sin(2 * np.pi * 1000 * t)])
    model = FakeDemucs(samplerate=22_050)
    stems = S.DemucsSeparator(model, device="cpu").separate(audio)
    assert stems.shape == (4, 2, audio.shape[-1])
    assert max(model.seen_lengths) <= 22_050 * 1.0 + 1  # chunks of the model's 1 s segment at 22.05 kHz
    # Tones far below 11 kHz survive the 44.1 -> 22.05 -> 44.1 kHz round trip (edges aside).
    mid = slice(SR // 4, -SR // 4)
    torch.testing.assert_close(stems[1][:, mid], 2.0 * audio[:, mid], atol=1e-2, rtol=0.0)


def test_local_th_file_and_repo_folder(tmp_path):
    from demucs.pretrained import get_model

    model = get_model("demucs_unittest")
    args, kwargs = model._init_args_kwargs
    package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict()}
    path = tmp_path / "repo" / "abcd1234.th"
    path.parent.mkdir()
    torch.save(package, path)
    for spec in (str(path), str(path.parent)):
        separator = S.get_separator(f"demucs:{spec}", device="cpu")
        assert separator.cache_key.startswith("demucs:path-")
        loaded = separator.model.state_dict()  # comparing weights is as good as separating, and fast
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded[key], value)


def test_missing_local_model_path():
    with pytest.raises(S.SeparatorUnavailable, match="does not exist"):
        S.DemucsSeparator("/nonexistent/demucs/repo").separate(synth_track(0.5))


# ------------------------------------------------------------------------------------------
# Offline behaviour
# ------------------------------------------------------------------------------------------


def test_offline_htdemucs_raises_quickly_with_actionable_message(monkeypatch):
    if S.cached_pretrained_loader("htdemucs") is not None:
        pytest.skip("htdemucs weights are cached locally; the offline path is not reachable")
    monkeypatch.setattr(S, "_hub_reachable", lambda *a, **k: False)  # no network in tests

    def no_download(*args, **kwargs):
        raise AssertionError("get_model must not be called when the hub is unreachable")

    monkeypatch.setattr("demucs.pretrained.get_model", no_download)
    separator = S.get_separator("htdemucs")  # construction is lazy: nothing loaded yet
    start = time.perf_counter()
    with pytest.raises(S.SeparatorUnavailable) as info:
        separator.separate(synth_track(0.5))
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "\n" not in message
    assert "get_model('htdemucs')" in message
    assert "checkpoints" in message
    assert "--separator demucs:/path/to/repo" in message
    assert "--separator dsp" in message


def test_torch_hub_cache_is_used_without_network(tmp_path, monkeypatch):
    if S._hf_cached_loader("htdemucs") is not None:
        pytest.skip("htdemucs weights are in the HuggingFace cache")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        assert S.cached_pretrained_loader("htdemucs") is None
        (tmp_path / "checkpoints").mkdir()
        files = S.expected_weight_files("htdemucs")
        assert files and all(f.endswith(".th") for f in files)
        for name in files:
            (tmp_path / "checkpoints" / name).write_bytes(b"not a checkpoint")
        assert S.cached_pretrained_loader("htdemucs") is not None
        monkeypatch.setattr(S, "_hub_reachable", lambda *a, **k: pytest.fail("probed the network"))
        with pytest.raises(S.SeparatorUnavailable, match="cached weights of Demucs model 'htdemucs'"):
            S.DemucsSeparator("htdemucs").separate(synth_track(0.5))
    finally:
        torch.hub.set_dir(previous)


@pytest.mark.parametrize("error", ["url", "loading"])
def test_download_failures_become_separator_unavailable(monkeypatch, error):
    from urllib.error import URLError

    from demucs.repo import ModelLoadingError

    if S.cached_pretrained_loader("htdemucs") is not None:
        pytest.skip("htdemucs weights are cached locally")
    monkeypatch.setattr(S, "_hub_reachable", lambda *a, **k: True)

    def failing_get_model(name, repo=None):
        if error == "url":
            raise URLError("[Errno -2] Name or service not known")
        raise ModelLoadingError("Invalid checksum for file x")

    monkeypatch.setattr("demucs.pretrained.get_model", failing_get_model)
    with pytest.raises(S.SeparatorUnavailable, match="htdemucs"):
        S.DemucsSeparator("htdemucs").separate(synth_track(0.5))


# ------------------------------------------------------------------------------------------
# Windows and cache
# ------------------------------------------------------------------------------------------


def test_only_windows_plus_margin_are_separated(tmp_path):
    audio = torch.randn(2, 60 * SR, generator=torch.Generator().manual_seed(0))
    separator = CountingSeparator()
    windows = [(10.0, 15.0), (40.0, 45.0)]
    out = S.separate_windows(audio, windows, separator, cache_dir=tmp_path, margin=1.0, progress=False)
    assert sorted(separator.calls) == [(7 * SR, 9 * SR), (7 * SR, 39 * SR)]
    assert max(length for length, _ in separator.calls) <= 7 * SR
    for (start, end), stems in zip(windows, out):
        s, e = int(start * SR), int(end * SR)
        assert stems.shape == (4, 2, e - s)
        for k in range(4):  # margins trimmed off at the right place
            torch.testing.assert_close(stems[k], audio[:, s:e] * (k + 1))


def test_overlapping_windows_merge_and_edges_clip(tmp_path):
    audio = torch.randn(2, 30 * SR, generator=torch.Generator().manual_seed(1))
    separator = CountingSeparator()
    windows = [(0.0, 3.0), (3.5, 6.0), (27.0, 40.0)]
    out = S.separate_windows(audio, windows, separator, cache_dir=tmp_path, margin=1.0, progress=False)
    # (0-3) and (3.5-6) grow to (0-4) and (2.5-7): one region; (27-40) clips to (26-30).
    assert sorted(separator.calls) == [(4 * SR, 26 * SR), (7 * SR, 0)]
    assert [o.shape[-1] for o in out] == [3 * SR, int(2.5 * SR), 3 * SR]
    torch.testing.assert_close(out[1][2], audio[:, int(3.5 * SR): 6 * SR] * 3)


def test_bad_windows_are_rejected(tmp_path):
    audio = torch.zeros(2, 10 * SR)
    for window in [(5.0, 5.0), (12.0, 15.0), (float("nan"), 2.0)]:
        with pytest.raises(ValueError, match="window 0"):
            S.separate_windows(audio, [window], CountingSeparator(), cache_dir=tmp_path, progress=False)


def test_cache_hit_never_loads_the_model(tmp_path, monkeypatch):
    loads = []

    def fake_load(spec):
        loads.append(spec)
        return FakeDemucs()

    monkeypatch.setattr(S, "_load_demucs", fake_load)
    audio = synth_track(8.0)
    windows = [(1.0, 3.0), (5.0, 7.0)]
    first = S.separate_windows(audio, windows, S.DemucsSeparator("htdemucs"), cache_dir=tmp_path, progress=False)
    assert len(loads) == 1
    cached = sorted(tmp_path.glob("*.pt"))
    assert len(cached) == 1  # the two windows with margins merge into one region
    assert not list(tmp_path.glob("*.tmp"))
    assert torch.load(cached[0], weights_only=True).shape[0] == 4

    second = S.separate_windows(audio, windows, S.DemucsSeparator("htdemucs"), cache_dir=tmp_path, progress=False)
    assert len(loads) == 1  # a fresh separator, served from the cache: no model load
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_cache_invalidated_when_audio_or_separator_changes(tmp_path):
    audio = torch.randn(2, 20 * SR, generator=torch.Generator().manual_seed(2))
    windows = [(5.0, 8.0)]
    separator = CountingSeparator()
    S.separate_windows(audio, windows, separator, cache_dir=tmp_path, progress=False)
    S.separate_windows(audio, windows, separator, cache_dir=tmp_path, progress=False)
    assert len(separator.calls) == 1

    outside = audio.clone()
    outside[:, 15 * SR] += 1.0  # outside window + margin: the cached region is unchanged
    S.separate_windows(outside, windows, separator, cache_dir=tmp_path, progress=False)
    assert len(separator.calls) == 1

    inside = audio.clone()
    inside[0, 6 * SR] += 1e-3
    out = S.separate_windows(inside, windows, separator, cache_dir=tmp_path, progress=False)
    assert len(separator.calls) == 2
    torch.testing.assert_close(out[0][0], inside[:, 5 * SR: 8 * SR])

    other_model = CountingSeparator(key="counting:v2")
    S.separate_windows(audio, windows, other_model, cache_dir=tmp_path, progress=False)
    assert len(other_model.calls) == 1


def test_corrupt_cache_file_is_recomputed(tmp_path):
    audio = torch.randn(2, 10 * SR, generator=torch.Generator().manual_seed(3))
    separator = CountingSeparator()
    S.separate_windows(audio, [(2.0, 4.0)], separator, cache_dir=tmp_path, progress=False)
    (cached,) = tmp_path.glob("*.pt")
    cached.write_bytes(b"not a tensor")
    out = S.separate_windows(audio, [(2.0, 4.0)], separator, cache_dir=tmp_path, progress=False)
    assert len(separator.calls) == 2
    torch.testing.assert_close(out[0][3], audio[:, 2 * SR: 4 * SR] * 4)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DJMIX_CACHE", str(tmp_path / "c"))
    assert S.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DJMIX_CACHE")
    assert S.default_cache_dir() == Path.home() / ".cache" / "djmix" / "stems"


# ------------------------------------------------------------------------------------------
# DSP and oracle
# ------------------------------------------------------------------------------------------


def test_dsp_separator_sums_to_input():
    audio = synth_track(2.0)
    stems = S.DSPSeparator().separate(audio)
    assert stems.shape == (4, 2, audio.shape[-1]) and stems.dtype == torch.float32
    assert (stems.sum(0) - audio).abs().max() < 1e-5
    energy = {name: float(stems[i].pow(2).mean()) for i, name in enumerate(STEMS)}
    assert energy["drums"] > 0 and energy["bass"] > 0  # kicks are percussive, the sine harmonic low


def test_dsp_masks_sum_to_one(rng):
    magnitude = np.abs(rng.standard_normal((2049, 200))).astype(np.float32)
    masks = S.DSPSeparator().masks(magnitude, SR)
    assert masks.shape == (4, 2049, 200)
    assert masks.min() >= 0 and masks.max() <= 1
    np.testing.assert_allclose(masks.sum(0), 1.0, atol=1e-5)


def test_dsp_short_input_goes_to_other():
    audio = torch.randn(2, 1000)
    stems = S.DSPSeparator().separate(audio)
    torch.testing.assert_close(stems[3], audio)
    assert stems[:3].abs().max() == 0


def test_oracle_returns_the_window_slices(tmp_path):
    g = torch.Generator().manual_seed(4)
    true = torch.randn(4, 2, 20 * SR, generator=g)
    audio = true.sum(0)
    windows = [(2.0, 5.0), (12.5, 18.0)]
    out = S.separate_windows(audio, windows, S.OracleSeparator(true), cache_dir=tmp_path, progress=False)
    for (start, end), stems in zip(windows, out):
        torch.testing.assert_close(stems, true[..., int(start * SR): int(end * SR)], atol=0, rtol=0)
    assert not list(tmp_path.iterdir())  # the oracle is never cached
    with pytest.raises(ValueError, match="exceeds"):
        S.OracleSeparator(true).separate(audio[:, :SR], offset=20 * SR - 10)


def test_separate_rejects_bad_audio():
    with pytest.raises(ValueError, match="stereo"):
        S.DSPSeparator().separate(torch.zeros(1, 1000))
    with pytest.raises(ValueError, match="float32"):
        S.DSPSeparator().separate(torch.zeros(2, 1000, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# Stem folders
# ------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    stems = 0.5 * torch.randn(4, 2, SR, generator=torch.Generator().manual_seed(5)).clamp(-1.5, 1.5) / 1.5
    S.save_stems(tmp_path / "wav", stems, SR, fmt="wav")
    torch.testing.assert_close(S.load_stems(tmp_path / "wav"), stems, atol=0, rtol=0)
    S.save_stems(tmp_path / "flac", stems, SR)
    assert sorted(p.name for p in (tmp_path / "flac").iterdir()) == sorted(f"{s}.flac" for s in STEMS)
    torch.testing.assert_close(S.load_stems(tmp_path / "flac"), stems, atol=1e-6, rtol=0)


def test_stems_above_full_scale_are_kept_bit_exact(tmp_path):
    """24-bit FLAC would clip a stem that peaks above full scale: such stems go to float WAV, and a FLAC stem left
    from an earlier write is removed so that load_stems does not read it first."""
    stems = 0.4 * torch.randn(4, 2, SR // 4, generator=torch.Generator().manual_seed(6))
    S.save_stems(tmp_path, stems.clamp(-0.9, 0.9), SR)
    loud = stems.clone()
    loud[0, 0, 100] = 1.3
    S.save_stems(tmp_path, loud, SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    torch.testing.assert_close(S.load_stems(tmp_path), loud, atol=0, rtol=0)


def test_load_stems_errors_name_folder_and_file(tmp_path):
    stems = torch.zeros(4, 2, 1000)
    S.save_stems(tmp_path, stems, SR, fmt="wav")
    (tmp_path / "vocals.wav").unlink()
    with pytest.raises(AudioError, match=r"missing stem file vocals\.flac or vocals\.wav") as info:
        S.load_stems(tmp_path)
    assert str(tmp_path) in str(info.value)

    import soundfile as sf

    sf.write(tmp_path / "vocals.wav", np.zeros((900, 2), np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="different lengths"):
        S.load_stems(tmp_path)
    with pytest.raises(AudioError, match="not found"):
        S.load_stems(tmp_path / "nope")


# ------------------------------------------------------------------------------------------
# get_separator
# ------------------------------------------------------------------------------------------


def test_get_separator_parsing():
    for spec, model in [("htdemucs", "htdemucs"), ("demucs", "htdemucs"), ("demucs:mdx_extra", "mdx_extra"),
                        ("demucs_unittest", "demucs_unittest"), ("demucs:/models/repo", "/models/repo"),
                        (" htdemucs_ft ", "htdemucs_ft")]:
        separator = S.get_separator(spec, device="cpu")
        assert isinstance(separator, S.DemucsSeparator)
        assert separator.model_spec == model
        assert separator._model is None  # lazy: nothing loaded at construction
    assert isinstance(S.get_separator("dsp"), S.DSPSeparator)
    assert S.get_separator("demucs:htdemucs", shifts=2).shifts == 2
    assert S.get_separator("htdemucs").cache_key != S.get_separator("htdemucs", shifts=1).cache_key


@pytest.mark.parametrize("spec, match", [
    ("oracle", "OracleSeparator"),
    ("nonsense", "unknown separator"),
    ("demucs:", "needs a model name"),
    ("", "unknown separator"),
])
def test_get_separator_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        S.get_separator(spec)
