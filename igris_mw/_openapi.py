"""The management API's operations and its OpenAPI 3.1 document.

The route table (``OPERATIONS``) is the one source both the router in
``_api.py`` and the document are built from, and the request schemas here
are the ones the API enforces for unknown fields, so the document cannot
drift from what is served.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs

from .models import SLUG_RE

__all__ = ["OPERATIONS", "REQUEST_FIELDS", "Operation", "build_document"]

JSON = "application/json"


@attrs.frozen(kw_only=True)
class Operation:
    """One (method, path) the management API serves.

    ``handler`` names the ``ManagementAPI`` coroutine that answers it;
    ``request`` and ``response`` name schemas in ``_SCHEMAS`` (``None``: no
    body); ``query`` names entries of ``_QUERY``.
    """

    method: str
    path: str
    handler: str
    operation_id: str
    summary: str
    tag: str
    success: int
    response: str | None = None
    request: str | None = None
    query: tuple[str, ...] = ()
    conflict: bool = False
    public: bool = False
    #: Answers an HTML page for a browser (the OAuth callback), not JSON.
    html: bool = False
    #: May answer 502: an outside server (the OAuth authorization server) failed.
    outside: bool = False


_VK = "/api/v1/virtual-keys"
_VK_ONE = _VK + "/{slug}"
_AK = "/api/v1/api-keys"

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        method="POST",
        path=_VK,
        handler="create_connection",
        operation_id="createConnection",
        summary="Create a connection",
        tag="connections",
        success=201,
        response="Connection",
        request="ConnectionCreate",
        conflict=True,
    ),
    Operation(
        method="GET",
        path=_VK,
        handler="list_connections",
        operation_id="listConnections",
        summary="List connections",
        tag="connections",
        success=200,
        response="ConnectionList",
        query=("limit", "cursor"),
    ),
    Operation(
        method="GET",
        path=_VK_ONE,
        handler="get_connection",
        operation_id="getConnection",
        summary="Read one connection",
        tag="connections",
        success=200,
        response="Connection",
    ),
    Operation(
        method="PATCH",
        path=_VK_ONE,
        handler="update_connection",
        operation_id="updateConnection",
        summary="Change a connection",
        tag="connections",
        success=200,
        response="Connection",
        request="ConnectionUpdate",
    ),
    Operation(
        method="DELETE",
        path=_VK_ONE,
        handler="delete_connection",
        operation_id="deleteConnection",
        summary="Delete a connection",
        tag="connections",
        success=204,
    ),
    Operation(
        method="POST",
        path=_VK_ONE + "/rotate",
        handler="rotate_credential",
        operation_id="rotateCredential",
        summary="Replace the credential; requests that start after the 200 use it",
        tag="connections",
        success=200,
        response="Connection",
        request="RotateRequest",
    ),
    Operation(
        method="POST",
        path=_VK_ONE + "/disable",
        handler="disable_connection",
        operation_id="disableConnection",
        summary="Revoke a connection at once",
        tag="connections",
        success=200,
        response="Connection",
        request="Empty",
    ),
    Operation(
        method="POST",
        path=_VK_ONE + "/enable",
        handler="enable_connection",
        operation_id="enableConnection",
        summary="Restore a connection",
        tag="connections",
        success=200,
        response="Connection",
        request="Empty",
    ),
    Operation(
        method="GET",
        path=_VK_ONE + "/audit",
        handler="list_audit",
        operation_id="listAudit",
        summary="A connection's audit trail, newest first",
        tag="audit",
        success=200,
        response="AuditList",
        query=("limit", "cursor", "since"),
    ),
    Operation(
        method="GET",
        path="/api/v1/audit",
        handler="list_all_audit",
        operation_id="listAllAudit",
        summary="Every audit event (every connection, and the global trail of API-key "
        "and sign-in events), newest first",
        tag="audit",
        success=200,
        response="AuditList",
        query=("slug", "kind", "action", "outcome", "user", "since", "limit", "cursor"),
    ),
    Operation(
        method="POST",
        path=_AK,
        handler="create_api_key",
        operation_id="createApiKey",
        summary="Issue a gateway API key (shown once)",
        tag="api-keys",
        success=201,
        response="ApiKeyCreated",
        request="ApiKeyCreate",
    ),
    Operation(
        method="GET",
        path=_AK,
        handler="list_api_keys",
        operation_id="listApiKeys",
        summary="List gateway API keys (never the key)",
        tag="api-keys",
        success=200,
        response="ApiKeyList",
    ),
    Operation(
        method="DELETE",
        path=_AK + "/{id}",
        handler="revoke_api_key",
        operation_id="revokeApiKey",
        summary="Revoke a gateway API key at once",
        tag="api-keys",
        success=204,
    ),
    Operation(
        method="PATCH",
        path=_AK + "/{id}",
        handler="update_api_key",
        operation_id="updateApiKey",
        summary="Change a key's name, connections, expiry or access policy",
        tag="api-keys",
        success=200,
        response="ApiKey",
        request="ApiKeyUpdate",
    ),
    Operation(
        method="POST",
        path=_VK_ONE + "/oauth/authorize",
        handler="authorize_connection",
        operation_id="authorizeConnection",
        summary="Start the OAuth consent of an oauth2 connection: the URL to open",
        tag="connections",
        success=200,
        response="AuthorizeResponse",
        request="Empty",
        outside=True,
    ),
    Operation(
        method="GET",
        path=_VK_ONE + "/users",
        handler="list_users",
        operation_id="listUserCredentials",
        summary="The users of a per_user connection (never a credential)",
        tag="connections",
        success=200,
        response="UserCredentialList",
    ),
    Operation(
        method="PUT",
        path=_VK_ONE + "/users/{user}/credential",
        handler="put_user_credential",
        operation_id="putUserCredential",
        summary="Set one end user's credential on a per_user connection",
        tag="connections",
        success=200,
        response="UserCredential",
        request="UserCredentialPut",
    ),
    Operation(
        method="DELETE",
        path=_VK_ONE + "/users/{user}/credential",
        handler="delete_user_credential",
        operation_id="deleteUserCredential",
        summary="Forget one end user's credential or grant",
        tag="connections",
        success=204,
    ),
    Operation(
        method="POST",
        path=_VK_ONE + "/users/{user}/oauth/authorize",
        handler="authorize_user",
        operation_id="authorizeUser",
        summary="Start one end user's OAuth consent on a per_user oauth2 connection",
        tag="connections",
        success=200,
        response="AuthorizeResponse",
        request="Empty",
        outside=True,
    ),
    Operation(
        method="GET",
        path="/api/v1/oauth/callback",
        handler="oauth_callback",
        operation_id="oauthCallback",
        summary="Where the authorization server sends the browser back (HTML page)",
        tag="connections",
        success=200,
        public=True,
        html=True,
    ),
    Operation(
        method="GET",
        path="/api/v1/openapi.json",
        handler="openapi",
        operation_id="getOpenApi",
        summary="This document",
        tag="meta",
        success=200,
        public=True,
    ),
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_SLUG = {"type": "string", "pattern": SLUG_RE.pattern.replace("\\Z", "$")}
_AUTH_TYPE = {
    "type": "string",
    "enum": ["bearer", "header", "basic", "none", "oauth2_client_credentials", "oauth2"],
}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_URL = {
    "type": "string",
    "format": "uri",
    "maxLength": 2048,
    "description": "http(s):// URL with a host, no user info, no fragment",
}
_HEADER_NAME = {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", "maxLength": 256}
_CREDENTIAL: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 16384,
    "writeOnly": True,
    "description": "write-only; never returned; no CR, LF or NUL",
}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def _list_of(name: str) -> dict[str, Any]:
    return _object(
        {
            "data": {"type": "array", "items": _ref(name)},
            "nextCursor": {
                "type": ["string", "null"],
                "description": "pass as `cursor` for the next page; null on the last",
            },
        },
        ["data", "nextCursor"],
    )


_RATE_LIMIT: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "requestsPerMinute": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "burst": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1_000_000,
            "description": "default: requestsPerMinute",
        },
    },
    "required": ["requestsPerMinute"],
    "additionalProperties": False,
    "description": "token bucket; over it: 429 rate_limited with Retry-After; null: none",
}
_GLOBS = {
    "type": "array",
    "maxItems": 100,
    "items": {"type": "string", "minLength": 1, "maxLength": 200},
}
_TOOLS: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {"allow": _GLOBS, "deny": _GLOBS},
    "additionalProperties": False,
    "description": "tool globs; deny wins; an empty or missing allow means all; null: none",
}
_MAX_CONCURRENT = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": 100_000,
    "description": "requests and streams open at once; past it 429 "
    "too_many_concurrent; null: no cap",
}
_PEM_OR_NULL = {"type": ["string", "null"], "maxLength": 262144}
_CA_CERTIFICATE = {
    **_PEM_OR_NULL,
    "description": "PEM CA certificate(s) trusted for this "
    "https upstream, in addition to the system's and the gateway's CA file",
}
_CLIENT_CERTIFICATE = {
    **_PEM_OR_NULL,
    "description": "PEM client certificate chain (leaf "
    "first) presented to the upstream (mTLS); public",
}
_CLIENT_KEY = {
    "type": "string",
    "writeOnly": True,
    "maxLength": 16384,
    "description": "PEM private key of clientCertificate (unencrypted PKCS#8, "
    "PKCS#1 or SEC1); sealed like the credential, never returned",
}

_CONNECTION_FIELDS: dict[str, Any] = {
    "slug": _SLUG,
    "name": _NAME,
    "upstreamUrl": _URL,
    "authType": _AUTH_TYPE,
    "headerName": {"type": ["string", "null"], "pattern": _HEADER_NAME["pattern"]},
    "enabled": {"type": "boolean"},
    "credentialVersion": {"type": "integer", "minimum": 1},
    "createdAt": _TIME,
    "updatedAt": _TIME,
    "rotatedAt": _TIME_OR_NULL,
    "caCertificate": _CA_CERTIFICATE,
    "clientCertificate": _CLIENT_CERTIFICATE,
    "gatewayUrl": {
        "type": "string",
        "format": "uri",
        "description": "`<base>/v1/mcp/<slug>`: the URL MCP clients use",
    },
    "rateLimit": _RATE_LIMIT,
    "tools": _TOOLS,
}

# Only on OAuth connections (docs/oauth.md); never a token or the client secret.
_OAUTH_READ_FIELDS: dict[str, Any] = {
    "oauth": _ref("OAuthSettings"),
    "oauthStatus": {
        "type": "string",
        "enum": ["authorized", "pending", "reauthorization_required"],
    },
    "tokenExpiresAt": _TIME_OR_NULL,
    "credentialScope": {
        "type": "string",
        "enum": ["shared", "per_user"],
        "description": "shown when per_user",
    },
}

_API_KEY_FIELDS: dict[str, Any] = {
    "id": {"type": "string"},
    "name": _NAME,
    "scopes": {"type": "array", "items": {"type": "string", "enum": ["admin", "mcp"]}},
    "connections": {"type": ["array", "null"], "items": _SLUG},
    "createdAt": _TIME,
    "expiresAt": _TIME_OR_NULL,
    "revokedAt": _TIME_OR_NULL,
    "rateLimit": _RATE_LIMIT,
    "tools": _TOOLS,
    "maxConcurrent": _MAX_CONCURRENT,
    "user": {
        "type": ["string", "null"],
        "description": "the end user the key acts for (per-user credentials)",
    },
}

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_AUDIT_FIELDS: dict[str, Any] = {
    "id": {"type": "string"},
    "timestamp": _TIME,
    "connection": _SLUG,
    "kind": {
        "type": "string",
        "enum": ["gateway", "management", "credential"],
        "description": "credential: an OAuth token request (action oauth_token)",
    },
    "action": _NULLABLE_STR,
    "apiKeyId": _NULLABLE_STR,
    "user": _NULLABLE_STR,
    "metadata": {"type": ["object", "null"]},
    "method": _NULLABLE_STR,
    "path": _NULLABLE_STR,
    "rpcMethod": _NULLABLE_STR,
    "tool": _NULLABLE_STR,
    "status": _NULLABLE_INT,
    "outcome": {"type": "string"},
    "latencyMs": {"type": ["number", "null"]},
    "bytesIn": {"type": "integer"},
    "bytesOut": {"type": "integer"},
    "credentialVersion": _NULLABLE_INT,
    "seq": {"type": "integer"},
    "prevHash": _NULLABLE_STR,
    "hash": _NULLABLE_STR,
}
# Events about no connection (API keys, sign-in) have connection null: the global chain.
_AUDIT_FIELDS["connection"] = {"anyOf": [_SLUG, {"type": "null"}]}
# Present only when set (docs/audit.md).
_AUDIT_OPTIONAL: dict[str, Any] = {
    "changes": {
        "type": "object",
        "description": "management updates: field -> {from, to}; a credential change "
        "only as credentialVersion",
        "additionalProperties": _object({"from": {}, "to": {}}, ["from", "to"]),
    },
    "keyId": {"type": "string", "description": "the audit key the hash is an HMAC under"},
}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "on 422: the invalid field"},
                },
                ["code", "message"],
            )
        },
        ["error"],
    ),
    "Connection": _object({**_CONNECTION_FIELDS, **_OAUTH_READ_FIELDS}, list(_CONNECTION_FIELDS)),
    "OAuthSettings": _object(
        {
            "clientId": {"type": "string", "minLength": 1, "maxLength": 256},
            "scopes": {"type": "array", "maxItems": 64, "items": {"type": "string"}},
            "tokenUrl": _URL,
            "authorizationUrl": {
                **_URL,
                "description": "oauth2 only; with tokenUrl, or both discovered from the upstream",
            },
            "audience": {
                "type": "string",
                "maxLength": 2048,
                "description": "oauth2_client_credentials only",
            },
            "resource": {**_URL, "description": "RFC 8707 resource indicator"},
            "tokenEndpointAuthMethod": {
                "type": "string",
                "enum": ["client_secret_basic", "client_secret_post"],
            },
        },
        ["clientId"],
    ),
    "ConnectionCreate": _object(
        {
            "slug": _SLUG,
            "name": _NAME,
            "upstreamUrl": _URL,
            "authType": {**_AUTH_TYPE, "default": "bearer"},
            "headerName": {**_HEADER_NAME, "description": "required when authType is header"},
            "credential": {
                **_CREDENTIAL,
                "description": "required unless authType is none "
                "(optional for oauth2: a public client); "
                "the client secret for OAuth types; " + _CREDENTIAL["description"],
            },
            "enabled": {"type": "boolean", "default": True},
            "oauth": {**_ref("OAuthSettings"), "description": "required for OAuth auth types"},
            "credentialScope": {
                "type": "string",
                "enum": ["shared", "per_user"],
                "default": "shared",
                "description": "per_user: one credential per end user",
            },
            "caCertificate": _CA_CERTIFICATE,
            "clientCertificate": {**_CLIENT_CERTIFICATE, "description": "with clientKey"},
            "clientKey": _CLIENT_KEY,
            "rateLimit": _RATE_LIMIT,
            "tools": _TOOLS,
        },
        ["slug", "name", "upstreamUrl"],
    ),
    "ConnectionUpdate": _object(
        {
            "name": _NAME,
            "upstreamUrl": _URL,
            "authType": _AUTH_TYPE,
            "headerName": {"type": ["string", "null"], "pattern": _HEADER_NAME["pattern"]},
            "enabled": {"type": "boolean"},
            "oauth": _ref("OAuthSettings"),
            "caCertificate": {**_CA_CERTIFICATE, "description": "null removes it"},
            "clientCertificate": {
                "type": "null",
                "description": "null removes the client "
                "certificate and key; replace them with rotate",
            },
            "rateLimit": _RATE_LIMIT,
            "tools": _TOOLS,
        },
    ),
    "RotateRequest": _object(
        {
            "credential": _CREDENTIAL,
            "authType": {
                **_AUTH_TYPE,
                "description": "optionally switch the auth type too "
                "(the way out of none); not none",
            },
            "headerName": {**_HEADER_NAME, "description": "with authType header"},
            "clientCertificate": {
                "type": "string",
                "description": "a new client certificate "
                "chain; alone, it must match the stored clientKey",
            },
            "clientKey": {
                **_CLIENT_KEY,
                "description": "a new client key; alone, it must match "
                "the stored clientCertificate",
            },
        },
        [],
    ),
    "Empty": _object({}),
    "UserCredentialPut": _object({"credential": _CREDENTIAL}, ["credential"]),
    "UserCredential": _object(
        {
            "user": {"type": "string"},
            "kind": {"type": "string", "enum": ["static", "oauth2"]},
            "updatedAt": _TIME,
            "oauthStatus": {
                "type": "string",
                "enum": ["authorized", "pending", "reauthorization_required"],
            },
            "tokenExpiresAt": _TIME_OR_NULL,
        },
        ["user", "kind", "updatedAt"],
    ),
    "UserCredentialList": _object(
        {"data": {"type": "array", "items": _ref("UserCredential")}}, ["data"]
    ),
    "AuthorizeResponse": _object(
        {
            "authorizeUrl": {
                "type": "string",
                "format": "uri",
                "description": "open it in a browser; valid for 10 minutes, once",
            }
        },
        ["authorizeUrl"],
    ),
    "ConnectionList": _list_of("Connection"),
    "AuditEvent": _object({**_AUDIT_FIELDS, **_AUDIT_OPTIONAL}, list(_AUDIT_FIELDS)),
    "AuditList": _list_of("AuditEvent"),
    "ApiKey": _object(_API_KEY_FIELDS, list(_API_KEY_FIELDS)),
    "ApiKeyCreate": _object(
        {
            "name": _NAME,
            "scopes": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string", "enum": ["admin", "mcp"]},
            },
            "connections": {
                "type": ["array", "null"],
                "items": _SLUG,
                "uniqueItems": True,
                "description": "limit an mcp key to these connections",
            },
            "expiresAt": _TIME_OR_NULL,
            "rateLimit": _RATE_LIMIT,
            "tools": _TOOLS,
            "maxConcurrent": _MAX_CONCURRENT,
            "user": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 256,
                "description": "bind the key to this end user (X-Igris-User must match)",
            },
        },
        ["name", "scopes"],
    ),
    "ApiKeyUpdate": _object(
        {
            "name": _NAME,
            "connections": {
                "type": ["array", "null"],
                "items": _SLUG,
                "uniqueItems": True,
                "description": "limit an mcp key to these connections; null: all",
            },
            "expiresAt": _TIME_OR_NULL,
            "rateLimit": _RATE_LIMIT,
            "tools": _TOOLS,
            "maxConcurrent": _MAX_CONCURRENT,
        },
    ),
    "ApiKeyCreated": _object(
        {
            **_API_KEY_FIELDS,
            "key": {
                "type": "string",
                "pattern": "^ig_[0-9A-Za-z]{36}$",
                "description": "the gateway key itself: shown this once only",
            },
        },
        [*_API_KEY_FIELDS, "key"],
    ),
    "ApiKeyList": _list_of("ApiKey"),
}

# The request fields the API accepts, per request schema: anything else is a 422.
REQUEST_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(_SCHEMAS[name]["properties"])
    for name in (
        "ConnectionCreate",
        "ConnectionUpdate",
        "RotateRequest",
        "Empty",
        "ApiKeyCreate",
        "ApiKeyUpdate",
        "UserCredentialPut",
    )
}

_QUERY: dict[str, dict[str, Any]] = {
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "page size",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    },
    "cursor": {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "the previous page's nextCursor",
        "schema": {"type": "string"},
    },
    "since": {
        "name": "since",
        "in": "query",
        "required": False,
        "description": "only events at or after this RFC 3339 time",
        "schema": {"type": "string", "format": "date-time"},
    },
    "slug": {
        "name": "slug",
        "in": "query",
        "required": False,
        "description": "only this connection's events",
        "schema": _SLUG,
    },
    "kind": {
        "name": "kind",
        "in": "query",
        "required": False,
        "description": "only events of this kind (gateway, management, ...)",
        "schema": {"type": "string"},
    },
    "action": {
        "name": "action",
        "in": "query",
        "required": False,
        "description": "only management events with this action (create, revoke, ...)",
        "schema": {"type": "string"},
    },
    "outcome": {
        "name": "outcome",
        "in": "query",
        "required": False,
        "description": "only events with this outcome (ok, denied, ...)",
        "schema": {"type": "string"},
    },
    "user": {
        "name": "user",
        "in": "query",
        "required": False,
        "description": "only events of this end user (X-Igris-User)",
        "schema": {"type": "string", "maxLength": 256},
    },
}

_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "slug": {"name": "slug", "in": "path", "required": True, "schema": _SLUG},
    "id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
    "user": {
        "name": "user",
        "in": "path",
        "required": True,
        "description": "the end user's id (1-256 printable characters)",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    },
}

_ERRORS: dict[str, str] = {
    "400": "The body is not JSON, or not a JSON object",
    "401": "No gateway key, or a malformed, unknown, expired or revoked one",
    "403": "The key lacks the admin scope",
    "404": "Unknown connection or key",
    "409": "The slug is taken",
    "413": "The body is larger than the limit",
    "415": "The body is not application/json",
    "422": "A field is invalid; the message (and `field`) names it",
    "500": "Internal error (no details are given)",
    "502": "An outside server failed: the OAuth authorization server, or its discovery",
    "503": "The store or the crypto provider is unavailable (see Retry-After)",
}


def _error_response(status: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if status == "401":
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == "503":
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
    }
    params = [_PATH_PARAMS[p] for p in ("slug", "id", "user") if "{" + p + "}" in op.path]
    params += [_QUERY[q] for q in op.query]
    if params:
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {
            # disable/enable take no fields; an empty body is fine there
            "required": op.request != "Empty",
            "content": {JSON: {"schema": _ref(op.request)}},
        }
    success: dict[str, Any] = {"description": op.summary}
    if op.response is not None:
        success["content"] = {JSON: {"schema": _ref(op.response)}}
    elif op.html:
        success["content"] = {"text/html": {"schema": {"type": "string"}}}
    elif op.public:
        success["content"] = {JSON: {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(op.success): success}
    if op.public:
        out["security"] = []
    else:
        errors = ["401", "403", "500", "503"]
        if op.query or "{slug}" in op.path:
            errors.append("422")
        if "{" in op.path:
            errors.append("404")
        if op.request is not None:
            errors += ["400", "413", "415", "422"]
        if op.conflict:
            errors.append("409")
        if op.outside:
            errors.append("502")
        for status in sorted(set(errors)):
            responses[status] = {"$ref": f"#/components/responses/E{status}"}
    out["responses"] = responses
    return out


def build_document(
    operations: tuple[Operation, ...] = OPERATIONS, *, version: str = "0"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations`` (a fresh, mutable dict)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "igris-mw management API",
                "version": version,
                "description": (
                    "Manage connections (virtual keys), gateway API keys and the audit trail. "
                    "Every call needs `Authorization: Bearer ig_...` of a key with the "
                    '`admin` scope. Errors are `{"error": {"code", "message"}}`.'
                ),
            },
            "servers": [{"url": "/"}],
            "tags": [{"name": t} for t in ("connections", "audit", "api-keys", "meta")],
            "security": [{"bearerAuth": []}],
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "ig_..."},
                },
                "schemas": _SCHEMAS,
                "responses": {f"E{s}": _error_response(s) for s in _ERRORS},
            },
        }
    )
