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


@pytest.mark.parametrize("kind", ["bz2", "lz4", "zstd"])
def test_chunks_inflate_only_up_to_the_limit(kind):
    """Issue 21 attack (second pass): rosbags inflates ROS 1 (bz2, lz4) and MCAP (lz4, zstd) chunks whole and
    unbounded. Concatenated streams still inflate; past the limit, or cut short, is an error."""
    import bz2

    import lz4.frame

    from sigma_core.data.bag_decompression import ChunkTooLargeError, _decompressor_factories, inflate

    if kind == "zstd":
        if kind not in _decompressor_factories():
            pytest.skip("no zstd module (rosbags' MCAP zstd needs backports.zstd)")
        from backports import zstd

        compress = zstd.compress
    else:
        compress = {"bz2": bz2.compress, "lz4": lz4.frame.compress}[kind]
    data = compress(b"a" * 1000) + compress(b"b" * 24)
    assert inflate(kind, data, limit=1024) == b"a" * 1000 + b"b" * 24
    with pytest.raises(ChunkTooLargeError, match=f"a {kind} chunk of {len(data):,} bytes inflates past 1,023 bytes"):
        inflate(kind, data, limit=1023)
    with pytest.raises(EOFError, match="truncated"):
        inflate(kind, data[: len(data) // 3], limit=1024)


def test_mcap_chunks_inflating_past_their_declared_size_are_refused():
    import lz4.frame
    from rosbags.rosbag2 import storage_mcap

    from sigma_core.data.bag_decompression import ChunkTooLargeError, bound_chunk_decompression

    bound_chunk_decompression()
    data = lz4.frame.compress(b"\0" * 100_000)
    assert storage_mcap.decompress(data, "lz4", 100_000, 0) == b"\0" * 100_000
    with pytest.raises(ChunkTooLargeError, match="inflates past 1,000 bytes"):
        storage_mcap.decompress(data, "lz4", 1000, 0)  # declares 1000 bytes, inflates to 100000
    with pytest.raises(ChunkTooLargeError, match="declares 1,099,511,627,776 bytes"):
        storage_mcap.decompress(data, "lz4", 1 << 40, 0)


def test_sigma_extract_refuses_a_ros1_chunk_bomb_in_one_line(tmp_path):
    """A 1.2 MB ROS 1 bag whose lz4 chunk inflates to 300 MB (past the 256 MB bound): one line naming the bag, exit 2,
    in a real process. Before, rosbags inflated it whole (a 6.9 KB bz2 bag took sigma-extract to 3.4 GB)."""
    import subprocess
    import sys

    import lz4.frame
    from rosbags.rosbag1 import Writer as Writer1

    def bomb(chunk: bytes) -> bytes:  # the chunk's records, then 300 MB of zeros no index points into
        packer = lz4.frame.LZ4FrameCompressor()
        parts = [packer.begin(), packer.compress(chunk)]
        zeros = b"\0" * (16 << 20)
        parts += [packer.compress(zeros) for _ in range(300 // 16)]
        return b"".join(parts + [packer.flush()])

    path = tmp_path / "bomb.bag"
    bag = BagWriter(path, "ros1")
    bag._writer.set_compression(Writer1.CompressionFormat.LZ4)
    bag._writer.compressor = bomb
    with bag:
        for k in range(2):
            stamp = 1_700_000_000_000_000_000 + k * 100_000_000
            bag.write("/rgb", stamp, bag.image(stamp, "c", np.zeros((6, 8, 3), np.uint8), "rgb8"))
            bag.write("/thermal", stamp, bag.image(stamp, "t", np.zeros((6, 8), np.uint8), "mono8"))
    assert path.stat().st_size < 2_000_000
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.extract", str(path), "-o", str(tmp_path / "out"),
                          "--rgb-topic", "/rgb", "--modal-topic", "/thermal", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "bomb.bag" in run.stderr and "lz4 chunk" in run.stderr and "inflates past 268,435,456 bytes" in run.stderr
