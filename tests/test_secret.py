"""models.Secret: never shows its value, cannot be pickled, compares in constant time."""

from __future__ import annotations

import hmac
import logging
import pickle
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igris_mw.models import Secret

MASK = "Secret('**********')"
values = st.binary(min_size=1, max_size=256)


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_every_rendering_is_the_mask(value: bytes) -> None:
    """repr, str, format and f-strings of any Secret are exactly the mask."""
    s = Secret(value)
    renderings = [
        repr(s),
        str(s),
        format(s),
        format(s, ">40"),
        format(s, "x"),
        f"{s}",
        f"{s!r}",
        f"{s!s}",
        f"{s:^50}",
        "{}".format(s),  # noqa: UP032 - str.format is a separate path from f-strings
        "%s" % (s,),  # noqa: UP031 - %-formatting is a separate path too
        "%r" % (s,),  # noqa: UP031
    ]
    assert renderings == [MASK] * len(renderings)


def test_containers_and_attrs_reprs_hide_it() -> None:
    """A Secret inside a list, dict or attrs class still shows only the mask."""

    @attrs.frozen
    class Holder:
        token: Secret

    s = Secret(b"ghp_supersecretvalue")
    for text in (repr([s]), repr({"k": s}), repr(Holder(s)), str((s,))):
        assert "supersecret" not in text
        assert MASK in text


def test_logging_hides_it(caplog: pytest.LogCaptureFixture) -> None:
    """A Secret passed to a log call is rendered as the mask."""
    with caplog.at_level(logging.INFO):
        secret = Secret(b"tok-123")
        logging.getLogger("igris_mw.test").info("token=%s %r", secret, secret)
    assert "tok-123" not in caplog.text
    assert MASK in caplog.text


def test_reveal_returns_the_value() -> None:
    """reveal() gives back the exact bytes."""
    assert Secret(b"\x00value\xff").reveal() == b"\x00value\xff"


def test_only_bytes() -> None:
    """A Secret holds bytes only: str is a TypeError (so nothing is silently encoded)."""
    with pytest.raises(TypeError, match="bytes"):
        Secret("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_not_picklable(protocol: int) -> None:
    """pickle refuses a Secret under every protocol, without echoing the value."""
    with pytest.raises(TypeError, match="not to be pickled") as info:
        pickle.dumps(Secret(b"tok-123"), protocol=protocol)
    assert "tok-123" not in str(info.value)


def test_no_instance_dict() -> None:
    """A Secret has no __dict__ through which vars() could show the value."""
    with pytest.raises(TypeError):
        vars(Secret(b"x"))


@settings(max_examples=200, deadline=None)
@given(a=values, b=values)
def test_equality_is_value_equality(a: bytes, b: bytes) -> None:
    """Two Secrets are equal exactly when their values are; a Secret never equals raw bytes."""
    assert (Secret(a) == Secret(b)) == (a == b)
    assert (Secret(a) != Secret(b)) == (a != b)
    assert Secret(a) != a


def test_equality_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equality goes through hmac.compare_digest, the constant-time comparison."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(x: Any, y: Any) -> bool:
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert Secret(b"abc") == Secret(b"abc")
    assert Secret(b"abc") != Secret(b"abd")
    assert calls == [(b"abc", b"abc"), (b"abc", b"abd")]


def test_hash_depends_only_on_length() -> None:
    """hash() does not depend on the value's content, only its length."""
    assert hash(Secret(b"aaaa")) == hash(Secret(b"zzzz"))
    assert len({Secret(b"a"), Secret(b"a")}) == 1
