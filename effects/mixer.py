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
kept "de-phased", the recursion has real per-frame coefficients; it runs frame by frame (one small
op per frame), so a time-varying RT60 costs one pass over the reverb bus.

Implementation: everything between the stem STFTs and the output ISTFTs (mask interpolation, stem
sums, faders and sends, reverb, synthesis) is one autograd Function, _MixCore, that walks the frames
in cache-sized blocks with a hand-written exact backward; only the control-rate masks and the
per-frame weights go through autograd. See _MixCore for the per-frame formula.

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
    reverb_chunk: int = 32  # unused (the reverb no longer runs in chunks); kept so that existing configs load
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
        self.register_buffer("stem_idx", torch.tensor(stem_idx), persistent=False)
        # EQ corners, warped once (buffers move with the module: no host-to-device copy per call)
        corners = torch.tensor([cfg.eq_low_hz, cfg.eq_mid_hz, cfg.eq_high_hz])
        self.register_buffer("eq_corners", filters.warp(corners, cfg.sample_rate), persistent=False)
        self._col = {name: FULL.index(name) for name in FULL.names if name.count(".") < 2}
        self._feedback_cols = [self._col[f"{t}.delay_feedback"] for t in TRACKS]
        self._phases: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

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
        # Masks stay at the control rate; _MixCore interpolates them block by block.
        masks, identity = self._stem_masks(model, phys, frames)  # [B, 2, 4, Fm, K]
        frame = _lerp_rows(phys, *frames)  # per-frame values [B, M, 58]
        columns = frame.unbind(-1)  # one backward node (a stack), not a zero-filled copy per column
        col = {name: columns[i] for name, i in self._col.items()}  # each [B, M]
        with_delay = "delay_send" in {p.control for p in layout}
        if layout.crossfader_thru:
            fader = [torch.ones_like(col["crossfader"])] * 2
        else:
            angle = col["crossfader"] * (math.pi / 2)
            fader = [torch.cos(angle), torch.sin(angle)]
        # Reverb: per frame and bin d[m] = g[m] d[m-1] + norm[m] conj(P[m-1]) x[m-1] (one frame of pre-delay);
        # the tail decays by 60 dB in RT60 seconds and a stationary input keeps its energy. norm[m + 1] is
        # folded into frame m's send.
        log_g = -math.log(1000.0) * cfg.hop_length / (cfg.sample_rate * col["reverb_decay"])  # [B, M], <= 0
        norm_next = F.pad(torch.sqrt(-torch.expm1(2.0 * log_g[:, 1:])), (0, 1))
        sends = fader if layout.reverb_from_master else [col[f"{t}.reverb_send"] for t in TRACKS]
        zero = torch.zeros_like(col["crossfader"])
        dests = [fader]  # per frame: (track a, track b) weights of the dry bus, the delay sends, the reverb send
        if with_delay:
            dests += [[col["a.delay_send"], zero], [zero, col["b.delay_send"]]]
        dests.append([send * norm_next for send in sends])
        mix = torch.stack([torch.stack([d[t] for d in dests], dim=-1) for t in range(2)], dim=-2)  # [B, M, 2, D]

        blocks = _blocks(n_stft, batch, cfg.n_fft // 2 + 1)
        phase, phase_conj = self._phase(n_stft, masks.device)
        plan = _Plan(
            blocks=blocks,
            interp=None if identity else _interp_matrix(*frames, masks.shape[-2]),
            rows=blocks if identity else _mask_rows(blocks, masks.shape[-2], cfg.hop_length, n),
            lowcut=self.send_lowcut.repeat_interleave(2),
            phase=phase,
            phase_conj=phase_conj,
            window=self.window,
            inv_env=_inverse_envelope(self.window, cfg.hop_length, n_stft, n),
            hop=cfg.hop_length,
        )
        # Masks interleaved [..., 2K] like the (re, im) pairs of the spectra: real views then multiply at full speed.
        masks = torch.stack([masks, masks], dim=-1).flatten(-2)  # (its backward: one strided add)
        out, delay_sends = _MixCore.apply(stems_a.float(), stems_b.float(), masks, mix, col["reverb_return"],
                                          torch.exp(log_g), plan)

        curves = phys.transpose(1, 2)  # [B, 58, F]
        if with_delay:
            feedback = _to_samples(curves[:, self._feedback_cols], n)  # [B, 2, N]
            out = out + self._delays(delay_sends, feedback, bpms)
        return out * torch.pow(10.0, _to_samples(curves[:, self._col["master_gain"], None], n) / 20.0)

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
    def _stem_masks(self, model: torch.Tensor, phys: torch.Tensor,
                    frames: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, bool]:
        """Gain x EQ x filter magnitude per track, stem, control frame and bin: [B, 2, 4, min(F, M), K].

        Responses are evaluated at min(F, M) control frames (and interpolated in time by _MixCore);
        the flag says whether they already sit on the STFT frames.
        """
        cfg = self.config
        at_stft_rate = model.shape[1] > frames[0].shape[0]
        if at_stft_rate:  # denser curves than STFT frames: bring them down to the frame rate first
            model, phys = _lerp_rows(model, *frames), _lerp_rows(phys, *frames)
        idx = self.stem_idx
        u = model[:, :, idx].permute(0, 2, 3, 4, 1)[..., None]  # [B, 2, 4, 6, Fc, 1]
        x = phys[:, :, idx].permute(0, 2, 3, 4, 1)[..., None]
        gain, eq_low, eq_mid, eq_high, hpf_hz, lpf_hz = x.unbind(dim=3)  # each [B, 2, 4, Fc, 1]
        w = self.warped  # [K]
        sr = cfg.sample_rate
        mask = filters.three_band_eq(w, self.eq_corners.unbind(), (eq_low, eq_mid, eq_high), cfg.shelf_q, cfg.mid_q,
                                     scale=gain)
        # The open end of each filter fades from bit-exact bypass into the Butterworth response.
        hp_engage = (u[:, :, :, 4] / cfg.filter_engage).clamp(max=1.0)
        lp_engage = ((1.0 - u[:, :, :, 5]) / cfg.filter_engage).clamp(max=1.0)
        mask = mask * filters.butterworth_pair(w, filters.warp(hpf_hz, sr), filters.warp(lpf_hz, sr),
                                               cfg.filter_order, hp_engage, lp_engage)  # [B, 2, 4, Fc, K]
        return mask, at_stft_rate

    # -- delay -----------------------------------------------------------------------------------
    def _delays(self, sends: torch.Tensor, feedback: torch.Tensor, bpms: list[float]) -> torch.Tensor:
        """Per item and track delay lines: sends [B, 2 tracks, 2 ch, N], feedback [B, 2, N] -> [B, 2, N]."""
        cfg = self.config
        delays = tuple(max(1, round(cfg.delay_beats * 60.0 / bpm * cfg.sample_rate)) for bpm in bpms)
        return _DelayLines.apply(sends, feedback, delays)

    # -- reverb ----------------------------------------------------------------------------------
    def _phase(self, n_frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit phasors P and conj(P) [2, M, K] from a fixed seed, identical on every device and call.

        The conjugate is kept too: multiplying by a lazily conjugated view costs an extra copy every time.
        """
        cached = self._phases.get(device)
        if cached is None or cached[0].shape[1] < n_frames:
            gen = torch.Generator().manual_seed(self.config.reverb_seed)
            size = max(n_frames, 2 * (cached[0].shape[1] if cached is not None else 0))
            # Frame-major draw: a longer table starts with the same frames as a shorter one.
            theta = torch.rand(size, 2, self.config.n_fft // 2 + 1, generator=gen) * (2 * math.pi)
            phase = torch.polar(torch.ones_like(theta), theta).transpose(0, 1).contiguous().to(device)
            cached = phase, phase.conj().resolve_conj()
            self._phases[device] = cached
        return cached[0][:, :n_frames], cached[1][:, :n_frames]


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


class _DelayLines(torch.autograd.Function):
    """Feedback delays y[n] = x[n - D] + fb[n] y[n - D], summed over tracks: x [B, T, C, N], fb [B, T, N],
    D per item -> [B, C, N].

    Evaluated D samples at a time, in place (one small op per repeat, below the threading grain); backward
    runs the same recursion in reverse: lam[n] = g[n] + fb[n + D] lam[n + D], dx[n] = lam[n + D] and
    dfb[n] = sum_c lam[n] y[n - D].
    """

    @staticmethod
    def forward(ctx, x, feedback, delays: tuple[int, ...]):
        y = x.new_empty(x.shape)
        for b, d in enumerate(delays):
            y[b, ..., :d] = 0.0
            for t in range(x.shape[1]):
                xs, ys, fb = x[b, t], y[b, t], feedback[b, t]
                for j in range(d, x.shape[-1], d):
                    e = min(j + d, x.shape[-1])
                    torch.addcmul(xs[:, j - d:e - d], fb[j:e], ys[:, j - d:e - d], out=ys[:, j:e])
        ctx.save_for_backward(feedback, y)
        ctx.delays = delays
        return y.sum(1)

    @staticmethod
    def backward(ctx, grad):
        feedback, y = ctx.saved_tensors
        lam = grad[:, None].expand(y.shape).clone()  # [B, T, C, N]
        grad_x, grad_fb = torch.empty_like(y), torch.empty_like(feedback)
        for b, d in enumerate(ctx.delays):
            for t in range(y.shape[1]):
                ls, fb = lam[b, t], feedback[b, t]
                for j in reversed(range(d, y.shape[-1], d)):
                    e = min(j + d, y.shape[-1])
                    ls[:, j - d:e - d].addcmul_(fb[j:e], ls[:, j:e])
            n = y.shape[-1]
            grad_x[b, ..., max(0, n - d):] = 0.0
            grad_fb[b, :, :d] = 0.0
            if d < n:
                grad_x[b, ..., :n - d] = lam[b, ..., d:]
                torch.linalg.vecdot(lam[b, ..., d:].transpose(1, 2), y[b, ..., :n - d].transpose(1, 2),
                                    out=grad_fb[b, :, d:])
        return grad_x, grad_fb, None


# -- the spectral core ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """The fixed (non-differentiable) inputs of one _MixCore call."""

    blocks: tuple[tuple[int, int], ...]  # STFT frame ranges [m0, m1) rendered together
    interp: torch.Tensor | None  # [Fm, M] mask-row -> frame interpolation weights; None: masks are per frame
    rows: tuple[tuple[int, int], ...]  # mask rows [lo, hi) each block reads
    lowcut: torch.Tensor  # [2K] send low cut, interleaved like (re, im)
    phase: torch.Tensor  # [2, M, K] reverb phasors P
    phase_conj: torch.Tensor  # conj(P)
    window: torch.Tensor  # [n_fft] synthesis window
    inv_env: torch.Tensor  # [N] 1 / overlap-added squared window (the ISTFT normalisation)
    hop: int


_BLOCK_BYTES = 32 << 20  # glibc's largest reusable chunk (bigger ones are mapped and page-faulted per call)


def _blocks(n_frames: int, batch: int, n_bins: int) -> tuple[tuple[int, int], ...]:
    """Frame ranges [m0, m1) of (nearly) equal length whose largest temporary ([B, 4, 2, t, K] complex)
    stays within _BLOCK_BYTES.

    Blocks keep every intermediate reusable (freed chunks up to 32 MiB are handed back for reuse; larger
    ones return to the OS and cost page faults on every call), while being as large as that allows, so
    that per-op overhead (thread wake-ups, which cost milliseconds on a busy machine; kernel launches)
    stays small; equal lengths let every block reuse the previous block's memory.
    """
    longest = max(8, (_BLOCK_BYTES - 4096) // (batch * 64 * n_bins))
    count = -(-n_frames // longest)
    edges = [round(i * n_frames / count) for i in range(count + 1)]
    return tuple(zip(edges[:-1], edges[1:]))


def _interp_matrix(left: torch.Tensor, right: torch.Tensor, w: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Linear interpolation of n_rows control rows onto the frames as a matrix [n_rows, M] (two taps per column)."""
    rows = torch.arange(n_rows, device=left.device)[:, None]
    return (rows == left) * (1.0 - w[:, 0]) + (rows == right) * w[:, 0]


def _mask_rows(blocks, n_rows: int, hop: int, n: int) -> tuple[tuple[int, int], ...]:
    """Control rows [lo, hi) that the frames of each block interpolate from (see _positions), with one row of
    margin each side so that float32 rounding of the positions can never fall outside."""
    if n_rows == 1:
        return tuple((0, 1) for _ in blocks)
    ratio = hop * (n_rows - 1) / (n - 1)
    last = n_rows - 2
    return tuple((max(0, min(int(m0 * ratio), last) - 1), min(n_rows, min(int((m1 - 1) * ratio), last) + 3))
                 for m0, m1 in blocks)


def _inverse_envelope(window: torch.Tensor, hop: int, m: int, n: int) -> torch.Tensor:
    """1 / sum_m window^2[t - m hop] over the samples a centred ISTFT of m frames keeps: [N]."""
    overlap = window.shape[0] // hop
    square = window.square().view(overlap, hop)
    env = window.new_zeros(m + overlap - 1, hop)
    for j in range(overlap):
        env[j:j + m] += square[j]
    return env.flatten()[window.shape[0] // 2:][:n].reciprocal()


def _real(x: torch.Tensor) -> torch.Tensor:
    """Complex [..., K] -> real [..., 2K] view (re, im interleaved)."""
    return torch.view_as_real(x).flatten(-2)


def _frame_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Re sum_{c, k} conj(x) y of contiguous complex [t, B, C, K] pairs -> [B, t] (one bmm)."""
    t, b = x.shape[:2]
    return torch.bmm(_real(x).view(t * b, 1, -1), _real(y).view(t * b, -1, 1)).view(t, b).T


class _Frames:
    """Windowed frames of torch.stft(center=True) (reflect padding) for any frame range, read straight from
    the signal [..., N]: only the few frames that overhang an end come from small padded copies."""

    def __init__(self, audio: torch.Tensor, window: torch.Tensor, hop: int):
        n_fft, n = window.shape[0], audio.shape[-1]
        half = n_fft // 2
        self.window, self.hop = window, hop
        self.first = -(-half // hop)  # frames before this one start before the signal
        self.stop = (n - half) // hop + 1  # frames from this one on end after it

        def padded(x, pad):
            return F.pad(x.reshape(1, -1, x.shape[-1]), pad, mode="reflect").view(*x.shape[:-1], -1)

        self.head = padded(audio[..., :n_fft], (half, 0)).unfold(-1, n_fft, hop)
        self.inner = audio[..., self.first * hop - half:].unfold(-1, n_fft, hop)
        self.tail = padded(audio[..., n - n_fft:], (0, half))[..., self.stop * hop + half - n:].unfold(-1, n_fft, hop)

    def __call__(self, m0: int, m1: int) -> torch.Tensor:
        """Windowed frames [..., m1 - m0, n_fft] of STFT frames m0 .. m1 - 1."""
        out = self.inner.new_empty(*self.inner.shape[:-2], m1 - m0, self.window.shape[0])
        for source, start, stop in ((self.head, 0, self.first), (self.inner, self.first, self.stop),
                                    (self.tail, self.stop, m1)):
            lo, hi = max(m0, start), min(m1, stop)
            if lo < hi:
                torch.mul(source[..., lo - start:hi - start, :], self.window, out=out[..., lo - m0:hi - m0, :])
        return out


class _Block:
    """One block of t frames. Per item and channel, the rows are frames:

    chan  [B, 2 ch, t, 2 tracks, 2K] real  masked stem sums C_t, track-inner: mixing is a bmm over rows
    buses [B, 2 ch, t, n_bus, K] complex   bus-inner; the reverb send [B, 2 ch, t, K] complex
    reverb states and adjoints [t + 1, B, 2 ch, K] complex (frame-outer: each step is one contiguous row)
    """

    def __init__(self, c: int, plan: _Plan, mix: torch.Tensor):
        self.m0, self.m1 = plan.blocks[c]
        self.t = self.m1 - self.m0
        self.lo, self.hi = plan.rows[c]
        b, _, n_tracks, n_dest = mix.shape
        # per-frame mixing weights repeated per channel, [B 2 t, tracks, dests]
        self.mix = mix[:, None, self.m0:self.m1].expand(b, 2, self.t, n_tracks, n_dest).reshape(-1, n_tracks, n_dest)

    def masks(self, masks: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Interleaved stem masks [B, 2 tracks, 4, t, 2K] on the block's frames."""
        if plan.interp is None:
            return masks[..., self.m0:self.m1, :]
        return torch.matmul(plan.interp[self.lo:self.hi, self.m0:self.m1].T, masks[..., self.lo:self.hi, :])

    def channels(self, analysis: tuple[_Frames, _Frames], mask: torch.Tensor, out: torch.Tensor,
                 keep: list | None = None, silent: tuple[int, ...] = ()) -> torch.Tensor:
        """chan[b, c, m, t] = sum_s mask_ts X_ts (real views, all operands contiguous in the bins). The stem
        spectra X_t [B, 4, 2, t, K] (complex) are appended to keep when given (for backward). Tracks in
        `silent` (all-zero stems in every item) get zero channels without an FFT."""
        for t, frames in enumerate(analysis):
            if t in silent:
                out[..., t, :].zero_()
                continue
            spec = torch.fft.rfft(frames(self.m0, self.m1))  # (rfft(out=...) would copy)
            if keep is not None:
                keep.append(spec)
            x, w = _real(spec), mask[:, t, :, None]  # [B, 4, 2, t, 2K], [B, 4, 1, t, 2K]
            torch.mul(x[:, 0], w[:, 0], out=out[..., t, :])
            for s in range(1, x.shape[1]):
                out[..., t, :].addcmul_(x[:, s], w[:, s])
        return out

    def send(self, chan: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Reverb drive s = conj(P) lowcut (mix[:, -1] @ C): [B, 2, t, K] complex."""
        send = torch.bmm(self.mix[..., -1:].transpose(1, 2), chan.flatten(0, 2)).view(*chan.shape[:3], -1)
        send = torch.view_as_complex(send.mul_(plan.lowcut).unflatten(-1, (-1, 2)))
        return send.mul_(plan.phase_conj[:, self.m0:self.m1])


def _reverb_states(send: torch.Tensor, decay: torch.Tensor, carry: torch.Tensor, m0: int) -> torch.Tensor:
    """States d[m0 - 1 .. m1 - 1] [t + 1, B, 2, K] of d[m] = g[m] d[m - 1] + s[m - 1], carry = (d, s)[m0 - 1].

    Frame by frame: each step is one small op (below the threading grain, so no thread sync), and the
    recursion stays exact for any time-varying decay.
    """
    b, c, t, k = send.shape
    states = send.new_empty(t + 1, b, c, k)
    states[0] = carry[0]
    g = decay[:, m0:m0 + t, None, None, None].unbind(1)  # [B, 1, 1, 1] each; real views below (no casts)
    # unbind once: no per-step indexing
    rows = torch.view_as_real(states).unbind(0)
    inputs = torch.view_as_real(carry[1]), *torch.view_as_real(send).unbind(2)
    for r in range(t):
        torch.addcmul(inputs[r], rows[r], g[r], out=rows[r + 1])
    return states


class _MixCore(torch.autograd.Function):
    """Stems -> dry + reverb [B, 2, N] and the two delay sends [B, 2 tracks, 2, N] (or [B, 0, 2, N] without
    delay), in the time domain.

    Per STFT frame m and channel, with the track channels C_t = sum_s mask_ts X_ts (X: stem spectra):
        bus_j = sum_t mix[m, t, j] C_t                         j < n_bus (dry, then the delay sends)
        s[m]  = conj(P[m]) lowcut sum_t mix[m, t, -1] C_t      reverb drive (norm and send folded into mix)
        d[m]  = decay[m] d[m - 1] + s[m - 1]                   reverb state
        bus_0 += ret[m] P[m] d[m];  bus_j *= lowcut (j >= 1)
    then the ISTFT of every bus.

    Frames are processed in blocks (_blocks): the stems' STFT, mask interpolation, stem sums, mixing
    (a bmm over frames), the reverb recursion, synthesis and overlap-add, so that nothing full-size exists
    besides the output (and, when a gradient is needed, the stem spectra and channels kept for backward).
    Backward runs the blocks in reverse with the exact adjoints (the ISTFT's is an rFFT of the windowed
    gradient frames), recomputing the reverb states from the state saved at each block start.

    stems_a, stems_b [B, 4, 2, N]; masks [B, 2, 4, Fm, 2K] (interleaved); mix [B, M, 2, n_bus + 1];
    ret, decay [B, M].
    """

    @staticmethod
    def forward(ctx, stems_a, stems_b, masks, mix, ret, decay, plan: _Plan):
        b, m, k = stems_a.shape[0], plan.blocks[-1][1], plan.window.shape[0] // 2 + 1
        n_bus, hop, n_fft = mix.shape[-1] - 1, plan.hop, plan.window.shape[0]
        overlap = n_fft // hop
        window = plan.window.view(overlap, hop)
        analysis = _Frames(stems_a, plan.window, hop), _Frames(stems_b, plan.window, hop)
        keep = any(ctx.needs_input_grad)
        # A deck that is silent throughout (one track's contribution rendered alone, as evaluate.py does) costs
        # no FFTs; only without a gradient, where backward's saved spectra need not exist.
        silent = () if keep else tuple(t for t, x in enumerate((stems_a, stems_b)) if not bool(x.any()))
        # Kept for backward: the stem spectra per block and track, and the channels (block-major: each block
        # is contiguous).
        specs = [] if keep else None
        store = masks.new_empty(b * 2 * m * 2 * 2 * k) if keep else None
        acc = masks.new_zeros(b, n_bus, 2, m + overlap - 1, hop)  # overlap-add, one row per hop
        carry = masks.new_zeros(2, b, 2, k, dtype=torch.complex64)  # reverb (d, s) of the frame before the block
        carries = masks.new_empty(len(plan.blocks), 2, b, 2, k, dtype=torch.complex64)
        for c in range(len(plan.blocks)):
            blk = _Block(c, plan, mix)
            m0, m1, t = blk.m0, blk.m1, blk.t
            shape = (b, 2, t, 2, 2 * k)
            out = store[b * 2 * m0 * 4 * k:][:b * 2 * t * 4 * k].view(shape) if keep else masks.new_empty(shape)
            chan = blk.channels(analysis, blk.masks(masks, plan), out, specs, silent)
            buses = torch.bmm(blk.mix[..., :n_bus].transpose(1, 2), chan.flatten(0, 2))  # [B 2 t, n_bus, 2K]
            buses[:, 1:] *= plan.lowcut
            buses = torch.view_as_complex(buses.view(b, 2, t, n_bus, k, 2))
            send = blk.send(chan, plan)
            carries[c] = carry
            states = _reverb_states(send, decay, carry, m0)
            carry = torch.stack([states[-1], send[:, :, -1]])
            wet = torch.view_as_real(states[1:]).mul_(ret[:, m0:m1].T[..., None, None, None])  # [t, B, 2, K, 2]
            buses[..., 0, :].addcmul_(torch.view_as_complex(wet).permute(1, 2, 0, 3), plan.phase[:, m0:m1])
            frames = torch.fft.irfft(buses, n=n_fft).permute(0, 3, 1, 2, 4).unflatten(-1, (overlap, hop))
            for j in range(overlap):  # frames [B, n_bus, 2, t, R, hop]
                acc[..., m0 + j:m1 + j, :].addcmul_(frames[..., j, :], window[j])
        ctx.save_for_backward(stems_a, stems_b, masks, mix, ret, decay, carries, store, *(specs or ()))
        ctx.plan = plan
        y = acc.flatten(-2)[..., n_fft // 2:][..., :plan.inv_env.shape[0]].mul_(plan.inv_env)
        return y[:, 0], y[:, 1:]

    @staticmethod
    def backward(ctx, grad_out, grad_delay):
        stems_a, stems_b, masks, mix, ret, decay, carries, store, *specs = ctx.saved_tensors
        plan = ctx.plan
        b, m, k = stems_a.shape[0], plan.blocks[-1][1], plan.window.shape[0] // 2 + 1
        n_bus, hop, n_fft = mix.shape[-1] - 1, plan.hop, plan.window.shape[0]
        overlap, n = n_fft // hop, plan.inv_env.shape[0]
        # Adjoint of trim + normalisation + overlap-add: the frames of the normalised, zero-padded gradient.
        padded = grad_out.new_empty(b, n_bus, 2, (m + overlap - 1) * hop)
        padded[..., :n_fft // 2] = 0.0
        padded[..., n_fft // 2 + n:] = 0.0
        inner = padded[..., n_fft // 2:n_fft // 2 + n]
        torch.mul(grad_out, plan.inv_env, out=inner[:, 0])
        if n_bus > 1:
            if grad_delay is None:
                inner[:, 1:] = 0.0
            else:
                torch.mul(grad_delay, plan.inv_env, out=inner[:, 1:])
        grad_frames = padded.unfold(-1, n_fft, hop).permute(0, 2, 3, 1, 4)  # [B, 2, M, n_bus, n_fft] view
        # Adjoint of irfft: rfft / n_fft, bins other than DC and Nyquist counted twice (they stand for two).
        window = plan.window * (2.0 / n_fft)
        decay_next = F.pad(decay[:, 1:], (0, 1))  # g[m + 1], zero past the end

        # stem spectra gradients [B, 4, 2, M, K] when the audio needs one (through torch.stft's autograd below)
        grad_specs = [stems_a.new_zeros(b, 4, 2, m, k, dtype=torch.complex64) if ctx.needs_input_grad[i] else None
                      for i in range(2)]
        grad_masks, grad_mix = torch.zeros_like(masks), torch.zeros_like(mix)
        grad_ret, grad_decay = torch.zeros_like(ret), torch.zeros_like(decay)
        lam = carries.new_zeros(b, 2, k)  # reverb adjoint at the frame after the block
        for c in reversed(range(len(plan.blocks))):
            blk = _Block(c, plan, mix)
            m0, m1, t = blk.m0, blk.m1, blk.t
            chan = store[b * 2 * m0 * 4 * k:][:b * 2 * t * 4 * k].view(b, 2, t, 2, 2 * k)
            spec = specs[2 * c:2 * c + 2]  # [B, 4, 2, t, K] per track
            send = blk.send(chan, plan)
            states = _reverb_states(send, decay, carries[c], m0)  # [t + 1, B, 2, K]

            g_buses = torch.fft.rfft(torch.mul(grad_frames[:, :, m0:m1], window))  # [B, 2, t, n_bus, K]
            g_buses[..., 0] *= 0.5
            g_buses[..., -1] *= 0.5
            # reverb: wet = ret P d with d[m] = g[m] d[m-1] + s[m-1]; lam = dL/dd runs backwards in time
            lams = carries.new_empty(t + 1, b, 2, k)  # lam[m0 .. m1], first dL/d(ret d)
            torch.mul(g_buses[..., 0, :].permute(2, 0, 1, 3), plan.phase_conj[:, m0:m1].transpose(0, 1)[:, None],
                      out=lams[:t])
            grad_ret[:, m0:m1] = _frame_dot(states[1:], lams[:t])
            torch.view_as_real(lams[:t]).mul_(ret[:, m0:m1].T[..., None, None, None])
            lams[t] = lam
            g, rows = decay_next[:, m0:m1, None, None, None].unbind(1), torch.view_as_real(lams).unbind(0)
            for r in reversed(range(t)):  # one small op per frame (below the threading grain)
                rows[r].addcmul_(rows[r + 1], g[r])
            lam = lams[0]
            grad_decay[:, m0:m1] = _frame_dot(states[:t], lams[:t])
            # s[m] feeds d[m + 1]: dL/d(sum_t mix[-1] C_t) = lowcut P lam[m + 1]
            g_send = torch.mul(lams[1:].permute(1, 2, 0, 3), plan.phase[:, m0:m1], out=torch.empty_like(send))
            g_send_rows = _real(g_send).mul_(plan.lowcut).flatten(0, 2)[:, None]  # [B 2 t, 1, 2K]

            # mixing: buses = mix @ C (delay buses low cut after), send likewise
            g_bus_rows = _real(g_buses).flatten(0, 2)  # [B 2 t, n_bus, 2K]
            g_bus_rows[:, 1:] *= plan.lowcut
            rows = chan.flatten(0, 2)  # [B 2 t, 2 tracks, 2K]
            grad_mix[:, m0:m1, :, :n_bus] = torch.bmm(rows, g_bus_rows.transpose(1, 2)).view(b, 2, t, 2, n_bus).sum(1)
            grad_mix[:, m0:m1, :, -1:] = torch.bmm(rows, g_send_rows.transpose(1, 2)).view(b, 2, t, 2, 1).sum(1)
            g_chan = torch.bmm(blk.mix[..., :n_bus], g_bus_rows).baddbmm_(blk.mix[..., -1:], g_send_rows)
            g_chan = g_chan.view(b, 2, t, 2, 2 * k)

            # masks: Re sum_ch conj(X) dC, interleaved (the pair sum happens outside, at the control rate)
            g_mask = masks.new_empty(b, 2, masks.shape[2], t, 2 * k)
            for tr in range(2):
                x = _real(spec[tr])  # [B, 4, 2, t, 2K]
                torch.mul(x[:, :, 0], g_chan[:, None, 0, :, tr], out=g_mask[:, tr])
                g_mask[:, tr].addcmul_(x[:, :, 1], g_chan[:, None, 1, :, tr])
            if any(g is not None for g in grad_specs):
                mask = blk.masks(masks, plan)
                for tr, g_spec in enumerate(grad_specs):
                    if g_spec is not None:
                        torch.mul(g_chan[:, None, :, :, tr], mask[:, tr, :, None], out=_real(g_spec[:, :, :, m0:m1]))
            if plan.interp is None:
                grad_masks[..., m0:m1, :] = g_mask
            else:
                grad_masks[..., blk.lo:blk.hi, :] += torch.matmul(plan.interp[blk.lo:blk.hi, m0:m1], g_mask)
        grad_stems = [None if g is None else _stft_backward(x, g, plan) for x, g in zip((stems_a, stems_b), grad_specs)]
        return grad_stems[0], grad_stems[1], grad_masks, grad_mix, grad_ret, grad_decay, None


def _stft_backward(audio: torch.Tensor, grad_spec: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Gradient for audio [B, 4, 2, N] of its STFT (the one _Frames + rfft compute) given grad_spec [..., M, K]."""
    with torch.enable_grad():
        audio = audio.detach().requires_grad_(True)
        spec = torch.stft(audio.reshape(-1, audio.shape[-1]), plan.window.shape[0], plan.hop, window=plan.window,
                          center=True, return_complex=True)
        return torch.autograd.grad(spec, audio, grad_spec.reshape(-1, *grad_spec.shape[-2:]).transpose(1, 2))[0]
