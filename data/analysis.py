"""Track analysis: tempo, beats, downbeats, key, energy, loudness, sections, vocal activity.

(The analysis algorithms land here; this file starts with the result type that other modules use.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SECTION_LABELS = ("intro", "verse", "chorus", "drop", "bridge", "outro")


@dataclass
class Section:
    start: float  # seconds
    end: float  # seconds
    label: str  # one of SECTION_LABELS


@dataclass
class TrackAnalysis:
    """Everything the cue selection, features and evaluation need about one track.

    Times are seconds from the start of the audio that was analysed.
    """

    duration: float
    bpm: float
    beats: np.ndarray  # [n_beats] seconds
    downbeats: np.ndarray  # [n_bars] seconds, a subset of beats
    key_index: int  # 0..23, see data/keys.py
    key_confidence: float  # correlation of the best key profile, 0..1
    energy: np.ndarray  # [n_energy_frames] RMS energy (linear), frame rate `energy_rate`
    energy_rate: float  # frames per second of `energy`
    lufs: float  # integrated loudness, ITU-R BS.1770 (LUFS)
    sections: list[Section] = field(default_factory=list)
    vocal_activity: list[tuple[float, float]] | None = None  # (start, end) seconds, None = unknown
    beat_confidence: float = 1.0  # 0 = no usable beat found (tempo-free material)

    @property
    def key(self) -> str:
        from data.keys import key_name

        return key_name(self.key_index)

    @property
    def camelot(self) -> str:
        from data.keys import camelot

        return camelot(self.key_index)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (numpy arrays become lists)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = [round(float(x), 6) for x in v]
        out["key"] = self.key
        out["camelot"] = self.camelot
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TrackAnalysis:
        return cls(
            duration=float(d["duration"]),
            bpm=float(d["bpm"]),
            beats=np.asarray(d["beats"], dtype=np.float64),
            downbeats=np.asarray(d["downbeats"], dtype=np.float64),
            key_index=int(d["key_index"]),
            key_confidence=float(d.get("key_confidence", 1.0)),
            energy=np.asarray(d["energy"], dtype=np.float32),
            energy_rate=float(d["energy_rate"]),
            lufs=float(d["lufs"]),
            sections=[Section(**s) for s in d.get("sections", [])],
            vocal_activity=[tuple(v) for v in d["vocal_activity"]] if d.get("vocal_activity") is not None else None,
            beat_confidence=float(d.get("beat_confidence", 1.0)),
        )
