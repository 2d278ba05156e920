"""The differentiable DJ mixer: transparency, effects against independent references, smoothness,
gradients, invertibility, batching and input validation (issue: foundation and mixer)."""

import numpy as np
import pytest
import scipy.signal as ss
import torch

from effects.losses import MultiResolutionSTFTLoss
from effects.mixer import DifferentiableDJMixer
from effects.params import FULL, GLOBAL, PER_TRACK, STEMS

SR = 44_100
WET_SHAPE_PARAMS = {"reverb_return", "reverb_decay", "a.delay_feedback", "b.delay_feedback"}


@pytest.fixture(scope="module")
def mixer():
    return DifferentiableDJMixer()


def curves_with(n_frames=4, layout=FULL, **physical):
    """Neutral curves [1, F, P] with some parameters set in physical units (scalars or per-frame tensors)."""
    c = layout.neutral_curves(n_frames, batch=1)
    for dotted, value in physical.items():
        name = dotted.replace("__", ".")
        spec = layout.params[layout.index(name)].spec
        if isinstance(value, torch.Tensor):
            c[0, :, layout.index(name)] = value
        else:
            c[..., layout.index(name)] = spec.to_model(value)
    return c


def noise_stems(seconds, seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 2, int(SR * seconds), generator=g) * 0.1


def rel_error_db(y, ref):
    return float(10 * torch.log10((y - ref).double().square().sum() / ref.double().square().sum()))


# 1. transparent at neutral --------------------------------------------------------------------------
def test_neutral_is_transparent(mixer):
    a, b = noise_stems(2.0, 0), noise_stems(2.0, 1)
    assert rel_error_db(mixer(a, b, curves_with(crossfader=0.0)), a.sum(1)) < -80
    assert rel_error_db(mixer(a, b, curves_with(crossfader=1.0)), b.sum(1)) < -80
    # published layouts: no crossfader = THRU (both tracks at unity); master-fed reverb off at neutral
    assert rel_error_db(mixer(a, b, PER_TRACK.neutral_curves(8, 1), layout=PER_TRACK), a.sum(1) + b.sum(1)) < -80
    assert rel_error_db(mixer(a, b, curves_with(layout=GLOBAL, crossfader=0.0), layout=GLOBAL), a.sum(1)) < -80


# 2. effects against independent references --------------------------------------------------------
def _response_db(x, y):
    f, pxy = ss.csd(x, y, fs=SR, nperseg=8192)
    _, pxx = ss.welch(x, fs=SR, nperseg=8192)
    return f, 20 * np.log10(np.abs(pxy) / pxx + 1e-12)


def _through_mixer(mixer, noise, **physical):
    a = torch.zeros(1, 4, 2, noise.shape[-1])
    a[0, STEMS.index("bass")] = torch.from_numpy(noise)
    return mixer(a, torch.zeros_like(a), curves_with(crossfader=0.0, **physical))[0].numpy()


@pytest.fixture(scope="module")
def white_noise():
    return np.random.default_rng(0).standard_normal((2, SR * 6)).astype(np.float32) * 0.1


@pytest.mark.parametrize(
    "control, gain_db",
    [("eq_low", -26.0), ("eq_low", -12.0), ("eq_low", 6.0), ("eq_mid", -20.0), ("eq_mid", 6.0),
     ("eq_high", -26.0), ("eq_high", 5.0)],
)
def test_eq_matches_pedalboard(mixer, white_noise, control, gain_db):
    pedalboard = pytest.importorskip("pedalboard")
    cfg = mixer.config
    reference = {
        "eq_low": pedalboard.LowShelfFilter(cfg.eq_low_hz, gain_db, cfg.shelf_q),
        "eq_mid": pedalboard.PeakFilter(cfg.eq_mid_hz, gain_db, cfg.mid_q),
        "eq_high": pedalboard.HighShelfFilter(cfg.eq_high_hz, gain_db, cfg.shelf_q),
    }[control](white_noise, SR)
    ours = _through_mixer(mixer, white_noise, **{f"a__bass__{control}": gain_db})
    f, h_ours = _response_db(white_noise[0], ours[0])
    _, h_ref = _response_db(white_noise[0], reference[0])
    band = (f >= 30) & (f <= 16_000)
    assert np.abs(h_ours[band] - h_ref[band]).max() < 1.0
    # and the setting really does something of the asked size
    assert np.abs(h_ours[band]).max() == pytest.approx(abs(gain_db), abs=1.5)


@pytest.mark.parametrize("kind, cutoff", [("hpf", 40.0), ("hpf", 300.0), ("hpf", 2_000.0), ("hpf", 8_000.0),
                                          ("lpf", 150.0), ("lpf", 500.0), ("lpf", 5_000.0)])
def test_filters_match_butterworth(mixer, white_noise, kind, cutoff):
    ours = _through_mixer(mixer, white_noise, **{f"a__bass__{kind}": cutoff})
    f, h_ours = _response_db(white_noise[0], ours[0])
    order = mixer.config.filter_order
    assert 6 * order >= 12  # documented slope: 6 dB/octave per order, 24 dB/octave by default
    sos = ss.butter(order, cutoff, "highpass" if kind == "hpf" else "lowpass", fs=SR, output="sos")
    _, h = ss.sosfreqz(sos, worN=f, fs=SR)
    h_ref = 20 * np.log10(np.abs(h) + 1e-12)
    band = (f >= 30) & (f <= 16_000) & (h_ref > -40)
    assert np.abs(h_ours[band] - h_ref[band]).max() < 1.0


def test_fader_zero_is_silent(mixer):
    a = noise_stems(1.0, 2)
    kills = {f"a__{s}__gain": 0.0 for s in STEMS} | {"crossfader": 0.0}
    y = mixer(a, torch.zeros_like(a), curves_with(**kills))
    assert 10 * torch.log10(y.square().mean() / a.sum(1).square().mean() + 1e-30) <= -90


def test_crossfader_keeps_power_for_uncorrelated_inputs(mixer):
    a, b = noise_stems(3.0, 3), noise_stems(3.0, 4)
    reference = (a.sum(1).square().mean() + b.sum(1).square().mean()) / 2
    for x in np.linspace(0, 1, 11):
        y = mixer(a, b, curves_with(crossfader=float(x)))
        assert abs(10 * torch.log10(y.square().mean() / reference)) < 0.5


def _rt60(y):
    """Schroeder backward integration, T20 (-5 to -25 dB) extrapolated to 60 dB."""
    y = y.astype(np.float64)
    energy = np.cumsum((y**2)[::-1])[::-1]
    edc = 10 * np.log10(energy / energy[0] + 1e-300)
    i5, i25 = np.argmax(edc <= -5), np.argmax(edc <= -25)
    slope = np.polyfit(np.arange(i5, i25) / SR, edc[i5:i25], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("decay", [0.2, 0.5, 1.5, 4.0, 8.0])
def test_reverb_rt60(mixer, decay):
    n = int(SR * (1.6 * decay + 1.0))
    a = torch.zeros(1, 4, 2, n)
    a[0, 0, :, int(0.1 * SR)] = 1.0
    # crossfader on B silences A's dry path; the send is pre-crossfader, so only the reverb is heard
    y = mixer(a, torch.zeros_like(a), curves_with(a__reverb_send=1.0, crossfader=1.0, reverb_decay=decay))[0]
    for channel in y.numpy():
        assert _rt60(channel) == pytest.approx(decay, rel=0.15)


def test_reverb_tail_rings_after_send_closes(mixer):
    n = SR * 3
    a = noise_stems(3.0, 5)
    send = torch.zeros(16)
    send[:8] = 1.0  # open for the first half, then closed
    y = mixer(a, torch.zeros_like(a), curves_with(16, a__reverb_send=send, crossfader=1.0, reverb_decay=3.0))[0]
    after = y[:, int(n * 0.6): int(n * 0.7)]
    assert after.square().mean().sqrt() > 1e-3  # still ringing


@pytest.mark.parametrize("bpm, feedback", [(120.0, 0.5), (128.0, 0.8), (174.0, 0.3)])
def test_delay_is_tempo_synced_and_geometric(mixer, bpm, feedback):
    n, t0 = SR * 3, int(0.3 * SR)
    a = torch.zeros(1, 4, 2, n)
    a[0, 0, :, t0] = 1.0
    curves = curves_with(a__delay_send=1.0, crossfader=1.0, a__delay_feedback=feedback)
    y = mixer(a, torch.zeros_like(a), curves, bpm=bpm)[0, 0].numpy()
    spacing = mixer.config.delay_beats * 60.0 / bpm * SR
    peaks = []
    for k in range(1, 5):
        centre = int(round(t0 + k * spacing))
        window = y[centre - 2000: centre + 2000]
        i = int(np.argmax(np.abs(window)))
        assert abs(centre - 2000 + i - (t0 + k * spacing)) / SR < 1e-3  # within 1 ms
        peaks.append(window[i])
    assert np.allclose(np.array(peaks[1:]) / np.array(peaks[:-1]), feedback, rtol=0.02)


def test_delay_tail_rings_after_send_closes(mixer):
    a = torch.zeros(1, 4, 2, SR * 3)
    a[0, 0, :, int(0.1 * SR)] = 1.0
    send = torch.zeros(30)
    send[:3] = 1.0
    y = mixer(a, torch.zeros_like(a), curves_with(30, a__delay_send=send, crossfader=1.0, a__delay_feedback=0.8))
    assert y[0, :, int(1.5 * SR):].abs().max() > 0.01


# 3. smooth automation ------------------------------------------------------------------------------
@pytest.mark.parametrize("n_frames", [32, 400])
def test_gain_step_adds_no_splatter(mixer, n_frames):
    n = SR * 2
    t = np.arange(n) / SR
    a = torch.zeros(1, 4, 2, n)
    a[0, 3] = torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    gain = torch.ones(n_frames)
    gain[n_frames // 2:] = 0.1  # a hard step
    y = mixer(a, torch.zeros_like(a), curves_with(n_frames, a__other__gain=gain))[0, 0].numpy()
    spectrum = np.abs(np.fft.rfft(y * ss.windows.blackmanharris(n)))
    f = np.fft.rfftfreq(n, 1 / SR)
    level = 20 * np.log10(spectrum / spectrum.max() + 1e-20)
    assert level[np.abs(f - 1000) > 200].max() < -60


# 4. gradients ---------------------------------------------------------------------------------------
def _grads(mixer, curves, seed=7):
    a, b = noise_stems(1.0, seed), noise_stems(1.0, seed + 1)
    target = mixer(a, b, torch.rand(1, 8, len(FULL), generator=torch.Generator().manual_seed(seed)), bpm=125)
    curves = curves.clone().requires_grad_(True)
    MultiResolutionSTFTLoss()(mixer(a, b, curves, bpm=125), target).backward()
    return curves.grad[0].abs().sum(0)


def test_every_parameter_has_a_gradient_at_random_settings(mixer):
    grad = _grads(mixer, torch.rand(1, 8, len(FULL), generator=torch.Generator().manual_seed(3)))
    assert torch.isfinite(grad).all()
    assert [FULL.names[i] for i in range(len(FULL)) if grad[i] == 0] == []


def test_gradients_at_neutral(mixer):
    """At neutral every parameter has a gradient except the four that only shape a wet signal.

    Neutral is bit-exact bypass, so the reverb and delay buses carry nothing there and return
    level, RT60 and feedback have nothing to act on (exactly zero, by construction). The sends do
    get gradients (return sits at unity), so a fit can open them; once open, the four wake up.
    """
    grad = _grads(mixer, FULL.neutral_curves(8, batch=1))
    assert torch.isfinite(grad).all()
    assert {FULL.names[i] for i in range(len(FULL)) if grad[i] == 0} == WET_SHAPE_PARAMS
    opened = curves_with(8, a__reverb_send=0.01, b__delay_send=0.01, a__delay_send=0.01)
    grad = _grads(mixer, opened)
    assert torch.isfinite(grad).all() and (grad > 0).all()


def _naive_mix_core(stems_a, stems_b, masks, mix, ret, decay, interp, lowcut, phase, window, hop, n):
    """_MixCore written plainly (full-size tensors, a Python loop for the reverb, torch.stft/istft), for autograd."""
    spec_a, spec_b = (torch.stft(x.flatten(0, 2), len(window), hop, window=window, return_complex=True)
                      .transpose(1, 2).unflatten(0, x.shape[:3]) for x in (stems_a, stems_b))  # [B, 4, 2, M, K]
    frame_masks = masks if interp is None else torch.einsum("fm,btsfk->btsmk", interp, masks)
    chans = [(frame_masks[:, t, :, None] * spec).sum(1) for t, spec in enumerate((spec_a, spec_b))]  # [B, 2, M, K]

    def mixed(j):
        return sum(mix[:, None, :, t, j, None] * chan for t, chan in enumerate(chans))

    send = mixed(-1) * lowcut * phase.conj()
    states, d = [], torch.zeros_like(send[:, :, 0])
    for i in range(send.shape[2]):
        d = decay[:, i, None, None] * d + (send[:, :, i - 1] if i else 0.0)
        states.append(d)
    buses = [mixed(0) + ret[:, None, :, None] * phase * torch.stack(states, dim=2)]
    buses += [mixed(j) * lowcut for j in range(1, mix.shape[-1] - 1)]
    spec = torch.stack(buses, dim=1)  # [B, n_bus, 2, M, K]
    audio = torch.istft(spec.flatten(0, 2).transpose(1, 2), len(window), hop, window=window, length=n)
    return audio.view(*spec.shape[:3], n)


@pytest.mark.parametrize("n_frames, delay", [(4, True), (40, False)])  # interpolated masks; masks per frame
def test_mix_core_gradients_match_autograd(n_frames, delay):
    """The hand-written backward of the mixer's spectral core equals autograd through the plain formula."""
    from effects.mixer import _interp_matrix, _inverse_envelope, _mask_rows, _MixCore, _Plan

    torch.manual_seed(0)
    b, n_fft, hop, n = 2, 64, 16, 16 * 24 + 5
    m, k, n_dest = n // hop + 1, n_fft // 2 + 1, 4 if delay else 2
    stems_a, stems_b = (torch.randn(b, 4, 2, n, requires_grad=True) for _ in range(2))
    masks = torch.rand(b, 2, 4, min(n_frames, m), k, requires_grad=True)
    mix = torch.rand(b, m, 2, n_dest, requires_grad=True)
    ret, decay = torch.rand(b, m, requires_grad=True), torch.rand(b, m, requires_grad=True)
    lowcut, theta, window = torch.rand(k), torch.rand(2, m, k) * 6.3, torch.hann_window(n_fft)
    phase = torch.polar(torch.ones_like(theta), theta)
    blocks = tuple((m0, min(m0 + 7, m)) for m0 in range(0, m, 7))  # several blocks, the last one short
    if n_frames < m:
        pos = torch.arange(m) * (hop * (n_frames - 1) / (n - 1))
        left = pos.floor().long().clamp(max=n_frames - 2)
        interp = _interp_matrix(left, left + 1, (pos - left)[:, None], n_frames)
        rows = _mask_rows(blocks, n_frames, hop, n)
    else:
        interp, rows = None, blocks
    plan = _Plan(blocks, interp, rows, lowcut.repeat_interleave(2), phase, phase.conj().resolve_conj(), window,
                 _inverse_envelope(window, hop, m, n), hop)
    inputs = (stems_a, stems_b, masks, mix, ret, decay)
    weights = torch.randn(b, n_dest - 1, 2, n)

    def loss(outputs):
        return (torch.cat([outputs[0][:, None], outputs[1]], dim=1) * weights).sum()

    interleaved = masks.unsqueeze(-1).expand(*masks.shape, 2).flatten(-2)
    ours = _MixCore.apply(stems_a, stems_b, interleaved, mix, ret, decay, plan)
    grads = torch.autograd.grad(loss(ours), inputs)
    reference = _naive_mix_core(*inputs, interp, lowcut, phase, window, hop, n)
    ref_grads = torch.autograd.grad((reference * weights).sum(), inputs)
    assert torch.allclose(torch.cat([ours[0][:, None], ours[1]], dim=1), reference, atol=1e-5)
    for name, g, ref in zip(("stems_a", "stems_b", "masks", "mix", "ret", "decay"), grads, ref_grads):
        assert torch.allclose(g, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), name


@pytest.mark.parametrize("n, delays", [(1000, (70, 333)), (50, (64, 7))])  # D >= N, and a partial last repeat
def test_delay_lines_gradients_match_autograd(n, delays):
    """The hand-written backward of the delay lines equals autograd through the plain recursion."""
    from effects.mixer import _DelayLines

    torch.manual_seed(0)
    x = torch.randn(2, 2, 2, n, requires_grad=True)
    feedback = torch.rand(2, 2, n, requires_grad=True)
    weights = torch.randn(2, 2, n)
    ours = _DelayLines.apply(x, feedback, delays)
    grads = torch.autograd.grad((ours * weights).sum(), (x, feedback))
    reference = []
    for b, d in enumerate(delays):
        out = []
        for i in range(n):  # y[i] = x[i - D] + fb[i] y[i - D]
            out.append(x[b, :, :, i - d] + feedback[b, :, None, i] * out[i - d] if i >= d else torch.zeros(2, 2))
        reference.append(torch.stack(out, dim=-1).sum(0))
    reference = torch.stack(reference)
    ref_grads = torch.autograd.grad((reference * weights).sum(), (x, feedback))
    assert torch.allclose(ours, reference, atol=1e-5)
    for g, ref in zip(grads, ref_grads):
        assert torch.allclose(g, ref, atol=1e-5)


# 5. invertible ----------------------------------------------------------------------------------------
def _musical_stems(n, seed):
    """Four stems with distinct spectra (noise hits, a bass tone, a vibrato voice, broadband pad)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    stems = torch.zeros(1, 4, 2, n)
    stems[0, 0] = torch.randn(2, n, generator=g) * torch.exp(-(t % 0.25) / 0.03) * 0.5
    f0 = 40 + 40 * torch.rand(1, generator=g)
    stems[0, 1] = (torch.sin(2 * np.pi * f0 * t) + 0.3 * torch.sin(4 * np.pi * f0 * t)) * 0.4
    vibrato = 1 + 0.02 * torch.sin(2 * np.pi * 5 * t)
    stems[0, 2] = sum(torch.sin(2 * np.pi * 220 * k * vibrato * t) / k for k in range(1, 12)) * 0.15
    stems[0, 3] = torch.randn(2, n, generator=g) * 0.1
    return stems


@pytest.mark.slow
def test_curves_are_recoverable_by_gradient_descent(mixer):
    """Adam from neutral recovers a mix rendered from hidden smooth random curves (all 58 moving)."""
    from effects.fit import fit_curves

    n, frames = int(SR * 1.2), 16
    a, b = _musical_stems(n, 0), _musical_stems(n, 1)
    g = torch.Generator().manual_seed(0)
    knots = (FULL.neutral_curves(6, batch=1) + (torch.rand(1, 6, len(FULL), generator=g) - 0.5)).clamp(0, 1)
    hidden = torch.nn.functional.interpolate(knots.transpose(1, 2), size=frames, mode="linear",
                                             align_corners=True).transpose(1, 2)
    with torch.no_grad():
        target = mixer(a, b, hidden, bpm=124)
    result = fit_curves(mixer, a, b, target, frames, steps=300, lr=0.03, bpm=124)
    assert result.snr_db >= 25.0
    assert result.losses[-1] < 0.1 * result.losses[0]


# 6. batching and validation ----------------------------------------------------------------------------
def test_batched_equals_per_item(mixer):
    a, b = noise_stems(1.0, 8, batch=3), noise_stems(1.0, 9, batch=3)
    curves = torch.rand(3, 6, len(FULL), generator=torch.Generator().manual_seed(1))
    bpms = [100.0, 128.0, 174.0]
    batched = mixer(a, b, curves, bpm=bpms)
    for i in range(3):
        single = mixer(a[i:i + 1], b[i:i + 1], curves[i:i + 1], bpm=bpms[i])
        assert torch.allclose(batched[i], single[0], atol=1e-5)


def test_layout_by_names_and_missing_parameters_sit_at_neutral(mixer):
    a, b = noise_stems(1.0, 10), noise_stems(1.0, 11)
    names = ["crossfader", "a.bass.gain"]
    curves = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    y = mixer(a, b, curves, layout=names)
    assert rel_error_db(y, a.sum(1) - a[:, 1]) < -80


def test_a_silent_deck_is_skipped_without_changing_the_mix(mixer):
    """Without a gradient a deck whose stems are all zero costs no FFTs (evaluate.py renders each track's
    contribution alone); the result is the full computation's, which runs when a gradient is needed."""
    a, zeros = noise_stems(1.0, 14), torch.zeros(1, 4, 2, SR)
    curves = torch.rand(1, 12, 58, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast_a, fast_b = mixer(a, zeros, curves, bpm=120.0), mixer(zeros, a, curves, bpm=120.0)
    full_a = mixer(a, zeros, curves.clone().requires_grad_(), bpm=120.0).detach()
    full_b = mixer(zeros, a, curves.clone().requires_grad_(), bpm=120.0).detach()
    torch.testing.assert_close(fast_a, full_a, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast_b, full_b, atol=1e-6, rtol=0)
    assert float(fast_a.abs().max()) > 0.01 and float(fast_b.abs().max()) > 0.01


def test_to_full_keeps_the_routing_of_the_published_subsets(mixer):
    """A per_track or global model's curves carried into the full layout render the same mix: no crossfader means
    both tracks at unity (expand_to alone leaves the crossfader at centre, -3 dB each), a master-fed reverb takes
    each track's crossfader gain as its send (expand_to alone mutes it)."""
    a, b = noise_stems(1.5, 12), noise_stems(1.5, 13)
    g = torch.Generator().manual_seed(3)
    n = 24
    for layout in (PER_TRACK, GLOBAL):
        curves = torch.rand(1, n, len(layout), generator=g) * 0.6 + 0.2
        if "a.delay_send" in layout:  # sends open enough for the echoes to count
            for name in ("a.delay_send", "b.delay_send", "a.reverb_send", "b.reverb_send"):
                curves[0, :, layout.index(name)] = 0.5
        if "crossfader" in layout:  # a crossfader that moves across the clip, as a DJ's does
            curves[0, :, layout.index("crossfader")] = torch.linspace(0.0, 1.0, n)
            curves[0, :, layout.index("reverb_return")] = 0.8
        native = mixer(a, b, curves, layout=layout, bpm=120.0)
        full = mixer(a, b, layout.to_full(curves), layout=FULL, bpm=120.0)
        padded = mixer(a, b, layout.expand_to(curves, FULL), layout=FULL, bpm=120.0)
        assert rel_error_db(full, native) < (-120 if layout is PER_TRACK else -60), layout.name
        assert rel_error_db(padded, native) > -20, layout.name  # the plain expansion is a different mix
    assert FULL.to_full(curves := torch.rand(2, 5, 58, generator=g)) is curves


@pytest.mark.parametrize(
    "case, match",
    [
        ("stem_count", "must be \\[B, 4, 2, N\\]"),
        ("lengths", "differ in shape"),
        ("curve_width", "parameters"),
        ("nan", "NaN"),
        ("batch", "batch"),
        ("short", "shorter than one STFT frame"),
        ("bpm", "bpm"),
        ("int_audio", "floating point"),
    ],
)
def test_bad_input_raises_clear_errors(mixer, case, match):
    a, b = noise_stems(0.5, 0), noise_stems(0.5, 1)
    curves = FULL.neutral_curves(4, batch=1)
    kwargs = {}
    if case == "stem_count":
        a = a[:, :3]
    elif case == "lengths":
        b = b[..., :-10]
    elif case == "curve_width":
        curves = curves[..., :-1]
    elif case == "nan":
        curves[0, 1, 3] = float("nan")
    elif case == "batch":
        curves = curves.expand(2, -1, -1)
    elif case == "short":
        a, b = a[..., :1000], b[..., :1000]
    elif case == "bpm":
        kwargs["bpm"] = [120.0, 130.0]
    elif case == "int_audio":
        a = (a * 1000).long()
    with pytest.raises(ValueError, match=match):
        mixer(a, b, curves, **kwargs)


def test_unknown_layout_name_raises(mixer):
    a = noise_stems(0.5, 0)
    with pytest.raises(ValueError, match="unknown parameter name"):
        mixer(a, a, torch.zeros(1, 2, 1), layout=["a.bass.wah"])
