import pytest

from data.keys import camelot, camelot_to_index, key_index, key_name


def test_round_trip_all_keys():
    for i in range(24):
        assert key_index(key_name(i)) == i
        assert camelot_to_index(camelot(i)) == i
        assert key_index(camelot(i)) == i


def test_known_camelot_codes():
    assert camelot(key_index("C major")) == "8B"
    assert camelot(key_index("A minor")) == "8A"
    assert camelot(key_index("F# minor")) == "11A"
    assert key_index("Bbm") == key_index("Bb minor") == 22


def test_bad_names():
    with pytest.raises(ValueError):
        key_index("H major")
    with pytest.raises(ValueError):
        key_name(24)
