"""Tests for igris_mw._responses (the one JSON writer) and igris_mw._asgi.local_path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from igris_mw._asgi import local_path
from igris_mw._errors import (
    NotFound,
    StoreUnavailable,
    Unauthorized,
    UpstreamError,
    ValidationError,
)
from igris_mw._responses import send_error, send_json


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail = fail

    async def __call__(self, message: Any) -> None:
        if self.fail:
            raise OSError("client gone")
        self.messages.append(message)

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return bytes(self.messages[1]["body"])


@pytest.mark.parametrize(
    ("exc", "extra"),
    [
        (NotFound("no such route"), {}),
        (Unauthorized("no key"), {b"www-authenticate": b'Bearer realm="igris-mw"'}),
        (StoreUnavailable("down", retry_after=7), {b"retry-after": b"7"}),
        (UpstreamError("upstream h is unreachable"), {}),
    ],
)
async def test_send_error_writes_the_contract_shape_and_headers(
    exc: Any, extra: dict[bytes, bytes]
) -> None:
    """Every error: its status, {"error": {code, message}}, JSON, no-store, nosniff, and
    a challenge on 401 / Retry-After when known."""
    send = Recorder()
    assert await send_error(send, exc)
    assert send.messages[0]["status"] == exc.status
    assert json.loads(send.body) == {"error": {"code": exc.code, "message": exc.message}}
    headers = send.headers
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(send.body)).encode()
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-content-type-options"] == b"nosniff"
    for name, value in extra.items():
        assert headers[name] == value
    if not extra:
        assert b"www-authenticate" not in headers
        assert b"retry-after" not in headers
    assert send.messages[1]["more_body"] is False


async def test_validation_error_names_its_field() -> None:
    """A validation error carries the field it is about."""
    send = Recorder()
    await send_error(send, ValidationError("limit", "must be an integer"))
    assert json.loads(send.body)["error"]["field"] == "limit"
    assert send.messages[0]["status"] == 422


async def test_send_json_empty_and_preencoded_bodies() -> None:
    """None sends an empty body without a content type; bytes are sent as they are."""
    send = Recorder()
    await send_json(send, 204, None)
    assert send.body == b""
    assert b"content-type" not in send.headers
    send = Recorder()
    await send_json(send, 200, b'{"a": 1}')
    assert send.body == b'{"a": 1}'


async def test_send_json_reports_a_gone_client() -> None:
    """A client that left (the server raises OSError) is reported, not raised."""
    assert await send_json(Recorder(fail=True), 200, {"status": "ok"}) is False


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/v1/mcp/a", "", "/v1/mcp/a"),
        ("/gw/v1/mcp/a", "/gw", "/v1/mcp/a"),
        ("/v1/mcp/a", "/gw", "/v1/mcp/a"),  # servers that leave root_path out of path
        ("/gw", "/gw", ""),
        ("/gwx/v1/mcp/a", "/gw", "/gwx/v1/mcp/a"),  # not a segment boundary
    ],
)
def test_local_path_strips_root_path_at_a_segment_boundary(
    path: str, root: str, expected: str
) -> None:
    """root_path is stripped when path starts with it as whole segments, else kept."""
    assert local_path({"path": path, "root_path": root}) == expected
