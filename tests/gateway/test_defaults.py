"""The documented config file and the embedded defaults must say the same thing."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import msgspec

from centrifugo_bridge.channels import ChannelNaming, ChannelOptions, ChannelRules
from centrifugo_bridge.session import ClientOptions, SessionConfig
from gateway.cli import DEFAULT_CONFIG
from gateway.config import (
    DURATION_KEYS,
    ChannelSettings,
    ClientSettings,
    Settings,
    load_settings,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]


def test_documented_config_equals_embedded_defaults() -> None:
    documented, _ = load_settings(ROOT / "config" / "sentchat.toml", environ={})
    embedded, _ = load_settings(DEFAULT_CONFIG, environ={})
    assert documented == embedded


def test_default_namespaces_resolve() -> None:
    settings, _ = load_settings(DEFAULT_CONFIG, environ={})
    rules = settings.channel_rules()
    assert rules.resolve("chat:general").options.history_enabled
    assert rules.resolve("dm:#alice,bob").user_limited
    assert not rules.resolve("personal:#alice").options.allow_subscribe_for_client


# ---- one source for every default ----------------------------------------------------------
# The engine's defaults live in code (the settings structs, which inherit the bridge's
# ClientOptions / ChannelNaming / ChannelOptions); gateway/defaults.toml holds only what the
# product changes on top; config/sentchat.toml documents every key with its value.


def _leaves(table: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) and value:  # an empty table is a value ({} of a mapping)
            out.extend(_leaves(value, (*path, key)))
        else:
            out.append(((*path, key), value))
    return out


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        data = {part: data}
    return data


def _value(path: tuple[str, ...], value: Any) -> Any:
    return parse_duration(value, ".".join(path)) if path[-1] in DURATION_KEYS else value


def test_embedded_defaults_repeat_no_engine_default() -> None:
    data = tomllib.loads(DEFAULT_CONFIG.read_text())
    namespaces = data.get("channel", {}).pop("namespaces", [])
    repeated = []
    for path, value in _leaves(data):
        default: Any = Settings()
        for part in path:
            default = getattr(default, part)
        if _value(path, value) == default:
            repeated.append(".".join(path))
    for i, ns in enumerate(namespaces):
        for key, value in ns.items():
            if key != "name" and _value((key,), value) == getattr(ChannelOptions(), key):
                repeated.append(f"channel.namespaces[{i}].{key}")
    assert repeated == [], "gateway/defaults.toml repeats engine defaults"


def _fields(cls: type[msgspec.Struct], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    hints = typing.get_type_hints(cls)
    for name in cls.__struct_fields__:
        kind = hints[name]
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            out.extend(_fields(kind, (*path, name)))
        else:
            out.append((*path, name))
    return out


def test_documented_config_names_every_key() -> None:
    text = (ROOT / "config" / "sentchat.toml").read_text()
    written = {path for path, _ in _leaves(tomllib.loads(text))}
    # The optional subscription key set and the namespace options are documented in comments
    # (a table written out would change the settings); the options list is checked below.
    missing = [".".join(p) for p in _fields(Settings)
               if p not in written and p[:2] not in {("client", "subscription_token"),
                                                     ("channel", "without_namespace")}
               and p != ("channel", "namespaces")]
    assert missing == []
    options = set(re.findall(r"[a-z_]+", text))
    assert [o for o in ChannelOptions.__struct_fields__ if o not in options] == []


def test_defaults_have_one_declaration() -> None:
    # The settings sections inherit the bridge's structs instead of restating their fields.
    assert set(ClientOptions.__struct_fields__) <= set(ClientSettings.__struct_fields__)
    assert set(ChannelNaming.__struct_fields__) <= set(ChannelSettings.__struct_fields__)
    assert issubclass(ClientSettings, ClientOptions) and issubclass(ChannelSettings, ChannelNaming)
    settings = Settings()
    assert settings.session_config("v") == SessionConfig(version="v")
    assert settings.channel_rules() == ChannelRules()
