"""Channel namespaces and permission rules (Centrifugo v6 internal/config/container.go and
internal/client/handler.go), as pure functions over configuration."""

from __future__ import annotations

import msgspec
import pytest

from centrifugo_bridge.channels import (
    ChannelOptions,
    ChannelRules,
    byte_length,
    personal_channel,
)
from centrifugo_bridge.codes import ClientError


def code_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as info:
        fn(*args)
    return info.value.code


RULES = ChannelRules(
    without_namespace=ChannelOptions(allow_subscribe_for_client=True),
    namespaces={
        "chat": ChannelOptions(presence=True, history_size=10, history_ttl=60.0,
                               allow_subscribe_for_client=True),
        "dm": ChannelOptions(allow_user_limited_channels=True),
        "re": ChannelOptions(channel_regex=r"^[a-z]+$"),
        "a.b-c_d": ChannelOptions(),
    },
)


# ---- resolution --------------------------------------------------------------------------


def test_resolve_namespaces() -> None:
    res = RULES.resolve("chat:room:1")
    assert (res.namespace, res.private, res.user_limited) == ("chat", False, False)
    assert res.options is RULES.namespaces["chat"]
    res = RULES.resolve("news")
    assert res.namespace == "" and res.options is RULES.without_namespace
    assert RULES.resolve("a.b-c_d:x").namespace == "a.b-c_d"


def test_resolve_unknown_namespace_is_102() -> None:
    assert code_of(RULES.resolve, "nope:1") == 102
    assert code_of(RULES.resolve, "Chat:1") == 102
    assert code_of(RULES.resolve, "") == 102


def test_empty_namespace_part_means_without_namespace() -> None:
    res = RULES.resolve(":x")
    assert res.namespace == "" and res.options is RULES.without_namespace
    assert RULES.resolve("$:x").private


def test_private_prefix() -> None:
    res = RULES.resolve("$chat:1")
    assert res.private and res.namespace == "chat"
    assert RULES.resolve("$news").private
    assert not RULES.resolve("news$").private
    rules = msgspec.structs.replace(RULES, private_prefix="")
    assert not rules.resolve("$news").private
    # Without a private prefix "$chat" is a namespace name like any other.
    assert code_of(rules.resolve, "$chat:1") == 102


def test_custom_boundaries() -> None:
    rules = ChannelRules(namespaces={"chat": ChannelOptions()}, namespace_boundary="/",
                         user_boundary="@", user_separator=";")
    assert rules.resolve("chat/1").namespace == "chat"
    assert rules.resolve("chat:1").namespace == ""
    assert rules.user_allowed("dm@a;b", "b") and not rules.user_allowed("dm@a;b", "c")
    no_ns = ChannelRules(namespace_boundary="")
    assert no_ns.resolve("chat:1").namespace == ""


def test_max_length_counts_utf8_bytes() -> None:
    assert byte_length("abc") == 3 and byte_length("я") == 2 and byte_length("€") == 3
    rules = ChannelRules(namespaces={"re": ChannelOptions(channel_regex=".*")}, max_length=10)
    assert rules.resolve("re:" + "x" * 7).channel
    assert code_of(rules.resolve, "re:" + "x" * 8) == 107
    assert rules.resolve("re:яяя").channel  # 3 + 6 bytes
    assert code_of(rules.resolve, "re:яяяя") == 107  # 3 + 8 bytes


def test_non_ascii_needs_a_regex() -> None:
    assert code_of(RULES.resolve, "café") == 107
    assert code_of(RULES.resolve, "chat:café") == 107
    assert code_of(RULES.resolve, "re:café") == 107  # regex does not match
    rules = ChannelRules(namespaces={"uu": ChannelOptions(channel_regex=r"^\w+$")})
    assert rules.resolve("uu:café").namespace == "uu"


def test_regex_applies_to_the_part_after_the_namespace() -> None:
    assert RULES.resolve("re:abc").namespace == "re"
    assert code_of(RULES.resolve, "re:abc1") == 107
    assert code_of(RULES.resolve, "re:") == 107
    # The private prefix and namespace are not part of what the regex sees.
    assert RULES.resolve("$re:abc").private


def test_user_limited_resolution() -> None:
    assert RULES.resolve("dm:#a,b").user_limited
    assert not RULES.resolve("chat:#a,b").user_limited  # namespace does not allow it
    assert not RULES.resolve("dm:ab").user_limited


def test_user_allowed() -> None:
    assert RULES.user_allowed("dm:#alice,bob", "alice")
    assert RULES.user_allowed("dm:#alice,bob", "bob")
    assert not RULES.user_allowed("dm:#alice,bob", "carol")
    assert not RULES.user_allowed("dm:#alice,bob", "")
    assert not RULES.user_allowed("dm:#alice,bob", "alice,bob")
    # Only the part after the last boundary lists users.
    assert RULES.user_allowed("dm:#x#alice", "alice")
    assert not RULES.user_allowed("dm:#alice#x", "alice")
    assert RULES.user_allowed("no-boundary", "anyone")
    assert ChannelRules(user_separator="").user_allowed("dm:#a,b", "a,b")


def test_personal_channel() -> None:
    assert personal_channel("42", "") == "#42"
    assert personal_channel("42", "personal") == "personal:#42"
    assert personal_channel("42", "p", "@", "/") == "p/@42"


# ---- subscribe permissions ----------------------------------------------------------------


def _rules(**opts: bool) -> ChannelRules:
    return ChannelRules(namespaces={"ns": ChannelOptions(**opts)})


@pytest.mark.parametrize(("opts", "user", "channel", "allowed"), [
    ({}, "alice", "ns:1", False),
    ({"allow_subscribe_for_client": True}, "alice", "ns:1", True),
    ({"allow_subscribe_for_client": True}, "", "ns:1", False),
    ({"allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True}, "", "ns:1", True),
    ({"allow_subscribe_for_anonymous": True}, "", "ns:1", False),
    ({"allow_user_limited_channels": True}, "alice", "ns:#alice", True),
    ({"allow_user_limited_channels": True}, "alice", "ns:#bob", False),
    ({"allow_user_limited_channels": True}, "", "ns:#", False),
    # A user-limited channel is not opened by allow_subscribe_for_client.
    ({"allow_user_limited_channels": True, "allow_subscribe_for_client": True}, "alice", "ns:#bob", False),
    ({"allow_user_limited_channels": True, "allow_subscribe_for_client": True}, "alice", "ns:1", True),
    # Without allow_user_limited_channels `#` is an ordinary character.
    ({"allow_subscribe_for_client": True}, "alice", "ns:#bob", True),
])
def test_can_subscribe_without_token(opts: dict[str, bool], user: str, channel: str, allowed: bool) -> None:
    rules = _rules(**opts)
    assert rules.can_subscribe_without_token(rules.resolve(channel), user) is allowed


def test_insecure_grants_subscribe_publish_presence_history() -> None:
    rules = ChannelRules(namespaces={"ns": ChannelOptions(presence=True, history_size=1,
                                                          history_ttl=1.0)}, insecure=True)
    res = rules.resolve("ns:1")
    assert rules.can_subscribe_without_token(res, "")
    assert rules.can_publish(res, "", False)
    assert rules.check_presence("ns:1", "", False).namespace == "ns"
    assert rules.check_history("ns:1", "", False).namespace == "ns"


# ---- publish / presence / history ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["publish", "presence", "history"])
@pytest.mark.parametrize(("for_client", "for_subscriber", "for_anonymous", "user", "subscribed", "allowed"), [
    (False, False, False, "u", True, False),
    (True, False, False, "u", False, True),
    (True, False, False, "", False, False),
    (True, False, True, "", False, True),
    (False, True, False, "u", False, False),
    (False, True, False, "u", True, True),
    (False, True, False, "", True, False),
    (False, True, True, "", True, True),
    (False, False, True, "", True, False),
])
def test_permission_matrix(kind: str, for_client: bool, for_subscriber: bool, for_anonymous: bool,
                           user: str, subscribed: bool, allowed: bool) -> None:
    opts = ChannelOptions(**{f"allow_{kind}_for_client": for_client,
                             f"allow_{kind}_for_subscriber": for_subscriber,
                             f"allow_{kind}_for_anonymous": for_anonymous},
                          presence=True, history_size=5, history_ttl=5.0)
    rules = ChannelRules(namespaces={"ns": opts})
    res = rules.resolve("ns:1")
    assert getattr(rules, f"can_{kind}")(res, user, subscribed) is allowed
    check = getattr(rules, f"check_{kind}")
    if allowed:
        assert check("ns:1", user, subscribed) == res
    else:
        assert code_of(check, "ns:1", user, subscribed) == 103


def test_presence_and_history_not_available_is_108() -> None:
    rules = ChannelRules(namespaces={
        "np": ChannelOptions(allow_presence_for_client=True, allow_history_for_client=True),
        # History needs both a size and a ttl.
        "half": ChannelOptions(history_size=10, allow_history_for_client=True),
    })
    assert code_of(rules.check_presence, "np:1", "u", True) == 108
    assert code_of(rules.check_history, "np:1", "u", True) == 108
    assert code_of(rules.check_history, "half:1", "u", True) == 108
    assert not rules.namespaces["half"].history_enabled
    # 108 before 103: availability is checked first, as in Centrifugo.
    assert code_of(ChannelRules().check_presence, "x", "", False) == 108
    assert code_of(ChannelRules().check_history, "x", "", False) == 108


def test_checks_resolve_first() -> None:
    for check in (RULES.check_presence, RULES.check_history, RULES.check_publish):
        assert code_of(check, "nope:1", "u", True) == 102
        assert code_of(check, "café", "u", True) == 107


# ---- configuration validation --------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "", "has space", "ns:x", "ns#", "имя", "a/b"])
def test_bad_namespace_names(name: str) -> None:
    with pytest.raises(ValueError, match="namespace name"):
        ChannelRules(namespaces={name: ChannelOptions()})


@pytest.mark.parametrize("name", ["ab", "a.b", "A-B_9", "..", "--"])
def test_good_namespace_names(name: str) -> None:
    assert name in ChannelRules(namespaces={name: ChannelOptions()}).namespaces


@pytest.mark.parametrize("opts", [
    {"history_size": -1}, {"history_ttl": -1.0}, {"force_recovery_mode": "memory"},
    {"channel_regex": "("},
])
def test_bad_channel_options(opts: dict[str, object]) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError)):
        msgspec.convert(opts, ChannelOptions)


def test_channel_options_reject_unknown_keys() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `presense`"):
        msgspec.convert({"presense": True}, ChannelOptions)


def test_bad_max_length() -> None:
    with pytest.raises(ValueError, match="max_length"):
        ChannelRules(max_length=0)


def test_history_enabled_needs_size_and_ttl() -> None:
    assert ChannelOptions(history_size=1, history_ttl=0.5).history_enabled
    assert not ChannelOptions(history_size=0, history_ttl=10.0).history_enabled
    assert not ChannelOptions(history_size=10, history_ttl=0.0).history_enabled
