"""The CryptoProvider contract: the conformance suite on Keyring, and binding()."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igris_mw._keyring import Keyring
from igris_mw.crypto import CryptoProvider, binding
from igris_mw.testing._fixed_keyring import FixedKeyring
from igris_mw.testing.crypto_suite import CryptoProviderSuite


class TestKeyringConformance(CryptoProviderSuite):
    """The local keyring passes the shared suite."""

    max_examples = 100

    keys = (os.urandom(32),)
    foreign_key = os.urandom(32)
    new_key = os.urandom(32)

    async def make_provider(self) -> CryptoProvider:
        return Keyring(self.keys)

    async def make_foreign_provider(self) -> CryptoProvider:
        return Keyring([self.foreign_key])

    async def rotate(self, provider: CryptoProvider) -> CryptoProvider:
        return Keyring([self.new_key, *self.keys])

    def key_material(self) -> Sequence[bytes]:
        return [*self.keys, self.foreign_key, self.new_key]


class TestFixedKeyringConformance(CryptoProviderSuite):
    """FixedKeyring, offered to users' tests, passes the shared suite too."""

    max_examples = 20

    async def make_provider(self) -> CryptoProvider:
        return FixedKeyring("alpha")

    async def make_foreign_provider(self) -> CryptoProvider:
        return FixedKeyring("other")

    async def rotate(self, provider: CryptoProvider) -> CryptoProvider:
        return FixedKeyring("beta", "alpha")

    def key_material(self) -> Sequence[bytes]:
        return [FixedKeyring.key_for(n) for n in ("alpha", "beta", "other")]


_record = st.tuples(
    st.text(max_size=20),
    st.integers(min_value=0, max_value=2**40),
    st.text(max_size=40),
    st.sampled_from(["bearer", "header", "basic", "none"]),
)


@settings(max_examples=300, deadline=None)
@given(a=_record, b=_record)
def test_binding_distinct_records_distinct_ad(
    a: tuple[str, int, str, str], b: tuple[str, int, str, str]
) -> None:
    """Two different records never share a binding (and equal records do)."""
    assert (binding(*a) == binding(*b)) == (a == b)


def test_binding_resists_field_shifting() -> None:
    """Moving characters between adjacent fields changes the binding."""
    assert binding("ab", 1, "c", "bearer") != binding("a", 1, "bc", "bearer")
    assert binding("s1", 12, "u", "bearer") != binding("s11", 2, "u", "bearer")


def test_binding_refuses_bad_version() -> None:
    """A negative or non-int credential version is a ValueError."""
    with pytest.raises(ValueError, match="credential_version"):
        binding("slug", -1, "https://u", "bearer")
    with pytest.raises(ValueError, match="credential_version"):
        binding("slug", "1", "https://u", "bearer")  # type: ignore[arg-type]


def test_envelope_moved_to_another_record_fails() -> None:
    """An envelope sealed for one record cannot be opened under another record's binding."""
    ring = FixedKeyring()
    envelope = ring.encrypt_sync(b"token", binding("github", 1, "https://a.example/mcp", "bearer"))
    for other in (
        binding("gitlab", 1, "https://a.example/mcp", "bearer"),
        binding("github", 2, "https://a.example/mcp", "bearer"),
        binding("github", 1, "https://evil.example/mcp", "bearer"),
        binding("github", 1, "https://a.example/mcp", "header"),
    ):
        with pytest.raises(Exception, match="cannot be opened") as info:
            ring.decrypt_sync(envelope, other)
        assert type(info.value).__name__ == "InvalidCiphertext"
