"""Field encryption at rest: round trip, binding to aad, tamper detection, key rotation,
configuration errors naming the key, and the generated key in secrets.json."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg
import pytest

from gateway.config import ConfigError, build_settings, load_settings
from storage.crypto import (
    CryptoError,
    DecryptionError,
    FieldCipher,
    UnknownKeyError,
    decode_key,
    generate_key,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
AAD = "users.email:alice"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_round_trip_and_random_nonce() -> None:
    cipher = FieldCipher({"k1": K1}, "k1")
    for text in ("alice@example.com", "", "ünïcødé ✓ " * 50):
        blob = cipher.encrypt(text, aad=AAD)
        assert cipher.decrypt(blob, aad=AAD) == text
        assert text.encode() not in blob or not text
    a, b = cipher.encrypt("same", aad=AAD), cipher.encrypt("same", aad=AAD)
    assert a != b  # fresh nonce each time
    # version byte, key id length, key id, then 12-byte nonce + ciphertext + 16-byte tag
    assert a[0] == 1 and a[1] == 2 and a[2:4] == b"k1"
    assert len(a) == 4 + 12 + len(b"same") + 16
    assert cipher.decrypt(memoryview(a), aad=AAD) == "same"


def test_aad_mismatch_fails() -> None:
    cipher = FieldCipher({"k1": K1}, "k1")
    blob = cipher.encrypt("alice@example.com", aad="users.email:alice")
    with pytest.raises(DecryptionError, match="does not authenticate"):
        cipher.decrypt(blob, aad="users.email:mallory")


def test_every_tampered_byte_fails() -> None:
    cipher = FieldCipher({"k1": K1}, "k1")
    blob = cipher.encrypt("alice@example.com", aad=AAD)
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(CryptoError):
            cipher.decrypt(bytes(changed), aad=AAD)
    for cut in (0, 1, 3, 4 + 12 + 15):
        with pytest.raises(DecryptionError, match="truncated|malformed"):
            cipher.decrypt(blob[:cut], aad=AAD)


def test_relabelled_key_id_fails() -> None:
    """The header is authenticated: pointing a value at another key id does not work."""
    cipher = FieldCipher({"k1": K1, "k2": K1}, "k1")
    blob = cipher.encrypt("x", aad=AAD)
    relabelled = blob[:2] + b"k2" + blob[4:]
    with pytest.raises(DecryptionError):
        cipher.decrypt(relabelled, aad=AAD)


def test_wrong_key_fails() -> None:
    blob = FieldCipher({"k1": K1}, "k1").encrypt("x", aad=AAD)
    with pytest.raises(DecryptionError):
        FieldCipher({"k1": K2}, "k1").decrypt(blob, aad=AAD)


def test_rotation() -> None:
    old = FieldCipher({"k1": K1}, "k1")
    blob = old.encrypt("alice@example.com", aad=AAD)
    assert not old.needs_rotation(blob)

    rotated = FieldCipher({"k1": K1, "k2": K2}, "k2")
    assert rotated.needs_rotation(blob) and rotated.key_id_of(blob) == "k1"
    assert rotated.decrypt(blob, aad=AAD) == "alice@example.com"
    fresh = rotated.reencrypt(blob, aad=AAD)
    assert rotated.key_id_of(fresh) == "k2" and not rotated.needs_rotation(fresh)
    assert rotated.decrypt(fresh, aad=AAD) == "alice@example.com"
    assert rotated.reencrypt(fresh, aad=AAD) is fresh

    # Once the old key is gone, old values say which key they need.
    without_old = FieldCipher({"k2": K2}, "k2")
    with pytest.raises(UnknownKeyError, match="'k1'.*not configured"):
        without_old.decrypt(blob, aad=AAD)
    assert without_old.decrypt(fresh, aad=AAD) == "alice@example.com"


@pytest.mark.parametrize(("keys", "current", "message"), [
    ({"k1": b"short"}, "k1", "key 'k1': must be 32 bytes"),
    ({"k1": K1 + b"x"}, "k1", "got 33"),
    ({"k1": "not-bytes"}, "k1", "must be 32 bytes"),
    ({"k1": K1}, "k2", "current key id 'k2' is not among the keys"),
    ({"bad id": K1}, "bad id", "key id 'bad id'"),
    ({}, "k1", "no encryption key"),
])
def test_cipher_refuses_bad_keys(keys: dict, current: str, message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        FieldCipher(keys, current)


def test_decode_key() -> None:
    assert decode_key(b64(K1)) == K1
    assert decode_key(base64.urlsafe_b64encode(K2).decode()) == K2
    assert len(decode_key(generate_key())) == 32
    with pytest.raises(CryptoError, match="got 16 bytes"):
        decode_key(b64(bytes(16)))
    with pytest.raises(CryptoError, match="not valid base64"):
        decode_key("!!!")


def test_from_settings() -> None:
    settings = build_settings({"chat": {"encryption_keys": {"k1": b64(K1), "k2": b64(K2)},
                                        "encryption_key_id": "k2"}})
    cipher = FieldCipher.from_settings(settings.chat)
    assert cipher.current == "k2" and cipher.key_ids == {"k1", "k2"}
    with pytest.raises(CryptoError, match="no chat encryption key configured"):
        FieldCipher.from_settings(build_settings({}).chat)


@pytest.mark.parametrize(("chat", "message"), [
    ({"encryption_keys": {"k1": "c2hvcnQ="}, "encryption_key_id": "k1"},
     "config key chat.encryption_keys.k1: must be 32 bytes base64"),
    ({"encryption_keys": {"k1": "%%%"}, "encryption_key_id": "k1"},
     "config key chat.encryption_keys.k1: must be 32 bytes base64"),
    ({"encryption_keys": {"k 1": b64(K1)}, "encryption_key_id": "k 1"},
     "config key chat.encryption_keys.k 1: key id"),
    ({"encryption_keys": {"k1": b64(K1)}},
     "config key chat.encryption_key_id: required"),
    ({"encryption_keys": {"k1": b64(K1)}, "encryption_key_id": "k2"},
     "config key chat.encryption_key_id: 'k2' is not a key"),
    ({"encryption_key_id": "k1"}, "config key chat.encryption_key_id: 'k1' is not a key"),
    ({"encryption_keys": {"k1": 5}, "encryption_key_id": "k1"}, "chat.encryption_keys"),
])
def test_config_validation_names_the_key(chat: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_settings({"chat": chat})
    assert message in str(info.value)


def test_keys_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[chat]\nencryption_keys = {{ k1 = "{b64(K1)}" }}\n'
                      'encryption_key_id = "k1"\n')
    settings, _ = load_settings(config, environ={})
    assert settings.chat.encryption_keys == {"k1": b64(K1)}
    # Environment: rotate to k2 while keeping k1.
    env = {"SENTCHAT_CHAT__ENCRYPTION_KEYS": f'{{ k1 = "{b64(K1)}", k2 = "{b64(K2)}" }}',
           "SENTCHAT_CHAT__ENCRYPTION_KEY_ID": "k2"}
    settings, _ = load_settings(config, environ=env)
    assert FieldCipher.from_settings(settings.chat).current == "k2"
    with pytest.raises(ConfigError, match="chat.encryption_keys.k3: must be 32 bytes"):
        load_settings(config, environ={**env, "SENTCHAT_CHAT__ENCRYPTION_KEYS__K3": "abcd"})


# ---- the generated key (no key configured) ----------------------------------------------


def test_generated_key_new_and_upgraded_secrets_file(tmp_path: Path) -> None:
    from gateway.cli import GENERATED_CHAT_KEY_ID, ensure_chat_key

    settings = build_settings({"storage": {"data_dir": str(tmp_path / "new")}})
    warning = ensure_chat_key(settings)
    assert warning is not None and "secrets.json" in warning
    key = settings.chat.encryption_keys[GENERATED_CHAT_KEY_ID]
    assert key not in warning  # the path is logged, never the key
    assert settings.chat.encryption_key_id == GENERATED_CHAT_KEY_ID
    path = tmp_path / "new" / "secrets.json"
    assert json.loads(path.read_text())["chat_encryption_key"] == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cipher = FieldCipher.from_settings(settings.chat)
    assert cipher.decrypt(cipher.encrypt("x", aad=AAD), aad=AAD) == "x"
    # Same data dir later: same key. Configured keys: left alone.
    again = build_settings({"storage": {"data_dir": str(tmp_path / "new")}})
    ensure_chat_key(again)
    assert again.chat.encryption_keys == {GENERATED_CHAT_KEY_ID: key}
    configured = build_settings({"chat": {"encryption_keys": {"k1": b64(K1)},
                                          "encryption_key_id": "k1"}})
    assert ensure_chat_key(configured) is None and configured.chat.encryption_keys == {"k1": b64(K1)}

    # A secrets.json from before chat: the key is added once, other secrets kept, even
    # with several processes starting at once.
    old = tmp_path / "old"
    old.mkdir()
    (old / "secrets.json").write_text(json.dumps({"hmac_secret_key": "h", "api_key": "a"}))
    os.chmod(old / "secrets.json", 0o600)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        s = build_settings({"storage": {"data_dir": str(old)}})
        barrier.wait()
        ensure_chat_key(s)
        results.append(s.chat.encryption_keys[GENERATED_CHAT_KEY_ID])

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
    stored = json.loads((old / "secrets.json").read_text())
    assert stored == {"hmac_secret_key": "h", "api_key": "a", "chat_encryption_key": results[0]}
    assert stat.S_IMODE((old / "secrets.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in old.iterdir()) == ["secrets.json"]


def test_import_does_not_load_cryptography() -> None:
    """The gateway imports storage.crypto (config validation) and builds its cipher at
    start without paying for `cryptography` until a value is encrypted or decrypted."""
    code = ("import sys, gateway.config, storage.crypto; "
            "c = storage.crypto.FieldCipher({'k': bytes(32)}, 'k'); "
            "print('cryptography' in sys.modules); "
            "c.decrypt(c.encrypt('x', aad='a'), aad='a'); print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    # Not even a built cipher loads it: only the first encryption or decryption does.
    assert out.stdout.split() == ["False", "True"]


async def test_encrypted_value_round_trips_through_postgres(empty_dsn: str) -> None:
    """bytea in, bytes (or a buffer) out: the stored value decrypts."""
    cipher = FieldCipher({"k1": K1}, "k1")
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute("CREATE TABLE users (id text PRIMARY KEY, email bytea)")
        await conn.execute("INSERT INTO users VALUES ($1, $2)", "alice",
                           cipher.encrypt("alice@example.com", aad="users.email:alice"))
        blob = await conn.fetchval("SELECT email FROM users WHERE id = 'alice'")
        assert cipher.decrypt(blob, aad="users.email:alice") == "alice@example.com"
    finally:
        await conn.close()
