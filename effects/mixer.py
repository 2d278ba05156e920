"""DifferentiableDJMixer: renders two tracks' stems through per-frame mixer curves.

Signal flow (per track t in {a, b}, per stem s):

    stem --STFT--> x gain * low shelf * mid peak * high shelf * HPF * LPF   (one magnitude mask)
         sum over stems -> channel C_t (STFT domain)
    dry    = crossfader_a * C_a + crossfader_b * C_b          (constant power, or THRU)
    reverb = reverb_return * Reverb(sum_t reverb_send_t * C_t, reverb_decay)   (STFT domain)
    delay  = sum_t DelayLine_t(ISTFT(delay_send_t * C_t), delay_feedback_t)  (time domain, tempo-synced)
    out    = master_gain * (ISTFT(dry + reverb) + delay)

EQ and filters are zero-phase magnitude masks built from the analog prototypes of RBJ biquads
(`effects/filters.py`), so the neutral setting is a mask of exactly 1 and the mixer is then an
STFT/ISTFT round trip (float32 error, about -140 dB). Sends are post-fader, pre-crossfader; both
sends pass a fixed 12 dB/octave low cut so washes and echoes keep out of the bass. The output is
linear in the audio: no tanh, no limiter (loudness belongs to the output stage).

Reverb: a deterministic (seeded) diffuse tail computed in the STFT domain. Every bin carries a
leaky integrator whose per-frame decay g = 10^(-3 hop / (sr RT60)) follows `reverb_decay` frame by
frame, and a fixed random phase per frame and bin makes the tail noise-like. Because the state is
kept "de-phased", the recursion is a real first-order scan that we evaluate in parallel chunks, so
a time-varying RT60 costs one pass over the spectrogram.

Delay: echoes every `delay_beats` beats at `bpm` (sample-exact), feedback applied per repeat as a
time-varying gain, tails ring on after the send closes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effects import filters
from effects.params import FULL, STEM_CONTROLS, STEMS, TRACKS, ParamLayout, get_layout


@dataclass
class MixerConfig:
    """Fixed properties of the mixer (the curves set everything that moves)."""

    sample_rate: int = 44_100
    n_fft: int = 4096  # 10.8 Hz bins: steep low-frequency filters stay within 1 dB of their design
    hop_length: int = 1024
    eq_low_hz: float = 200.0  # low shelf corner
    eq_mid_hz: float = 1_000.0  # mid peak centre
    eq_high_hz: float = 4_000.0  # high shelf corner
    shelf_q: float = 0.7071
    mid_q: float = 0.7
    filter_order: int = 4  # Butterworth order of hpf/lpf: 6 dB/octave per order -> 24 dB/octave
    filter_engage: float = 0.02  # model-space travel over which a filter fades in from bit-exact bypass
    send_lowcut_hz: float = 150.0  # 2nd-order high-pass on the reverb and delay sends
    delay_beats: float = 0.5  # echo spacing in beats (1/8 note)
    default_bpm: float = 120.0  # used when no bpm is given
    reverb_seed: int = 1234
    reverb_chunk: int = 32  # frames per parallel scan chunk (decay^chunk must stay inside float32)
    check_finite: bool = True  # validate curves (one host sync per call); off for max GPU throughput


BpmLike = float | Sequence[float] | torch.Tensor | None


class DifferentiableDJMixer(nn.Module):
    """mixer(stems_a [B,4,2,N], stems_b [B,4,2,N], curves [B,F,P], layout, bpm) -> [B,2,N].

    Curves are model-space values in [0, 1] (values outside are clamped) sampled at F instants
    evenly spaced from the first to the last sample of the clip; they are interpolated linearly
    to the STFT frame rate (filter responses are evaluated at min(F, n_stft_frames) control
    frames, then interpolated). Parameters the layout lacks sit at their neutral values.
    """

    def __init__(self, config: MixerConfig | None = None):
        super().__init__()
        self.config = cfg = config or MixerConfig()
        if cfg.n_fft % cfg.hop_length or cfg.n_fft // cfg.hop_length < 4:
            raise ValueError("hop_length must divide n_fft with at least 75 % overlap")
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("warped", filters.warped_bins(cfg.n_fft, cfg.sample_rate), persistent=False)
        lowcut = filters.butterworth_highpass(
            self.warped, filters.warp(torch.tensor(cfg.send_lowcut_hz), cfg.sample_rate), order=2
        )
        self.register_buffer("send_lowcut", lowcut, persistent=False)
        # FULL-layout columns: stem controls as [track, stem, control], others by name.
        stem_idx = [[[FULL.index(f"{t}.{s}.{c}") for c in STEM_CONTROLS] for s in STEMS] for t in TRACKS]
        self._stem_idx = torch.tensor(stem_idx)
        self._col = {name: FULL.index(name) for name in FULL.names if name.count(".") < 2}
        self._sample_cols = [self._col[name] for name in ("master_gain", "a.delay_feedback", "b.delay_feedback")]
        self._phases: dict[torch.device, torch.Tensor] = {}

    # -- public entry ----------------------------------------------------------------------------
    def forward(
        self,
        stems_a: torch.Tensor,
        stems_b: torch.Tensor,
        curves: torch.Tensor,
        layout: str | ParamLayout | Sequence[str] = "full",
        bpm: BpmLike = None,
    ) -> torch.Tensor:
        layout = get_layout(layout)
        self._validate(stems_a, stems_b, curves, layout)
        cfg = self.config
        batch, _, _, n = stems_a.shape
        bpms = self._bpm_list(bpm, batch)
        n_stft = n // cfg.hop_length + 1

        model = layout.expand_to(curves.float().clamp(0.0, 1.0), FULL)  # [B, F, 58]
        phys = FULL.to_physical(model)
        frames = self._positions(model.shape[1], n_stft, cfg.hop_length, n, model.device)

        # Spectra stay [..., M, K] (frames, bins): torch.stft's own memory order, so nothing is transposed.
        masks = self._stem_masks(model, phys, frames)  # [B, 2, 4, M, K]
        channels = torch.stack(  # [B, 2 tracks, 2 ch, M, K]
            [_masked_stem_sum(self._stft(stems.float()), masks[:, t]) for t, stems in enumerate((stems_a, stems_b))],
            dim=1,
        )

        frame = _lerp_rows(phys, *frames)[..., None]  # per-frame values [B, M, 58, 1]
        if layout.crossfader_thru:
            dry = channels[:, 0] + channels[:, 1]
        else:
            angle = frame[:, None, :, self._col["crossfader"]] * (math.pi / 2)
            dry = channels[:, 0] * torch.cos(angle) + channels[:, 1] * torch.sin(angle)

        lowcut = self.send_lowcut
        if layout.reverb_from_master:
            reverb_in = dry * lowcut
        else:
            sends = [frame[:, None, :, self._col[f"{t}.reverb_send"]] * lowcut for t in TRACKS]  # [B, 1, M, K]
            reverb_in = channels[:, 0] * sends[0] + channels[:, 1] * sends[1]
        level = frame[:, None, :, self._col["reverb_return"]]
        wet = self._reverb(reverb_in, frame[:, :, self._col["reverb_decay"]], level)
        out = self._istft(dry + wet, n)  # [B, 2, N]

        per_sample = _to_samples(phys[..., self._sample_cols].transpose(1, 2), n)  # [B, 3, N]: master dB, fb a, fb b
        if "delay_send" in {p.control for p in layout}:
            sends = torch.stack([frame[:, :, self._col[f"{t}.delay_send"]] for t in TRACKS], dim=1)  # [B, 2, M, 1]
            delay_in = self._istft(channels * (sends[:, :, None] * lowcut), n)  # [B, 2, 2, N]
            out = out + self._delays(delay_in, per_sample[:, 1:], bpms)
        return out * torch.pow(10.0, per_sample[:, :1] / 20.0)

    # -- validation ------------------------------------------------------------------------------
    def _validate(self, stems_a, stems_b, curves, layout: ParamLayout) -> None:
        for name, stems in (("stems_a", stems_a), ("stems_b", stems_b)):
            if not isinstance(stems, torch.Tensor) or stems.dim() != 4 or stems.shape[1:3] != (len(STEMS), 2):
                shape = tuple(stems.shape) if isinstance(stems, torch.Tensor) else type(stems).__name__
                raise ValueError(f"{name} must be [B, 4, 2, N] (stems {STEMS}, stereo), got {shape}")
            if not stems.is_floating_point():
                raise ValueError(f"{name} must be floating point audio, got {stems.dtype}")
        if stems_a.shape != stems_b.shape:
            raise ValueError(f"stems_a {tuple(stems_a.shape)} and stems_b {tuple(stems_b.shape)} differ in shape")
        if stems_a.shape[-1] < self.config.n_fft:
            raise ValueError(f"clip of {stems_a.shape[-1]} samples is shorter than one STFT frame "
                             f"({self.config.n_fft} samples)")
        if not isinstance(curves, torch.Tensor) or curves.dim() != 3:
            raise ValueError(f"curves must be [B, F, P], got {getattr(curves, 'shape', type(curves).__name__)}")
        if curves.shape[0] != stems_a.shape[0]:
            raise ValueError(f"curves batch {curves.shape[0]} != stems batch {stems_a.shape[0]}")
        if curves.shape[1] < 1:
            raise ValueError("curves need at least one frame")
        if curves.shape[2] != len(layout):
            raise ValueError(f"curves have {curves.shape[2]} parameters, layout {layout.name!r} has {len(layout)}")
        if len({stems_a.device, stems_b.device, curves.device}) != 1:
            raise ValueError("stems_a, stems_b and curves must be on the same device")
        if self.config.check_finite and not bool(torch.isfinite(curves).all()):
            raise ValueError("curves contain NaN or infinite values")

    def _bpm_list(self, bpm: BpmLike, batch: int) -> list[float]:
        if bpm is None:
            values = [self.config.default_bpm] * batch
        elif isinstance(bpm, int | float):
            values = [float(bpm)] * batch
        else:
            # bpm is metadata: pass host values to avoid a device sync here.
            values = [float(v) for v in (bpm.detach().flatten().cpu().tolist() if isinstance(bpm, torch.Tensor)
                                         else bpm)]
            if len(values) == 1:
                values = values * batch
        if len(values) != batch or not all(math.isfinite(v) and 20.0 <= v <= 400.0 for v in values):
            raise ValueError(f"bpm must be one value or {batch} values in 20..400, got {values}")
        return values

    # -- STFT plumbing ---------------------------------------------------------------------------
    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        """[..., N] -> [..., M, K] complex (frames, bins)."""
        cfg = self.config
        flat = audio.reshape(-1, audio.shape[-1])
        spec = torch.stft(flat, cfg.n_fft, cfg.hop_length, window=self.window, center=True, return_complex=True)
        return spec.transpose(-1, -2).reshape(*audio.shape[:-1], spec.shape[-1], spec.shape[-2])

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        cfg = self.config
        """[..., M, K] complex -> [..., N]."""
        flat = spec.reshape(-1, *spec.shape[-2:]).transpose(-1, -2)
        audio = torch.istft(flat, cfg.n_fft, cfg.hop_length, window=self.window, center=True, length=length)
        return audio.reshape(*spec.shape[:-2], length)

    # -- time interpolation ----------------------------------------------------------------------
    @staticmethod
    def _positions(n_frames: int, n_out: int, step: float, n_samples: int, device) -> tuple[torch.Tensor, ...]:
        """Left neighbour [n_out] and weight [n_out, 1] for points at j * step samples on the curve grid.

        Curve frame i sits at sample i * (N - 1) / (F - 1): the curves span the clip from its first
        to its last sample (the same grid as F.interpolate(..., align_corners=True)).
        """
        if n_frames == 1:
            zeros = torch.zeros(n_out, device=device)
            return zeros.long(), zeros.long(), zeros[:, None]
        pos = torch.arange(n_out, device=device, dtype=torch.float32) * (step * (n_frames - 1) / (n_samples - 1))
        pos = pos.clamp(max=n_frames - 1)
        left = pos.floor().long().clamp(max=n_frames - 2)
        return left, left + 1, (pos - left)[:, None]

    # -- stem masks ------------------------------------------------------------------------------
    def _stem_masks(self, model: torch.Tensor, phys: torch.Tensor, frames: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Gain x EQ x filter magnitude per track, stem, STFT frame and bin: [B, 2, 4, M, K].

        Responses are evaluated at min(F, M) control frames, then interpolated in time.
        """
        cfg = self.config
        at_stft_rate = model.shape[1] > frames[0].shape[0]
        if at_stft_rate:  # denser curves than STFT frames: bring them down to the frame rate first
            model, phys = _lerp_rows(model, *frames), _lerp_rows(phys, *frames)
        idx = self._stem_idx.to(model.device)
        u = model[:, :, idx].permute(0, 2, 3, 4, 1)[..., None]  # [B, 2, 4, 6, Fc, 1]
        x = phys[:, :, idx].permute(0, 2, 3, 4, 1)[..., None]
        gain, eq_low, eq_mid, eq_high, hpf_hz, lpf_hz = x.unbind(dim=3)  # each [B, 2, 4, Fc, 1]
        w = self.warped  # [K]
        sr = cfg.sample_rate
        mask = gain * filters.low_shelf(w, _warp_const(cfg.eq_low_hz, sr, w), eq_low, cfg.shelf_q)
        mask = mask * filters.peak(w, _warp_const(cfg.eq_mid_hz, sr, w), eq_mid, cfg.mid_q)
        mask = mask * filters.high_shelf(w, _warp_const(cfg.eq_high_hz, sr, w), eq_high, cfg.shelf_q)
        # The open end of each filter fades from bit-exact bypass into the Butterworth response.
        hp_engage = (u[:, :, :, 4] / cfg.filter_engage).clamp(max=1.0)
        lp_engage = ((1.0 - u[:, :, :, 5]) / cfg.filter_engage).clamp(max=1.0)
        hp = filters.butterworth_highpass(w, filters.warp(hpf_hz, sr), cfg.filter_order)
        lp = filters.butterworth_lowpass(w, filters.warp(lpf_hz, sr), cfg.filter_order)
        mask = mask * (1.0 - hp_engage * (1.0 - hp)) * (1.0 - lp_engage * (1.0 - lp))  # [B, 2, 4, Fc, K]
        return mask if at_stft_rate else _lerp_rows(mask, *frames)

    # -- delay -----------------------------------------------------------------------------------
    def _delays(self, sends: torch.Tensor, feedback: torch.Tensor, bpms: list[float]) -> torch.Tensor:
        """Per item and track delay lines: sends [B, 2 tracks, 2 ch, N], feedback [B, 2, N] -> [B, 2, N]."""
        cfg = self.config
        outs = []
        for b, bpm in enumerate(bpms):
            delay = max(1, round(cfg.delay_beats * 60.0 / bpm * cfg.sample_rate))
            outs.append(sum(_delay_line(sends[b, t], feedback[b, t], delay) for t in range(len(TRACKS))))
        return torch.stack(outs)

    # -- reverb ----------------------------------------------------------------------------------
    def _phase(self, n_frames: int, device: torch.device) -> torch.Tensor:
        """Unit phasors [2, M, K] from a fixed seed, identical on every device and call."""
        cached = self._phases.get(device)
        if cached is None or cached.shape[1] < n_frames:
            gen = torch.Generator().manual_seed(self.config.reverb_seed)
            size = max(n_frames, 2 * (cached.shape[1] if cached is not None else 0))
            # Frame-major draw: a longer table starts with the same frames as a shorter one.
            theta = torch.rand(size, 2, self.config.n_fft // 2 + 1, generator=gen) * (2 * math.pi)
            cached = torch.polar(torch.ones_like(theta), theta).transpose(0, 1).contiguous().to(device)
            self._phases[device] = cached
        return cached[:, :n_frames]

    def _reverb(self, x: torch.Tensor, rt60: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Diffuse reverb tail of x [B, 2, M, K] with per-frame RT60 (s) [B, M, 1] and return level [B, 1, M, 1].

        One frame of pre-delay.

        Per bin: state d[m] = g[m] d[m-1] + sqrt(1 - g[m]^2) conj(P[m-1]) x[m-1], output P[m] d[m], so
        the tail decays by 60 dB in RT60 seconds and a stationary input keeps its energy.
        """
        cfg = self.config
        log_g = -math.log(1000.0) * cfg.hop_length / (cfg.sample_rate * rt60)  # [B, M, 1], <= 0
        norm = torch.sqrt(-torch.expm1(2.0 * log_g))
        phase = self._phase(x.shape[-2], x.device)
        # Input enters with the phase of its own frame and leaves with a later frame's, so no
        # input/output pair shares a phase (a shared one would pass the first frame coherently).
        scrambled = x * phase.conj()
        drive = torch.cat([torch.zeros_like(x[..., :1, :]), scrambled[..., :-1, :]], dim=-2) * norm[:, None]
        return _leaky_scan(drive, log_g[:, None], cfg.reverb_chunk) * (phase * level)


def _warp_const(freq_hz: float, sample_rate: int, like: torch.Tensor) -> torch.Tensor:
    return filters.warp(torch.tensor(freq_hz, dtype=like.dtype, device=like.device), sample_rate)


def _leaky_scan(drive: torch.Tensor, log_g: torch.Tensor, chunk: int) -> torch.Tensor:
    """y[m] = exp(log_g[m]) * y[m-1] + drive[m] along axis -2 (frames), y[-1] = 0.

    drive [..., M, K]; log_g [..., M, 1] (<= 0). Closed form inside chunks (cumulative sums scaled by
    exp(-cumulative log decay), bounded by the chunk length), then a short sequential pass carries
    the state across chunks.
    """
    m = drive.shape[-2]
    n_chunks = -(-m // chunk)
    pad = n_chunks * chunk - m
    if pad:
        drive = torch.cat([drive, drive.new_zeros(*drive.shape[:-2], pad, drive.shape[-1])], dim=-2)
        log_g = torch.cat([log_g, log_g.new_zeros(*log_g.shape[:-2], pad, 1)], dim=-2)
    drive = drive.unflatten(-2, (n_chunks, chunk))  # [..., C, chunk, K]
    cum = log_g.unflatten(-2, (n_chunks, chunk)).cumsum(dim=-2)  # decay since the chunk start
    decay = torch.exp(cum)
    local = torch.cumsum(drive * torch.exp(-cum), dim=-2) * decay
    # unbind once: indexing inside the loop would cost a full-size gradient buffer per step.
    ends, end_decays = local[..., -1, :].unbind(-2), decay[..., -1, :].unbind(-2)
    carries = [torch.zeros_like(ends[0])]
    for c in range(n_chunks - 1):
        carries.append(ends[c] + end_decays[c] * carries[-1])
    carried = torch.stack(carries, dim=-2)[..., None, :] * decay
    return (local + carried).flatten(-3, -2)[..., :m, :]


def _to_samples(curves: torch.Tensor, n: int) -> torch.Tensor:
    """[B, C, F] -> [B, C, N], linear, first curve frame at the first sample and last at the last."""
    if curves.shape[-1] == 1:
        return curves.expand(-1, -1, n)
    return F.interpolate(curves, size=n, mode="linear", align_corners=True)


def _lerp_rows(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along axis -2 of x [..., F, C] at (left, right, w) -> [..., n_out, C].

    Gathers whole rows (contiguous), which is far cheaper than gathering along the last axis.
    """
    return torch.lerp(x.index_select(-2, left), x.index_select(-2, right), w)


class _MaskedStemSum(torch.autograd.Function):
    """sum_s masks[:, s] * spec[:, s]: spec [B, 4, 2, M, K] complex, masks [B, 4, M, K] real -> [B, 2, M, K].

    Written by hand because autograd's broadcast reductions for a real mask times a complex
    spectrogram cost several times the forward; here both passes accumulate in place.
    """

    @staticmethod
    def forward(ctx, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(spec, masks)
        real, m = torch.view_as_real(spec), masks[:, :, None, ..., None]  # [B, 4, 2, M, K, 2], [B, 4, 1, M, K, 1]
        out = real[:, 0] * m[:, 0]
        for s in range(1, spec.shape[1]):
            out.addcmul_(real[:, s], m[:, s])
        return torch.view_as_complex(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        spec, masks = ctx.saved_tensors
        grad_spec = grad_masks = None
        g = torch.view_as_real(grad.contiguous())  # [B, 2, M, K, 2]
        if ctx.needs_input_grad[1]:
            real = torch.view_as_real(spec)
            grads = []
            for s in range(spec.shape[1]):
                acc = real[:, s, 0] * g[:, 0]  # Re(conj(X) g) summed over channels
                for c in range(1, spec.shape[2]):
                    acc.addcmul_(real[:, s, c], g[:, c])
                grads.append(acc.sum(-1))
            grad_masks = torch.stack(grads, dim=1)
        if ctx.needs_input_grad[0]:
            grad_spec = grad[:, None] * masks[:, :, None]
        return grad_spec, grad_masks


def _masked_stem_sum(spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return _MaskedStemSum.apply(spec, masks)


def _delay_line(x: torch.Tensor, feedback: torch.Tensor, delay: int) -> torch.Tensor:
    """Feedback delay y[n] = x[n - D] + fb[n] y[n - D] of x [C, N] with fb [N], evaluated D samples at a time."""
    c, n = x.shape
    blocks = -(-n // delay)
    pad = blocks * delay - n
    # unbind once: indexing inside the loop would cost a full-size gradient buffer per step.
    xb = torch.cat([x, x.new_zeros(c, pad)], dim=-1).view(c, blocks, delay).unbind(1)
    fb = torch.cat([feedback, feedback.new_zeros(pad)]).view(blocks, delay).unbind(0)
    out = [x.new_zeros(c, delay)]
    for j in range(1, blocks):
        out.append(xb[j - 1] + fb[j] * out[-1])
    return torch.cat(out, dim=-1)[:, :n]
