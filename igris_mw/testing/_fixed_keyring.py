"""A keyring with deterministic master keys, for users' own tests."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable

from .._keyring import ENV_KEY, Keyring

__all__ = ["FixedKeyring"]

_LABEL = b"igris-mw FixedKeyring v1\x00"


class FixedKeyring(Keyring):
    """A ``Keyring`` whose master keys are derived from names: same names, same keys.

    For tests only: anyone who knows the name knows the key.

    Args:
        names: one name per master key, newest (primary) first; default ``"test"``.
        urandom: source of data keys and nonces (fresh per envelope by default).
    """

    __slots__ = ()

    def __init__(self, *names: str, urandom: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__([self.key_for(n) for n in names or ("test",)], urandom=urandom)

    @staticmethod
    def key_for(name: str) -> bytes:
        """The 32-byte master key for ``name``."""
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        return hashlib.sha256(_LABEL + name.encode("utf-8")).digest()

    @classmethod
    def environ(cls, *names: str) -> dict[str, str]:
        """``{"IGRIS_MASTER_KEY": ...}`` for the same keys, e.g. to run the CLI."""
        keys = [cls.key_for(n) for n in names or ("test",)]
        return {ENV_KEY: ",".join(base64.b64encode(k).decode("ascii") for k in keys)}
