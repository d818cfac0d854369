"""Field encryption at rest: AES-256-GCM with key ids, so keys can rotate.

Stored format (bytes, e.g. a ``bytea`` column)::

    version (1 byte, 0x01) | key id length (1 byte) | key id (ASCII) | nonce (12 bytes)
    | ciphertext + 16-byte GCM tag

The GCM associated data is the header (version, key id) followed by the caller's ``aad``
(e.g. ``"users.email:alice"``): a value copied to another row or field, or relabelled with
another key id, fails to decrypt instead of reading as someone else's data.

Nonces are 96 random bits per encryption; NIST's limit for random GCM nonces (2^32
encryptions per key) is far above what a chat deployment's sensitive fields reach, and
rotation resets the count anyway.

``cryptography`` is imported when a cipher is built, not with this module, so importing it
costs the gateway nothing while no field is encrypted.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Any

VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""Key ids: short and plain, so they survive TOML keys and environment variables."""


class CryptoError(ValueError):
    """A key or a stored value is unusable; the message says which and why."""


class UnknownKeyError(CryptoError):
    """The value was encrypted under a key id this cipher does not have."""


class DecryptionError(CryptoError):
    """The value was changed, belongs to another aad, or the key is wrong."""


def decode_key(text: str) -> bytes:
    """A 32-byte key from base64 (standard or URL-safe alphabet); CryptoError otherwise."""
    cleaned = text.strip()
    for altchars in (None, b"-_"):
        try:
            key = base64.b64decode(cleaned, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_SIZE:
            return key
        raise CryptoError(f"must be {KEY_SIZE} bytes base64 (got {len(key)} bytes)")
    raise CryptoError(f"must be {KEY_SIZE} bytes base64 (not valid base64)")


def generate_key() -> str:
    """A new random key, base64 (standard alphabet), for config files or secrets.json."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


class FieldCipher:
    """Encrypts with the ``current`` key; decrypts with any key of ``keys``.

    Rotation: add the new key, make it ``current``, keep the old ones until every stored
    value has been rewritten (``needs_rotation`` / ``reencrypt``), then remove them."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if not keys:
            raise CryptoError("no encryption key given")
        # Key id -> AESGCM, built on first use: `cryptography` maps ~10 MB of native code,
        # which an idle gateway that never touches an encrypted field does not pay for.
        self._keys: dict[str, bytes] = {}
        self._aead: dict[str, Any] = {}
        self._headers: dict[str, bytes] = {}
        for key_id, key in keys.items():
            if not KEY_ID.match(key_id):
                raise CryptoError(f"key id {key_id!r}: use 1-64 letters, digits, '_', '.', '-'")
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
                raise CryptoError(f"key {key_id!r}: must be {KEY_SIZE} bytes (AES-256), got {size}")
            self._keys[key_id] = bytes(key)
            self._headers[key_id] = bytes([VERSION, len(key_id)]) + key_id.encode("ascii")
        if current not in self._keys:
            raise CryptoError(f"current key id {current!r} is not among the keys "
                              f"({', '.join(sorted(self._keys))})")
        self.current = current

    @classmethod
    def from_base64(cls, keys: Mapping[str, str], current: str) -> FieldCipher:
        """Build from configuration: key id -> base64 key (``[chat] encryption_keys``)."""
        decoded = {}
        for key_id, text in keys.items():
            try:
                decoded[key_id] = decode_key(text)
            except CryptoError as exc:
                raise CryptoError(f"key {key_id!r}: {exc}") from None
        return cls(decoded, current)

    @classmethod
    def from_settings(cls, chat: Any) -> FieldCipher:
        """Build from ``gateway.config.ChatSettings`` (``encryption_keys``,
        ``encryption_key_id``); typed loosely so storage does not import the gateway.
        `sentchat serve` fills in a generated key when none is configured
        (gateway.cli.ensure_chat_key); a Node started otherwise must be given one."""
        if not chat.encryption_keys:
            raise CryptoError("no chat encryption key configured (chat.encryption_keys and "
                              "chat.encryption_key_id)")
        return cls.from_base64(chat.encryption_keys, chat.encryption_key_id)

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of every key this cipher can decrypt with."""
        return frozenset(self._keys)

    def _cipher(self, key_id: str) -> Any:
        aead = self._aead.get(key_id)
        if aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            aead = self._aead[key_id] = AESGCM(self._keys[key_id])
        return aead

    def encrypt(self, plaintext: str, *, aad: str) -> bytes:
        """``plaintext`` encrypted under the current key, bound to ``aad``."""
        header = self._headers[self.current]
        nonce = os.urandom(NONCE_SIZE)
        sealed: bytes = self._cipher(self.current).encrypt(nonce, plaintext.encode(), header + aad.encode())
        return header + nonce + sealed

    def decrypt(self, blob: bytes, *, aad: str) -> str:
        """The plaintext of ``blob``, which must have been encrypted with the same ``aad``.

        Raises UnknownKeyError (key id not configured — was an old key removed too early?)
        or DecryptionError (malformed, changed, other aad)."""
        from cryptography.exceptions import InvalidTag

        key_id, header_len = self._parse_header(blob)
        blob = bytes(blob)  # asyncpg may hand back memoryview-like buffers
        if len(blob) < header_len + NONCE_SIZE + TAG_SIZE:
            raise DecryptionError("encrypted value is truncated")
        if key_id not in self._keys:
            raise UnknownKeyError(f"encrypted with key id {key_id!r}, which is not configured "
                                  f"(known: {', '.join(sorted(self._keys))})")
        aead = self._cipher(key_id)
        nonce = blob[header_len:header_len + NONCE_SIZE]
        try:
            plain: bytes = aead.decrypt(nonce, blob[header_len + NONCE_SIZE:],
                                 blob[:header_len] + aad.encode())
        except InvalidTag:
            raise DecryptionError(f"encrypted value does not authenticate under key {key_id!r} "
                                  "(changed, wrong key, or not stored for this aad)") from None
        return plain.decode()

    def key_id_of(self, blob: bytes) -> str:
        """The key id a stored value was encrypted under."""
        return self._parse_header(blob)[0]

    def needs_rotation(self, blob: bytes) -> bool:
        """Whether ``blob`` is under a key other than the current one."""
        return self.key_id_of(blob) != self.current

    def reencrypt(self, blob: bytes, *, aad: str) -> bytes:
        """``blob`` under the current key (itself when it already is)."""
        if not self.needs_rotation(blob):
            return blob
        return self.encrypt(self.decrypt(blob, aad=aad), aad=aad)

    @staticmethod
    def _parse_header(blob: bytes) -> tuple[str, int]:
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise DecryptionError(f"encrypted value must be bytes, not {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) < 2:
            raise DecryptionError("encrypted value is truncated")
        if blob[0] != VERSION:
            raise DecryptionError(f"unknown encrypted value format version {blob[0]}")
        end = 2 + blob[1]
        if blob[1] == 0 or len(blob) < end:
            raise DecryptionError("encrypted value has a malformed key id")
        try:
            key_id = blob[2:end].decode("ascii")
        except UnicodeDecodeError:
            raise DecryptionError("encrypted value has a malformed key id") from None
        return key_id, end
