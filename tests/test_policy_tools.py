"""Tool policy: allow/deny globs, tools/call refusal, tools/list filtering (JSON and SSE)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._errors import BadRequest, ValidationError
from igris_mw._policy.tools import (
    SseToolsListFilter,
    ToolCheck,
    ToolPolicy,
    check_mcp_headers,
    check_request,
    combine,
    filter_json_response,
)

GITHUB = ToolPolicy(allow=("get_*", "list_*", "search_*"), deny=("*_secret*",))


def _check(*policies: ToolPolicy | None) -> ToolCheck:
    check = combine(*policies)
    assert check is not None
    return check


def _call(name: Any, id_: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name}}


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def _tools(*names: Any) -> list[dict[str, Any]]:
    return [{"name": n, "inputSchema": {"type": "object"}} for n in names]


# ------------------------------------------------------------------- policy


def test_deny_wins_and_empty_allow_means_all() -> None:
    """deny beats allow; no allow list means every tool not denied."""
    assert GITHUB.allows("get_issue")
    assert not GITHUB.allows("get_secret_token")
    assert not GITHUB.allows("delete_repo")
    only_deny = ToolPolicy(deny=("delete_*",))
    assert only_deny.allows("anything")
    assert not only_deny.allows("delete_repo")
    assert ToolPolicy().allows("x")
    assert ToolPolicy(allow=()).allows("x")


def test_globs_are_case_sensitive_and_anchored() -> None:
    """A glob matches the whole name, case-sensitively; ? and [] work as in fnmatch."""
    policy = ToolPolicy(allow=("get_?ssue", "list_[ab]*"))
    assert policy.allows("get_issue")
    assert not policy.allows("GET_issue")
    assert not policy.allows("xget_issue")
    assert not policy.allows("get_issue2")
    assert policy.allows("list_all")
    assert not policy.allows("list_c")
    assert not policy.allows("get_i\nssue")


def test_combined_policy_needs_both_to_allow() -> None:
    """A tool must be allowed by the connection's policy and by the key's."""
    connection = ToolPolicy(deny=("delete_*",))
    key = ToolPolicy(allow=("get_*", "delete_*"))
    check = _check(connection, key)
    assert check.allows("get_issue")
    assert not check.allows("delete_repo")  # the connection denies it
    assert not check.allows("create_issue")  # the key does not allow it
    assert combine(None, None) is None
    assert not check.allows(None)
    assert not check.allows(["get_issue"])


def test_from_json_round_trip_and_null() -> None:
    """A valid tools object round-trips; null means no policy; missing members are empty."""
    value = {"allow": ["get_*"], "deny": ["get_secret"]}
    policy = ToolPolicy.from_json(value)
    assert policy is not None
    assert policy.to_json() == value
    assert ToolPolicy.from_json(None) is None
    assert ToolPolicy.from_json({}) == ToolPolicy()


@pytest.mark.parametrize(
    "value",
    [
        [],
        "get_*",
        {"allow": "get_*"},
        {"allow": [1]},
        {"allow": [""]},
        {"deny": ["a\x00b"]},
        {"deny": ["x" * 201]},
        {"allow": ["a"] * 101},
        {"allowed": ["a"]},
    ],
)
def test_from_json_bad_shapes_are_422_on_tools(value: object) -> None:
    """Every malformed tools object is a 422 naming the field tools."""
    with pytest.raises(ValidationError) as info:
        ToolPolicy.from_json(value)
    assert info.value.field == "tools"
    assert info.value.status == 422


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize("id_", [1, "abc", 0, -7, "", 1.5])
def test_denied_call_is_answered_with_32003_and_the_same_id(id_: Any) -> None:
    """A denied tools/call gets HTTP 200 and error -32003 with the request's id."""
    verdict = check_request(_body(_call("delete_repo", id_)), _check(GITHUB))
    assert verdict.reply is not None
    assert verdict.status == 200
    reply = json.loads(verdict.reply)
    assert reply == {
        "jsonrpc": "2.0",
        "id": id_,
        "error": {"code": -32003, "message": "tool delete_repo is not allowed"},
    }
    assert verdict.denied == ("delete_repo",)


def test_allowed_call_and_other_methods_pass_unchanged() -> None:
    """Allowed calls and other methods go upstream as they are."""
    check = _check(GITHUB)
    for msg in (
        _call("get_issue"),
        {"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "result": {}},
    ):
        verdict = check_request(_body(msg), check)
        assert verdict.reply is None
        assert verdict.denied == ()


def test_tools_list_ids_are_collected_for_filtering() -> None:
    """tools/list requests' ids (number and string alike) are remembered, distinct."""
    check = _check(GITHUB)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": "1", "method": "tools/list"},
        _call("get_issue", 2),
    ]
    verdict = check_request(_body(batch), check)
    assert verdict.reply is None
    assert verdict.list_ids == {"1", '"1"'}


def test_batch_with_a_denied_call_is_answered_whole_and_not_forwarded() -> None:
    """In a batch denied calls get -32003, other requests are refused too, notifications not."""
    batch = [
        _call("get_issue", 1),
        _call("delete_repo", "two"),
        {"jsonrpc": "2.0", "method": "notifications/progress"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
    ]
    verdict = check_request(_body(batch), _check(GITHUB))
    assert verdict.reply is not None
    replies = json.loads(verdict.reply)
    assert [r["id"] for r in replies] == [1, "two", 3]
    assert all(r["error"]["code"] == -32003 for r in replies)
    assert replies[1]["error"]["message"] == "tool delete_repo is not allowed"
    assert "delete_repo" in replies[0]["error"]["message"]
    assert verdict.denied == ("delete_repo",)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"",
        b"[]",
        b"[1, 2]",
        b"42",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue","name":"delete_repo"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}',
    ],
)
def test_unreadable_body_is_refused_under_a_policy(body: bytes) -> None:
    """What this parser cannot read unambiguously (bad JSON, duplicate members) is a 400."""
    verdict = check_request(body, _check(GITHUB))
    assert verdict.status == 400
    assert verdict.reply is not None
    assert json.loads(verdict.reply)["error"]["code"] in (-32700, -32600)


@pytest.mark.parametrize("name", [None, 7, ["get_issue"], {"name": "get_issue"}])
def test_call_without_a_string_name_is_denied(name: Any) -> None:
    """A tools/call whose name is not a string never reaches the upstream."""
    verdict = check_request(_body(_call(name)), _check(ToolPolicy(deny=("x",))))
    assert verdict.reply is not None
    assert json.loads(verdict.reply)["error"]["code"] == -32003


hostile_names = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=50),
    st.just("\x00"),
    st.just("\ud800"),
    st.just("a" * 10_000),
    st.just("get_\udfff\x00"),
)


@given(hostile_names, st.one_of(st.integers(), st.text(max_size=20)))
def test_hostile_names_never_crash_request_check(name: str, id_: Any) -> None:
    """NUL, lone surrogates and 10k-char names are judged, and answers stay valid JSON."""
    body = json.dumps(_call(name, id_))  # ensure_ascii escapes surrogates
    verdict = check_request(body.encode(), _check(GITHUB))
    if verdict.reply is not None:
        reply = json.loads(verdict.reply)
        assert reply["id"] == id_
        assert reply["error"]["code"] == -32003
        assert len(reply["error"]["message"]) < 400
    else:
        assert GITHUB.allows(name)


# ------------------------------------------------------------ Mcp-* headers


def test_mcp_headers_must_match_the_body() -> None:
    """Mcp-Method and Mcp-Name agree with the body or the request is a 400 header_mismatch."""
    body = _body(_call("get_issue"))
    check_mcp_headers(None, None, body)
    check_mcp_headers("tools/call", "get_issue", body)
    check_mcp_headers("tools/call", None, body)
    read = _body(
        {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///a"}}
    )
    check_mcp_headers("resources/read", "file:///a", read)
    for method, name, payload in (
        ("tools/list", None, body),
        ("tools/call", "delete_repo", body),
        (None, "get_issue", _body([_call("get_issue")])),
        ("tools/call", None, b"not json"),
        ("tools/call", None, None),
    ):
        with pytest.raises(BadRequest) as info:
            check_mcp_headers(method, name, payload)
        assert (info.value.status, info.value.code) == (400, "header_mismatch")


# ----------------------------------------------------------- JSON responses


def test_json_tools_list_result_is_filtered() -> None:
    """A tools/list JSON answer loses the tools the key may not call."""
    answer = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": _tools("get_issue", "delete_repo", "get_secret_key", 7, None),
            "nextCursor": "c2",
        },
    }
    out = json.loads(filter_json_response(_body(answer), {"1"}, _check(GITHUB)))
    assert [t["name"] for t in out["result"]["tools"]] == ["get_issue"]
    assert out["result"]["nextCursor"] == "c2"


def test_json_responses_not_pending_are_untouched_bytes() -> None:
    """Other answers (other ids, other methods, bad JSON) come back as the same bytes."""
    check = _check(GITHUB)
    answer = _body({"jsonrpc": "2.0", "id": 2, "result": {"tools": _tools("delete_repo")}})
    assert filter_json_response(answer, {"1"}, check) is answer
    assert filter_json_response(answer, set(), check) is answer
    assert filter_json_response(b"{oops", {"2"}, check) == b"{oops"


def test_json_batch_answer_filters_only_pending_ids() -> None:
    """In a batch answer only the pending tools/list id is filtered."""
    batch = [
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": _tools("get_a", "delete_b")}},
        {"jsonrpc": "2.0", "id": 2, "result": {"tools": _tools("get_a", "delete_b")}},
    ]
    out = json.loads(filter_json_response(_body(batch), {"2"}, _check(GITHUB)))
    assert [t["name"] for t in out[0]["result"]["tools"]] == ["get_a", "delete_b"]
    assert [t["name"] for t in out[1]["result"]["tools"]] == ["get_a"]


# ------------------------------------------------------------ SSE responses


def _event(data: Any, *, event_id: str | None = None, eol: str = "\n") -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("event: message")
    lines.append("data: " + json.dumps(data))
    return (eol.join(lines) + eol + eol).encode()


def _feed_all(flt: SseToolsListFilter, chunks: list[bytes]) -> bytes:
    return b"".join(flt.feed(c) for c in chunks) + flt.finish()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


LIST_ANSWER = {
    "jsonrpc": "2.0",
    "id": 7,
    "result": {"tools": _tools("get_issue", "delete_repo", "search_code", "get_secret")},
}
PROGRESS = {
    "jsonrpc": "2.0",
    "method": "notifications/progress",
    "params": {"progressToken": 1, "message": "tools"},
}
OTHER = {"jsonrpc": "2.0", "id": 8, "result": {"tools": _tools("delete_repo")}}


def _stream(eol: str = "\n") -> bytes:
    return (
        f":keepalive{eol}{eol}".encode()
        + _event(PROGRESS, event_id="e1", eol=eol)
        + _event(OTHER, event_id="e2", eol=eol)
        + _event(LIST_ANSWER, event_id="e3", eol=eol)
        + _event(OTHER, event_id="e4", eol=eol)
        + b"data: tail without a blank line"
    )


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_sse_tools_list_event_is_filtered_and_the_rest_untouched(eol: str) -> None:
    """Only the pending tools/list answer is rewritten; every other byte passes as it came."""
    stream = _stream(eol)
    out = _feed_all(SseToolsListFilter({"7"}, _check(GITHUB)), [stream])
    head = out.partition(b"e3")[0]
    assert stream.startswith(head)  # everything before the rewritten event is identical
    events = out.split((eol + eol).encode())
    rewritten = next(e for e in events if b"e3" in e)
    lines = rewritten.decode().split(eol)
    assert lines[0] == "id: e3"
    assert lines[1] == "event: message"
    data = json.loads(lines[2].removeprefix("data: "))
    assert [t["name"] for t in data["result"]["tools"]] == ["get_issue", "search_code"]
    after = stream.split(b"e3", 1)[1].split((eol + eol).encode(), 1)[1]
    assert out.endswith(after)  # and everything after it too


def test_sse_filter_passes_through_once_answered() -> None:
    """After the pending id is answered, later chunks are returned as the very same objects."""
    flt = SseToolsListFilter({"7"}, _check(GITHUB))
    flt.feed(_event(LIST_ANSWER))
    assert flt.done
    later = _event(OTHER)
    assert flt.feed(later) is later


def test_sse_filter_error_answer_ends_pending() -> None:
    """An error answer to the pending id ends filtering without rewriting anything."""
    flt = SseToolsListFilter({"7"}, _check(GITHUB))
    error = _event({"jsonrpc": "2.0", "id": 7, "error": {"code": -1, "message": "tools"}})
    assert flt.feed(error) == error
    assert flt.done


def test_sse_oversized_event_is_relayed_unfiltered() -> None:
    """An event past max_event is relayed as it came, and filtering stops."""
    flt = SseToolsListFilter({"7"}, _check(GITHUB), max_event=64)
    stream = _event(LIST_ANSWER)
    assert _feed_all(flt, [stream]) == stream
    assert flt.done


@given(st.lists(st.integers(0, 10_000), max_size=12), st.sampled_from(["\n", "\r\n", "\r"]))
def test_any_chunking_gives_the_same_output(cuts: list[int], eol: str) -> None:
    """However the stream is cut into chunks (CR LF split included), the output is the same."""
    stream = _stream(eol)
    whole = _feed_all(SseToolsListFilter({"7"}, _check(GITHUB)), [stream])
    chunked = _feed_all(SseToolsListFilter({"7"}, _check(GITHUB)), _split(stream, cuts))
    assert chunked == whole
    assert b"delete_repo" in whole  # the other answers still carry it
    assert whole.count(b"delete_repo") == 2


sse_text = st.lists(
    st.sampled_from([*'ab:" \r\n{}', '"tools"', "data: ", "id: ", '{"id":7}']), max_size=80
).map("".join)


@given(sse_text, st.lists(st.integers(0, 400), max_size=8))
def test_streams_without_a_pending_answer_come_back_byte_for_byte(
    text: str, cuts: list[int]
) -> None:
    """Random SSE-ish bytes with no answer to a pending id are relayed unchanged, any chunking."""
    stream = text.encode()
    flt = SseToolsListFilter({"999"}, _check(GITHUB))
    assert _feed_all(flt, _split(stream, cuts)) == stream


@given(
    st.lists(hostile_names, min_size=1, max_size=5), st.lists(st.integers(0, 50_000), max_size=6)
)
def test_hostile_tool_names_in_sse_never_crash(names: list[str], cuts: list[int]) -> None:
    """NUL, lone surrogates and 10k-char names in a tools/list answer: filtered, valid JSON."""
    answer = {"jsonrpc": "2.0", "id": 7, "result": {"tools": _tools(*names, "get_ok")}}
    stream = _event(answer)
    out = _feed_all(SseToolsListFilter({"7"}, _check(GITHUB)), _split(stream, cuts))
    data = json.loads(out.decode().split("data: ", 1)[1])
    kept = [t["name"] for t in data["result"]["tools"]]
    assert "get_ok" in kept
    assert all(GITHUB.allows(n) for n in kept)


@pytest.mark.parametrize(
    "body",
    [
        # A first-wins parser would read delete_repo; an escape hides the second key.
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"delete_repo","\\u006eame":"get_issue"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"delete_repo"},"par\\u0061ms":{"name":"get_issue"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","\\u006dethod":"tools/list",'
        b'"params":{"name":"get_issue"}}',
    ],
)
def test_escaped_duplicate_members_are_refused(body: bytes) -> None:
    """A duplicate member spelled with a \\u escape is caught like a plain duplicate."""
    verdict = check_request(body, _check(GITHUB))
    assert verdict.status == 400


def test_fast_path_still_sees_nested_names() -> None:
    """A tools/call whose arguments contain "name" keys is judged by params.name."""
    body = _body(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "delete_repo", "arguments": {"name": "get_issue"}},
        }
    )
    verdict = check_request(body, _check(GITHUB))
    assert verdict.reply is not None
    assert json.loads(verdict.reply)["error"]["message"] == "tool delete_repo is not allowed"
