"""The transport's byte counters: exact under concurrent streams."""

import threading

from fedcare.transport.traffic import Traffic


def test_totals_are_exact_when_many_threads_add():
    traffic = Traffic()

    def stream():
        for _ in range(1000):
            traffic.received(3)
            traffic.sent(5)

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert traffic.totals() == (24_000, 40_000)
