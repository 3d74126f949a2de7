"""The server's record of since when each site is connected or gone."""

from fedcare.server.presence import PresenceBook


def test_presence_says_since_when_a_site_is_up_or_gone():
    book = PresenceBook()
    book.record("a", True, at_s=10.0)
    book.record("b", True, at_s=11.0)
    book.record("b", False, at_s=20.0)
    assert book.view(["a"]) == {"a": {"connected": True, "since_s": 10.0},
                                "b": {"connected": False, "since_s": 20.0}}


def test_the_transport_decides_and_a_late_close_leaves_since_unknown():
    book = PresenceBook()
    book.record("a", True, at_s=10.0)
    book.record("a", False, at_s=12.0)  # the old stream's close, after the new one connected
    assert book.view(["a", "c"]) == {"a": {"connected": True, "since_s": None},
                                     "c": {"connected": True, "since_s": None}}
