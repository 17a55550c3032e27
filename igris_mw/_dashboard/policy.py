"""Rate limits and tool policy in the dashboard's forms, shown when the service takes them.

The fields appear only where the management API accepts them (``rateLimit``,
``tools``, ``maxConcurrent`` in its field sets), so the dashboard never offers
what the service would refuse. Form text becomes the API's JSON here; the
service validates it, and its ``ValidationError`` comes back to the input
its field names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .._validation import API_KEY_FIELDS, CREATE_FIELDS, PATCH_FIELDS

__all__ = ["FEATURES", "POLICY_INPUTS", "Features", "input_for", "policy_body", "policy_values"]

POLICY_INPUTS: Final = (
    "rateLimitRpm",
    "rateLimitBurst",
    "toolsAllow",
    "toolsDeny",
    "maxConcurrent",
)
_SPLIT = re.compile(r"[\s,]+")


@attrs.frozen
class Features:
    """Which access-policy fields the service takes, per kind of record."""

    connection_rate_limit: bool = False
    connection_tools: bool = False
    key_rate_limit: bool = False
    key_tools: bool = False
    key_max_concurrent: bool = False
    tls: bool = False

    @property
    def connection_policy(self) -> bool:
        return self.connection_rate_limit or self.connection_tools

    @property
    def key_policy(self) -> bool:
        return self.key_rate_limit or self.key_tools or self.key_max_concurrent


FEATURES: Final = Features(
    connection_rate_limit="rateLimit" in CREATE_FIELDS and "rateLimit" in PATCH_FIELDS,
    connection_tools="tools" in CREATE_FIELDS and "tools" in PATCH_FIELDS,
    key_rate_limit="rateLimit" in API_KEY_FIELDS,
    key_tools="tools" in API_KEY_FIELDS,
    key_max_concurrent="maxConcurrent" in API_KEY_FIELDS,
    tls={"caCertificate", "clientCertificate", "clientKey"} <= CREATE_FIELDS,
)


def _number(text: str) -> Any:
    # Digits become a number; anything else goes to the service as text,
    # whose validation names the field.
    return int(text) if text.isascii() and text.isdigit() else text


def _globs(text: str) -> list[str]:
    return [g for g in _SPLIT.split(text.strip()) if g]


def policy_body(
    form: Mapping[str, str],
    *,
    rate_limit: bool,
    tools: bool,
    max_concurrent: bool = False,
    clear: bool = False,
) -> dict[str, Any]:
    """The API's ``rateLimit`` / ``tools`` / ``maxConcurrent`` from the form's inputs.

    Empty inputs leave a field out, or with ``clear`` (an update) set it to
    ``null``, which removes it.
    """
    body: dict[str, Any] = {}
    if rate_limit:
        rpm = form.get("rateLimitRpm", "").strip()
        burst = form.get("rateLimitBurst", "").strip()
        if rpm or burst:
            limit: dict[str, Any] = {}
            if rpm:
                limit["requestsPerMinute"] = _number(rpm)
            if burst:
                limit["burst"] = _number(burst)
            body["rateLimit"] = limit
        elif clear:
            body["rateLimit"] = None
    if tools:
        allow = _globs(form.get("toolsAllow", ""))
        deny = _globs(form.get("toolsDeny", ""))
        if allow or deny:
            body["tools"] = {"allow": allow, "deny": deny}
        elif clear:
            body["tools"] = None
    if max_concurrent:
        text = form.get("maxConcurrent", "").strip()
        if text:
            body["maxConcurrent"] = _number(text)
        elif clear:
            body["maxConcurrent"] = None
    return body


def policy_values(record: Mapping[str, Any]) -> dict[str, str]:
    """A record's JSON (``to_json()``) as the policy inputs' text."""
    values = dict.fromkeys(POLICY_INPUTS, "")
    limit = record.get("rateLimit")
    if isinstance(limit, Mapping):
        values["rateLimitRpm"] = str(limit.get("requestsPerMinute", "") or "")
        values["rateLimitBurst"] = str(limit.get("burst", "") or "")
    tools = record.get("tools")
    if isinstance(tools, Mapping):
        values["toolsAllow"] = ", ".join(str(g) for g in tools.get("allow") or [])
        values["toolsDeny"] = ", ".join(str(g) for g in tools.get("deny") or [])
    if record.get("maxConcurrent") is not None:
        values["maxConcurrent"] = str(record["maxConcurrent"])
    return values


def input_for(field: str) -> str | None:
    """The policy input a ``ValidationError`` field belongs to (``rateLimit.burst`` ...)."""
    if field.startswith("rateLimit"):
        return "rateLimitBurst" if "burst" in field else "rateLimitRpm"
    if field.startswith("tools"):
        return "toolsDeny" if "deny" in field else "toolsAllow"
    if field == "maxConcurrent":
        return "maxConcurrent"
    return None
