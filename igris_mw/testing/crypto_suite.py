"""The conformance suite every ``CryptoProvider`` runs.

In the manner of SQLAlchemy's dialect suite: a backend's test module
subclasses ``CryptoProviderSuite`` under a ``Test*`` name and fills in the
hooks; pytest collects the inherited tests::

    from igris_mw.testing.crypto_suite import CryptoProviderSuite

    class TestMyProvider(CryptoProviderSuite):
        max_examples = 20                      # a remote provider: keep it modest

        async def make_provider(self):
            return MyProvider(...)

Hooks (only ``make_provider`` is required; the others skip their tests
when they return ``None`` / nothing):

* ``make_foreign_provider()``: a provider with another key, whose
  envelopes ``make_provider()``'s provider must refuse;
* ``rotate(provider)``: a provider with a new primary key that still opens
  ``provider``'s envelopes (for a remote backend: rotate the key and return
  the same provider);
* ``key_material()``: secrets (keys, tokens) that must never appear in a
  ``repr`` or an error message.

Class attributes tune cost: ``max_examples`` (hypothesis examples per
property), ``max_plaintext_size``, ``distinct_count``; capability flag
``reports_unknown_key_id`` (a foreign envelope raises ``UnknownKeyId``
rather than only ``InvalidCiphertext``).

Needs pytest-asyncio (``asyncio_mode = "auto"``) and hypothesis.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..crypto import CryptoProvider, InvalidCiphertext, UnknownKeyId

__all__ = ["CryptoProviderSuite"]

_Strategies = Callable[[Any], dict[str, st.SearchStrategy[Any]]]
_PROPERTY = "_igris_property_strategies"


def _property(strategies: _Strategies) -> Callable[[Any], Any]:
    """Mark an async test as a hypothesis property; each subclass gets it
    wrapped with its own ``max_examples`` (a ``settings`` object is fixed at
    decoration time, so it cannot be read from the subclass any other way)."""

    def mark(fn: Any) -> Any:
        setattr(fn, _PROPERTY, strategies)
        return fn

    return mark


def _seeded_bytes(size: int, seed: int) -> bytes:
    # Test data, not secrets: a seeded PRNG is what is wanted.
    return random.Random(seed).randbytes(size)  # noqa: S311


def _pt_ad(cls: Any) -> dict[str, st.SearchStrategy[Any]]:
    return {
        # Unaided, hypothesis rarely draws more than a few hundred bytes, and
        # large raw draws overrun its buffer: big plaintexts come from a seed.
        "plaintext": st.one_of(
            st.binary(max_size=64),
            st.builds(_seeded_bytes, st.integers(65, cls.max_plaintext_size), st.integers(0)),
        ),
        "ad": st.binary(max_size=256),
    }


def _forms(secret: bytes | str) -> list[str]:
    """The ways a secret could leak into text."""
    if isinstance(secret, str):
        return [secret] if secret else []
    if not secret:
        return []
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        secret.decode("latin-1"),
        repr(secret),
    ]


class CryptoProviderSuite:
    """Inherit under a ``Test*`` name and implement ``make_provider``."""

    max_examples: ClassVar[int] = 50
    max_plaintext_size: ClassVar[int] = 16 * 1024
    distinct_count: ClassVar[int] = 200
    reports_unknown_key_id: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Fresh wrappers per subclass: settings() marks the wrapper it is given.
        for name, fn in vars(CryptoProviderSuite).items():
            strategies = getattr(fn, _PROPERTY, None)
            if strategies is None or name in vars(cls):
                continue
            wrapped = settings(
                max_examples=cls.max_examples,
                deadline=None,
                suppress_health_check=[
                    HealthCheck.function_scoped_fixture,
                    HealthCheck.differing_executors,
                    HealthCheck.too_slow,
                ],
            )(given(**strategies(cls))(fn))
            setattr(cls, name, wrapped)

    # -- hooks -------------------------------------------------------------
    async def make_provider(self) -> CryptoProvider:
        """The provider under test (a fresh one per test)."""
        raise NotImplementedError("a CryptoProviderSuite subclass must implement make_provider")

    async def make_foreign_provider(self) -> CryptoProvider | None:
        """A provider with a key ``make_provider``'s does not have, or ``None``."""
        return None

    async def rotate(self, provider: CryptoProvider) -> CryptoProvider | None:
        """A provider with a new primary key that still opens ``provider``'s envelopes."""
        return None

    def key_material(self) -> Sequence[bytes | str]:
        """Secrets that must never appear in a repr or an error message."""
        return ()

    # -- fixtures ----------------------------------------------------------
    @pytest.fixture
    async def provider(self) -> AsyncIterator[CryptoProvider]:
        """The provider under test, closed afterwards."""
        p = await self.make_provider()
        try:
            yield p
        finally:
            await p.aclose()

    def _assert_hides_material(self, text: str) -> None:
        for secret in self.key_material():
            for form in _forms(secret):
                assert form not in text, "key material shown"

    # -- properties --------------------------------------------------------
    @_property(_pt_ad)
    async def test_round_trip(self, provider: CryptoProvider, plaintext: bytes, ad: bytes) -> None:
        """decrypt(encrypt(p, ad), ad) == p for any plaintext and associated data."""
        envelope = await provider.encrypt(plaintext, ad)
        assert isinstance(envelope, bytes)
        assert plaintext not in envelope or len(plaintext) < 8
        assert await provider.decrypt(envelope, ad) == plaintext

    @_property(lambda cls: {**_pt_ad(cls), "data": st.data()})
    async def test_any_bit_flip_fails(
        self, provider: CryptoProvider, plaintext: bytes, ad: bytes, data: st.DataObject
    ) -> None:
        """Flipping any single bit of an envelope raises InvalidCiphertext."""
        envelope = await provider.encrypt(plaintext, ad)
        bit = data.draw(st.integers(0, len(envelope) * 8 - 1), label="bit")
        damaged = bytearray(envelope)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidCiphertext):
            await provider.decrypt(bytes(damaged), ad)

    @_property(lambda cls: {**_pt_ad(cls), "data": st.data()})
    async def test_truncation_fails(
        self, provider: CryptoProvider, plaintext: bytes, ad: bytes, data: st.DataObject
    ) -> None:
        """A truncated envelope raises InvalidCiphertext."""
        envelope = await provider.encrypt(plaintext, ad)
        cut = data.draw(st.integers(0, len(envelope) - 1), label="cut")
        with pytest.raises(InvalidCiphertext):
            await provider.decrypt(envelope[:cut], ad)

    @_property(lambda cls: {**_pt_ad(cls), "extra": st.binary(min_size=1, max_size=64)})
    async def test_extension_fails(
        self, provider: CryptoProvider, plaintext: bytes, ad: bytes, extra: bytes
    ) -> None:
        """An envelope with bytes appended raises InvalidCiphertext."""
        envelope = await provider.encrypt(plaintext, ad)
        with pytest.raises(InvalidCiphertext):
            await provider.decrypt(envelope + extra, ad)

    @_property(lambda cls: {**_pt_ad(cls), "other": st.binary(max_size=256)})
    async def test_other_ad_fails(
        self, provider: CryptoProvider, plaintext: bytes, ad: bytes, other: bytes
    ) -> None:
        """An envelope opened with other associated data raises InvalidCiphertext."""
        if other == ad:
            other = ad + b"\x00"
        envelope = await provider.encrypt(plaintext, ad)
        with pytest.raises(InvalidCiphertext):
            await provider.decrypt(envelope, other)

    # -- examples ----------------------------------------------------------
    async def test_empty_and_largest_plaintext(self, provider: CryptoProvider) -> None:
        """The empty plaintext and the largest one both round-trip."""
        big = bytes(range(256)) * (self.max_plaintext_size // 256)
        for plaintext in (b"", big):
            envelope = await provider.encrypt(plaintext, b"ad")
            assert await provider.decrypt(envelope, b"ad") == plaintext

    async def test_encryptions_differ(self, provider: CryptoProvider) -> None:
        """Encrypting one plaintext repeatedly never gives the same envelope twice."""
        envelopes = {await provider.encrypt(b"same", b"ad") for _ in range(self.distinct_count)}
        assert len(envelopes) == self.distinct_count

    async def test_garbage_fails(self, provider: CryptoProvider) -> None:
        """Empty, short and random-looking envelopes raise InvalidCiphertext."""
        for junk in (b"", b"\x00", b"\x01" * 40, bytes(range(256)), b"vault:v1:AAAA"):
            with pytest.raises(InvalidCiphertext):
                await provider.decrypt(junk, b"ad")

    async def test_rewrap_keeps_plaintext(self, provider: CryptoProvider) -> None:
        """rewrap under an unchanged key still opens to the same plaintext."""
        envelope = await provider.encrypt(b"credential", b"ad")
        again = await provider.rewrap(envelope, b"ad")
        assert await provider.decrypt(again, b"ad") == b"credential"
        assert provider.key_id_of(again) == provider.primary_key_id

    async def test_rewrap_refuses_damaged_or_other_ad(self, provider: CryptoProvider) -> None:
        """rewrap of a tampered envelope, or under other AD, raises InvalidCiphertext."""
        envelope = await provider.encrypt(b"credential", b"ad")
        damaged = envelope[:-1] + bytes([envelope[-1] ^ 1])
        with pytest.raises(InvalidCiphertext):
            await provider.rewrap(damaged, b"ad")
        with pytest.raises(InvalidCiphertext):
            await provider.rewrap(envelope, b"other")

    async def test_rewrap_moves_to_new_primary(self, provider: CryptoProvider) -> None:
        """After a key rotation, rewrap moves an envelope to the new primary, same plaintext."""
        envelope = await provider.encrypt(b"credential", b"ad")
        old_id = provider.key_id_of(envelope)
        assert old_id == provider.primary_key_id
        rotated = await self.rotate(provider)
        if rotated is None:
            pytest.skip("this provider cannot rotate keys in a test")
        try:
            assert rotated.primary_key_id != old_id
            assert await rotated.decrypt(envelope, b"ad") == b"credential"
            moved = await rotated.rewrap(envelope, b"ad")
            assert rotated.key_id_of(moved) == rotated.primary_key_id
            assert await rotated.decrypt(moved, b"ad") == b"credential"
        finally:
            if rotated is not provider:
                await rotated.aclose()

    async def test_foreign_key_fails_naming_key_id(self, provider: CryptoProvider) -> None:
        """An envelope under a key the provider lacks fails, naming only the key id."""
        foreign = await self.make_foreign_provider()
        if foreign is None:
            pytest.skip("no foreign provider for this backend")
        try:
            envelope = await foreign.encrypt(b"credential", b"ad")
            with pytest.raises(InvalidCiphertext) as info:
                await provider.decrypt(envelope, b"ad")
            if self.reports_unknown_key_id:
                assert isinstance(info.value, UnknownKeyId)
                key_id = foreign.key_id_of(envelope)
                assert key_id is not None
                assert info.value.key_id == key_id
                assert key_id in str(info.value)
            self._assert_hides_material(str(info.value))
        finally:
            await foreign.aclose()

    async def test_str_is_type_error(self, provider: CryptoProvider) -> None:
        """Passing str where bytes belong raises TypeError, for every operation."""
        envelope = await provider.encrypt(b"credential", b"ad")
        bad: list[tuple[Any, Any, Any]] = [
            (provider.encrypt, "credential", b"ad"),
            (provider.encrypt, b"credential", "ad"),
            (provider.decrypt, envelope.decode("latin-1"), b"ad"),
            (provider.decrypt, envelope, "ad"),
            (provider.rewrap, envelope.decode("latin-1"), b"ad"),
            (provider.rewrap, envelope, "ad"),
        ]
        for op, first, second in bad:
            with pytest.raises(TypeError):
                await op(first, second)

    async def test_repr_hides_key_material(self, provider: CryptoProvider) -> None:
        """repr() and str() of the provider show no key material."""
        self._assert_hides_material(repr(provider))
        self._assert_hides_material(str(provider))

    async def test_failure_message_hides_secrets(self, provider: CryptoProvider) -> None:
        """The message of a failed decrypt shows neither key material nor the plaintext."""
        envelope = await provider.encrypt(b"s3cret-plaintext-value", b"ad")
        with pytest.raises(InvalidCiphertext) as info:
            await provider.decrypt(envelope, b"other")
        message = str(info.value) + repr(info.value)
        assert "s3cret-plaintext-value" not in message
        self._assert_hides_material(message)

    async def test_key_id_of(self, provider: CryptoProvider) -> None:
        """key_id_of names the primary key for a new envelope and None for garbage."""
        envelope = await provider.encrypt(b"credential", b"ad")
        assert provider.key_id_of(envelope) == provider.primary_key_id
        assert provider.key_id_of(b"") is None

    async def test_is_a_crypto_provider(self, provider: CryptoProvider) -> None:
        """The provider satisfies the CryptoProvider protocol and has a name."""
        assert isinstance(provider, CryptoProvider)
        assert isinstance(provider.name, str)
        assert provider.name

    async def test_audit_key_is_stable_and_hidden(self, provider: CryptoProvider) -> None:
        """audit_key() is the same key when asked again by its id; an unknown id is refused."""
        key = await provider.audit_key()
        again = await provider.audit_key(key.key_id)
        assert (again.key_id, again.secret) == (key.key_id, key.secret)
        assert len(key.secret) >= 32
        self._assert_hides_material(repr(key))
        assert key.secret.hex() not in repr(key)
        with pytest.raises(UnknownKeyId):
            await provider.audit_key("no-such-audit-key")

    async def test_audit_key_differs_from_another_providers(self, provider: CryptoProvider) -> None:
        """A provider with another key derives another audit key."""
        foreign = await self.make_foreign_provider()
        if foreign is None:
            pytest.skip("no foreign provider for this backend")
        try:
            assert (await foreign.audit_key()).secret != (await provider.audit_key()).secret
        finally:
            await foreign.aclose()

    async def test_audit_key_of_the_old_key_survives_rotation(
        self, provider: CryptoProvider
    ) -> None:
        """After a rotation the current audit key changes; the old one is still there by id."""
        old = await provider.audit_key()
        rotated = await self.rotate(provider)
        if rotated is None:
            pytest.skip("this provider cannot rotate keys in a test")
        try:
            new = await rotated.audit_key()
            assert new.key_id != old.key_id
            assert new.secret != old.secret
            assert (await rotated.audit_key(old.key_id)).secret == old.secret
        finally:
            if rotated is not provider:
                await rotated.aclose()

    async def test_aclose_is_idempotent(self) -> None:
        """aclose() may be called twice."""
        p = await self.make_provider()
        await p.aclose()
        await p.aclose()
