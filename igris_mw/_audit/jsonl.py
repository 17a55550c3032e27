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
  the key by the first ``use_audit_key``: rewritten whole, atomically.
* File I/O runs in a worker thread (``asyncio.to_thread``), never on the loop.
* An in-memory index (events per connection, ids) is rebuilt on ``open()``.
  A torn last line (a crash mid-write) is skipped and counted in
  ``skipped_lines``; ``audit verify`` then shows whatever is missing.

``audit_sink_from_url`` chooses a sink by URL: ``jsonl:///path/audit.jsonl``
here, any other URL is a store whose ``capabilities.audit`` is true.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .._errors import ConfigurationError, StoreUnavailable
from .._paging import bad_cursor, check_limit, decode_seq_cursor, encode_cursor
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
        self._chains: dict[str | None, list[AuditEvent]] = {}
        self._key: AuditKey | None = None
        self._heads_cache: (
            tuple[tuple[int, int, int], dict[str | None, ChainHead], ChainAnchor] | None
        ) = None
        self._ids: set[str] = set()
        self._offset = 0  # bytes of the file already indexed
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self.skipped_lines = 0
        self._opened = False

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
            self._chains, self._ids, self._offset, self.skipped_lines = {}, set(), 0, 0
            with self.path.open("rb") as fh:
                self._catch_up(fh)

    async def close(self) -> None:
        self._opened = False

    # -- reading the file --------------------------------------------------------
    def _catch_up(self, fh: Any) -> None:
        """Index complete lines past ``_offset`` (written by us or another process)."""
        fh.seek(self._offset)
        data = fh.read()
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            try:
                event = AuditEvent.from_json(json.loads(raw))
            except ValueError:
                self.skipped_lines += 1
                continue
            self._index(event)
        self._offset += end

    def _index(self, event: AuditEvent) -> None:
        if event.id in self._ids:
            return
        self._ids.add(event.id)
        self._chains.setdefault(event.connection, []).append(event)

    def _refresh_sync(self) -> None:
        with self._thread_lock, self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > self._offset:
                self._catch_up(fh)

    async def _refresh(self) -> None:
        if not self._opened:
            raise ConfigurationError("the audit sink is not open; call await sink.open() first")
        await asyncio.to_thread(self._refresh_sync)

    # -- the audit protocol --------------------------------------------------------
    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        """Seal and append a batch; fsynced before returning. Known ids are skipped."""
        if not self._opened:
            raise ConfigurationError("the audit sink is not open; call await sink.open() first")
        async with self._lock:
            await asyncio.to_thread(self._append_sync, list(events))

    def _append_sync(self, events: list[AuditEvent]) -> None:
        with self._thread_lock, self.path.open("a+b") as fh:
            self._lock_file(fh.fileno())
            try:
                self._catch_up(fh)
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                torn = size > self._offset  # a partial last line: start ours on a new one
                sealed: list[AuditEvent] = []
                seen = set(self._ids)
                last: dict[str | None, AuditEvent | None] = {}
                for event in events:
                    if event.id in seen:
                        continue
                    seen.add(event.id)
                    if event.connection not in last:
                        chain = self._chains.get(event.connection)
                        last[event.connection] = chain[-1] if chain else None
                    event = seal_event(event, last[event.connection], self._key)
                    last[event.connection] = event
                    sealed.append(event)
                if not sealed:
                    return
                payload = (b"\n" if torn else b"") + b"".join(_line(e) for e in sealed)
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
                if torn:
                    self.skipped_lines += 1
                for event in sealed:
                    self._index(event)
                self._offset = size + len(payload)
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
        """Every chain's matching events, newest (highest id) first."""
        from ..storage import page_by_id

        async with self._lock:
            await self._refresh()
            found = [e for c in self._chains.values() for e in c if query.matches(e)]
        return page_by_id(found, b"jall1:", limit=limit, cursor=cursor)

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
                self._catch_up(fh)
                if self.heads_path.exists() or not self._chains:
                    return
                if any(e.key_id is not None for c in self._chains.values() for e in c):
                    return  # keyed events but no heads file: tampering, left for verify
                chains: dict[str | None, list[AuditEvent]] = {}
                for name, events in self._chains.items():
                    chains[name] = events if verify_chain(events) else reseal_chain(events, key)
                lines = b"".join(_line(e) for c in chains.values() for e in c)
                _replace_file(self.path, lines)
                tails = {c: e[-1] for c, e in chains.items() if e and e[-1].key_id is not None}
                heads, anchor = advance_heads(tails, {}, None, key)
                self._write_heads({h.chain: h for h in heads}, anchor)
                self._chains, self._ids, self._offset = {}, set(), 0
                with self.path.open("rb") as fresh:
                    self._catch_up(fresh)
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

        Raises:
            ValidationError: ``limit`` below 1, or a cursor this sink did not make.
        """
        check_limit(limit)
        before = _decode_cursor(cursor) if cursor is not None else None
        async with self._lock:
            await self._refresh()
            chain = list(self._chains.get(connection, ()))
        picked: list[AuditEvent] = []
        for event in reversed(chain):
            if before is not None and event.seq >= before:
                continue
            if since is not None and event.timestamp < since:
                continue
            picked.append(event)
            if len(picked) > limit:
                break
        more = len(picked) > limit
        items = picked[:limit]
        return Page(items, encode_cursor(_CURSOR, str(items[-1].seq)) if more else None)

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        """Events with ``seq > after_seq``, oldest first, at most ``limit``."""
        async with self._lock:
            await self._refresh()
            chain = self._chains.get(connection, [])
            return [e for e in chain if e.seq > after_seq][:limit]

    async def audit_connections(self) -> list[str]:
        """Every slug with audit events, sorted."""
        async with self._lock:
            await self._refresh()
            return sorted(c for c in self._chains if c is not None)


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
