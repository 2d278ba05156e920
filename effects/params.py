"""Parameter layouts (placeholder constants until the layout lands)."""

SAMPLE_RATE = 44_100
STEMS = ("drums", "bass", "vocals", "other")
TRACKS = ("a", "b")
