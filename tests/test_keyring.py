"""The local keyring: envelope v1, rotation, master-key configuration, golden vectors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import pickle
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igris_mw._errors import ConfigurationError
from igris_mw._keyring import OVERHEAD, Keyring, kek_id
from igris_mw._plugins import crypto_from_url
from igris_mw.crypto import InvalidCiphertext, UnknownKeyId

VECTORS = Path(__file__).parent / "vectors"
K1, K2, K3 = (hashlib.sha256(f"test key {i}".encode()).digest() for i in (1, 2, 3))
PROPS = settings(max_examples=200, deadline=None)

plaintexts = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda n, seed: hashlib.shake_256(seed).digest(n),
        st.integers(65, 16 * 1024),
        st.binary(min_size=1, max_size=8),
    ),
)
ads = st.binary(max_size=512)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def leaked_forms(key: bytes) -> list[str]:
    return [key.hex(), b64(key), base64.urlsafe_b64encode(key).decode(), key.decode("latin-1")]


def replay(data: bytes) -> Callable[[int], bytes]:
    """A urandom that hands out ``data`` in order and refuses to run past it."""
    pos = 0

    def urandom(n: int) -> bytes:
        nonlocal pos
        assert pos + n <= len(data), "more randomness drawn than the vector recorded"
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    return urandom


# -- envelope properties ------------------------------------------------------


@PROPS
@given(plaintext=plaintexts, ad=ads)
def test_round_trip(plaintext: bytes, ad: bytes) -> None:
    """Any plaintext of 0-16 KiB under any AD decrypts to itself."""
    ring = Keyring([K1, K2])
    envelope = ring.encrypt_sync(plaintext, ad)
    assert len(envelope) == OVERHEAD + len(plaintext)
    assert envelope[0] == 0x01
    assert envelope[1:9] == kek_id(K1)
    assert ring.decrypt_sync(envelope, ad) == plaintext


@PROPS
@given(plaintext=plaintexts, ad=ads, data=st.data())
def test_any_single_bit_flip_fails(plaintext: bytes, ad: bytes, data: st.DataObject) -> None:
    """Flipping any one bit of an envelope raises InvalidCiphertext."""
    ring = Keyring([K1, K2])
    envelope = ring.encrypt_sync(plaintext, ad)
    bit = data.draw(st.integers(0, len(envelope) * 8 - 1))
    damaged = bytearray(envelope)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidCiphertext):
        ring.decrypt_sync(bytes(damaged), ad)


def test_every_bit_flip_of_one_envelope_fails() -> None:
    """Exhaustively: each of the envelope's bits, flipped alone, is refused."""
    ring = Keyring([K1, K2])
    envelope = ring.encrypt_sync(b"token-123", b"ad")
    refused = 0
    for bit in range(len(envelope) * 8):
        damaged = bytearray(envelope)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidCiphertext):
            ring.decrypt_sync(bytes(damaged), b"ad")
        refused += 1
    assert refused == (OVERHEAD + 9) * 8


def test_every_truncation_fails() -> None:
    """Every proper prefix of an envelope raises InvalidCiphertext."""
    ring = Keyring([K1])
    envelope = ring.encrypt_sync(b"token-123", b"ad")
    for cut in range(len(envelope)):
        with pytest.raises(InvalidCiphertext):
            ring.decrypt_sync(envelope[:cut], b"ad")


@PROPS
@given(plaintext=plaintexts, ad=ads, extra=st.binary(min_size=1, max_size=64))
def test_extension_fails(plaintext: bytes, ad: bytes, extra: bytes) -> None:
    """Bytes appended to an envelope make it fail."""
    ring = Keyring([K1])
    with pytest.raises(InvalidCiphertext):
        ring.decrypt_sync(ring.encrypt_sync(plaintext, ad) + extra, ad)


def test_unknown_version_byte_fails_before_crypto() -> None:
    """Every version byte other than 0x01 is refused, and key_id_of reads nothing."""
    ring = Keyring([K1])
    envelope = ring.encrypt_sync(b"token", b"ad")
    for version in range(256):
        if version == 0x01:
            continue
        other = bytes([version]) + envelope[1:]
        with pytest.raises(InvalidCiphertext) as info:
            ring.decrypt_sync(other, b"ad")
        assert type(info.value) is InvalidCiphertext
        assert ring.key_id_of(other) is None


@PROPS
@given(plaintext=plaintexts, ad=ads, other=ads)
def test_other_ad_fails(plaintext: bytes, ad: bytes, other: bytes) -> None:
    """An envelope opened under other associated data is refused."""
    if other == ad:
        other += b"x"
    ring = Keyring([K1])
    with pytest.raises(InvalidCiphertext):
        ring.decrypt_sync(ring.encrypt_sync(plaintext, ad), other)


def test_swapped_wrapped_key_fails() -> None:
    """The wrapped data key of one envelope cannot be grafted onto another's payload."""
    ring = Keyring([K1])
    a = ring.encrypt_sync(b"first", b"ad")
    b = ring.encrypt_sync(b"other", b"ad")
    with pytest.raises(InvalidCiphertext):
        ring.decrypt_sync(a[:69] + b[69:], b"ad")


def test_another_kek_fails_naming_only_its_id() -> None:
    """An envelope under an unconfigured master key raises UnknownKeyId naming its id only."""
    envelope = Keyring([K3]).encrypt_sync(b"token", b"ad")
    with pytest.raises(InvalidCiphertext) as info:
        Keyring([K1, K2]).decrypt_sync(envelope, b"ad")
    assert isinstance(info.value, UnknownKeyId)
    assert info.value.key_id == kek_id(K3).hex()
    assert kek_id(K3).hex() in str(info.value)
    for key in (K1, K2, K3):
        for form in leaked_forms(key):
            assert form not in str(info.value)


def test_key_dropped_after_rotation_fails_naming_it() -> None:
    """Once the old master key is removed, its envelopes fail naming the old key id."""
    old = Keyring([K1]).encrypt_sync(b"token", b"ad")
    with pytest.raises(UnknownKeyId, match=kek_id(K1).hex()):
        Keyring([K2]).decrypt_sync(old, b"ad")


def test_100k_encryptions_all_distinct() -> None:
    """100,000 encryptions of one plaintext give distinct nonces, data keys and envelopes."""
    ring = Keyring([K1])
    n = 100_000
    envelopes = [ring.encrypt_sync(b"same plaintext", b"same ad") for _ in range(n)]
    assert len(set(envelopes)) == n
    assert len({e[9:21] for e in envelopes}) == n  # wrap nonces
    assert len({e[69:81] for e in envelopes}) == n  # payload nonces
    assert len({e[81:] for e in envelopes}) == n  # payload ciphertexts
    assert len({e[21:69] for e in envelopes}) == n  # wrapped data keys


def test_misuse_is_type_error() -> None:
    """str in place of bytes is a TypeError, never an encryption of something else."""
    ring = Keyring([K1])
    envelope = ring.encrypt_sync(b"x", b"ad")
    with pytest.raises(TypeError, match="plaintext"):
        ring.encrypt_sync("x", b"ad")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="associated_data"):
        ring.decrypt_sync(envelope, "ad")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="envelope"):
        ring.rewrap_sync(envelope.hex(), b"ad")  # type: ignore[arg-type]


# -- rotation ---------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(plaintext=plaintexts, ad=ads)
def test_rewrap_moves_to_primary_and_keeps_payload(plaintext: bytes, ad: bytes) -> None:
    """rewrap keeps the plaintext and the payload bytes and moves to the primary KEK id."""
    old = Keyring([K1]).encrypt_sync(plaintext, ad)
    rotated = Keyring([K2, K1])
    moved = rotated.rewrap_sync(old, ad)
    assert rotated.key_id_of(moved) == kek_id(K2).hex() == rotated.primary_key_id
    assert moved[69:] == old[69:]
    assert rotated.decrypt_sync(moved, ad) == plaintext
    assert Keyring([K2]).decrypt_sync(moved, ad) == plaintext


def test_rewrap_on_primary_is_identity() -> None:
    """An envelope already under the primary key comes back unchanged."""
    ring = Keyring([K1, K2])
    envelope = ring.encrypt_sync(b"token", b"ad")
    assert ring.rewrap_sync(envelope, b"ad") is envelope


def test_rewrap_refuses_damaged_payload() -> None:
    """rewrap opens the payload first, so a damaged payload is never re-wrapped."""
    old = Keyring([K1]).encrypt_sync(b"token", b"ad")
    damaged = old[:-1] + bytes([old[-1] ^ 1])
    with pytest.raises(InvalidCiphertext):
        Keyring([K2, K1]).rewrap_sync(damaged, b"ad")


async def test_async_api_matches_sync() -> None:
    """The async methods round-trip and rewrap like the sync ones."""
    ring = Keyring([K2, K1])
    envelope = await ring.encrypt(b"token", b"ad")
    assert await ring.decrypt(envelope, b"ad") == b"token"
    old = Keyring([K1]).encrypt_sync(b"token", b"ad")
    assert ring.key_id_of(await ring.rewrap(old, b"ad")) == ring.primary_key_id
    await ring.aclose()


# -- construction -----------------------------------------------------------


def test_repr_shows_ids_not_keys() -> None:
    """repr names the key ids and the primary, never key material."""
    ring = Keyring([K1, K2])
    text = repr(ring) + str(ring)
    assert kek_id(K1).hex() in text
    assert "primary=" in text
    for key in (K1, K2):
        for form in leaked_forms(key):
            assert form not in text


def test_keyring_is_not_picklable() -> None:
    """A keyring refuses to be pickled (it would carry the master keys)."""
    with pytest.raises(TypeError, match="not to be pickled"):
        pickle.dumps(Keyring([K1]))


def test_kek_id_is_hmac_of_label() -> None:
    """The KEK id is the first 8 bytes of HMAC-SHA256(key, 'igris-mw kek-id v1')."""
    expected = hmac.new(K1, b"igris-mw kek-id v1", hashlib.sha256).digest()[:8]
    assert kek_id(K1) == expected
    assert Keyring([K1]).primary_key_id == expected.hex()


@pytest.mark.parametrize(
    ("keys", "error", "match"),
    [
        ([], ConfigurationError, "no master key"),
        ([K1[:31]], ConfigurationError, "master key 1 of 1 is 31 bytes"),
        ([K1, K1], ConfigurationError, "master key 2 of 2 is configured twice"),
        ([b64(K1)], TypeError, "must be bytes"),
        (K1, TypeError, "sequence"),
    ],
)
def test_constructor_refuses_bad_keys(keys: Any, error: type[Exception], match: str) -> None:
    """Keyring() refuses empty, short, duplicate and non-bytes keys."""
    with pytest.raises(error, match=match):
        Keyring(keys)


def test_from_env_newest_first() -> None:
    """IGRIS_MASTER_KEY holds comma-separated base64 keys; the first is the primary."""
    ring = Keyring.from_env({"IGRIS_MASTER_KEY": f" {b64(K2)} , {b64(K1)}"})
    assert ring.key_ids == [kek_id(K2).hex(), kek_id(K1).hex()]
    urlsafe = base64.urlsafe_b64encode(K3).decode()
    assert Keyring.from_env({"IGRIS_MASTER_KEY": urlsafe}).primary_key_id == kek_id(K3).hex()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "IGRIS_MASTER_KEY holds no master key"),
        ("not base64!!", "entry 1 of 1 is not valid base64"),
        (f"{b64(K1)},{base64.b64encode(b'short').decode()}", "entry 2 of 2 decodes to 5 bytes"),
        (f"{b64(K1)},", "entry 2 of 2 is empty"),
        (b64(K1 + b"x"), "entry 1 of 1 decodes to 33 bytes"),
    ],
)
def test_malformed_master_key_is_a_clear_value_error(value: str, match: str) -> None:
    """A malformed IGRIS_MASTER_KEY is a ValueError naming the entry, never its value."""
    with pytest.raises(ValueError, match=match) as info:
        Keyring.from_env({"IGRIS_MASTER_KEY": value, "IGRIS_MASTER_KEY_FILE": "/nonexistent"})
    assert isinstance(info.value, ConfigurationError)
    for part in value.split(","):
        if len(part.strip()) > 4:
            assert part.strip() not in str(info.value)


def test_nothing_configured_says_what_to_set(tmp_path: Path) -> None:
    """keyring: with no key configured tells the user to set one, and creates nothing."""
    with pytest.raises(ConfigurationError, match=r"IGRIS_MASTER_KEY .*IGRIS_MASTER_KEY_FILE"):
        Keyring.from_url("keyring:", {})
    with pytest.raises(ConfigurationError, match="IGRIS_MASTER_KEY"):
        crypto_from_url("keyring:", {})
    assert list(tmp_path.iterdir()) == []


def test_from_url_through_the_entry_point() -> None:
    """crypto_from_url('keyring:') loads the Keyring from the environment given."""
    provider = crypto_from_url("keyring:", {"IGRIS_MASTER_KEY": b64(K1)})
    assert isinstance(provider, Keyring)
    assert provider.primary_key_id == kek_id(K1).hex()
    with pytest.raises(ConfigurationError, match="not understood"):
        Keyring.from_url("keyring://somewhere", {"IGRIS_MASTER_KEY": b64(K1)})


def test_key_file_lines_commas_and_comments(tmp_path: Path) -> None:
    """A key file holds keys one per line or comma-separated, with # comments."""
    path = tmp_path / "master.key"
    path.write_text(f"# rotated 2025-01\n{b64(K3)}\n\n{b64(K2)}, {b64(K1)}\n")
    path.chmod(0o600)  # a key file others can read is refused
    ring = Keyring.from_env({"IGRIS_MASTER_KEY_FILE": str(path)})
    assert ring.key_ids == [kek_id(k).hex() for k in (K3, K2, K1)]


def _unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(b64(K1) + "\n")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: simulate the denial
        real = Path.read_bytes

        def deny(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", deny)


def _snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (mode, size, mtime_ns) of each entry: enough to see a replacement."""
    out = {}
    for p in directory.iterdir():
        st_ = p.stat()
        out[p.name] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


@pytest.mark.parametrize("problem", ["missing", "denied", "directory", "binary", "bad base64"])
def test_unreadable_key_file_is_never_replaced(
    problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured key file that cannot be used is a clear error; nothing is generated."""
    path = tmp_path / "master.key"
    if problem == "denied":
        _unreadable(path, monkeypatch)
    elif problem == "directory":
        path.mkdir()
    elif problem == "binary":
        path.write_bytes(b"\xff\xfe" + K1)
    elif problem == "bad base64":
        path.write_text("not a key\n")
    before = _snapshot(tmp_path)
    match = {
        "missing": "does not exist",
        "denied": "permission denied",
        "directory": "is a directory",
        "binary": "not a text file",
        "bad base64": "entry 1 of 1 is not valid base64",
    }[problem]
    with pytest.raises(ConfigurationError, match=match) as info:
        Keyring.from_url("keyring:", {"IGRIS_MASTER_KEY_FILE": str(path)})
    assert str(path) in str(info.value)
    assert b64(K1) not in str(info.value)
    assert _snapshot(tmp_path) == before


def test_generate_key_file(tmp_path: Path) -> None:
    """generate_key_file writes one 0600 key file that loads to the same keyring."""
    path = tmp_path / "sub" / "master.key"
    ring = Keyring.generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.from_key_file(path).key_ids == ring.key_ids
    assert len(base64.b64decode(path.read_text().strip())) == 32
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key"]
    envelope = ring.encrypt_sync(b"token", b"ad")
    assert Keyring.from_env({"IGRIS_MASTER_KEY_FILE": str(path)}).decrypt_sync(envelope, b"ad")


def test_generate_key_file_never_overwrites(tmp_path: Path) -> None:
    """generate_key_file refuses an existing path and leaves it, and the directory, as they were."""
    path = tmp_path / "master.key"
    path.write_text(b64(K1) + "\n")
    with pytest.raises(FileExistsError):
        Keyring.generate_key_file(path)
    assert path.read_text() == b64(K1) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_generated_keys_differ(tmp_path: Path) -> None:
    """Two generated key files hold different keys."""
    a = Keyring.generate_key_file(tmp_path / "a.key")
    b = Keyring.generate_key_file(tmp_path / "b.key")
    assert a.primary_key_id != b.primary_key_id


# -- golden vectors -----------------------------------------------------------


def _vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "keyring_v1.json").read_text())
    return data


def _keys(vector: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(k) for k in vector["keys"]]


@pytest.mark.parametrize("vector", _vectors()["encrypt"], ids=lambda v: v["name"])
def test_golden_encrypt_vectors(vector: dict[str, Any]) -> None:
    """Each vector decrypts, and re-encrypting with its randomness gives identical bytes."""
    keys = _keys(vector)
    plaintext = bytes.fromhex(vector["plaintext"])
    ad = bytes.fromhex(vector["associated_data"])
    envelope = bytes.fromhex(vector["envelope"])
    assert Keyring(keys).decrypt_sync(envelope, ad) == plaintext
    assert kek_id(keys[0]).hex() == vector["kek_id"]
    ring = Keyring(keys, urandom=replay(bytes.fromhex(vector["randomness"])))
    assert ring.encrypt_sync(plaintext, ad) == envelope


@pytest.mark.parametrize("vector", _vectors()["rewrap"], ids=lambda v: v["name"])
def test_golden_rewrap_vectors(vector: dict[str, Any]) -> None:
    """Re-wrapping a vector's envelope with its randomness gives the recorded bytes."""
    ad = bytes.fromhex(vector["associated_data"])
    ring = Keyring(_keys(vector), urandom=replay(bytes.fromhex(vector["randomness"])))
    moved = ring.rewrap_sync(bytes.fromhex(vector["envelope"]), ad)
    assert moved == bytes.fromhex(vector["rewrapped"])
    assert ring.decrypt_sync(moved, ad) == bytes.fromhex(vector["plaintext"])


@pytest.mark.parametrize("vector", _vectors()["invalid"], ids=lambda v: v["name"])
def test_golden_invalid_vectors(vector: dict[str, Any]) -> None:
    """Each invalid vector raises the recorded error type."""
    ring = Keyring(_keys(vector))
    envelope = bytes.fromhex(vector["envelope"])
    with pytest.raises(InvalidCiphertext) as info:
        ring.decrypt_sync(envelope, bytes.fromhex(vector["associated_data"]))
    assert type(info.value).__name__ == vector["error"]


def test_vectors_file_is_what_the_generator_writes() -> None:
    """tests/vectors/generate.py reproduces keyring_v1.json exactly."""
    spec = importlib.util.spec_from_file_location("_igris_vectors", VECTORS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written: list[str] = []
    module.main(written.append)
    assert written == [(VECTORS / "keyring_v1.json").read_text()]


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A key file group or others can read is refused, naming the file and `chmod 600`."""
    path = tmp_path / "master.key"
    path.write_text(b64(K1) + "\n")
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match="chmod 600") as info:
        Keyring.from_env({"IGRIS_MASTER_KEY_FILE": str(path)})
    assert str(path) in str(info.value)
    assert b64(K1) not in str(info.value)
    path.chmod(0o600)
    assert Keyring.from_env({"IGRIS_MASTER_KEY_FILE": str(path)}).key_ids == [kek_id(K1).hex()]
