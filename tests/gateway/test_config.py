"""Settings: TOML file, SENTCHAT_* environment, Centrifugo v6 JSON import, and refusal of bad
configuration with a message that names the key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    ConfigError,
    Settings,
    build_settings,
    import_centrifugo,
    load_settings,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_settings(data)
    return str(info.value)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- defaults and shipped files -----------------------------------------------------------


def test_empty_config_is_the_defaults() -> None:
    s = build_settings({})
    assert s == Settings()
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8000)
    assert s.client.ping_interval == 25.0 and s.client.pong_timeout == 8.0
    assert s.client.channel_limit == 128 and s.channel.private_prefix == "$"
    cfg = s.session_config("1.2.3")
    assert cfg.version == "1.2.3" and cfg.ping_interval == 25.0 and cfg.user_id_claim == "sub"
    assert s.channel_rules().namespaces == {}


def test_embedded_defaults_load() -> None:
    settings, warnings = load_settings(ROOT / "gateway" / "defaults.toml", environ={})
    assert warnings == []
    assert {ns.name for ns in settings.channel.namespaces} >= {"chat", "dm", "personal"}
    assert settings.channel.without_namespace.history_ttl == 300.0


def test_documented_config_file_loads() -> None:
    path = ROOT / "config" / "sentchat.toml"
    if not path.exists():
        pytest.skip("config/sentchat.toml not written yet")
    settings, warnings = load_settings(path, environ={})
    assert warnings == []
    rules = settings.channel_rules()
    assert "chat" in rules.namespaces
    # "a test keeps the two in agreement": the documented file runs on the embedded defaults.
    defaults, _ = load_settings(ROOT / "gateway" / "defaults.toml", environ={})
    assert settings == defaults


# ---- refusal names the key ------------------------------------------------------------------


@pytest.mark.parametrize(("data", "key"), [
    ({"htp": {}}, "htp"),
    ({"http": {"prot": 1}}, "http.prot"),
    ({"client": {"token": {"hmac_secret": "x"}}}, "client.token.hmac_secret"),
    ({"channel": {"without_namespace": {"presense": True}}}, "channel.without_namespace.presense"),
    ({"channel": {"namespaces": [{"name": "ab"}, {"name": "cd", "history_sise": 1}]}},
     "channel.namespaces[1].history_sise"),
])
def test_unknown_key_is_named(data: dict[str, Any], key: str) -> None:
    assert refused(data) == f"config key {key}: unknown key"


@pytest.mark.parametrize(("data", "key"), [
    ({"http": {"port": "eighty"}}, "http.port"),
    ({"http": "x"}, "http"),
    ({"client": {"channel_limit": 1.5}}, "client.channel_limit"),
    ({"client": {"allowed_origins": "*"}}, "client.allowed_origins"),
    ({"client": {"allow_anonymous_connect_without_token": "yes"}},
     "client.allow_anonymous_connect_without_token"),
    ({"channel": {"namespaces": [{"name": "ab", "presence": "on"}]}}, "channel.namespaces[0].presence"),
    ({"channel": {"namespaces": {"name": "ab"}}}, "channel.namespaces"),
    ({"client": {"ping_interval": "fast"}}, "client.ping_interval"),
    ({"client": {"pong_timeout": True}}, "client.pong_timeout"),
    ({"channel": {"namespaces": [{"name": "ab", "history_ttl": "-5s"}]}},
     "channel.namespaces[0].history_ttl"),
])
def test_wrong_type_is_named(data: dict[str, Any], key: str) -> None:
    message = refused(data)
    assert message.startswith(f"config key {key}:"), message


def test_invalid_option_value_is_named() -> None:
    message = refused({"channel": {"namespaces": [{"name": "ab", "force_recovery_mode": "fast"}]}})
    assert "channel.namespaces[0]" in message and "force_recovery_mode" in message
    assert "channel_regex" in refused({"channel": {"without_namespace": {"channel_regex": "("}}})


def test_duplicate_namespace() -> None:
    message = refused({"channel": {"namespaces": [{"name": "chat"}, {"name": "dm"}, {"name": "chat"}]}})
    assert message.startswith("config key channel.namespaces[2].name:") and "duplicate" in message


@pytest.mark.parametrize("name", ["a", "has space", "ns:x", "ünï"])
def test_bad_namespace_name(name: str) -> None:
    message = refused({"channel": {"namespaces": [{"name": name}]}})
    assert message.startswith("config key channel.namespaces") and repr(name) in message


def test_missing_namespace_name() -> None:
    assert refused({"channel": {"namespaces": [{"presence": True}]}}) == \
        "config key channel.namespaces[0].name: required"


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_range(port: int) -> None:
    assert refused({"http": {"port": port}}).startswith("config key http.port:")


def test_workers_must_be_positive() -> None:
    assert refused({"node": {"workers": 0}}).startswith("config key node.workers:")


# ---- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("500ms", 0.5), ("25s", 25.0), ("1m30s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0),
    ("1h30m15s", 5415.0), ("1.5s", 1.5), ("300s", 300.0), (" 25s ", 25.0), ("25", 25.0), ("0", 0.0),
    (25, 25.0), (2.5, 2.5), (0, 0.0),
])
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["fast", "-1s", "1x", "s", "", "1h1", "1 m 2 s", True, None, [], -3])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^config key a\.b:"):
        parse_duration(value, "a.b")


def test_durations_in_a_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "s.toml", """
[client]
ping_interval = "500ms"
pong_timeout = 3
stale_close_delay = "1m30s"
expired_close_delay = 2.5

[client.token]
jwks_cache_ttl = "1h"

[[channel.namespaces]]
name = "chat"
history_size = 10
history_ttl = "24h"
retention = "7d"
""")
    s, _ = load_settings(path, environ={})
    c = s.client
    assert (c.ping_interval, c.pong_timeout, c.stale_close_delay, c.expired_close_delay) == (0.5, 3.0, 90.0, 2.5)
    assert c.token.jwks_cache_ttl == 3600.0
    ns = s.channel_rules().namespaces["chat"]
    assert ns.history_ttl == 86400.0 and ns.retention == 604800.0 and ns.history_enabled


# ---- files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "bad.toml", "[http\nport = 1"), environ={})


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "s.toml", "[http]\nport = 9100\n")
    s, _ = load_settings(environ={"SENTCHAT_CONFIG": str(path)})
    assert s.http.port == 9100


# ---- environment --------------------------------------------------------------------------------


def test_fixed_environment_variables() -> None:
    s, _ = load_settings(environ={
        "SENTCHAT_TOKEN_HMAC_SECRET": "123456",
        "SENTCHAT_API_KEY": "0042",
        "SENTCHAT_HTTP_PORT": "9001",
        "SENTCHAT_HTTP_HOST": "0.0.0.0",  # noqa: S104
        "SENTCHAT_WORKERS": "2",
        "PATH": "/usr/bin", "SENTCHAT_UNRELATED": "ignored",
    })
    # Secrets stay strings even when they look like numbers.
    assert s.client.token.hmac_secret_key == "123456"
    assert s.http_api.key == "0042"
    assert s.http.port == 9001 and s.http.host == "0.0.0.0"  # noqa: S104
    assert s.node.workers == 2


def test_bad_port_from_environment_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^config key http\.port:"):
        load_settings(environ={"SENTCHAT_HTTP_PORT": "eighty"})


@pytest.mark.parametrize(("value", "seconds"), [("10s", 10.0), ("7", 7.0), ("1.5", 1.5), ("1m30s", 90.0)])
def test_generic_environment_duration(value: str, seconds: float) -> None:
    s, _ = load_settings(environ={"SENTCHAT_CLIENT__PING_INTERVAL": value})
    assert s.client.ping_interval == seconds


def test_generic_environment_values() -> None:
    s, _ = load_settings(environ={
        "SENTCHAT_CLIENT__ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN": "true",
        "SENTCHAT_CLIENT__CHANNEL_LIMIT": "16",
        "SENTCHAT_CLIENT__TOKEN__AUDIENCE": "my-app",
        "SENTCHAT_CLIENT__ALLOWED_ORIGINS": '["https://a.example", "https://b.example"]',
        "SENTCHAT_CHANNEL__WITHOUT_NAMESPACE__PRESENCE": "true",
    })
    assert s.client.allow_anonymous_connect_without_token is True
    assert s.client.channel_limit == 16
    assert s.client.token.audience == "my-app"
    assert s.client.allowed_origins == ["https://a.example", "https://b.example"]
    assert s.channel.without_namespace.presence is True


def test_generic_environment_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^config key client\.ping_intervall: unknown key"):
        load_settings(environ={"SENTCHAT_CLIENT__PING_INTERVALL": "10s"})


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "s.toml", '[http]\nport = 9100\nhost = "10.0.0.1"\n[client]\nping_interval = "5s"\n')
    s, _ = load_settings(path, environ={"SENTCHAT_HTTP_PORT": "9200"})
    assert (s.http.port, s.http.host, s.client.ping_interval) == (9200, "10.0.0.1", 5.0)
    s, _ = load_settings(path, environ={"SENTCHAT_HTTP_PORT": "9200"}, overrides={("http", "port"): 9300})
    assert s.http.port == 9300


def test_environment_does_not_clobber_sibling_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "s.toml", '[client.token]\nissuer = "me"\n')
    s, _ = load_settings(path, environ={"SENTCHAT_TOKEN_HMAC_SECRET": "k"})
    assert s.client.token.issuer == "me" and s.client.token.hmac_secret_key == "k"


# ---- Centrifugo v6 import ---------------------------------------------------------------------


CENTRIFUGO_V6: dict[str, Any] = {
    "log_level": "debug",
    "engine": {"type": "redis", "redis": {"address": "redis://localhost:6379"}},
    "http_server": {"port": 8100, "address": "0.0.0.0"},  # noqa: S104
    "client": {
        "token": {"hmac_secret_key": "s3cret", "hmac_previous_secret_key": "old", "audience": "",
                  "issuer": "auth.example", "user_id_claim": "uid", "audience_regex": ""},
        "subscription_token": {"enabled": True, "hmac_secret_key": "sub-secret"},
        "allowed_origins": ["https://app.example"],
        "allow_anonymous_connect_without_token": True,
        "subscribe_to_user_personal_channel": {"enabled": True, "personal_channel_namespace": "personal",
                                               "single_connection": True},
        "ping_interval": "20s",
        "pong_timeout": "5s",
        "expired_close_delay": "1m",
        "channel_limit": 64,
        "concurrency": 8,
        "proxy": {"connect": {"enabled": False, "endpoint": ""}},
    },
    "http_api": {"key": "api-key", "handler_prefix": "/api", "error_mode": "transport"},
    "channel": {
        "private_prefix": "!",
        "max_length": 128,
        "publication_data_format": "",
        "without_namespace": {"presence": True, "allow_subscribe_for_client": True,
                              "allowed_delta_types": ["fossil"]},
        "namespaces": [
            {"name": "chat", "presence": True, "join_leave": True, "force_push_join_leave": True,
             "history_size": 100, "history_ttl": "300s", "history_meta_ttl": "720h",
             "force_recovery": True, "force_positioning": True, "allow_subscribe_for_client": True,
             "allow_publish_for_subscriber": True, "allow_history_for_subscriber": True,
             "allow_presence_for_subscriber": True, "force_recovery_mode": "stream"},
            {"name": "dm.private", "allow_user_limited_channels": True, "channel_regex": "^[a-z#,]+$",
             "subscribe_proxy_enabled": True, "publication_data_format": "json_object"},
        ],
    },
}


def test_centrifugo_import(tmp_path: Path) -> None:
    path = write(tmp_path, "config.json", json.dumps(CENTRIFUGO_V6))
    s, warnings = load_settings(centrifugo=str(path), environ={})
    tok = s.client.token
    assert (tok.hmac_secret_key, tok.issuer, tok.user_id_claim, tok.audience) == \
        ("s3cret", "auth.example", "uid", "")
    assert s.client.subscription_token is not None
    assert s.client.subscription_token.hmac_secret_key == "sub-secret"
    assert s.client.allowed_origins == ["https://app.example"]
    assert s.client.allow_anonymous_connect_without_token is True
    assert s.client.subscribe_to_user_personal_channel is True
    assert s.client.personal_channel_namespace == "personal"
    assert (s.client.ping_interval, s.client.pong_timeout, s.client.expired_close_delay) == (20.0, 5.0, 60.0)
    assert s.client.channel_limit == 64
    assert s.http_api.key == "api-key"
    assert (s.http.port, s.http.host) == (8100, "0.0.0.0")  # noqa: S104
    rules = s.channel_rules()
    assert rules.private_prefix == "!" and rules.max_length == 128
    assert rules.without_namespace.presence and rules.without_namespace.allow_subscribe_for_client
    chat = rules.namespaces["chat"]
    assert chat.history_ttl == 300.0 and chat.history_size == 100 and chat.force_recovery
    assert chat.force_push_join_leave and chat.allow_presence_for_subscriber
    dm = rules.namespaces["dm.private"]
    assert dm.allow_user_limited_channels and dm.channel_regex == "^[a-z#,]+$"
    cfg = s.session_config("x")
    assert cfg.user_id_claim == "uid" and cfg.personal_channel_namespace == "personal"

    # One warning lists every option that is set but not implemented.
    assert len(warnings) == 1
    listed = warnings[0].split("ignored: ", 1)[1].split(", ")
    assert listed == sorted(listed)
    assert set(listed) == {
        "log_level", "engine",
        "client.token.hmac_previous_secret_key",
        "client.subscribe_to_user_personal_channel.single_connection",
        "client.concurrency", "client.proxy",
        "http_api.error_mode",
        "channel.without_namespace.allowed_delta_types",
        "channel.namespaces[0].history_meta_ttl",
        "channel.namespaces[1].subscribe_proxy_enabled",
        "channel.namespaces[1].publication_data_format",
    }


def test_centrifugo_import_minimal(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"client": {"token": {"hmac_secret_key": "k"}},
                                                 "http_api": {"key": "a"}}))
    s, warnings = load_settings(centrifugo=str(path), environ={})
    assert warnings == []
    assert s.client.token.hmac_secret_key == "k" and s.http_api.key == "a"
    assert s.client.subscription_token is None


def test_centrifugo_disabled_subscription_token_is_not_used(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"client": {
        "subscription_token": {"enabled": False, "hmac_secret_key": "x"}}}))
    data, _ = import_centrifugo(str(path))
    assert build_settings(data).client.subscription_token is None


def test_centrifugo_personal_channel_flag_form(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"client": {"subscribe_to_user_personal_channel": True}}))
    s, _ = load_settings(centrifugo=str(path), environ={})
    assert s.client.subscribe_to_user_personal_channel is True


def test_centrifugo_insecure(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"client": {"insecure": True}}))
    s, _ = load_settings(centrifugo=str(path), environ={})
    assert s.channel.insecure and s.client.allow_anonymous_connect_without_token


def test_centrifugo_import_merges_over_toml_and_under_env(tmp_path: Path) -> None:
    toml_path = write(tmp_path, "s.toml", '[http]\nport = 9000\nhost = "10.1.1.1"\n')
    json_path = write(tmp_path, "c.json", json.dumps({"http_server": {"port": 8100}}))
    s, _ = load_settings(toml_path, centrifugo=str(json_path), environ={})
    assert (s.http.port, s.http.host) == (8100, "10.1.1.1")
    s, _ = load_settings(toml_path, centrifugo=str(json_path), environ={"SENTCHAT_HTTP_PORT": "8200"})
    assert s.http.port == 8200


@pytest.mark.parametrize(("doc", "match"), [
    ("[]", "top level must be an object"),
    ("{", "not valid JSON"),
    ('{"client": []}', "client: must be an object"),
    ('{"channel": {"namespaces": {}}}', "channel.namespaces: must be a list"),
    ('{"channel": {"namespaces": [{"presence": true}]}}', r"channel.namespaces\[0\].name: required"),
    ('{"client": {"token": "k"}}', "client.token: must be an object"),
])
def test_centrifugo_import_errors(tmp_path: Path, doc: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        import_centrifugo(str(write(tmp_path, "c.json", doc)))


def test_centrifugo_import_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        import_centrifugo(str(tmp_path / "none.json"))


def test_centrifugo_import_bad_option_is_named(tmp_path: Path) -> None:
    doc = {"channel": {"namespaces": [{"name": "chat", "history_ttl": "soon"}]}}
    with pytest.raises(ConfigError, match=r"channel\.namespaces\[0\]\.history_ttl"):
        load_settings(centrifugo=str(write(tmp_path, "c.json", json.dumps(doc))), environ={})


def test_defaults_toml_is_valid_toml() -> None:
    data = tomllib.loads((ROOT / "gateway" / "defaults.toml").read_text())
    assert build_settings(data).http.port == 8000


def test_write_delay_is_a_bounded_duration() -> None:
    s, _ = load_settings(environ={"SENTCHAT_CLIENT__WRITE_DELAY": "5ms"})
    assert s.client.write_delay == 0.005
    for bad in ("2s", "soon"):
        with pytest.raises(ConfigError, match=r"^config key client\.write_delay"):
            load_settings(environ={"SENTCHAT_CLIENT__WRITE_DELAY": bad})
