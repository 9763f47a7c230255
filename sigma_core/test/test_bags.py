"""BagWriter / open_bag: images survive every storage byte for byte."""
import numpy as np
import pytest

from sigma_core.data.bags import BagError, BagWriter, bag_topics, message_to_array, open_bag, stamp_ns
from sigma_core.data.image_encoding import encode_compressed


@pytest.mark.parametrize("storage", ["sqlite3", "mcap", "ros1"])
def test_images_round_trip_through_each_storage(tmp_path, storage):
    path = tmp_path / ("b.bag" if storage == "ros1" else "b")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    thermal = rng.integers(0, 65536, (5, 7)).astype(np.uint16)
    st = 1_700_000_000_123_456_789
    with BagWriter(path, storage) as bag:
        bag.write("/rgb", st + 5, bag.image(st, "cam", rgb, "rgb8"))
        bag.write("/thermal", st + 9, bag.compressed_image(st + 1, "th", *encode_compressed(thermal, "mono16", "png")))
        bag.write("/info", st + 9, bag.camera_info(st + 1, "th", 5, 7, [4.0, 0, 3.0, 0, 4.0, 2.0, 0, 0, 1]))
    with open_bag(path) as r:
        assert bag_topics(r) == {"/rgb": "sensor_msgs/msg/Image", "/thermal": "sensor_msgs/msg/CompressedImage",
                                 "/info": "sensor_msgs/msg/CameraInfo"}
        got = {}
        for c, log, raw in r.messages():
            msg = r.deserialize(raw, c.msgtype)
            got[c.topic] = (log, stamp_ns(msg), msg)
    assert got["/rgb"][:2] == (st + 5, st)  # nanosecond stamps survive (ROS 1 included)
    arr, enc = message_to_array(got["/rgb"][2])
    assert enc == "rgb8" and np.array_equal(arr, rgb)
    arr, enc = message_to_array(got["/thermal"][2])
    assert enc == "mono16" and np.array_equal(arr, thermal)
    with pytest.raises(BagError, match="not an image"):
        message_to_array(got["/info"][2])


def test_writer_never_overwrites_and_reader_explains_bad_paths(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        BagWriter(tmp_path / "exists", "sqlite3")
    with pytest.raises(ValueError, match="storage"):
        BagWriter(tmp_path / "x", "hdf5")
    with pytest.raises(BagError, match="bag not found"):
        open_bag(tmp_path / "missing").__enter__()
    with pytest.raises(BagError, match="without metadata.yaml"):
        open_bag(tmp_path / "exists").__enter__()
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(BagError, match="ROS 1 .bag"):
        open_bag(tmp_path / "x.txt").__enter__()
