"""data/audio.py: round trips, channel handling, resampling, and one clear error per bad input."""

import os
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from data.audio import AudioError, downmix, load_audio, peak_db, rms_db, save_audio, to_mono

SR = 44_100


def _stereo(rng, seconds=0.5, sr=SR):
    return torch.from_numpy((0.3 * rng.standard_normal((2, int(seconds * sr)))).astype(np.float32))


@pytest.mark.parametrize(
    "ext, subtype, tol",
    [("wav", None, 0.0), ("flac", None, 2.0**-22), ("wav", "PCM_16", 2.0**-15), ("flac", "PCM_16", 2.0**-15)],
)
def test_round_trip_lossless(tmp_path, rng, ext, subtype, tol):
    audio = _stereo(rng).clamp(-0.99, 0.99)
    path = save_audio(tmp_path / f"x.{ext}", audio, SR, subtype=subtype)
    back = load_audio(path)
    assert back.dtype == torch.float32 and back.shape == audio.shape
    assert float((back - audio).abs().max()) <= tol
    assert [p.name for p in tmp_path.iterdir()] == [f"x.{ext}"]  # no temporary file left behind


def test_round_trip_ogg(tmp_path):
    if "OGG" not in sf.available_formats():
        pytest.skip("libsndfile without OGG")
    t = np.arange(SR) / SR
    audio = torch.from_numpy(np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32))
    back = load_audio(save_audio(tmp_path / "x.ogg", audio, SR))
    assert back.shape[0] == 2 and abs(back.shape[1] - audio.shape[1]) < 2048
    n = min(back.shape[1], audio.shape[1])
    # Lossy codec: compare levels, not samples.
    assert abs(rms_db(back[:, :n]) - rms_db(audio[:, :n])) < 1.0


def test_mono_is_duplicated(tmp_path, rng):
    mono = (0.2 * rng.standard_normal(SR // 4)).astype(np.float32)
    sf.write(tmp_path / "m.wav", mono, SR, subtype="FLOAT")
    back = load_audio(tmp_path / "m.wav")
    assert back.shape == (2, mono.size)
    assert torch.equal(back[0], back[1]) and np.allclose(back[0].numpy(), mono)


def test_save_accepts_1d_and_creates_folders(tmp_path, rng):
    mono = _stereo(rng)[0]
    path = save_audio(tmp_path / "a" / "b" / "m.flac", mono, SR)
    assert load_audio(path).shape == (2, mono.numel())


def test_six_channel_downmix(tmp_path):
    n = SR // 10
    tone = np.sin(2 * np.pi * 441.0 * np.arange(n) / SR)  # whole cycles: no DC
    data = np.zeros((6, n), np.float32)
    data[0] = 0.5 * tone  # left only
    data[2] = 0.25 * tone  # centre goes to both sides
    data[3] = 0.9 * tone  # LFE is dropped
    sf.write(tmp_path / "s.wav", data.T, SR, subtype="FLOAT")
    back = load_audio(tmp_path / "s.wav").numpy()
    assert back.shape == (2, n)
    level = np.sqrt((back**2).mean(axis=1))
    assert level[0] > level[1] > 0  # left louder than right, centre present in both
    # A signal equal in every channel keeps its level and nothing clips.
    same = np.full((6, 8), 0.7, np.float32)
    assert np.allclose(downmix(same), 0.7, atol=1e-6)


def test_resample_48k_keeps_frequency(tmp_path):
    sr_in, freq = 48_000, 1000.0
    t = np.arange(sr_in) / sr_in
    sf.write(tmp_path / "s.wav", 0.5 * np.sin(2 * np.pi * freq * t), sr_in, subtype="FLOAT")
    back = load_audio(tmp_path / "s.wav", sample_rate=SR)
    assert abs(back.shape[1] - SR) <= 1
    spectrum = np.abs(np.fft.rfft(back[0].numpy() * np.hanning(back.shape[1])))
    peak_hz = np.argmax(spectrum) * SR / back.shape[1]
    assert abs(peak_hz - freq) < 2.0


@pytest.mark.parametrize("sr_in", [44_101, 47_999])
def test_resample_a_rate_coprime_with_44k1_is_light(tmp_path, monkeypatch, sr_in):
    """julius would build one sinc kernel per output phase (44 100 of them for 44 101 Hz: ~22 GB); such a rate
    goes through a polyphase FIR, and a sine keeps its frequency and level."""
    import data.audio as audio

    def refuse(*_, **__):
        raise AssertionError("julius.resample_frac called with a coprime rate")

    monkeypatch.setattr(audio.julius, "resample_frac", refuse)
    freq = 997.0
    t = np.arange(sr_in) / sr_in
    sf.write(tmp_path / "s.wav", 0.5 * np.sin(2 * np.pi * freq * t), sr_in, subtype="FLOAT")
    back = load_audio(tmp_path / "s.wav", sample_rate=SR)
    assert abs(back.shape[1] - SR) <= 1
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(back.shape[1]) / SR)
    inner = slice(SR // 10, -SR // 10)  # away from the edges' filter transients
    assert np.max(np.abs(back[0].numpy()[inner] - expected[inner])) < 1e-3


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav.*not found"):
        load_audio(tmp_path / "nope.wav")


def test_a_corrupt_mp3_is_one_quiet_line(tmp_path):
    """libmpg123 writes its notes to file descriptor 2 itself; the error must still be the only line."""
    import subprocess
    import sys

    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    code = ("import sys\nfrom data.audio import AudioError, load_audio\ntry:\n    load_audio(sys.argv[1])\n"
            "except AudioError as e:\n    print('error:', e, file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code, str(junk)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "junk.mp3: unreadable or corrupt audio file" in lines[0], run.stderr
    assert "does not exist" not in lines[0]


def test_a_dc_offset_is_removed(tmp_path, caplog):
    t = np.arange(SR) / SR
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    sf.write(tmp_path / "dc.wav", np.stack([x + 0.4, x - 0.1], 1), SR, subtype="FLOAT")
    back = load_audio(tmp_path / "dc.wav").numpy()
    assert np.abs(back.mean(axis=1)).max() < 1e-6 and "DC offset of 0.400" in caplog.text
    assert np.allclose(back[0], x - x.mean(), atol=1e-6)
    sf.write(tmp_path / "plain.wav", np.stack([x, x], 1), SR, subtype="FLOAT")
    assert np.array_equal(load_audio(tmp_path / "plain.wav").numpy()[0], x.astype(np.float32))  # untouched
    sf.write(tmp_path / "only_dc.wav", np.full((SR, 2), 0.25), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="silent"):
        load_audio(tmp_path / "only_dc.wav")


def test_zero_length_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        load_audio(tmp_path / "empty.wav")


def test_corrupt_file(tmp_path, rng):
    (tmp_path / "junk.wav").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="junk.wav.*unreadable"):
        load_audio(tmp_path / "junk.wav")


def test_truncated_header(tmp_path, rng):
    sf.write(tmp_path / "full.flac", 0.1 * rng.standard_normal(SR), SR)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "full.flac").read_bytes()[:30])
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(tmp_path / "cut.flac")


def test_header_only_wav_has_no_samples(tmp_path):
    sf.write(tmp_path / "none.wav", np.zeros((0, 2), np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="none.wav.*(no audio samples|unreadable)"):
        load_audio(tmp_path / "none.wav")


def test_silence(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros((SR, 2), np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="quiet.wav.*silent"):
        load_audio(tmp_path / "quiet.wav")
    assert load_audio(tmp_path / "quiet.wav", allow_silence=True).abs().max() == 0


def _raw_float_wav(path, samples: np.ndarray, sr=SR):
    """A mono IEEE-float WAV written by hand, so NaNs reach the file untouched."""
    payload = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + len(payload)) + body + payload)


def test_non_finite_samples(tmp_path):
    samples = np.full(1000, 0.1, np.float32)
    samples[500] = np.nan
    _raw_float_wav(tmp_path / "nan.wav", samples)
    with pytest.raises(AudioError, match="nan.wav.*non-finite"):
        load_audio(tmp_path / "nan.wav")


def test_save_rejects_bad_audio(tmp_path):
    with pytest.raises(AudioError, match="bad.wav.*non-finite"):
        save_audio(tmp_path / "bad.wav", torch.tensor([[0.0, float("inf")]]), SR)
    with pytest.raises(AudioError, match="x.mp4"):
        save_audio(tmp_path / "x.mp4", torch.zeros(2, 10), SR)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file(tmp_path, rng, monkeypatch):
    path = save_audio(tmp_path / "keep.wav", _stereo(rng), SR)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(RuntimeError):
        save_audio(path, _stereo(rng), SR)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_saved_audio_is_readable_by_all(tmp_path, rng, ext):
    """The temporary file comes from mkstemp (mode 0600); the written file is 0644 like every other output."""
    path = save_audio(tmp_path / f"x.{ext}", _stereo(rng).clamp(-0.99, 0.99), SR)
    assert path.stat().st_mode & 0o777 == 0o644


def test_level_helpers():
    x = torch.full((2, 100), 0.5)
    assert abs(peak_db(x) - 20 * np.log10(0.5)) < 1e-6
    assert abs(rms_db(x) - 20 * np.log10(0.5)) < 1e-6
    assert peak_db(torch.zeros(2, 4)) == -200.0 and rms_db(np.zeros(3)) == -200.0
    assert to_mono(torch.stack([torch.ones(4), -torch.ones(4)])).abs().max() == 0
    assert to_mono(np.ones((2, 3))).shape == (3,)
