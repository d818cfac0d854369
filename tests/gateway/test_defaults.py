"""The documented config file and the embedded defaults must say the same thing."""

from __future__ import annotations

from pathlib import Path

from gateway.cli import DEFAULT_CONFIG
from gateway.config import load_settings

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
