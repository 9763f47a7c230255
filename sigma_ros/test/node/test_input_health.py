"""input_health: throttled counted problem reports, stamp order and silent-stream detection."""
from sigma_ros.node.input_health import ProblemLog, StreamWatch


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_problems_are_counted_always_and_logged_once_per_period():
    clock, lines = FakeClock(), []
    log = ProblemLog(lines.append, period_s=5.0, clock=clock)
    assert log.report("size_mismatch", "a") is True
    assert log.report("size_mismatch", "b") is False
    assert log.report("out_of_order", "c") is True  # kinds are throttled separately
    clock.t += 5.1
    assert log.report("size_mismatch", "d") is True
    assert log.counts == {"size_mismatch": 3, "out_of_order": 1}
    assert lines == ["a [size_mismatch: 1 so far]", "c [out_of_order: 1 so far]", "d [size_mismatch: 3 so far]"]


def test_out_of_order_stamps_are_reported_with_the_previous_one():
    watch = StreamWatch(["/rgb", "/thermal"], clock=FakeClock())
    assert watch.received(0, 1.0) is None
    assert watch.received(0, 2.0) is None
    assert watch.received(0, 1.5) == 2.0
    assert watch.received(0, 2.0) == 2.0  # a repeated stamp is not newer either
    assert watch.received(1, 1.0) is None  # streams are independent
    assert watch.received(0, 2.1) is None


def test_silent_stream_is_named_only_while_the_other_is_live():
    clock = FakeClock()
    watch = StreamWatch(["/rgb", "/thermal"], clock=clock)
    clock.t += 10
    assert watch.silent(3.0) == []  # no camera at all yet: not one broken stream
    watch.received(0, 1.0)
    # The node was up for 10 s before the cameras: the thermal frame a few ms behind RGB is not "silent".
    assert watch.silent(3.0) == []
    clock.t += 4
    watch.received(0, 5.0)
    silent = watch.silent(3.0)
    assert [t for t, _ in silent] == ["/thermal"] and silent[0][1] >= 4
    watch.received(1, 1.0)
    assert watch.silent(3.0) == []
    clock.t += 4
    watch.received(1, 2.0)
    assert [t for t, _ in watch.silent(3.0)] == ["/rgb"]
