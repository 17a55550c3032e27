"""Write tests/vectors/keyring_v1.json: golden vectors for the keyring envelope v1.

Run: ``python tests/vectors/generate.py`` (from the repository root). The
keys and the "random" bytes are derived from fixed labels, so running it
again writes the same file; ``tests/test_keyring.py`` checks both that and
that each vector decrypts and re-encrypts byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from igris_mw._keyring import Keyring, kek_id
from igris_mw.crypto import InvalidCiphertext, UnknownKeyId, binding

OUT = Path(__file__).with_name("keyring_v1.json")


def _derive(label: str, size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"igris-mw vectors v1/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _key(n: int) -> bytes:
    return _derive(f"master key {n}", 32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


class _Recorder:
    """A urandom that hands out derived bytes and remembers them."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.taken = b""

    def __call__(self, size: int) -> bytes:
        chunk = _derive(f"{self.label}/{len(self.taken)}", size)
        self.taken += chunk
        return chunk


_CASES: list[tuple[str, bytes, bytes]] = [
    ("empty plaintext, empty AD", b"", b""),
    (
        "bearer token bound to a record",
        b"ghp_0123456789abcdefEXAMPLE",
        binding("github", 1, "https://api.example.com/mcp", "bearer"),
    ),
    (
        "basic credential, rotated record",
        "alice:pässwörd".encode(),
        binding("jira-prod", 7, "https://jira.example.com/mcp/", "basic"),
    ),
    ("4 KiB payload", _derive("payload", 4096), b"arbitrary associated data"),
]


def build() -> dict[str, Any]:
    """The vector document (pure: same output every run)."""
    encrypt: list[dict[str, Any]] = []
    for i, (name, plaintext, ad) in enumerate(_CASES):
        keys = [_key(1)] if i % 2 == 0 else [_key(2), _key(1)]
        rnd = _Recorder(f"encrypt {i}")
        envelope = Keyring(keys, urandom=rnd).encrypt_sync(plaintext, ad)
        encrypt.append(
            {
                "name": name,
                "keys": [_b64(k) for k in keys],
                "kek_id": kek_id(keys[0]).hex(),
                "plaintext": plaintext.hex(),
                "associated_data": ad.hex(),
                "randomness": rnd.taken.hex(),
                "envelope": envelope.hex(),
            }
        )

    old_ad = binding("github", 1, "https://api.example.com/mcp", "bearer")
    before = Keyring([_key(1)], urandom=_Recorder("rewrap before")).encrypt_sync(b"tok", old_ad)
    rnd = _Recorder("rewrap")
    after = Keyring([_key(2), _key(1)], urandom=rnd).rewrap_sync(before, old_ad)
    rewrap = [
        {
            "name": "move from master key 1 to master key 2",
            "keys": [_b64(_key(2)), _b64(_key(1))],
            "plaintext": b"tok".hex(),
            "associated_data": old_ad.hex(),
            "envelope": before.hex(),
            "randomness": rnd.taken.hex(),
            "rewrapped": after.hex(),
        }
    ]

    good = bytes.fromhex(encrypt[1]["envelope"])
    good_ad = bytes.fromhex(encrypt[1]["associated_data"])
    invalid_cases: list[tuple[str, list[bytes], bytes, bytes]] = [
        ("unknown version byte", [_key(2), _key(1)], b"\x02" + good[1:], good_ad),
        (
            "other associated data",
            [_key(2), _key(1)],
            good,
            binding("github", 2, "https://api.example.com/mcp", "bearer"),
        ),
        ("payload tag flipped", [_key(2), _key(1)], good[:-1] + bytes([good[-1] ^ 0x80]), good_ad),
        (
            "wrapped key flipped",
            [_key(2), _key(1)],
            good[:30] + bytes([good[30] ^ 1]) + good[31:],
            good_ad,
        ),
        ("truncated below the minimum size", [_key(2), _key(1)], good[:96], good_ad),
        ("master key no longer configured", [_key(1)], good, good_ad),
    ]
    invalid: list[dict[str, Any]] = []
    for name, keys, envelope, ad in invalid_cases:
        error: type[Exception] = InvalidCiphertext
        try:
            Keyring(keys).decrypt_sync(envelope, ad)
        except UnknownKeyId:
            error = UnknownKeyId
        except InvalidCiphertext:
            pass
        else:  # pragma: no cover - the generator itself refuses a bad vector
            raise SystemExit(f"vector {name!r} unexpectedly decrypts")
        invalid.append(
            {
                "name": name,
                "keys": [_b64(k) for k in keys],
                "associated_data": ad.hex(),
                "envelope": envelope.hex(),
                "error": error.__name__,
            }
        )

    return {
        "format": "igris-mw keyring envelope v1 (docs/crypto.md)",
        "generator": "tests/vectors/generate.py",
        "randomness_order": [
            "encrypt: data key (32), wrap nonce (12), payload nonce (12)",
            "rewrap: wrap nonce (12)",
        ],
        "encrypt": encrypt,
        "rewrap": rewrap,
        "invalid": invalid,
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


def main(write: Callable[[str], Any] = OUT.write_text) -> None:
    write(render(build()))


if __name__ == "__main__":
    main()
    print(f"wrote {OUT}", file=sys.stderr)
