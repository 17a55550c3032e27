"""The local keyring: AES-256-GCM envelope encryption under master keys.

Envelope format v1 (``docs/crypto.md`` has the full table)::

    0x01 | kek_id (8) | wrap_nonce (12) | wrapped_dek (32 + 16) | nonce (12) | ciphertext + tag

* a fresh 256-bit data key (DEK) per encryption seals the payload;
* the DEK is sealed ("wrapped") by a key-encryption key (KEK): a master key
  from ``IGRIS_MASTER_KEY`` / ``IGRIS_MASTER_KEY_FILE``;
* the wrap's associated data is ``0x01 | kek_id | ad`` and the payload's is
  ``0x01 | ad``: the payload does not depend on the KEK, so ``rewrap`` moves
  an envelope to a new master key by re-wrapping 32 bytes and keeping the
  payload bytes as they are.

Every failure of an envelope is ``InvalidCiphertext`` (``UnknownKeyId``
when the KEK id is well formed but not configured), as in
``cryptography.fernet``. Randomness is injectable for golden vectors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._audit.chain import AuditKey, derive_audit_key
from ._errors import ConfigurationError, InvalidCiphertext, UnknownKeyId

__all__ = ["ENV_KEY", "ENV_KEY_FILE", "Keyring", "kek_id"]

ENV_KEY = "IGRIS_MASTER_KEY"
ENV_KEY_FILE = "IGRIS_MASTER_KEY_FILE"

VERSION = 0x01
_VERSION_BYTE = bytes([VERSION])
KEY_SIZE = 32
KEK_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
_KEK_ID_LABEL = b"igris-mw kek-id v1"

# Offsets into a v1 envelope.
_KID = 1
_WRAP_NONCE = _KID + KEK_ID_SIZE  # 9
_WRAPPED = _WRAP_NONCE + NONCE_SIZE  # 21
_NONCE = _WRAPPED + KEY_SIZE + TAG_SIZE  # 69
_PAYLOAD = _NONCE + NONCE_SIZE  # 81
OVERHEAD = _PAYLOAD + TAG_SIZE  # 97: the size of an envelope of b""


def kek_id(key: bytes) -> bytes:
    """The 8-byte id of a master key: one-way, so it can travel in envelopes."""
    return hmac.new(key, _KEK_ID_LABEL, hashlib.sha256).digest()[:KEK_ID_SIZE]


def _need_bytes(value: object, what: str) -> bytes:
    # bytearray/memoryview are accepted (and copied); str is the usual misuse.
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _decode_key(text: str, where: str) -> bytes:
    """One base64 master key; the message says where it was, never what."""
    text = text.strip()
    if not text:
        raise ConfigurationError(f"{where} is empty")
    # Standard and URL-safe alphabets both accepted; nothing else is.
    normalized = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{where} is not valid base64; generate one with: "
            'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'
        ) from None
    if len(raw) != KEY_SIZE:
        raise ConfigurationError(
            f"{where} decodes to {len(raw)} bytes; a master key is exactly {KEY_SIZE} bytes"
        )
    return raw


def _parse_keys(text: str, source: str) -> list[bytes]:
    if not text.strip():
        raise ConfigurationError(f"{source} holds no master key")
    entries = text.replace("\n", ",").split(",")
    total = len(entries)
    return [_decode_key(e, f"{source} entry {i} of {total}") for i, e in enumerate(entries, 1)]


def _refuse_loose_mode(path: str | os.PathLike[str], mode: int) -> None:
    """Refuse a key file that group or others may read, as ssh refuses a
    private key: the key is as exposed as the file is."""
    if os.name == "nt" or not mode & 0o077:
        return
    raise ConfigurationError(
        f"master key file {os.fspath(path)!r} is readable by group or others "
        f"(mode {stat.S_IMODE(mode):04o}); protect it with: chmod 600 {os.fspath(path)}"
    )


def _write_exclusive(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class Keyring:
    """Local AES-256-GCM envelope encryption: the default ``CryptoProvider``.

    Args:
        keys: 32-byte master keys, newest (primary) first. New envelopes are
            sealed with the first; the others only open older envelopes.
        urandom: the source of data keys and nonces (tests inject one).

    Raises:
        ConfigurationError: no key, a key that is not 32 bytes, or the same
            key twice.
        TypeError: a key that is not bytes.
    """

    name = "keyring"
    __slots__ = ("_audit", "_keks", "_order", "_primary", "_urandom")

    def __init__(
        self, keys: Sequence[bytes], *, urandom: Callable[[int], bytes] = os.urandom
    ) -> None:
        if isinstance(keys, bytes | str):
            raise TypeError("keys must be a sequence of 32-byte keys, newest first")
        if not keys:
            raise ConfigurationError(f"no master key configured; set {ENV_KEY} or {ENV_KEY_FILE}")
        keks: dict[bytes, AESGCM] = {}
        audit: dict[str, AuditKey] = {}
        order: list[bytes] = []
        for i, key in enumerate(keys, 1):
            if not isinstance(key, bytes):
                raise TypeError(f"master key {i} must be bytes, not {type(key).__name__}")
            if len(key) != KEY_SIZE:
                raise ConfigurationError(
                    f"master key {i} of {len(keys)} is {len(key)} bytes; expected {KEY_SIZE}"
                )
            kid = kek_id(key)
            if kid in keks:
                raise ConfigurationError(f"master key {i} of {len(keys)} is configured twice")
            keks[kid] = AESGCM(key)
            # Derived once here: the raw master key is not kept.
            audit[kid.hex()] = derive_audit_key(kid.hex(), key)
            order.append(kid)
        self._audit = audit
        self._keks = keks
        self._order = tuple(order)
        self._primary = order[0]
        self._urandom = urandom

    # -- construction ----------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """From ``IGRIS_MASTER_KEY`` (comma-separated base64, newest first),
        else from the file named by ``IGRIS_MASTER_KEY_FILE``.

        Raises:
            ConfigurationError: neither is set, a key is malformed (the
                message names its position, never its value), or the key
                file cannot be read. A missing key is never generated here.
        """
        env = os.environ if environ is None else environ
        if ENV_KEY in env:
            return cls(_parse_keys(env[ENV_KEY], ENV_KEY))
        path = env.get(ENV_KEY_FILE)
        if path:
            return cls.from_key_file(path)
        raise ConfigurationError(
            f"no master key configured: set {ENV_KEY} (base64 of 32 random bytes; "
            f"several comma-separated, newest first) or {ENV_KEY_FILE} (a file holding them)"
        )

    @classmethod
    def from_key_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """From a key file: base64 keys, one per line or comma-separated,
        newest first; blank lines and ``#`` comments are ignored.

        Raises:
            ConfigurationError: the file is missing, unreadable or malformed.
        """
        where = f"{ENV_KEY_FILE} {os.fspath(path)!r}"
        try:
            raw = Path(path).read_bytes()
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ConfigurationError(f"{where} does not exist") from None
        except PermissionError:
            raise ConfigurationError(f"{where} cannot be read: permission denied") from None
        except IsADirectoryError:
            raise ConfigurationError(f"{where} is a directory, not a key file") from None
        except OSError as exc:
            raise ConfigurationError(f"{where} cannot be read: {exc.strerror}") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ConfigurationError(f"{where} is not a text file of base64 keys") from None
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        keyring = cls(_parse_keys("\n".join(lines), where))
        _refuse_loose_mode(path, mode)
        return keyring

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> Keyring:
        """The ``igris_mw.crypto`` entry point: ``keyring:`` (keys from ``environ``).

        Raises:
            ConfigurationError: a URL with more than the scheme, or no key.
        """
        if url.rstrip("/") not in ("keyring:", "keyring:/"):
            raise ConfigurationError(
                f"crypto URL {url!r} is not understood; the local keyring is just 'keyring:' "
                f"(its keys come from {ENV_KEY} or {ENV_KEY_FILE})"
            )
        return cls.from_env(environ)

    @classmethod
    def generate_key_file(
        cls, path: str | os.PathLike[str], *, urandom: Callable[[int], bytes] = os.urandom
    ) -> Keyring:
        """Create a key file holding one new random master key; return its keyring.

        The file is written in full under a temporary name (mode 0600) and
        then linked into place, so ``path`` either does not exist or holds a
        whole key; an existing file is never overwritten.

        Raises:
            FileExistsError: ``path`` exists (load it with ``from_key_file``).
            ConfigurationError: the file cannot be created.
        """
        target = Path(path)
        key = urandom(KEY_SIZE)
        data = base64.b64encode(key) + b"\n"
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
            _write_exclusive(tmp, data)
            try:
                # link() refuses to replace an existing name, unlike rename().
                os.link(tmp, target)
            except FileExistsError:
                raise
            except OSError:
                # No hard links here (some network/FUSE file systems): O_EXCL
                # still never overwrites, at the cost of a window where a
                # crash leaves a partial file (which then fails to load).
                _write_exclusive(target, data)
            finally:
                tmp.unlink(missing_ok=True)
        except FileExistsError:
            raise
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create master key file {os.fspath(target)!r}: {exc.strerror}"
            ) from None
        return cls([key], urandom=urandom)

    # -- CryptoProvider --------------------------------------------------
    @property
    def primary_key_id(self) -> str:
        """Hex id of the master key new envelopes are sealed with."""
        return self._primary.hex()

    @property
    def key_ids(self) -> list[str]:
        """Hex ids of the configured master keys, primary first."""
        return [k.hex() for k in self._order]

    async def audit_key(self, key_id: str | None = None) -> AuditKey:
        """The audit chain key (HKDF of a master key, see ``docs/audit.md``):
        the primary's, or the one named ``key_id`` (a master key's hex id).

        Raises:
            UnknownKeyId: no configured master key has that id.
        """
        found = self._audit.get(self._primary.hex() if key_id is None else key_id)
        if found is None:
            raise UnknownKeyId(f"audit key {key_id!r} is not a configured master key")
        return found

    def key_id_of(self, envelope: bytes) -> str | None:
        """The hex KEK id of a v1 envelope, or ``None`` if it is not one."""
        if not isinstance(envelope, bytes) or len(envelope) < OVERHEAD:
            return None
        if envelope[0] != VERSION:
            return None
        return envelope[_KID:_WRAP_NONCE].hex()

    def encrypt_sync(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Seal ``plaintext`` under the primary key, bound to ``associated_data``.

        Raises:
            TypeError: an argument is not bytes.
        """
        plaintext = _need_bytes(plaintext, "plaintext")
        ad = _need_bytes(associated_data, "associated_data")
        # The order of these draws is part of the golden vectors.
        dek = self._urandom(KEY_SIZE)
        wrap_nonce = self._urandom(NONCE_SIZE)
        nonce = self._urandom(NONCE_SIZE)
        if len(dek) != KEY_SIZE or len(wrap_nonce) != NONCE_SIZE or len(nonce) != NONCE_SIZE:
            raise RuntimeError("urandom returned the wrong number of bytes")
        kid = self._primary
        wrapped = self._keks[kid].encrypt(wrap_nonce, dek, _VERSION_BYTE + kid + ad)
        sealed = AESGCM(dek).encrypt(nonce, plaintext, _VERSION_BYTE + ad)
        return b"".join((_VERSION_BYTE, kid, wrap_nonce, wrapped, nonce, sealed))

    def _unwrap(self, envelope: bytes, ad: bytes) -> bytes:
        """The data key of a checked v1 envelope."""
        if len(envelope) < OVERHEAD or envelope[0] != VERSION:
            raise InvalidCiphertext("not an igris-mw v1 envelope")
        kid = envelope[_KID:_WRAP_NONCE]
        kek = self._keks.get(kid)
        if kek is None:
            raise UnknownKeyId(kid.hex())
        try:
            return kek.decrypt(
                envelope[_WRAP_NONCE:_WRAPPED],
                envelope[_WRAPPED:_NONCE],
                _VERSION_BYTE + kid + ad,
            )
        except InvalidTag:
            raise InvalidCiphertext(
                "the envelope cannot be opened (tampered, or sealed for another record)"
            ) from None

    def _open(self, envelope: bytes, ad: bytes) -> tuple[bytes, bytes]:
        dek = self._unwrap(envelope, ad)
        try:
            plaintext = AESGCM(dek).decrypt(
                envelope[_NONCE:_PAYLOAD], envelope[_PAYLOAD:], _VERSION_BYTE + ad
            )
        except InvalidTag:
            raise InvalidCiphertext(
                "the envelope cannot be opened (tampered, or sealed for another record)"
            ) from None
        return dek, plaintext

    def decrypt_sync(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Open an envelope sealed with the same ``associated_data``.

        Raises:
            InvalidCiphertext: the envelope cannot be opened, for any reason.
            UnknownKeyId: (an ``InvalidCiphertext``) its master key is not configured.
            TypeError: an argument is not bytes.
        """
        envelope = _need_bytes(envelope, "envelope")
        ad = _need_bytes(associated_data, "associated_data")
        return self._open(envelope, ad)[1]

    def rewrap_sync(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Move an envelope to the primary key; the payload bytes are kept.

        The whole envelope is opened first, so a damaged payload is never
        re-wrapped. An envelope already under the primary key is returned as is.

        Raises:
            InvalidCiphertext: the envelope cannot be opened.
            TypeError: an argument is not bytes.
        """
        envelope = _need_bytes(envelope, "envelope")
        ad = _need_bytes(associated_data, "associated_data")
        dek, _ = self._open(envelope, ad)
        kid = self._primary
        if envelope[_KID:_WRAP_NONCE] == kid:
            return envelope
        wrap_nonce = self._urandom(NONCE_SIZE)
        wrapped = self._keks[kid].encrypt(wrap_nonce, dek, _VERSION_BYTE + kid + ad)
        return b"".join((_VERSION_BYTE, kid, wrap_nonce, wrapped, envelope[_NONCE:]))

    # AES-GCM on a credential takes microseconds: no thread hop is worth it.
    async def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Async ``encrypt_sync``."""
        return self.encrypt_sync(plaintext, associated_data)

    async def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Async ``decrypt_sync``."""
        return self.decrypt_sync(envelope, associated_data)

    async def rewrap(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Async ``rewrap_sync``."""
        return self.rewrap_sync(envelope, associated_data)

    async def aclose(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_ids={self.key_ids!r}, primary={self.primary_key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Keyring holds master keys and is not to be pickled")
