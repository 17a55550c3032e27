"""``JsonlAuditSink``: the audit trail as a JSON-lines file.

For stores that do not keep audit events themselves (a Vault KV store): one
sealed event per line (``AuditEvent.to_json()``), each connection's events
a hash chain made by ``seal_event``, exactly as a store's audit methods.

* File mode 0600; each batch is appended and fsynced before
  ``append_audit_events`` returns.
* The hash chain is ``igris_mw._audit.chain``'s, the same as every store's.
* Several processes may append to one file: a batch is written under an
  exclusive ``flock``, after reading what others appended since, so seqs
  never repeat. The lock is waited for at most ``lock_timeout`` seconds
  (then ``StoreUnavailable``, and the audit writer retries): a worker
  thread blocked for ever on another process's lock would make shutdown
  hang. Readers pick up lines appended by others on every call.
* Keyed chains (``use_audit_key``): each chain's signed head and the anchor
  over all heads live beside the file in ``<file>.heads`` (0600, replaced
  atomically under the same lock after each batch). A file from before
  keyed chains (events, no heads file, no keyed event) is re-sealed under
  the key by the first ``use_audit_key``: rewritten whole, atomically (the
  one operation that holds a whole file in memory, once).
* File I/O runs in a worker thread (``asyncio.to_thread``), never on the loop.
* Events are read from the file, never kept: the index rebuilt on
  ``open()`` holds per connection the last event (to chain the next) and
  the offset of every 256th event, plus the ids of the latest 100,000
  events (to skip a batch sent again), so a year of events costs a few
  megabytes. Listing newest first reads the file backwards in 64 KiB
  chunks; ``audit_chain`` reads forward from the nearest offset.
  A torn last line (a crash mid-write) is skipped and counted in
  ``skipped_lines``; ``audit verify`` then shows whatever is missing.

``audit_sink_from_url`` chooses a sink by URL: ``jsonl:///path/audit.jsonl``
here, any other URL is a store whose ``capabilities.audit`` is true.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import heapq
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .._errors import AuditRejected, ConfigurationError, StoreUnavailable
from .._paging import bad_cursor, check_limit, decode_cursor, decode_seq_cursor, encode_cursor
from ..models import AuditEvent, Page
from .chain import (
    AuditKey,
    ChainAnchor,
    ChainHead,
    advance_heads,
    reseal_chain,
    seal_event,
    verify_chain,
)

if TYPE_CHECKING:
    from ..storage import AuditQuery, AuditSink

__all__ = ["JsonlAuditSink", "audit_sink_from_url", "build_audit_sink", "event_from_json"]

_CURSOR = b"ja1:"
_ALL_CURSOR = b"jall1:"


# Kept for importers of the old name.
event_from_json = AuditEvent.from_json


def _line(event: AuditEvent) -> bytes:
    return json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class JsonlAuditSink:
    """The audit part of the ``Store`` protocol, on a JSON-lines file.

    Args:
        path: the file; created (mode 0600) on ``open()`` if missing.
        lock_timeout: seconds an append waits for another process's lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._index = _Index()
        self._key: AuditKey | None = None
        self._heads_cache: (
            tuple[tuple[int, int, int], dict[str | None, ChainHead], ChainAnchor] | None
        ) = None
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self._opened = False

    @property
    def skipped_lines(self) -> int:
        """Lines that are not events (a torn last line after a crash)."""
        return self._index.skipped

    @classmethod
    def from_url(cls, url: str) -> JsonlAuditSink:
        """``jsonl:///absolute/path.jsonl`` or ``jsonl:relative/path.jsonl``.

        Raises:
            ConfigurationError: another scheme, a host part, or no path.
        """
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "jsonl":
            raise ConfigurationError(
                f"not a jsonl audit URL: {url!r}; expected jsonl:///path/audit.jsonl"
            )
        if parts.netloc:
            raise ConfigurationError(
                f"jsonl audit URL {url!r} has a host part; use three slashes: jsonl:///path/audit.jsonl"
            )
        if not parts.path or parts.path.endswith("/"):
            raise ConfigurationError(f"jsonl audit URL {url!r} names no file")
        return cls(unquote(parts.path))

    def __repr__(self) -> str:
        return f"JsonlAuditSink({str(self.path)!r})"

    # -- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        """Create the file if missing and index it.

        Raises:
            ConfigurationError: the file cannot be created or read.
        """
        async with self._lock:
            await asyncio.to_thread(self._open_sync)
            self._opened = True

    def _open_sync(self) -> None:
        with self._thread_lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                os.close(fd)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot open the audit file {str(self.path)!r}: {exc.strerror}"
                ) from exc
            self._index = _Index()
            with self.path.open("rb") as fh:
                self._index.catch_up(fh)

    async def close(self) -> None:
        self._opened = False

    # -- reading the file --------------------------------------------------------
    def _refresh_sync(self) -> None:
        with self._thread_lock, self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > self._index.offset:
                self._index.catch_up(fh)

    async def _refresh(self) -> None:
        if not self._opened:
            raise ConfigurationError("the audit sink is not open; call await sink.open() first")
        await asyncio.to_thread(self._refresh_sync)

    # -- the audit protocol --------------------------------------------------------
    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        """Seal and append a batch; fsynced before returning. Known ids are skipped.

        Raises:
            AuditRejected: an event the file cannot hold (no UTF-8 form).
            StoreUnavailable: another process held the file's lock too long.
        """
        if not self._opened:
            raise ConfigurationError("the audit sink is not open; call await sink.open() first")
        async with self._lock:
            await asyncio.to_thread(self._append_sync, list(events))

    def _append_sync(self, events: list[AuditEvent]) -> None:
        index = self._index
        with self._thread_lock, self.path.open("a+b") as fh:
            self._lock_file(fh.fileno())
            try:
                index.catch_up(fh)
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                torn = size > index.offset  # a partial last line: start ours on a new one
                known = index.known_ids(fh, [e.id for e in events])
                sealed: list[AuditEvent] = []
                last: dict[str | None, AuditEvent | None] = {}
                for event in events:
                    if event.id in known:
                        continue
                    known.add(event.id)
                    if event.connection not in last:
                        last[event.connection] = index.heads.get(event.connection)
                    event = seal_event(event, last[event.connection], self._key)
                    last[event.connection] = event
                    sealed.append(event)
                if not sealed:
                    return
                try:
                    lines = [_line(e) for e in sealed]
                except (ValueError, TypeError) as exc:
                    # A lone surrogate (no UTF-8 form) or a value JSON cannot hold.
                    raise AuditRejected(
                        f"the audit file cannot hold an event: {type(exc).__name__}"
                    ) from exc
                payload = (b"\n" if torn else b"") + b"".join(lines)
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
                if torn:
                    index.skipped += 1
                at = size + (1 if torn else 0)
                for event, line in zip(sealed, lines, strict=True):
                    index.add(event, at)
                    at += len(line)
                index.offset = size + len(payload)
                tails = {c: e for c, e in last.items() if e is not None}
                heads, anchor = self._read_heads()
                new_heads, new_anchor = advance_heads(
                    tails, {c: heads.get(c) for c in tails}, anchor, self._key
                )
                heads.update((h.chain, h) for h in new_heads)
                self._write_heads(heads, new_anchor)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @property
    def heads_path(self) -> Path:
        return self.path.with_name(self.path.name + ".heads")

    def _read_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        try:
            stat = self.heads_path.stat()
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise StoreUnavailable(f"the audit heads file cannot be read: {exc}") from exc
        # The file as this object last wrote it (no other process since): no re-read.
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._heads_cache is not None and self._heads_cache[0] == signature:
            return dict(self._heads_cache[1]), self._heads_cache[2]
        try:
            doc = json.loads(self.heads_path.read_bytes())
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"the audit heads file cannot be read: {exc}") from exc
        heads = {h["chain"]: ChainHead.from_json(h) for h in doc.get("heads", [])}
        anchor = doc.get("anchor")
        return heads, None if anchor is None else ChainAnchor.from_json(anchor)

    def _write_heads(self, heads: dict[str | None, ChainHead], anchor: ChainAnchor) -> None:
        doc = {"heads": [h.to_json() for h in heads.values()], "anchor": anchor.to_json()}
        _replace_file(self.heads_path, json.dumps(doc).encode())
        stat = self.heads_path.stat()
        self._heads_cache = ((stat.st_ino, stat.st_size, stat.st_mtime_ns), dict(heads), anchor)

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        """Every chain's signed head and the anchor over them."""
        async with self._lock:
            return await asyncio.to_thread(self._read_heads_locked)

    def _read_heads_locked(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        with self._thread_lock:
            return self._read_heads()

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        """Every chain's matching events, newest (highest id) first.

        One pass over the file in bounded chunks, keeping only the best
        ``limit + 1`` events: memory does not grow with the file.
        """
        from ..storage import page_by_id

        check_limit(limit)
        before = None if cursor is None else decode_cursor(_ALL_CURSOR, cursor)
        async with self._lock:
            await self._refresh()
            top = await asyncio.to_thread(self._top_by_id, query, limit + 1, before)
        return page_by_id(top, _ALL_CURSOR, limit=limit, cursor=cursor)

    def _top_by_id(self, query: AuditQuery, keep: int, before: str | None) -> list[AuditEvent]:
        with self._thread_lock:
            end = self._index.offset
        heap: list[tuple[str, int, AuditEvent]] = []
        with self.path.open("rb") as fh:
            for at, raw in _lines_forward(fh, 0, end):
                if not raw.strip():
                    continue
                found = _id_of(raw)
                if found is None or (before is not None and found >= before):
                    continue
                if len(heap) >= keep and found <= heap[0][0]:
                    continue
                try:
                    event = AuditEvent.from_json(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue
                if not query.matches(event):
                    continue
                item = (event.id, at, event)
                if len(heap) < keep:
                    heapq.heappush(heap, item)
                else:
                    heapq.heapreplace(heap, item)
        return [e for _, _, e in heap]

    async def use_audit_key(self, key: AuditKey | None) -> None:
        """Seal with ``key`` from now on; re-seal a file from before keyed chains."""
        async with self._lock:
            self._key = key
            if key is not None:
                await asyncio.to_thread(self._reseal_sync, key)

    def _reseal_sync(self, key: AuditKey) -> None:
        with self._thread_lock, self.path.open("a+b") as fh:
            self._lock_file(fh.fileno())
            try:
                self._index.catch_up(fh)
                if self.heads_path.exists() or not self._index.heads:
                    return
                # A migration, once: the file's chains are read whole.
                chains: dict[str | None, list[AuditEvent]] = {}
                seen: set[str] = set()
                for _, raw in _lines_forward(fh, 0, self._index.offset):
                    try:
                        event = AuditEvent.from_json(json.loads(raw))
                    except (ValueError, KeyError, TypeError):
                        continue
                    if event.id not in seen:
                        seen.add(event.id)
                        chains.setdefault(event.connection, []).append(event)
                if any(e.key_id is not None for c in chains.values() for e in c):
                    return  # keyed events but no heads file: tampering, left for verify
                for name, events in chains.items():
                    chains[name] = events if verify_chain(events) else reseal_chain(events, key)
                lines = b"".join(_line(e) for c in chains.values() for e in c)
                _replace_file(self.path, lines)
                tails = {c: e[-1] for c, e in chains.items() if e and e[-1].key_id is not None}
                heads, anchor = advance_heads(tails, {}, None, key)
                self._write_heads({h.chain: h for h in heads}, anchor)
                self._index = _Index()
                with self.path.open("rb") as fresh:
                    self._index.catch_up(fresh)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _lock_file(self, fd: int) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"the audit file {str(self.path)!r} stayed locked by another process "
                        f"for {self.lock_timeout:g}s"
                    ) from None
                time.sleep(0.01)

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        """Newest first; ``cursor`` from the previous page; ``since`` inclusive.

        Reads the file backwards in bounded chunks from the newest event
        (or, after a cursor, from the nearest indexed offset).

        Raises:
            ValidationError: ``limit`` below 1, or a cursor this sink did not make.
        """
        check_limit(limit)
        before = _decode_cursor(cursor) if cursor is not None else None
        async with self._lock:
            await self._refresh()
            picked = await asyncio.to_thread(self._newest_sync, connection, limit, before, since)
        more = len(picked) > limit
        items = picked[:limit]
        return Page(items, encode_cursor(_CURSOR, str(items[-1].seq)) if more else None)

    def _newest_sync(
        self, connection: str | None, limit: int, before: int | None, since: datetime | None
    ) -> list[AuditEvent]:
        with self._thread_lock:
            end = self._index.offset_before(connection, before)
        if end is None:
            return []
        picked: list[AuditEvent] = []
        needle = _needle(connection)
        with self.path.open("rb") as fh:
            for raw in _lines_backward(fh, end):
                event = _event_of(raw, connection, needle)
                if event is None:
                    continue
                if before is not None and event.seq >= before:
                    continue
                if since is None or event.timestamp >= since:
                    picked.append(event)
                    if len(picked) > limit:
                        break
                if event.seq <= 1:
                    break  # the first of its chain: nothing older
        return picked

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        """Events with ``seq > after_seq``, oldest first, at most ``limit``;
        read from the nearest indexed offset on, in bounded chunks."""
        async with self._lock:
            await self._refresh()
            return await asyncio.to_thread(self._chain_sync, connection, after_seq, limit)

    def _chain_sync(self, connection: str | None, after_seq: int, limit: int) -> list[AuditEvent]:
        with self._thread_lock:
            start = self._index.offset_from(connection, after_seq + 1)
            end = self._index.offset
        if start is None or limit < 1:
            return []
        found: list[AuditEvent] = []
        needle = _needle(connection)
        with self.path.open("rb") as fh:
            for _, raw in _lines_forward(fh, start, end):
                event = _event_of(raw, connection, needle)
                if event is not None and event.seq > after_seq:
                    found.append(event)
                    if len(found) >= limit:
                        break
        return found

    async def audit_connections(self) -> list[str]:
        """Every slug with audit events, sorted."""
        async with self._lock:
            await self._refresh()
            return sorted(c for c in self._index.heads if c is not None)


# -- the index: what is kept in memory, whatever the file's size ----------------------

_MARK_EVERY = 256
"""A file offset is kept for every 256th event of a connection."""
_RECENT_IDS = 100_000
"""Ids of the latest events appended, to skip a batch sent again."""
_CHUNK = 1 << 20
_BACK_CHUNK = 64 << 10


def _id_ms(event_id: str) -> int:
    """The creation time (ms) in an ``evt_`` id; -1 for an id of another form."""
    try:
        return int(event_id[4:16], 16) if event_id.startswith("evt_") else -1
    except ValueError:
        return -1


class _Index:
    """Per connection: the last event (to chain the next one) and the file
    offsets of every ``_MARK_EVERY``-th event (to start reading near a seq);
    the ids of the latest events. Memory grows with the number of
    connections and with events / 256, not with the events themselves.

    Skipping a re-sent event: an id among the latest ``_RECENT_IDS`` is known
    at once. An id no longer there was created no later than ``floor_ms``
    (the newest creation time of an id that left the window); an event
    created after that, and not in the window, was never appended. Only an
    event created earlier (a spill replayed long after) makes the file be
    scanned for its id.
    """

    def __init__(self) -> None:
        self.heads: dict[str | None, AuditEvent] = {}
        self.mark_seqs: dict[str | None, list[int]] = {}
        self.mark_offsets: dict[str | None, list[int]] = {}
        self.recent: deque[str] = deque()
        self.recent_set: set[str] = set()
        self.floor_ms = -1
        self.evicted_foreign = False
        self.offset = 0  # bytes of the file indexed: up to the end of its last whole line
        self.skipped = 0

    def add(self, event: AuditEvent, offset: int) -> None:
        if event.id in self.recent_set:
            return
        self._remember(event.id)
        conn = event.connection
        head = self.heads.get(conn)
        if head is None or event.seq > head.seq:
            self.heads[conn] = event
        seqs = self.mark_seqs.setdefault(conn, [])
        if not seqs or event.seq >= seqs[-1] + _MARK_EVERY:
            seqs.append(event.seq)
            self.mark_offsets.setdefault(conn, []).append(offset)

    def _remember(self, event_id: str) -> None:
        self.recent.append(event_id)
        self.recent_set.add(event_id)
        if len(self.recent) > _RECENT_IDS:
            old = self.recent.popleft()
            self.recent_set.discard(old)
            ms = _id_ms(old)
            if ms < 0:
                self.evicted_foreign = True
            self.floor_ms = max(self.floor_ms, ms)

    def _maybe_evicted(self, event_id: str) -> bool:
        """Could ``event_id`` (not in the window) have left it? Then look in the file."""
        ms = _id_ms(event_id)
        if ms < 0:  # an id of another form: no time to compare
            return self.evicted_foreign or self.floor_ms >= 0
        return ms <= self.floor_ms

    def catch_up(self, fh: Any) -> None:
        """Index the whole lines past ``offset`` (ours or another process's)."""
        for at, raw in _lines_forward(fh, self.offset, None):
            if not raw.strip():
                self.offset = at + len(raw) + 1
                continue
            try:
                event = AuditEvent.from_json(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                self.skipped += 1
            else:
                self.add(event, at)
            self.offset = at + len(raw) + 1

    def known_ids(self, fh: Any, ids: list[str]) -> set[str]:
        """Which of ``ids`` are in the file already."""
        known = {i for i in ids if i in self.recent_set}
        old = {i for i in ids if i not in known and self._maybe_evicted(i)}
        if old:
            for _, raw in _lines_forward(fh, 0, self.offset):
                found = _id_of(raw)
                if found in old:
                    known.add(found)
                    old.discard(found)
                    if not old:
                        break
        return known

    def offset_from(self, connection: str | None, seq: int) -> int | None:
        """An offset at or before the event ``seq`` of ``connection``; None: no events."""
        seqs = self.mark_seqs.get(connection)
        if not seqs:
            return None
        i = bisect.bisect_right(seqs, seq) - 1
        return self.mark_offsets[connection][max(i, 0)]

    def offset_before(self, connection: str | None, before: int | None) -> int | None:
        """An offset after every event of ``connection`` with ``seq < before``."""
        seqs = self.mark_seqs.get(connection)
        if not seqs:
            return None
        if before is not None:
            i = bisect.bisect_left(seqs, before)
            if i < len(seqs):
                return self.mark_offsets[connection][i]
        return self.offset


def _lines_forward(fh: Any, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line without newline) of each whole line in [start, end), blank ones too."""
    fh.seek(start)
    base = start
    carry = b""
    while end is None or base + len(carry) < end:
        want = _CHUNK if end is None else min(_CHUNK, end - base - len(carry))
        chunk = fh.read(want)
        if not chunk:
            return
        data = carry + chunk
        i = 0
        while (j := data.find(b"\n", i)) >= 0:
            yield base + i, data[i:j]
            i = j + 1
        carry = data[i:]
        base += i


def _lines_backward(fh: Any, end: int) -> Iterator[bytes]:
    """The non-blank lines before ``end`` (a line boundary), newest first."""
    pos = end
    carry = b""
    while pos > 0:
        size = min(_BACK_CHUNK, pos)
        pos -= size
        fh.seek(pos)
        lines = (fh.read(size) + carry).split(b"\n")
        carry = lines[0]
        for raw in reversed(lines[1:]):
            if raw.strip():
                yield raw
    if carry.strip():
        yield carry


def _needle(connection: str | None) -> bytes:
    return b'"connection":' + json.dumps(connection, ensure_ascii=False).encode()


def _event_of(raw: bytes, connection: str | None, needle: bytes) -> AuditEvent | None:
    """The event on ``raw`` if it belongs to ``connection``, parsing only candidates."""
    if needle not in raw and (b'"connection":"' in raw or b'"connection":null' in raw):
        return None  # written compactly (as this sink does) for another connection
    try:
        event = AuditEvent.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None
    return event if event.connection == connection else None


def _id_of(raw: bytes) -> str | None:
    if raw.startswith(b'{"id":"'):
        end = raw.find(b'"', 7)
        if end > 0:
            return raw[7:end].decode("utf-8", "replace")
    try:
        found = json.loads(raw).get("id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (0600, fsynced, renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _decode_cursor(cursor: str) -> int:
    seq = decode_seq_cursor(_CURSOR, cursor)
    if seq < 1:  # this sink's seqs start at 1, so a 0 was never handed out
        raise bad_cursor()
    return seq


def build_audit_sink(url: str) -> AuditSink:
    """Build (not open) the audit sink for ``url``.

    ``jsonl:///path`` is a ``JsonlAuditSink``; any other URL is a store
    (``sqlite:///``, ``postgresql://``, ...) that must keep audit events.

    Raises:
        ConfigurationError: an unknown scheme, or a store without audit.
    """
    if isinstance(url, str) and url.lower().startswith("jsonl:"):
        return JsonlAuditSink.from_url(url)
    from .._plugins import redact_url, store_from_url

    store = store_from_url(url)
    if not store.capabilities.audit:
        raise ConfigurationError(
            f"the store {redact_url(url)!r} does not keep audit events, "
            "so it cannot be the audit sink"
        )
    return store


async def audit_sink_from_url(url: str) -> AuditSink:
    """Build and open the audit sink for ``url``; the caller closes it."""
    sink = build_audit_sink(url)
    await sink.open()  # type: ignore[attr-defined]
    return sink
