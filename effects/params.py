"""ParamLayout: the named mixer parameters the model draws and the mixer obeys.

Every parameter lives in *model space* u in [0, 1] (what the diffusion model generates) and has a
*physical* value (what a DJ reads off the mixer). Two mappings cover all of them:

- linear:  x = low + (high - low) * u
- log:     x = low * (high / low) ** u          (frequencies and times, even steps per octave)

| control          | physical                 | mapping | neutral (u)             |
|------------------|--------------------------|---------|-------------------------|
| gain (fader)     | amplitude 0..1           | linear  | 1.0 (unity)             |
| eq_low/mid/high  | -26..+6 dB               | linear  | 0.8125 (exactly 0 dB)   |
| hpf              | cutoff 20 Hz..10 kHz     | log     | 0.0 (20 Hz = open)      |
| lpf              | cutoff 100 Hz..20 kHz    | log     | 1.0 (20 kHz = open)     |
| reverb_send      | amplitude 0..1           | linear  | 0.0                     |
| delay_send       | amplitude 0..1           | linear  | 0.0                     |
| delay_feedback   | ratio 0..0.9             | linear  | 0.5 (0.45)              |
| crossfader       | position 0 (A)..1 (B)    | linear  | 0.5 (centre)            |
| master_gain      | -26..+6 dB               | linear  | 0.8125 (exactly 0 dB)   |
| reverb_return    | amplitude 0..1           | linear  | 1.0 (unity)             |
| reverb_decay     | RT60 0.2..8 s            | log     | 0.625 (2.0 s)           |

Fader law: the fader value is the linear amplitude (0 = silence, 0.5 = -6 dB, 1 = unity), so every
position has the same, non-zero gradient. The crossfader is constant-power (A: cos(pi/2 x),
B: sin(pi/2 x)). The EQ kill is -26 dB (as on club mixers); 0.8125 = 13/16 maps to 0 dB exactly in
float32. Filters: 24 dB/octave Butterworth; the open end of each filter is bit-exact bypass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

SAMPLE_RATE = 44_100
STEMS = ("drums", "bass", "vocals", "other")
TRACKS = ("a", "b")

STEM_CONTROLS = ("gain", "eq_low", "eq_mid", "eq_high", "hpf", "lpf")
TRACK_CONTROLS = ("reverb_send", "delay_send", "delay_feedback")
GLOBAL_CONTROLS = ("crossfader", "master_gain", "reverb_return", "reverb_decay")

EQ_DB_RANGE = (-26.0, 6.0)
EQ_NEUTRAL = 0.8125  # (0 - (-26)) / 32, exact in binary


@dataclass(frozen=True)
class ControlSpec:
    """How one kind of control maps model space to physical units."""

    unit: str
    low: float
    high: float
    log: bool
    neutral: float
    description: str

    def to_physical(self, u: float) -> float:
        return self.low * (self.high / self.low) ** u if self.log else self.low + (self.high - self.low) * u

    def to_model(self, x: float) -> float:
        if self.log:
            return math.log(x / self.low) / math.log(self.high / self.low)
        return (x - self.low) / (self.high - self.low)


CONTROLS: dict[str, ControlSpec] = {
    "gain": ControlSpec("amplitude", 0.0, 1.0, False, 1.0, "stem fader, linear amplitude"),
    "eq_low": ControlSpec("dB", *EQ_DB_RANGE, False, EQ_NEUTRAL, "low shelf gain"),
    "eq_mid": ControlSpec("dB", *EQ_DB_RANGE, False, EQ_NEUTRAL, "mid peak gain"),
    "eq_high": ControlSpec("dB", *EQ_DB_RANGE, False, EQ_NEUTRAL, "high shelf gain"),
    "hpf": ControlSpec("Hz", 20.0, 10_000.0, True, 0.0, "high-pass cutoff, 20 Hz = open"),
    "lpf": ControlSpec("Hz", 100.0, 20_000.0, True, 1.0, "low-pass cutoff, 20 kHz = open"),
    "reverb_send": ControlSpec("amplitude", 0.0, 1.0, False, 0.0, "send to the reverb bus"),
    "delay_send": ControlSpec("amplitude", 0.0, 1.0, False, 0.0, "send to this track's delay"),
    "delay_feedback": ControlSpec("ratio", 0.0, 0.9, False, 0.5, "echo feedback per repeat"),
    # Centre is neutral: both tracks pass (at -3 dB each), so neither one's controls are dead.
    "crossfader": ControlSpec("position", 0.0, 1.0, False, 0.5, "0 = A, 1 = B, constant power"),
    "master_gain": ControlSpec("dB", *EQ_DB_RANGE, False, EQ_NEUTRAL, "master level"),
    "reverb_return": ControlSpec("amplitude", 0.0, 1.0, False, 1.0, "reverb bus return level"),
    "reverb_decay": ControlSpec("s", 0.2, 8.0, True, 0.625, "reverb RT60"),
}


@dataclass(frozen=True)
class Param:
    """One named parameter, e.g. `a.bass.eq_low`, `b.delay_send` or `crossfader`."""

    name: str
    control: str
    track: str | None = None
    stem: str | None = None

    @property
    def spec(self) -> ControlSpec:
        return CONTROLS[self.control]

    @property
    def neutral(self) -> float:
        return self.spec.neutral

    @property
    def unit(self) -> str:
        return self.spec.unit


def _stem_params() -> list[Param]:
    return [Param(f"{t}.{s}.{c}", c, t, s) for t in TRACKS for s in STEMS for c in STEM_CONTROLS]


def _track_params() -> list[Param]:
    return [Param(f"{t}.{c}", c, t) for t in TRACKS for c in TRACK_CONTROLS]


def _global_params() -> list[Param]:
    return [Param(c, c) for c in GLOBAL_CONTROLS]


class ParamLayout:
    """An ordered list of named parameters: column j of a curve tensor [..., F, P] is `params[j]`.

    The mixer accepts any layout; parameters a layout lacks sit at their neutral value, with two
    routing rules that keep the published subsets usable: no `crossfader` means both tracks pass
    at unity (the mixer's THRU assign), and no `reverb_send` means the reverb is fed from the
    master mix (the published 52-parameter design's master reverb), so its `reverb_return`
    neutral is 0 there.
    """

    def __init__(self, name: str, params: Sequence[Param]):
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"layout {name!r} repeats a parameter name")
        self.name = name
        self.params: tuple[Param, ...] = tuple(params)
        self._index = {p.name: i for i, p in enumerate(self.params)}
        self.reverb_from_master = "reverb_send" not in {p.control for p in self.params}
        self.crossfader_thru = "crossfader" not in self._index
        neutral = [p.neutral for p in self.params]
        if self.reverb_from_master and "reverb_return" in self._index:
            neutral[self._index["reverb_return"]] = 0.0
        self._neutral = torch.tensor(neutral, dtype=torch.float32)
        specs = [p.spec for p in self.params]
        self._low = torch.tensor([s.low for s in specs], dtype=torch.float32)
        self._high = torch.tensor([s.high for s in specs], dtype=torch.float32)
        self._is_log = torch.tensor([s.log for s in specs])

    # -- lookups ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        return f"ParamLayout({self.name!r}, {len(self)} parameters)"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ValueError(f"unknown parameter {name!r} in layout {self.name!r}") from None

    def indices(
        self, track: str | None = None, stem: str | None = None, control: str | Iterable[str] | None = None
    ) -> list[int]:
        """Columns matching every given filter, e.g. indices(track="a", control="gain")."""
        controls = {control} if isinstance(control, str) else set(control) if control is not None else None
        for value, allowed, what in ((track, TRACKS, "track"), (stem, STEMS, "stem")):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")
        if controls is not None and not controls <= set(CONTROLS):
            raise ValueError(f"unknown control(s) {sorted(controls - set(CONTROLS))}")
        return [
            i
            for i, p in enumerate(self.params)
            if (track is None or p.track == track)
            and (stem is None or p.stem == stem)
            and (controls is None or p.control in controls)
        ]

    def select(self, curves: torch.Tensor, **filters) -> torch.Tensor:
        """Slice the parameter axis (last) of curves [..., P] by track/stem/control."""
        return curves[..., self.indices(**filters)]

    def neutral(self) -> torch.Tensor:
        """[P] neutral values in model space."""
        return self._neutral.clone()

    def neutral_curves(
        self, n_frames: int, batch: int | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Neutral curves [n_frames, P] (or [batch, n_frames, P]) in model space."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        shape = (n_frames, len(self)) if batch is None else (batch, n_frames, len(self))
        return self._neutral.to(device).expand(shape).clone()

    # -- conversions -----------------------------------------------------------------------------
    def to_physical(self, curves: torch.Tensor) -> torch.Tensor:
        """Model space [..., P] -> physical units [..., P] (amplitude, dB, Hz, s, ...)."""
        self._check_width(curves)
        low, high, is_log = (t.to(curves.device) for t in (self._low, self._high, self._is_log))
        log_value = low * torch.exp(curves * torch.log(torch.where(is_log, high / low, torch.ones_like(low))))
        return torch.where(is_log, log_value, low + (high - low) * curves)

    def to_model(self, physical: torch.Tensor) -> torch.Tensor:
        """Physical units [..., P] -> model space [..., P]."""
        self._check_width(physical)
        low, high, is_log = (t.to(physical.device) for t in (self._low, self._high, self._is_log))
        safe_ratio = torch.where(is_log, high / low, torch.full_like(low, math.e))
        safe_x = torch.where(is_log, physical, low).clamp_min(1e-12)
        log_u = torch.log(safe_x / low) / torch.log(safe_ratio)
        return torch.where(is_log, log_u, (physical - low) / (high - low))

    def named(self, curves: torch.Tensor, physical: bool = False) -> dict[str, torch.Tensor]:
        """{name: curve [..., F]} from curves [..., F, P] (optionally in physical units)."""
        values = self.to_physical(curves) if physical else curves
        return {p.name: values[..., i] for i, p in enumerate(self.params)}

    def from_named(self, curves: dict[str, torch.Tensor | Sequence[float]], n_frames: int) -> torch.Tensor:
        """[n_frames, P] model-space curves from {name: [n_frames] or scalar}, neutral elsewhere."""
        out = self.neutral_curves(n_frames)
        for name, value in curves.items():
            out[:, self.index(name)] = torch.as_tensor(value, dtype=torch.float32)
        return out

    def expand_to(self, curves: torch.Tensor, other: ParamLayout) -> torch.Tensor:
        """Curves [..., F, P] in this layout -> [..., F, P'] in `other`, missing columns at neutral."""
        self._check_width(curves)
        fill = other._neutral.clone()
        if self.reverb_from_master and "reverb_return" in other._index:
            fill[other._index["reverb_return"]] = 0.0  # master-fed reverb is out of the path unless asked for
        out = fill.to(curves.device, curves.dtype).expand(*curves.shape[:-1], len(other)).clone()
        for i, p in enumerate(self.params):
            if p.name in other._index:
                out[..., other._index[p.name]] = curves[..., i]
        return out

    def to_full(self, curves: torch.Tensor) -> torch.Tensor:
        """Curves [..., F, P] in this layout -> [..., F, 58] in FULL that the mixer renders to the same mix.

        expand_to fills missing columns at neutral, which drops this layout's routing rules; here they are
        folded into FULL's own controls. No crossfader (both tracks at unity): the crossfader at centre
        (-3.01 dB each) and the master 3.01 dB up, with the reverb return and the delay sends, which the master
        scales but the crossfader does not, 3.01 dB down (exact while the master has 3 dB of headroom). No reverb
        sends (master-fed reverb): each track's send is its crossfader gain at each curve frame (cos, sin; the
        mixer interpolates the send where it would interpolate the position, a difference below 0.2 % for a
        crossfader that takes 16 frames or more to cross). FULL curves are returned as they are.
        """
        if self is FULL:
            return curves
        out = self.expand_to(curves, FULL)
        col = FULL._index
        if self.reverb_from_master:
            if self.crossfader_thru:
                sends = (torch.ones_like(out[..., 0]),) * 2
            else:
                angle = out[..., col["crossfader"]] * (math.pi / 2)
                sends = (torch.cos(angle), torch.sin(angle))
            for track, send in zip(TRACKS, sends):
                out[..., col[f"{track}.reverb_send"]] = send
        if self.crossfader_thru:
            span = EQ_DB_RANGE[1] - EQ_DB_RANGE[0]
            out[..., col["crossfader"]] = 0.5
            master = out[..., col["master_gain"]] + 20.0 * math.log10(math.sqrt(2.0)) / span
            out[..., col["master_gain"]] = master.clamp(max=1.0)
            for name in ("reverb_return", *(f"{t}.delay_send" for t in TRACKS)):
                out[..., col[name]] = out[..., col[name]] / math.sqrt(2.0)
        return out

    def _check_width(self, curves: torch.Tensor) -> None:
        if curves.shape[-1] != len(self):
            raise ValueError(
                f"curves have {curves.shape[-1]} parameters, layout {self.name!r} has {len(self)}"
            )


FULL = ParamLayout("full", _stem_params() + _track_params() + _global_params())
PER_TRACK = ParamLayout("per_track", _stem_params() + _track_params())
GLOBAL = ParamLayout("global", _stem_params() + _global_params())

LAYOUTS = {"full": FULL, "per_track": PER_TRACK, "global": GLOBAL}
# The published designs' names for the same subsets.
_ALIASES = {"djtransgan_v2": "per_track", "per_track_54": "per_track", "transition_model_v2": "global",
            "global_52": "global", "full_58": "full"}


def get_layout(layout: str | ParamLayout | Sequence[str]) -> ParamLayout:
    """A layout by name ('full', 'per_track', 'global' or an alias), as is, or from parameter names."""
    if isinstance(layout, ParamLayout):
        return layout
    if isinstance(layout, str):
        key = _ALIASES.get(layout, layout)
        if key not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS) + sorted(_ALIASES)}")
        return LAYOUTS[key]
    params = []
    for name in layout:
        if name not in FULL:
            raise ValueError(f"unknown parameter name {name!r}")
        params.append(FULL.params[FULL.index(name)])
    return ParamLayout("custom", params)
