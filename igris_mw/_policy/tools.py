"""Tool policy: which MCP tools a key may call on a connection.

``{"allow": [globs], "deny": [globs]}`` on connections and on API keys: deny
wins; an empty or missing allow means every tool. A request passes when the
connection's policy and the key's policy both allow the tool.

On the request path :func:`check_request` reads one JSON-RPC message or a
batch and says which ``tools/call`` requests are refused (answered by the
gateway with error -32003 and the request's id, never sent upstream) and
which ``tools/list`` ids to filter in the answer. On the response path
:func:`filter_json_response` (a whole JSON body) and :class:`SseToolsListFilter`
(incremental, fed chunks) drop the tools the key may not call from those
answers only: every other SSE event passes byte for byte, and once every
pending ``tools/list`` id is answered the rest of the stream is not even
looked at. :func:`check_mcp_headers` checks ``Mcp-Method`` / ``Mcp-Name``
against the body (400 ``header_mismatch``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import translate
from typing import Any

import attrs

from igris_mw._errors import BadRequest, ValidationError

__all__ = [
    "TOOL_DENIED_CODE",
    "RequestVerdict",
    "SseToolsListFilter",
    "ToolCheck",
    "ToolPolicy",
    "check_mcp_headers",
    "check_request",
    "combine",
    "filter_json_response",
]

TOOL_DENIED_CODE = -32003
_LINES = re.compile(r"\r\n|\r|\n")  # SSE's line ends only (str.splitlines knows more)
_MAX_GLOBS = 100
_MAX_GLOB_LEN = 200
_MAX_NAME_IN_MESSAGE = 256


def _compile(globs: Sequence[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{translate(g)})" for g in globs), re.DOTALL)


@attrs.frozen
class ToolPolicy:
    """One ``tools`` object. Globs are ``fnmatch`` patterns, case-sensitive."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    _allow_re: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)
    _deny_re: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_allow_re", _compile(self.allow))
        object.__setattr__(self, "_deny_re", _compile(self.deny))

    @classmethod
    def from_json(cls, value: object, *, field: str = "tools") -> ToolPolicy | None:
        """Validate ``{"allow": [...], "deny": [...]}``; JSON null means no policy.

        Raises:
            ValidationError: not an object, an unknown member, or a list that is
                not 0-100 non-empty strings of at most 200 printable characters.
        """
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValidationError(
                field, 'must be an object {"allow": [...], "deny": [...]} or null'
            )
        if any(k not in ("allow", "deny") for k in value):
            raise ValidationError(field, "accepts only allow and deny")
        return cls(
            allow=_globs(value.get("allow"), field, "allow"),
            deny=_globs(value.get("deny"), field, "deny"),
        )

    def to_json(self) -> dict[str, list[str]]:
        return {"allow": list(self.allow), "deny": list(self.deny)}

    def allows(self, name: str) -> bool:
        if self._deny_re is not None and self._deny_re.fullmatch(name):
            return False
        return self._allow_re is None or self._allow_re.fullmatch(name) is not None


def _globs(value: object, field: str, member: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > _MAX_GLOBS:
        raise ValidationError(field, f"{member} must be a list of at most {_MAX_GLOBS} globs")
    for glob in value:
        if (
            not isinstance(glob, str)
            or not 1 <= len(glob) <= _MAX_GLOB_LEN
            or not glob.isprintable()
        ):
            raise ValidationError(
                field,
                f"{member} entries must be non-empty printable strings of at most "
                f"{_MAX_GLOB_LEN} characters",
            )
    return tuple(value)


@attrs.frozen
class ToolCheck:
    """The policies in force for one key on one connection: all must allow."""

    policies: tuple[ToolPolicy, ...]

    def allows(self, name: object) -> bool:
        return isinstance(name, str) and all(p.allows(name) for p in self.policies)


def combine(*policies: ToolPolicy | None) -> ToolCheck | None:
    """The connection's and the key's policies together; None when neither has one."""
    present = tuple(p for p in policies if p is not None)
    return ToolCheck(present) if present else None


# ------------------------------------------------------------------ requests


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins: a body whose "name" means one
    # thing here and another upstream must not pass.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey("duplicate member")
    return result


def _loads(body: bytes | str) -> Any:
    return json.loads(body, object_pairs_hook=_no_duplicates)


def _loads_request(body: bytes | str) -> Any:
    """Parse a request; duplicate members are refused, cheaply.

    The C parser runs first; the slower duplicate-checking parse only when a
    member that decides the verdict could appear twice (the key occurs more
    than once, or an escape could spell it differently).
    """
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    parsed = json.loads(raw)
    count = raw.count
    if (
        b"\\u" in raw
        or count(b'"name"') > 1
        or count(b'"method"') > 1
        or count(b'"params"') > 1
        or count(b'"id"') > 1
    ):
        return _loads(raw)
    return parsed


def _dumps(value: Any) -> bytes:
    # ensure_ascii: a lone surrogate from the input is written as an escape.
    return json.dumps(value, separators=(",", ":")).encode()


def _id_key(value: object) -> str:
    return _dumps(value).decode()


def _error(id_: object, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def _denied_message(name: object) -> str:
    if not isinstance(name, str):
        return "tool calls without a tool name are not allowed"
    shown = name if len(name) <= _MAX_NAME_IN_MESSAGE else name[:_MAX_NAME_IN_MESSAGE] + "..."
    return f"tool {shown} is not allowed"


@attrs.frozen
class RequestVerdict:
    """What to do with a request body under a tool policy.

    ``reply`` is None when the body goes upstream unchanged; otherwise it is
    the complete JSON-RPC answer the gateway sends itself (HTTP ``status``)
    and nothing is forwarded. ``denied`` names the refused tools (for the
    audit); ``list_ids`` are the ``tools/list`` ids whose answers to filter.
    """

    reply: bytes | None = None
    status: int = 200
    denied: tuple[str, ...] = ()
    list_ids: frozenset[str] = frozenset()


PASS = RequestVerdict()


def check_request(body: bytes | str, check: ToolCheck) -> RequestVerdict:
    """Judge a JSON-RPC request (or batch) body against ``check``.

    A single denied ``tools/call`` is answered with -32003 and its id. In a
    batch with a denied call nothing is forwarded: the denied calls get
    -32003, the other requests -32003 saying the batch was refused (a
    partial batch would need the two answers merged). A body that is not
    JSON-RPC is refused with -32700 / -32600 (HTTP 400): with a policy in
    force, what this parser cannot read must not reach one that might.
    """
    try:
        parsed = _loads_request(body)
    except (ValueError, RecursionError):
        return RequestVerdict(_dumps(_error(None, -32700, "Parse error")), 400)
    batch = isinstance(parsed, list)
    messages = parsed if batch else [parsed]
    if not messages or not all(isinstance(m, dict) for m in messages):
        return RequestVerdict(_dumps(_error(None, -32600, "Invalid Request")), 400)
    denied: list[tuple[object, object]] = []
    list_ids: set[str] = set()
    for msg in messages:
        method = msg.get("method")
        if method == "tools/call":
            params = msg.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            if not check.allows(name):
                denied.append((msg.get("id"), name))
        elif method == "tools/list" and "id" in msg:
            list_ids.add(_id_key(msg["id"]))
    if not denied:
        return RequestVerdict(list_ids=frozenset(list_ids)) if list_ids else PASS
    names = tuple(n if isinstance(n, str) else "" for _, n in denied)
    if not batch:
        id_, name = denied[0]
        msg = messages[0]
        if "id" not in msg:  # a notification gets no answer, and is not forwarded
            return RequestVerdict(b"", 202, names)
        reply = _error(id_, TOOL_DENIED_CODE, _denied_message(name))
        return RequestVerdict(_dumps(reply), 200, names)
    first = _denied_message(denied[0][1])
    replies = []
    for msg in messages:
        if "id" not in msg or not isinstance(msg.get("method"), str):
            continue  # notifications and responses get no answer
        params = msg.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if msg["method"] == "tools/call" and not check.allows(name):
            replies.append(_error(msg["id"], TOOL_DENIED_CODE, _denied_message(name)))
        else:
            replies.append(_error(msg["id"], TOOL_DENIED_CODE, f"batch not forwarded: {first}"))
    if not replies:
        return RequestVerdict(b"", 202, names)
    return RequestVerdict(_dumps(replies), 200, names)


def check_mcp_headers(
    method_header: str | None, name_header: str | None, body: bytes | str | None
) -> None:
    """``Mcp-Method`` / ``Mcp-Name`` must say what the body says.

    ``Mcp-Name`` is compared with ``params.name`` (``tools/call``,
    ``prompts/get``) or ``params.uri`` (``resources/read``).

    Raises:
        BadRequest: 400 ``header_mismatch``.
    """
    if method_header is None and name_header is None:
        return
    try:
        msg = _loads(body) if body else None
    except (ValueError, RecursionError):
        msg = None
    if not isinstance(msg, dict):
        raise BadRequest(
            "Mcp-Method / Mcp-Name headers need a single JSON-RPC message in the body",
            code="header_mismatch",
        )
    if method_header is not None and msg.get("method") != method_header.strip():
        raise BadRequest("the Mcp-Method header does not match the body", code="header_mismatch")
    if name_header is not None:
        params = msg.get("params")
        target = None
        if isinstance(params, dict):
            target = params.get("name", params.get("uri"))
        if target != name_header.strip():
            raise BadRequest("the Mcp-Name header does not match the body", code="header_mismatch")


# ----------------------------------------------------------------- responses


def _filter_message(msg: object, pending: set[str], check: ToolCheck) -> bool:
    """Filter one response in place if it answers a pending tools/list; True if it did."""
    if not isinstance(msg, dict) or "id" not in msg or ("result" not in msg and "error" not in msg):
        return False
    key = _id_key(msg["id"])
    if key not in pending:
        return False
    pending.discard(key)
    result = msg.get("result")
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        result["tools"] = [
            t for t in result["tools"] if isinstance(t, dict) and check.allows(t.get("name"))
        ]
        return True
    return False


def filter_json_response(body: bytes, list_ids: Iterable[str], check: ToolCheck) -> bytes:
    """A whole JSON answer (object or batch array) with disallowed tools removed.

    Anything that is not an answer to one of ``list_ids`` comes back as the
    same bytes.
    """
    pending = set(list_ids)
    if not pending:
        return body
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    messages = parsed if isinstance(parsed, list) else [parsed]
    changed = False
    for msg in messages:
        changed |= _filter_message(msg, pending, check)
    return _dumps(parsed) if changed else body


class SseToolsListFilter:
    """Feed an upstream SSE stream in chunks; get back the bytes to send on.

    Events are cut at their blank line (``\\n``, ``\\r\\n`` or ``\\r`` endings,
    a CR LF split across chunks included) and relayed one by one; only
    those whose data carries ``"tools"`` are parsed, and only an answer to a
    pending ``tools/list`` id is rewritten. When no id is pending any more,
    chunks pass through as they came. An event longer than ``max_event``
    bytes is relayed unfiltered (the calls themselves are still checked).
    """

    def __init__(
        self, list_ids: Iterable[str], check: ToolCheck, *, max_event: int = 8 * 1024 * 1024
    ) -> None:
        self._pending = set(list_ids)
        self._check = check
        self._max_event = max_event
        self._buf = bytearray()
        self._scan = 0  # where the next line starts in _buf
        self._first = True

    @property
    def done(self) -> bool:
        """True once nothing more will be rewritten (pure pass-through)."""
        return not self._pending

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and not self._buf:
            return chunk
        self._buf += chunk
        out = bytearray()
        buf = self._buf
        while self._pending:
            cr = buf.find(b"\r", self._scan)
            lf = buf.find(b"\n", self._scan)
            if cr < 0 and lf < 0:
                break
            end = cr if lf < 0 or (0 <= cr < lf) else lf
            if buf[end] == 0x0D:
                if end + 1 == len(buf):
                    break  # a CR at the chunk's end: its LF may be in the next chunk
                step = 2 if buf[end + 1] == 0x0A else 1
            else:
                step = 1
            blank = end == self._scan
            self._scan = end + step
            if blank:
                event = bytes(buf[: self._scan])
                del buf[: self._scan]
                self._scan = 0
                out += self._event(event)
            elif self._scan > self._max_event:
                self._pending.clear()  # give up on this stream: relay as it comes
        if not self._pending:
            out += buf
            buf.clear()
            self._scan = 0
        return bytes(out)

    def finish(self) -> bytes:
        """The bytes still held at the end of the stream, as they came."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return rest

    def _event(self, raw: bytes) -> bytes:
        first, self._first = self._first, False
        if b'"tools"' not in raw:
            return raw
        text = raw.decode("utf-8", "replace")
        if first and text.startswith("\ufeff"):
            text = text[1:]
        lines = _LINES.split(text)
        data = []
        for line in lines:
            if line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(" ") else value)
        if not data:
            return raw
        try:
            msg = json.loads("\n".join(data))
        except (ValueError, RecursionError):
            return raw
        if not _filter_message(msg, self._pending, self._check):
            return raw
        eol = "\r\n" if "\r\n" in text else ("\r" if "\n" not in text else "\n")
        kept = [line for line in lines if line and not line.startswith("data:")]
        rebuilt = eol.join([*kept, "data: " + _dumps(msg).decode()]) + eol + eol
        return rebuilt.encode()
