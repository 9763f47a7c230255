"""frame_mailbox: one waiting item, newer replaces older (counted), never blocks the producer."""
import threading
import time

from sigma_ros.node.frame_mailbox import LatestMailbox


def test_newest_item_wins_and_replacements_are_counted():
    box = LatestMailbox()
    assert box.put(1) is False
    assert box.put(2) is True and box.put(3) is True
    assert box.dropped == 2
    assert box.take(timeout=0) == 3
    assert box.take(timeout=0.01) is None


def test_fast_producer_slow_consumer_keeps_memory_bounded():
    box = LatestMailbox()
    taken = []

    def consume():
        while not box.closed:
            item = box.take(timeout=0.05)
            if item is not None:
                taken.append(item)
                time.sleep(0.01)  # a slow model

    worker = threading.Thread(target=consume)
    worker.start()
    for i in range(2000):
        box.put(i)
    time.sleep(0.05)
    box.close()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert taken == sorted(taken) and taken[-1] == 1999  # in order, and the newest was served
    assert len(taken) + box.dropped == 2000


def test_close_wakes_a_waiting_consumer():
    box = LatestMailbox()
    result = []
    worker = threading.Thread(target=lambda: result.append(box.take(timeout=10)))
    worker.start()
    time.sleep(0.05)
    start = time.monotonic()
    box.close()
    worker.join(timeout=5)
    assert result == [None] and time.monotonic() - start < 1
