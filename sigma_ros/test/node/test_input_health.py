"""input_health: throttled counted problem reports, stamps (order, jumps back, zero), silence, pairing, modality."""
import numpy as np
import pytest

from sigma_core.data.modality import ModalityScaling
from sigma_ros.node.input_health import ProblemLog, Stamp, StreamWatch, modality_problem


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
    assert watch.received(0, 1.0) == (Stamp.NEW, None)
    assert watch.received(0, 2.0) == (Stamp.NEW, 1.0)
    assert watch.received(0, 1.7) == (Stamp.OUT_OF_ORDER, 2.0)
    assert watch.received(0, 2.0) == (Stamp.OUT_OF_ORDER, 2.0)  # a repeated stamp is not newer either
    assert watch.received(1, 1.0) == (Stamp.NEW, None)  # streams are independent
    assert watch.received(0, 2.1) == (Stamp.NEW, 2.0)
    assert watch.received(1, 0.0) == (Stamp.ZERO, 1.0)


def test_time_going_back_restarts_every_stream():
    watch = StreamWatch(["/rgb", "/thermal"], clock=FakeClock())
    for t in (10.0, 10.1, 10.2):
        watch.received(0, t)
        watch.received(1, t)
    assert watch.received(0, 0.05) == (Stamp.JUMPED_BACK, 10.2)  # a bag loop: far older
    assert watch.received(1, 0.05) == (Stamp.NEW, None)  # the other stream starts over too, not "out of order"
    assert watch.received(0, 0.1) == (Stamp.NEW, 0.05)
    # A short loop (a step back within the tolerance) is recognised once it persists.
    verdicts = [watch.received(0, 0.01 + 0.01 * i)[0] for i in range(5)]
    assert verdicts == [Stamp.OUT_OF_ORDER] * 4 + [Stamp.JUMPED_BACK]


def test_streams_that_arrive_but_never_pair_are_measured():
    clock = FakeClock()
    watch = StreamWatch(["/rgb", "/thermal"], clock=clock)
    assert watch.nothing_for(3.0) is None
    clock.t += 3.5
    assert watch.nothing_for(3.0) == 3.5  # no message at all
    for i in range(40):  # thermal on its own clock, 250 s behind
        watch.received(0, 1000.0 + i / 10)
        watch.received(1, 750.0 + i / 10)
        clock.t += 0.1
    assert watch.nothing_for(3.0) is None
    assert watch.unpaired(3.0) == pytest.approx(250.0)
    watch.paired()
    assert watch.unpaired(3.0) is None
    clock.t += 4
    assert watch.unpaired(3.0) is None  # nothing arrived since the pair
    watch.received(0, 1004.0)
    watch.received(1, 754.0)
    assert watch.unpaired(3.0) == pytest.approx(250.0)  # both arrive (a burst after a pause), and still no pair
    clock.t += 9
    assert watch.unpaired(3.0) is None  # streams stopped: that is silence, not a pairing problem


def test_modality_images_that_carry_nothing_are_found():
    counts = ModalityScaling("thermal", range=(20000.0, 40000.0))
    mono8 = np.full((4, 5), 200, np.uint8)  # a mono8 camera into a 16-bit model: all below the range
    assert modality_problem(mono8, counts) == ("unusable_thermal", 1.0)
    assert modality_problem(np.full((4, 5), 30000, np.uint16), counts) is None
    kelvin = ModalityScaling("thermal", range=(0.0, 1.0))
    assert modality_problem(np.full((4, 5), 300.0, np.float32), kelvin) == ("unusable_thermal", 1.0)
    nan = np.full((4, 5), np.nan, np.float32)
    assert modality_problem(nan, ModalityScaling("thermal")) == ("unusable_thermal", 1.0)
    assert modality_problem(np.zeros((4, 5), np.uint8), ModalityScaling("thermal")) is None  # full dtype range
    depth = np.zeros((4, 5), np.uint16)
    depth[0] = 1000
    assert modality_problem(depth, ModalityScaling("depth")) == ("invalid_depth", 0.75)


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


def test_depth_stream_evidence_tells_a_depth_camera_from_a_thermal_one():
    from sigma_core.data.modality import depth_stream_evidence

    depth = np.full((4, 4), 1500, np.uint16)
    depth[0] = 0  # no return
    thermal = np.full((4, 4), 29315, np.uint16)
    assert depth_stream_evidence("/camera/depth/image_rect_raw", "16UC1", thermal, False)[0] == (
        "the topic name /camera/depth/image_rect_raw says depth")
    assert len(depth_stream_evidence("/cam/x", "16UC1", depth, False)) == 2
    assert len(depth_stream_evidence("/cam/x", "32FC1", np.full((4, 4), 2.5, np.float32), True)) == 2
    # a thermal camera on a depth encoding, all pixels valid, no CameraInfo: still a thermal stream
    assert depth_stream_evidence("/thermal/image_raw", "16UC1", thermal, False) == []
    assert depth_stream_evidence("/thermal/image_raw", "mono16", depth, True) == []
