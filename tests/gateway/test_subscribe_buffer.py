"""The subscribe-time cut-off rule, fed pushes: what is held while a subscribe is in flight
and what goes out after its reply."""

from __future__ import annotations

from gateway.subscribe_buffer import SubscribeBuffer


def test_channels_not_being_subscribed_are_not_held() -> None:
    b = SubscribeBuffer()
    assert not b.hold("news", 1, b"p1")
    b.start("chat")
    assert not b.hold("news", 2, b"p2")
    assert b.hold("chat", 3, b"p3")


def test_pushes_the_reply_covered_are_dropped_newer_ones_sent_in_order() -> None:
    b = SubscribeBuffer()
    b.start("chat")
    for offset in (4, 5, 6, 7):
        assert b.hold("chat", offset, f"p{offset}".encode())
    b.set_cutoff("chat", 5)  # the reply carried the stream up to offset 5
    assert b.release({"chat"}) == [b"p6", b"p7"]
    # The round is over: nothing is held any more.
    assert not b.hold("chat", 8, b"p8")
    assert b.release({"chat"}) == []


def test_pushes_without_a_stream_position_always_go_out() -> None:
    b = SubscribeBuffer()
    b.start("room")
    b.hold("room", 0, b"join")
    b.hold("room", 3, b"old")
    b.hold("room", 0, b"leave")
    b.set_cutoff("room", 10)
    assert b.release({"room"}) == [b"join", b"leave"]


def test_no_cutoff_means_everything_is_new() -> None:
    b = SubscribeBuffer()
    b.start("a")
    b.hold("a", 1, b"p1")
    assert b.release({"a"}) == [b"p1"]


def test_failed_subscribe_drops_its_pushes_and_its_cutoff() -> None:
    b = SubscribeBuffer()
    b.start("ok")
    b.start("failed")
    b.hold("failed", 9, b"f9")
    b.hold("ok", 2, b"o2")
    b.hold("failed", 10, b"f10")
    b.set_cutoff("ok", 1)
    b.set_cutoff("failed", 8)
    assert b.release({"ok"}) == [b"o2"]
    # The failed channel's cut-off went with its round: a later subscribe starts afresh.
    b.start("failed")
    b.hold("failed", 3, b"f3")
    assert b.release({"failed"}) == [b"f3"]


def test_cutoff_set_after_a_round_waits_for_the_next() -> None:
    # A server-side subscribe can end a round while a client subscribe is still reading
    # history; its cut-off then applies when its own round ends.
    b = SubscribeBuffer()
    b.start("x")
    assert b.release(set()) == []
    b.set_cutoff("x", 4)
    b.start("x")
    b.hold("x", 4, b"p4")
    b.hold("x", 5, b"p5")
    assert b.release({"x"}) == [b"p5"]


def test_starting_again_restarts_the_held_list() -> None:
    b = SubscribeBuffer()
    b.start("c")
    b.hold("c", 1, b"p1")
    b.start("c")
    b.hold("c", 2, b"p2")
    assert b.release({"c"}) == [b"p2"]


def test_idle_after_release_of_everything() -> None:
    buf = SubscribeBuffer()
    assert buf.idle
    buf.start("a")
    assert not buf.idle
    buf.hold("a", 1, b"x")
    buf.set_cutoff("a", 0)
    assert buf.release({"a"}) == [b"x"]
    assert buf.idle
    # A cut-off set after its round ended waits for the next round: not idle.
    buf.set_cutoff("b", 3)
    assert not buf.idle
