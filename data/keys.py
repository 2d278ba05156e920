"""Musical keys: 24 classes, names mir_eval reads, and the Camelot wheel.

Key index convention (used everywhere in this project, including the one-hot `key [24]` feature):
0..11 are C major .. B major by tonic pitch class, 12..23 are C minor .. B minor.
"""

from __future__ import annotations

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ALIASES = {"Db": 1, "D#": 3, "Gb": 6, "G#": 8, "A#": 10, "Cb": 11, "B#": 0, "E#": 5, "Fb": 4}

# Camelot numbers by tonic pitch class: major keys are "B", minor keys are "A".
_CAMELOT_MAJOR = {0: 8, 7: 9, 2: 10, 9: 11, 4: 12, 11: 1, 6: 2, 1: 3, 8: 4, 3: 5, 10: 6, 5: 7}
_CAMELOT_MINOR = {9: 8, 4: 9, 11: 10, 6: 11, 1: 12, 8: 1, 3: 2, 10: 3, 5: 4, 0: 5, 7: 6, 2: 7}


def key_name(index: int) -> str:
    """0..23 -> 'C major' .. 'B minor' (the format mir_eval.key expects)."""
    if not 0 <= index < 24:
        raise ValueError(f"key index must be in 0..23, got {index}")
    return f"{PITCH_NAMES[index % 12]} {'major' if index < 12 else 'minor'}"


def key_index(name: str) -> int:
    """'A minor', 'F# major', 'Bbm', '8A' (Camelot) -> 0..23."""
    text = name.strip()
    if text[:-1].isdigit() and text[-1].upper() in "AB":
        return camelot_to_index(text)
    minor = text.endswith("m") and not text.endswith("major") or text.lower().endswith("minor")
    tonic = text.split()[0] if " " in text else (text[:-1] if text.endswith("m") else text)
    tonic = tonic[0].upper() + tonic[1:]
    if tonic in PITCH_NAMES:
        pc = PITCH_NAMES.index(tonic)
    elif tonic in _ALIASES:
        pc = _ALIASES[tonic]
    else:
        raise ValueError(f"unknown key name {name!r}")
    return pc + (12 if minor else 0)


def camelot(index: int) -> str:
    """0..23 -> Camelot code such as '8B' (C major) or '8A' (A minor)."""
    pc, minor = index % 12, index >= 12
    return f"{(_CAMELOT_MINOR if minor else _CAMELOT_MAJOR)[pc]}{'A' if minor else 'B'}"


def camelot_to_index(code: str) -> int:
    number, letter = int(code[:-1]), code[-1].upper()
    table = _CAMELOT_MINOR if letter == "A" else _CAMELOT_MAJOR
    for pc, n in table.items():
        if n == number:
            return pc + (12 if letter == "A" else 0)
    raise ValueError(f"unknown Camelot code {code!r}")
