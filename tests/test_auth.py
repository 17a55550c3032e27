"""Gateway key format: generation, checksum, hashing, ids."""

from __future__ import annotations

import hashlib
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igris_mw import _auth

KEY_RE = re.compile(r"^ig_[0-9A-Za-z]{36}\Z")


def test_generated_keys_are_well_formed() -> None:
    """Every generated key has the documented shape and passes its own checksum."""
    for _ in range(200):
        key = _auth.generate_key()
        assert KEY_RE.match(key)
        assert len(key) == _auth.KEY_LENGTH == 39
        assert _auth.is_well_formed(key)


def test_random_part_carries_at_least_178_bits() -> None:
    """30 base62 characters of randomness is over 178 bits (>= the 160 the design asks)."""
    assert _auth.RANDOM_LENGTH * math.log2(len(_auth.ALPHABET)) >= 178
    assert len(set(_auth.ALPHABET)) == 62


def test_generated_keys_are_distinct_and_use_the_whole_alphabet() -> None:
    """Keys do not repeat and their random parts spread over all 62 characters."""
    keys = [_auth.generate_key() for _ in range(2000)]
    assert len(set(keys)) == len(keys)
    seen = set("".join(k[3:33] for k in keys))
    assert seen == set(_auth.ALPHABET)


@given(position=st.integers(min_value=3, max_value=38), data=st.data())
def test_one_character_typo_is_refused(position: int, data: st.DataObject) -> None:
    """Changing any single character after the prefix breaks the checksum."""
    key = _auth.generate_key()
    replacement = data.draw(st.sampled_from([c for c in _auth.ALPHABET if c != key[position]]))
    typo = key[:position] + replacement + key[position + 1 :]
    assert not _auth.is_well_formed(typo)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1],
        lambda k: k + "0",
        lambda k: "IG_" + k[3:],
        lambda k: "gh_" + k[3:],
        lambda k: k[:10] + "-" + k[11:],
        lambda k: k[:10] + "é" + k[11:],
        lambda k: " " + k[:-1],
        lambda k: "",
    ],
)
def test_malformed_shapes_are_refused(mutate: object) -> None:
    """Wrong prefix, length or alphabet is refused without looking at a store."""
    key = _auth.generate_key()
    assert callable(mutate)
    assert not _auth.is_well_formed(mutate(key))


def test_non_string_is_not_well_formed() -> None:
    """A non-string is refused instead of raising."""
    assert not _auth.is_well_formed(None)  # type: ignore[arg-type]
    assert not _auth.is_well_formed(b"ig_" + b"0" * 36)  # type: ignore[arg-type]


def test_checksum_is_crc32_of_prefix_and_random_part() -> None:
    """The last six characters are the base62 CRC32 of everything before them."""
    import zlib

    key = _auth.generate_key()
    value = 0
    for ch in key[-6:]:
        value = value * 62 + _auth.ALPHABET.index(ch)
    assert value == zlib.crc32(key[:-6].encode())


def test_hash_key_is_sha256() -> None:
    """The stored hash is SHA-256 of the key's UTF-8 bytes."""
    key = _auth.generate_key()
    assert _auth.hash_key(key) == hashlib.sha256(key.encode()).digest()
    assert len(_auth.hash_key(key)) == 32
    assert _auth.hashes_equal(_auth.hash_key(key), _auth.hash_key(key))
    assert not _auth.hashes_equal(_auth.hash_key(key), _auth.hash_key(_auth.generate_key()))


def test_key_ids_are_public_and_distinct() -> None:
    """Key ids look like key_ + 16 hex and do not repeat."""
    ids = {_auth.new_key_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(re.match(r"^key_[0-9a-f]{16}\Z", i) for i in ids)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer ig_abc", "ig_abc"),
        ("bearer ig_abc", "ig_abc"),
        ("  BEARER   ig_abc  ", "ig_abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic Zm9vOmJhcg==", None),
        ("Bearerig_abc", None),
    ],
)
def test_bearer_token_parses_only_the_bearer_scheme(header: str | None, token: str | None) -> None:
    """The one bearer parser: case-insensitive scheme, blanks ignored, anything else None."""
    assert _auth.bearer_token(header) == token
