"""The audit hash chain: canonical JSON, the event hash, sealing and verifying.

Every sink (the SQLite, memory and Postgres stores, the JSON-lines sink)
seals events with ``seal_event`` / ``seal_event_json`` and ``audit verify``
checks them with ``verify_chain``; all of them hash the one text that
``canonical_json`` makes, so a sink and ``verify`` can never disagree about
what was hashed (``seal_event_text``, the sealing path, writes that text
field by field without the dict; ``tests/test_audit_chain.py`` checks the
two agree on generated events). Changing ``canonical_json`` changes every hash already
stored: existing chains would stop verifying (``tests/test_audit_chain.py``
pins golden hashes).

Keyed chains: with an ``AuditKey`` (derived from the master key or the
crypto provider, see ``docs/audit.md``) an event's ``hash`` is an
HMAC-SHA256 of that text and the event names the key in ``keyId``, so
rewriting a chain needs the key. Without one (a store used on its own) the
hash is a plain SHA-256, as chains were before keys.

Heads: every sink keeps, per chain, a ``ChainHead`` (the last ``seq`` and
``hash``, MACed) and one ``ChainAnchor`` over all heads (how many chains,
the XOR of their head MACs, MACed), written in the same transaction as the
events. A cut at the end of a chain leaves its head ahead of its events; a
chain removed whole leaves its head without events, or, head and all, an
anchor that counts one chain too many. ``advance_heads`` computes both
incrementally for a batch; ``check_heads`` checks them.

This module is a leaf (it imports ``models`` only): ``igris_mw.storage``
re-exports its public names for store authors.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from ..models import AuditEvent, format_time

__all__ = [
    "ANCHOR",
    "AuditKey",
    "ChainAnchor",
    "ChainHead",
    "advance_heads",
    "audit_chain_hash",
    "canonical_json",
    "chain_name",
    "check_heads",
    "derive_audit_key",
    "reseal_chain",
    "seal_event",
    "seal_event_json",
    "seal_event_text",
    "verify_chain",
]

# The name under which sinks that keep heads in one table store the anchor:
# no slug can be it (slugs are [a-z0-9_-]).
ANCHOR = "#anchor"
# The global chain (events with ``connection`` None) in a text column.
GLOBAL = ""

_AUDIT_KEY_INFO = b"igris-mw/audit-chain/v1"
_HEAD_LABEL = b"igris-mw/audit-head/v1\n"
_ANCHOR_LABEL = b"igris-mw/audit-anchor/v1\n"


@attrs.frozen(repr=False)
class AuditKey:
    """The key audit chains are MACed under; ``repr`` never shows it."""

    key_id: str
    secret: bytes = attrs.field(eq=False)
    # The HMAC state after the key, made once: a copy per MAC skips hashing the
    # key's pads again (once per event: ~20 % of a MAC, callgrind). Never updated,
    # so copies from several threads are safe.
    _keyed: Any = attrs.field(init=False, eq=False, repr=False)

    @_keyed.default
    def _key_state(self) -> Any:
        return hmac.new(self.secret, digestmod=hashlib.sha256)

    def mac(self, data: bytes) -> str:
        state = self._keyed.copy()
        state.update(data)
        return str(state.hexdigest())

    def __repr__(self) -> str:
        return f"AuditKey(key_id={self.key_id!r})"


def derive_audit_key(key_id: str, material: bytes) -> AuditKey:
    """HKDF-SHA256 (RFC 5869, no salt) of ``material`` with a fixed info label.

    The audit key is never the key that seals credentials: a MAC under it
    reveals nothing about that key, and no ciphertext can be made with it.
    """
    prk = hmac.new(b"\0" * 32, material, hashlib.sha256).digest()
    okm = hmac.new(prk, _AUDIT_KEY_INFO + b"\x01", hashlib.sha256).digest()
    return AuditKey(key_id=key_id, secret=okm)


def chain_name(connection: str | None) -> str:
    """The chain's name in a text column: the slug, or "" for the global chain."""
    return GLOBAL if connection is None else connection


def _mac(key: AuditKey | None, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if key is None else key.mac(data)


@attrs.frozen
class ChainHead:
    """The last event of one chain, MACed: ``seq`` and ``hash`` of its tail."""

    chain: str | None
    seq: int
    hash: str | None
    key_id: str | None
    mac: str

    @staticmethod
    def text(chain: str | None, seq: int, hash_: str | None) -> bytes:
        return _HEAD_LABEL + json.dumps([chain, seq, hash_]).encode()

    @classmethod
    def sign(
        cls, chain: str | None, seq: int, hash_: str | None, key: AuditKey | None
    ) -> ChainHead:
        key_id = None if key is None else key.key_id
        return cls(chain, seq, hash_, key_id, _mac(key, cls.text(chain, seq, hash_)))

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "seq": self.seq,
            "hash": self.hash,
            "keyId": self.key_id,
            "mac": self.mac,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ChainHead:
        return cls(body["chain"], int(body["seq"]), body["hash"], body["keyId"], str(body["mac"]))


@attrs.frozen
class ChainAnchor:
    """Every head at once: how many chains, and the XOR of their head MACs, MACed."""

    chains: int
    digest: str
    key_id: str | None
    mac: str

    @staticmethod
    def text(chains: int, digest: str) -> bytes:
        return _ANCHOR_LABEL + json.dumps([chains, digest]).encode()

    @classmethod
    def sign(cls, chains: int, digest: str, key: AuditKey | None) -> ChainAnchor:
        key_id = None if key is None else key.key_id
        return cls(chains, digest, key_id, _mac(key, cls.text(chains, digest)))

    def to_json(self) -> dict[str, Any]:
        return {"chains": self.chains, "digest": self.digest, "keyId": self.key_id, "mac": self.mac}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ChainAnchor:
        return cls(int(body["chains"]), str(body["digest"]), body["keyId"], str(body["mac"]))


_ZERO = "0" * 64


def _xor(a: str, b: str) -> str:
    return f"{int(a, 16) ^ int(b, 16):064x}"


def digest_of(heads: Iterable[ChainHead]) -> str:
    out = _ZERO
    for head in heads:
        out = _xor(out, head.mac)
    return out


class Tail(Protocol):
    """A chain's last sealed event, or just its ``seq`` and ``hash``."""

    @property
    def seq(self) -> int: ...

    @property
    def hash(self) -> str | None: ...


def advance_heads(
    tails: Mapping[str | None, Tail],
    old_heads: Mapping[str | None, ChainHead | None],
    anchor: ChainAnchor | None,
    key: AuditKey | None,
) -> tuple[list[ChainHead], ChainAnchor]:
    """The heads of the chains a batch touched, and the anchor after it.

    ``tails``: each touched chain's new last (sealed) event, or anything
    with its ``seq`` and ``hash``; ``old_heads``:
    their stored heads (``None``: a new chain); ``anchor``: the stored
    anchor (``None``: none yet). Costs O(chains in the batch), not O(all).
    """
    chains = 0 if anchor is None else anchor.chains
    digest = _ZERO if anchor is None else anchor.digest
    heads = []
    for chain, tail in tails.items():
        old = old_heads.get(chain)
        if old is None:
            chains += 1
        else:
            digest = _xor(digest, old.mac)
        head = ChainHead.sign(chain, tail.seq, tail.hash, key)
        digest = _xor(digest, head.mac)
        heads.append(head)
    return heads, ChainAnchor.sign(chains, digest, key)


# json.dumps with these arguments builds this encoder anew on every call; it
# keeps no state between calls (thread-safe), and gives the same text.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_json(body: Mapping[str, Any]) -> str:
    """The text an event's hash covers: keys sorted, compact, ASCII only.

    ``body`` is ``AuditEvent.to_json()`` without ``hash``.
    """
    return _CANONICAL.encode(body)


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def audit_chain_hash(event: AuditEvent, key: AuditKey | None = None) -> str:
    """The event's hash over its canonical JSON (``prevHash``, ``seq`` and
    ``keyId`` included): HMAC-SHA256 under ``key``, SHA-256 without one."""
    body = event.to_json()
    body.pop("hash", None)
    return _mac(key, canonical_json(body).encode())


def seal_event(
    event: AuditEvent, previous: AuditEvent | None, key: AuditKey | None = None
) -> AuditEvent:
    """Chain ``event`` after ``previous`` (``None``: first of its chain)."""
    return seal_event_json(event, previous, key)[0]


def seal_event_json(
    event: AuditEvent, previous: AuditEvent | None, key: AuditKey | None = None
) -> tuple[AuditEvent, str]:
    """``seal_event``, plus the sealed event's JSON text (``to_json()``, keys
    sorted, compact) for stores that keep events as JSON: it is built once,
    for the hash, instead of once more to store it."""
    seq = 1 if previous is None else previous.seq + 1
    prev_hash = None if previous is None else previous.hash
    digest, text = seal_event_text(event, seq, prev_hash, key)
    key_id = None if key is None else key.key_id
    sealed = attrs.evolve(event, key_id=key_id, seq=seq, prev_hash=prev_hash, hash=digest)
    return sealed, text


def seal_event_text(
    event: AuditEvent, seq: int, prev_hash: str | None, key: AuditKey | None = None
) -> tuple[str, str]:
    """The hash and the stored JSON text of ``event`` sealed at ``seq`` after
    ``prev_hash``, for a store that keeps events as text and needs no sealed
    ``AuditEvent`` (the next event needs only ``seq`` and ``hash``).

    The text is ``seal_event_json``'s, byte for byte: it parses back to the
    sealed event.
    """
    # Once per audited request, in the SQLite writer thread while it holds the
    # GIL: no to_json() dict, no sort, no evolve of the 21-field frozen event.
    canonical = _canonical_event(event, seq, prev_hash, None if key is None else key.key_id)
    digest = _mac(key, canonical.encode())
    # The hashed text with the hash appended: it parses back to the sealed event.
    return digest, canonical[:-1] + f',"hash":"{digest}"}}'


_escape = json.encoder.encode_basestring_ascii


def _v(value: Any) -> str:
    """``value`` as ``_CANONICAL`` writes it inside an object."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _escape(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return _CANONICAL.encode(value)  # bool, subclasses, NaN, containers: the encoder's own way


def _canonical_event(event: AuditEvent, seq: int, prev_hash: str | None, key_id: str | None) -> str:
    """``canonical_json`` of the sealed event's ``to_json()`` without ``hash``,
    written field by field in sorted key order (``test_audit_chain.py``
    checks it against ``canonical_json`` on generated events)."""
    changes, count, metadata = event.changes, event.count, event.metadata
    parts = [
        '{"action":', _v(event.action),
        ',"apiKeyId":', _v(event.api_key_id),
        ',"bytesIn":', _v(event.bytes_in),
        ',"bytesOut":', _v(event.bytes_out),
    ]  # fmt: skip
    if changes is not None:
        parts += (',"changes":', _CANONICAL.encode(dict(changes)))
    parts += (',"connection":', _v(event.connection))
    if count is not None:
        parts += (',"count":', _v(count))
    parts += (',"credentialVersion":', _v(event.credential_version), ',"id":', _v(event.id))
    if key_id is not None:
        parts += (',"keyId":', _v(key_id))
    parts += (
        ',"kind":', _v(event.kind),
        ',"latencyMs":', _v(event.latency_ms),
        ',"metadata":', "null" if metadata is None else _CANONICAL.encode(dict(metadata)),
        ',"method":', _v(event.method),
        ',"outcome":', _v(event.outcome),
        ',"path":', _v(event.path),
        ',"prevHash":', _v(prev_hash),
        ',"rpcMethod":', _v(event.rpc_method),
        ',"seq":', _v(seq),
        ',"status":', _v(event.status),
        ',"timestamp":', _v(format_time(event.timestamp)),
        ',"tool":', _v(event.tool),
        ',"user":', _v(event.user),
        "}",
    )  # fmt: skip
    return "".join(parts)


def reseal_chain(events: Sequence[AuditEvent], key: AuditKey | None) -> list[AuditEvent]:
    """A whole chain (oldest first) sealed again under ``key``, same ids and
    order, renumbered from 1: the migration from unkeyed chains."""
    out: list[AuditEvent] = []
    previous: AuditEvent | None = None
    for event in events:
        previous = seal_event(event, previous, key)
        out.append(previous)
    return out


def _check_hash(
    event: AuditEvent, keys: Mapping[str, AuditKey] | None, problems: list[str]
) -> None:
    where = f"event {event.id} (seq {event.seq})"
    plain = audit_chain_hash(event)
    if event.key_id is None:
        if event.hash != plain:
            problems.append(f"{where} was edited: its hash does not match")
        elif keys is not None:
            problems.append(
                f"{where} is not sealed with the audit key: the chain was re-hashed without "
                "the key (or sealed before keys and never re-sealed)"
            )
        return
    if keys is None:
        return  # a keyed event and no keys to check it with: say nothing false
    key = keys.get(event.key_id)
    if key is None:
        problems.append(
            f"{where} is sealed with audit key {event.key_id!r}, which is not configured"
        )
    elif event.hash != audit_chain_hash(event, key):
        if event.hash == plain:
            problems.append(f"{where} was re-hashed without the audit key")
        else:
            problems.append(f"{where} was edited: its hash does not match")


# How far from its stored seq an event's sealed seq is looked for.
_MOVE_WINDOW = 64


def _sealed_seq(event: AuditEvent, keys: Mapping[str, AuditKey] | None) -> int | None:
    """The seq an event was sealed with, when it is stored under another one.

    Only for an event whose hash fails at its stored seq; tries the seqs
    near it, so a reorder in a store ordered by seq is told from an edit.
    """
    if event.key_id is None:
        key = None
    elif keys is None or event.key_id not in keys:
        return None
    else:
        key = keys[event.key_id]
    if event.hash == audit_chain_hash(event, key):
        return None
    for seq in range(max(1, event.seq - _MOVE_WINDOW), event.seq + _MOVE_WINDOW + 1):
        if seq != event.seq and audit_chain_hash(attrs.evolve(event, seq=seq), key) == event.hash:
            return seq
    return None


def verify_chain(
    events: Sequence[AuditEvent],
    previous: AuditEvent | None = None,
    keys: Mapping[str, AuditKey] | None = None,
) -> list[str]:
    """Problems found in a run of one chain's events, in stored order.

    An empty list means every event is intact and none is missing. With
    ``keys`` (key id -> key) every event must be an HMAC under its key;
    without, unkeyed events are checked and keyed ones taken on trust.
    """
    problems: list[str] = []
    expected_seq = 1 if previous is None else previous.seq + 1
    prev_hash = None if previous is None else previous.hash
    run = list(events)
    for before, after in itertools.pairwise(run):
        if after.seq <= before.seq:
            problems.append(
                f"events are out of order: seq {after.seq} (id {after.id}) is stored "
                f"after seq {before.seq} (id {before.id})"
            )
    if problems:
        run.sort(key=lambda e: e.seq)
    moved_before = False
    for event in run:
        sealed_as = _sealed_seq(event, keys)
        if sealed_as is not None:
            # A store ordered by its seq column: the row was given another event's seq.
            problems.append(
                f"events are out of order: seq {sealed_as} (id {event.id}) is stored at "
                f"seq {event.seq}"
            )
            expected_seq, prev_hash, moved_before = event.seq + 1, event.hash, True
            continue
        if event.seq > expected_seq:
            missing = event.seq - expected_seq
            problems.append(
                f"event seq {expected_seq} is missing"
                + (f" ({missing} events, up to seq {event.seq - 1})" if missing > 1 else "")
                + f" (next found: seq {event.seq}, id {event.id})"
            )
        elif event.prev_hash != prev_hash and not moved_before:
            problems.append(
                f"event {event.id} (seq {event.seq}) does not follow the event before it"
            )
        moved_before = False
        _check_hash(event, keys, problems)
        expected_seq = event.seq + 1
        prev_hash = event.hash
    return problems


def _name(chain: str | None) -> str:
    return "the global chain" if chain is None else f"chain {chain!r}"


def check_heads(
    last: Mapping[str | None, AuditEvent | None],
    heads: Mapping[str | None, ChainHead],
    anchor: ChainAnchor | None,
    keys: Mapping[str, AuditKey] | None,
) -> dict[str | None, list[str]]:
    """Problems with the ends of chains: chain -> problems.

    ``last``: each chain that has events -> its last stored event; ``heads``:
    every stored head; ``anchor``: the stored anchor. Problems about no
    chain in particular (heads removed with their chains) are under the key
    ``ANCHOR``.
    """
    report: dict[str | None, list[str]] = {}

    def add(chain: str | None, text: str) -> None:
        report.setdefault(chain, []).append(text)

    def mac_ok(key_id: str | None, text: bytes, mac: str) -> bool | None:
        if key_id is None:
            return None if keys is not None else hmac.compare_digest(_mac(None, text), mac)
        if keys is None:
            return True
        key = keys.get(key_id)
        if key is None:
            return None
        return hmac.compare_digest(key.mac(text), mac)

    for chain, tail in last.items():
        head = heads.get(chain)
        if head is None:
            if keys is not None:
                add(
                    chain,
                    f"{_name(chain)} has no signed head: its head was removed, or it "
                    "was written outside the gateway",
                )
            continue
        if tail is None:
            continue
        if tail.seq < head.seq:
            cut = head.seq - tail.seq
            add(
                chain,
                f"the last {cut} event(s) of {_name(chain)} were removed: it ends at "
                f"seq {tail.seq}, its signed head says seq {head.seq}",
            )
        elif tail.seq > head.seq:
            add(
                chain,
                f"{_name(chain)} has events after its signed head (seq {head.seq}): "
                "added outside the gateway",
            )
        elif tail.hash != head.hash:
            add(chain, f"the last event of {_name(chain)} (seq {tail.seq}) was replaced")
    for chain, head in heads.items():
        ok = mac_ok(head.key_id, ChainHead.text(chain, head.seq, head.hash), head.mac)
        if ok is None and head.key_id is None:
            add(
                chain,
                f"the head of {_name(chain)} is not signed with the audit key: "
                "re-signed without the key",
            )
        elif ok is None:
            add(
                chain,
                f"the head of {_name(chain)} is signed with audit key "
                f"{head.key_id!r}, which is not configured",
            )
        elif not ok:
            add(chain, f"the signed head of {_name(chain)} was forged (its MAC does not match)")
        if chain not in last and head.seq > 0:
            add(
                chain,
                f"{_name(chain)} was removed whole: its signed head says seq {head.seq}, "
                "no event is left",
            )
    if anchor is None:
        if heads and keys is not None:
            add(ANCHOR, "the anchor over the chain heads is missing (removed)")
        return report
    anchor_text = ChainAnchor.text(anchor.chains, anchor.digest)
    if mac_ok(anchor.key_id, anchor_text, anchor.mac) is not True:
        add(ANCHOR, "the anchor over the chain heads was forged (its MAC does not match)")
    if anchor.chains > len(heads):
        add(
            ANCHOR,
            f"{anchor.chains - len(heads)} chain(s) were removed whole together with "
            "their signed heads",
        )
    elif anchor.chains != len(heads) or anchor.digest != digest_of(heads.values()):
        add(ANCHOR, "the chain heads do not match their signed anchor: a head was replaced")
    return report
