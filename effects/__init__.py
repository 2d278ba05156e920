"""Audio effects and the differentiable DJ mixer. Imports nothing else of this project."""

from effects.params import SAMPLE_RATE, STEMS, TRACKS

__all__ = ["SAMPLE_RATE", "STEMS", "TRACKS"]
