import pytest

from sigma_core.data.pairing import ApproximateTimePairer


def test_pairs_closest_within_slop_and_consumes_both():
    p = ApproximateTimePairer(queue_size=10, slop=0.05)
    assert p.add(0, 0.000, "rgb0") is None
    assert p.add(0, 0.033, "rgb1") is None
    pair = p.add(1, 0.040, "th0")
    assert (pair.first, pair.second) == ("rgb1", "th0")
    assert pair.skew == pytest.approx(-0.007)
    assert p.pending() == (1, 0)  # rgb0 waits, th0 consumed


def test_nothing_outside_slop_and_queue_is_bounded():
    p = ApproximateTimePairer(queue_size=3, slop=0.01)
    for i in range(10):
        assert p.add(0, i * 0.1, i) is None
    assert p.pending() == (3, 0)
    assert p.add(1, 0.35, "far") is None
    pair = p.add(1, 0.705, "near")
    assert pair.first == 7


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimePairer(slop=0)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimePairer(queue_size=0)
