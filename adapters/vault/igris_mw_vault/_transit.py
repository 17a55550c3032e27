"""``CryptoProvider`` on Vault / OpenBao Transit, with a derived key.

The key is created with ``derived=true``, so Transit derives a per-record
key from the ``context`` we send: the record binding (``associated_data``).
An envelope copied to another record, or opened with another binding,
fails authentication inside Vault.

Envelope format (binary, so that every bit of it is authenticated: Vault's
text form ``vault:vN:<base64>`` has slack bits in its last base64 character
and would let a flipped bit through)::

    0x56 'V' | name_len (1) | key name | key version (4, big endian) | Transit ciphertext bytes

The key name travels so that an envelope of another Transit key is refused
locally as ``UnknownKeyId('<key>:v<N>')``. ``context`` is ``0x00 | ad`` when
``ad`` is at most 1 KiB, else ``0x01 | SHA-256(ad)``: never empty (Transit
refuses an empty context for a derived key) and never ambiguous.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import httpx

from igris_mw.crypto import AuditKey, derive_audit_key
from igris_mw.errors import CryptoUnavailable, InvalidCiphertext, UnknownKeyId

from ._client import VaultClient, errors_text, json_of
from ._config import Credentials, parse_transit_url

__all__ = ["TransitProvider"]

VERSION = 0x56
_CT_RE = re.compile(r"^vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})\Z")
_MAX_RAW_CONTEXT = 1024
_KEY_MISSING = "encryption key not found"
# What Transit MACs to derive the audit chain key (see docs/audit.md).
_AUDIT_LABEL = b"igris-mw/audit-chain/v1"


def _need_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _context(ad: bytes) -> str:
    raw = b"\x00" + ad if len(ad) <= _MAX_RAW_CONTEXT else b"\x01" + hashlib.sha256(ad).digest()
    return base64.b64encode(raw).decode()


class TransitProvider:
    """Seals credentials with a derived Transit key.

    Build it with ``from_url``; ``await open()`` (optional: every operation
    does it once) checks that the key exists and is derived.
    """

    name = "vault-transit"

    def __init__(self, client: VaultClient, mount: str, key: str) -> None:
        self._client = client
        self.mount = mount
        self.key = key
        self._latest: int | None = None
        self._checked = False
        self._audit_keys: dict[int, AuditKey] = {}

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> TransitProvider:
        """``vault-transit://host:port/<transit mount>/<key>[?tls=false&namespace=ns]``.

        Raises:
            ConfigurationError: a malformed URL, credentials in it, no Vault
                credentials in the environment.
        """
        env = os.environ if environ is None else environ
        endpoint, mount, key, where = parse_transit_url(url, env)
        credentials = Credentials.from_environ(env, where)
        client = VaultClient(endpoint, credentials, unavailable=CryptoUnavailable, where=where)
        return cls(client, mount, key)

    def __repr__(self) -> str:
        return f"TransitProvider({self._client.where!r}, key={self.key!r})"

    @property
    def primary_key_id(self) -> str:
        """``<key>:v<latest version>`` as last seen (``<key>:latest`` before any call)."""
        return f"{self.key}:v{self._latest}" if self._latest else f"{self.key}:latest"

    def key_id_of(self, envelope: bytes) -> str | None:
        parsed = _parse(envelope) if isinstance(envelope, bytes) else None
        return None if parsed is None else f"{parsed[0]}:v{parsed[1]}"

    # -- key checks and rotation ------------------------------------------------
    async def open(self) -> None:
        """Check the key: it exists and is derived; learn its latest version.

        Raises:
            CryptoUnavailable: unreachable, sealed, token refused, or the key
                missing / not derived (code ``vault_transit_key_invalid``).
        """
        response = await self._client.request("GET", f"{self.mount}/keys/{self.key}")
        if response.status_code in (400, 404):
            self._bad_key(
                f"Transit key {self.key!r} does not exist at mount {self.mount!r} "
                f"(create it: bao write -f {self.mount}/keys/{self.key} derived=true)"
            )
        self._check(response)
        data = json_of(response).get("data") or {}
        if not data.get("derived"):
            self._bad_key(
                f"Transit key {self.key!r} is not derived; igris-mw binds each credential "
                "to its record through the key derivation context (create it with derived=true)"
            )
        self._latest = int(data.get("latest_version") or 1)
        self._checked = True

    def _bad_key(self, message: str) -> NoReturn:
        self._checked = False
        raise CryptoUnavailable(
            f"{self._client.where}: {message}", code="vault_transit_key_invalid", retry_after=None
        )

    async def rotate(self) -> str:
        """Rotate the Transit key; returns the new ``primary_key_id``."""
        response = await self._client.request("POST", f"{self.mount}/keys/{self.key}/rotate", {})
        self._check(response)
        await self.open()
        return self.primary_key_id

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise CryptoUnavailable(
                f"{self._client.where}: Vault refused the Transit request: {errors_text(response)}",
                code="vault_error",
            )

    # -- the operations ---------------------------------------------------------
    async def _call(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self._checked:
            await self.open()
        response = await self._client.request("POST", f"{self.mount}/{op}/{self.key}", body)
        if response.status_code == 400:
            text = errors_text(response)
            if _KEY_MISSING in text:
                self._bad_key(f"Transit key {self.key!r} does not exist at mount {self.mount!r}")
            if op == "encrypt":
                self._check(response)
            # Every other 400 on decrypt/rewrap is the envelope or its binding.
            raise InvalidCiphertext(f"the Transit envelope cannot be opened ({text})")
        self._check(response)
        return json_of(response).get("data") or {}

    def _seal(self, data: Mapping[str, Any]) -> bytes:
        text = data.get("ciphertext")
        match = _CT_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise CryptoUnavailable(
                f"{self._client.where}: Transit returned an unexpected ciphertext form",
                code="vault_error",
            )
        version = int(match.group(1))
        self._latest = max(self._latest or 0, version)
        name = self.key.encode()
        raw = base64.b64decode(match.group(2))
        return bytes([VERSION, len(name)]) + name + version.to_bytes(4, "big") + raw

    def _vault_text(self, envelope: bytes) -> str:
        parsed = _parse(envelope)
        if parsed is None:
            raise InvalidCiphertext("not a Transit envelope of igris-mw")
        name, version, raw = parsed
        if name != self.key:
            raise UnknownKeyId(f"{name}:v{version}")
        return f"vault:v{version}:{base64.b64encode(raw).decode()}"

    async def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        plaintext = _need_bytes(plaintext, "plaintext")
        ad = _need_bytes(associated_data, "associated_data")
        data = await self._call(
            "encrypt",
            {"plaintext": base64.b64encode(plaintext).decode(), "context": _context(ad)},
        )
        return self._seal(data)

    async def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        envelope = _need_bytes(envelope, "envelope")
        ad = _need_bytes(associated_data, "associated_data")
        text = self._vault_text(envelope)
        data = await self._call("decrypt", {"ciphertext": text, "context": _context(ad)})
        try:
            return base64.b64decode(data.get("plaintext") or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CryptoUnavailable(
                f"{self._client.where}: Transit returned a malformed plaintext", code="vault_error"
            ) from exc

    async def rewrap(self, envelope: bytes, associated_data: bytes) -> bytes:
        envelope = _need_bytes(envelope, "envelope")
        ad = _need_bytes(associated_data, "associated_data")
        text = self._vault_text(envelope)
        data = await self._call("rewrap", {"ciphertext": text, "context": _context(ad)})
        return self._seal(data)

    async def audit_key(self, key_id: str | None = None) -> AuditKey:
        """The audit chain key, derived in Transit: its HMAC (``/hmac/<key>``,
        at the latest or the named key version) of a fixed label, through
        HKDF. The key never leaves Vault; the derived one is kept per version.

        Raises:
            UnknownKeyId: ``key_id`` is not ``transit:<this key>:v<N>`` of an existing version.
        """
        if not self._checked:
            await self.open()
        if key_id is None:
            version = self._latest or 1
        else:
            prefix = f"transit:{self.key}:v"
            tail = key_id[len(prefix) :] if key_id.startswith(prefix) else ""
            if not (tail.isascii() and tail.isdigit()):
                raise UnknownKeyId(f"audit key {key_id!r} is not of Transit key {self.key!r}")
            version = int(tail)
        cached = self._audit_keys.get(version)
        if cached is not None:
            return cached
        body = {"input": base64.b64encode(_AUDIT_LABEL).decode(), "key_version": version}
        try:
            data = await self._call("hmac", body)
        except InvalidCiphertext:
            raise UnknownKeyId(
                f"audit key {key_id!r}: Transit key {self.key!r} has no version {version}"
            ) from None
        mac = data.get("hmac")
        if not isinstance(mac, str):
            raise CryptoUnavailable(f"{self._client.where}: Transit answered no hmac")
        key = derive_audit_key(f"transit:{self.key}:v{version}", mac.encode())
        self._audit_keys[version] = key
        return key

    async def aclose(self) -> None:
        await self._client.aclose()
        self._checked = False


def _parse(envelope: bytes) -> tuple[str, int, bytes] | None:
    """(key name, key version, Transit ciphertext bytes), or ``None`` if malformed."""
    if len(envelope) < 2 or envelope[0] != VERSION:
        return None
    end = 2 + envelope[1]
    # Transit's AES-GCM output is at least a 12-byte nonce and a 16-byte tag.
    if envelope[1] == 0 or len(envelope) < end + 4 + 28:
        return None
    try:
        name = envelope[2:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        return None
    version = int.from_bytes(envelope[end : end + 4], "big")
    if version == 0:
        return None
    return name, version, envelope[end + 4 :]
