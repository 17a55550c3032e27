"""Server-Sent Events: the legacy HTTP+SSE ``endpoint`` event rewrite.

The old MCP transport tells the client where to POST in an ``endpoint``
event (``/legacy/messages/?session_id=...``, relative or absolute). Through
the gateway that place must be under the gateway's own path
(``/v1/mcp/<slug>/messages/?session_id=...``). Every other event passes
through untouched and unbuffered.

An absolute URL that cannot be mapped under the gateway (another host, or
the upstream's host outside its base path) is withheld: the client would
otherwise POST its gateway key straight to that host. Its ``data:`` line is
replaced by an SSE comment, so the event carries no data and is never
dispatched (the SSE rule for an event with an empty data buffer).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import yarl

__all__ = ["EndpointRewriter", "endpoint_rewrite"]

# An endpoint line longer than this is no URL: it is let through unrewritten,
# so a hostile upstream cannot grow the held-back line without bound.
MAX_HELD_LINE = 64 * 1024

# What replaces the data line of a withheld endpoint event: a comment, ignored by clients.
WITHHELD = b": igris-mw withheld an endpoint outside the upstream"


class EndpointRewriter:
    """Rewrites the data of SSE ``endpoint`` events, incrementally, line by line.

    Only an incomplete line that could still turn out to be an ``event:`` line
    (or, inside an endpoint event, a ``data:`` line) is held back, until its
    line ending arrives; everything else passes at once. As every known
    server does, the ``event:`` line is expected before the event's ``data:``.
    """

    __slots__ = ("_cr", "_in_endpoint", "_partial", "_passing", "_rewrite")
    _EOL = re.compile(rb"\r\n|\r|\n")

    def __init__(self, rewrite: Callable[[bytes], bytes | None]) -> None:
        self._rewrite = rewrite
        self._partial = b""
        self._passing = False  # the current line was let through unfinished
        self._cr = False  # the last chunk ended in \r: a leading \n belongs to it
        self._in_endpoint = False

    def _holds(self, partial: bytes) -> bool:
        names = (b"event", b"data") if self._in_endpoint else (b"event",)
        return any(n.startswith(partial[: len(n)]) for n in names)

    def _line(self, line: bytes) -> bytes:
        if not line:
            self._in_endpoint = False
            return line
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._in_endpoint = value == b"endpoint"
        elif name == b"data" and self._in_endpoint:
            new = self._rewrite(value)
            return WITHHELD if new is None else b"data: " + new
        return line

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        pos = 0
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                out += b"\n"
                pos = 1
        end = len(chunk)
        while pos < end:
            m = self._EOL.search(chunk, pos)
            if m is None:
                if self._passing:
                    out += chunk[pos:]
                else:
                    self._partial += chunk[pos:]
                    if len(self._partial) > MAX_HELD_LINE or not self._holds(self._partial):
                        out += self._partial
                        self._partial = b""
                        self._passing = True
                break
            if self._passing:
                out += chunk[pos : m.end()]
                self._passing = False
            else:
                line = self._partial + chunk[pos : m.start()]
                self._partial = b""
                out += self._line(line)
                out += m.group()
            self._cr = m.group() == b"\r" and m.end() == end
            pos = m.end()
        return bytes(out)

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return rest


def endpoint_rewrite(
    base_path: str, gateway_prefix: str, origin: yarl.URL | None = None
) -> Callable[[bytes], bytes | None]:
    """The rewrite of one endpoint URL; ``None`` means withhold it.

    Args:
        base_path: the upstream URL's path, without its trailing slash.
        gateway_prefix: where the connection lives under the gateway.
        origin: the upstream's origin (scheme, host, port); an absolute URL
            elsewhere is withheld. ``None`` trusts no absolute URL.
    """
    prefix = gateway_prefix.rstrip("/")

    def rewrite(value: bytes) -> bytes | None:
        try:
            text = value.decode("utf-8")
            url = yarl.URL(text, encoded=True)
        except (UnicodeDecodeError, ValueError):
            # Unparseable: a client could not follow it to another host either.
            return None if b"//" in value else value
        # A relative-path reference ("messages/?...") already resolves to the same
        # place under the gateway, since the client resolves it against its /sse URL.
        if not url.absolute and not text.startswith("/"):
            return value
        path = url.raw_path
        under = not base_path or path == base_path or path.startswith(base_path + "/")
        if url.absolute:  # also "//host/...": it leaves the gateway's origin
            resolved = origin.join(url) if origin is not None else url
            if origin is None or resolved.origin() != origin or not under:
                return None
        elif not under:
            # An absolute path outside the base resolves to the gateway itself: harmless.
            return value
        new = prefix + path[len(base_path) :]
        if url.raw_query_string:
            new += "?" + url.raw_query_string
        return new.encode("utf-8")

    return rewrite
