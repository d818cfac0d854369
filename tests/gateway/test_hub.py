"""Encode-once fan-out (gateway/hub.py) and the covered-offset rule for new subscribers."""

from __future__ import annotations

import json

import pytest

from centrifugo_bridge.codecs import JSON
from centrifugo_bridge.protocol import Publication, Raw
from gateway import hub as hub_module
from gateway.hub import Hub


class Sink:
    """A subscriber that keeps the offsets of the publications written to it."""

    codec = JSON

    def __init__(self) -> None:
        self.buffering: dict[str, list[tuple[int, bytes]]] | None = None
        self.offsets: list[int] = []

    def write_frame(self, frame: bytes) -> None:
        # Unmasked server frame: 2-byte header for short payloads, 4 for up to 64 KiB.
        size = frame[1] & 0x7F
        payload = frame[2:] if size < 126 else frame[4:]
        self.offsets.append(json.loads(payload)["push"]["pub"]["offset"])


def pub(offset: int) -> Publication:
    return Publication(data=Raw(b"{}"), offset=offset)


def test_new_subscriber_skips_publications_its_reply_covered() -> None:
    hub = Hub()
    old, new = Sink(), Sink()
    hub.add("c", old, False)
    hub.add("c", new, False)
    hub.covered("c", new, 5)  # its subscribe reply recovered up to offset 5
    for o in (4, 5, 6, 7):
        hub.publish("c", pub(o))
    assert old.offsets == [4, 5, 6, 7]
    assert new.offsets == [6, 7]


def test_rule_ends_at_the_first_publication_past_the_offset() -> None:
    hub = Hub()
    sub = Sink()
    hub.add("c", sub, False)
    hub.covered("c", sub, 5)
    hub.publish("c", pub(6))
    assert hub._late == {}
    # A restarted stream (new epoch) is not swallowed once the rule has ended.
    hub.publish("c", pub(1))
    assert sub.offsets == [6, 1]


def test_rule_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = Hub()
    sub = Sink()
    hub.add("c", sub, False)
    monkeypatch.setattr(hub_module, "LATE_WINDOW", -1.0)
    hub.covered("c", sub, 5)
    hub.publish("c", pub(2))
    assert sub.offsets == [2]


def test_unsubscribe_drops_the_rule() -> None:
    hub = Hub()
    sub = Sink()
    hub.add("c", sub, False)
    hub.covered("c", sub, 5)
    hub.remove("c", sub)
    assert hub._late == {}


def test_offset_zero_sets_no_rule() -> None:
    hub = Hub()
    sub = Sink()
    hub.add("c", sub, False)
    hub.covered("c", sub, 0)
    assert hub._late == {}


def test_sweep_drops_expired_rules_of_quiet_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = Hub()
    quiet, fresh = Sink(), Sink()
    hub.add("quiet", quiet, False)
    hub.add("fresh", fresh, False)
    monkeypatch.setattr(hub_module, "LATE_WINDOW", -1.0)
    hub.covered("quiet", quiet, 5)  # already past its deadline, and no publication comes
    monkeypatch.setattr(hub_module, "LATE_WINDOW", 60.0)
    hub.covered("fresh", fresh, 5)
    assert hub.sweep_covered() == 1
    assert list(hub._late) == ["fresh"]
