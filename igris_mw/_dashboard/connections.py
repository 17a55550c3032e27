"""The Connections pages: list, New connection, a connection's page and its actions.

Each handler calls ``Service`` exactly as the management API does, with the
signed-in admin key's id as the actor of the audited change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .._errors import NotFound, SlugTaken, ValidationError
from .._oauth.config import OAUTH_AUTH_TYPES, oauth_status
from .._service import Service
from ..models import AuthType, Connection
from .audit_view import CONNECTION_AUDIT_COLUMNS, PAGE_ROWS, audit_row, last_used
from .forms import PEM_FIELDS, errors_for, pem
from .http import Request, Response
from .policy import FEATURES, POLICY_INPUTS, policy_body, policy_values

__all__ = ["ConnectionPages"]

_CONNECTION_FIELDS: Final = (
    "slug",
    "name",
    "upstreamUrl",
    "authType",
    "headerName",
    "credential",
    *PEM_FIELDS,
)
_AUTH_TYPES: Final = ("bearer", "header", "basic", "none")


class ConnectionPages:
    """Handlers (``_h_*``) for the connection routes; mixed into ``Dashboard``."""

    service: Service
    oauth: Any

    async def _h_connections(self, req: Request) -> Response:
        cursor = req.query.get("cursor") or None
        try:
            page = await self.service.list_connections(limit=50, cursor=cursor)
        except ValidationError:
            page = await self.service.list_connections(limit=50)
        rows = []
        for conn in page.items:
            rows.append({"conn": conn, "last_used": await last_used(self.service, conn.slug)})
        return req.page(
            "connections.html", nav="connections", rows=rows, next_cursor=page.next_cursor
        )

    async def _h_connection_new(self, req: Request) -> Response:
        return self._connection_form(req, 200, {"authType": "bearer"}, {})

    def _connection_form(
        self, req: Request, status: int, values: Mapping[str, str], errors: Mapping[str, str]
    ) -> Response:
        return req.page(
            "connection_new.html",
            status=status,
            nav="connections",
            values=values,
            errors=errors,
            auth_types=_AUTH_TYPES,
        )

    async def _h_connection_create(self, req: Request) -> Response:
        form = await req.form()
        body: dict[str, Any] = {
            "slug": form.get("slug", ""),
            "name": form.get("name", ""),
            "upstreamUrl": form.get("upstreamUrl", ""),
            "authType": form.get("authType") or "bearer",
            "enabled": form.get("enabled") == "on",
        }
        if form.get("headerName"):
            body["headerName"] = form["headerName"]
        if form.get("credential"):
            body["credential"] = form["credential"]
        if FEATURES.tls:
            body.update({k: pem(form[k]) for k in PEM_FIELDS if pem(form.get(k, ""))})
        body.update(
            policy_body(
                form, rate_limit=FEATURES.connection_rate_limit, tools=FEATURES.connection_tools
            )
        )
        # Kept for the form on an error, without the credential (write-only).
        values = {
            k: str(v)
            for k, v in body.items()
            if isinstance(v, str) and k not in ("credential", "clientKey")
        }
        values["enabled"] = "on" if body["enabled"] else ""
        values.update({k: form.get(k, "") for k in POLICY_INPUTS})
        try:
            conn = await self.service.create_connection(body, actor=req.key_id)
        except ValidationError as exc:
            return self._connection_form(req, 422, values, errors_for(exc, _CONNECTION_FIELDS))
        except SlugTaken as exc:
            return self._connection_form(req, 409, values, {"slug": exc.message})
        req.notice(f"Connection {conn.slug} created.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        return await self._connection_page(req, conn, 200, {})

    async def _connection_page(
        self,
        req: Request,
        conn: Connection,
        status: int,
        errors: Mapping[str, str],
        values: Mapping[str, str] | None = None,
    ) -> Response:
        page = await self.service.list_audit(conn.slug, limit=PAGE_ROWS)
        gateway_url = f"{req.base_url()}/v1/mcp/{conn.slug}"
        mcp_servers = json.dumps(
            {
                "mcpServers": {
                    conn.slug: {
                        "url": gateway_url,
                        "headers": {"Authorization": "Bearer ig_..."},
                    }
                }
            },
            indent=2,
        )
        record = conn.to_json()
        if conn.auth_type.value in OAUTH_AUTH_TYPES:
            record.update(oauth_status(await self.service.store.get_oauth_grant(conn.slug)))
        can_authorize = (
            conn.auth_type is AuthType.OAUTH2
            and conn.credential_scope != "per_user"
            and self.oauth is not None
        )
        return req.page(
            "connection.html",
            status=status,
            nav="connections",
            conn=conn,
            record=record,
            can_authorize=can_authorize,
            policy=values if values is not None else policy_values(record),
            gateway_url=gateway_url,
            mcp_servers=mcp_servers,
            errors=errors,
            audit=[audit_row(e, with_connection=False) for e in page.items],
            columns=CONNECTION_AUDIT_COLUMNS,
            live_url=req.url(f"/connections/{conn.slug}/audit.json"),
        )

    async def _h_connection_audit_json(self, req: Request, slug: str) -> Response:
        page = await self.service.list_audit(slug, limit=PAGE_ROWS)
        return req.json({"rows": [audit_row(e, with_connection=False) for e in page.items]})

    async def _h_connection_rotate(self, req: Request, slug: str) -> Response:
        form = await req.form()
        credential = form.get("credential") or None
        identity: dict[str, str] = {}
        if FEATURES.tls:
            for field, arg in (
                ("clientCertificate", "client_certificate"),
                ("clientKey", "client_key"),
            ):
                if pem(form.get(field, "")):
                    identity[arg] = pem(form[field])
        try:
            conn = await self.service.rotate_credential(
                slug, credential, actor=req.key_id, **identity
            )
        except ValidationError as exc:
            current = await self.service.get_connection(slug)
            return await self._connection_page(
                req,
                current,
                422,
                errors_for(
                    exc, ("credential", "clientCertificate", "clientKey"), default="credential"
                ),
            )
        req.notice(
            f"Credential rotated: {conn.slug} now uses credential version "
            f"{conn.credential_version}."
        )
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_policy(self, req: Request, slug: str) -> Response:
        if not FEATURES.connection_policy:
            raise NotFound("no such page")
        form = await req.form()
        changes = policy_body(
            form,
            rate_limit=FEATURES.connection_rate_limit,
            tools=FEATURES.connection_tools,
            clear=True,
        )
        try:
            conn = await self.service.update_connection(slug, changes, actor=req.key_id)
        except ValidationError as exc:
            current = await self.service.get_connection(slug)
            values = {k: form.get(k, "") for k in POLICY_INPUTS}
            return await self._connection_page(
                req, current, 422, errors_for(exc, POLICY_INPUTS), values
            )
        req.notice(f"Access policy of {conn.slug} saved.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_edit_form(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        record = conn.to_json()
        values = {
            "name": conn.name,
            "upstreamUrl": conn.upstream_url,
            "authType": conn.auth_type.value,
            "headerName": conn.header_name or "",
            "caCertificate": record.get("caCertificate") or "",
            "clientCertificate": record.get("clientCertificate") or "",
        }
        return self._edit_form(req, conn, 200, values, {})

    def _edit_form(
        self,
        req: Request,
        conn: Connection,
        status: int,
        values: Mapping[str, str],
        errors: Mapping[str, str],
    ) -> Response:
        return req.page(
            "connection_edit.html",
            status=status,
            nav="connections",
            conn=conn,
            values=values,
            errors=errors,
            auth_types=_AUTH_TYPES,
        )

    async def _h_connection_edit(self, req: Request, slug: str) -> Response:
        form = await req.form()
        values = {k: form.get(k, "") for k in ("name", "upstreamUrl", "authType", "headerName")}
        current = await self.service.get_connection(slug)
        record = current.to_json()
        # Only what changed goes to the service, as a PATCH would send it.
        changes: dict[str, Any] = {}
        if values["name"] != current.name:
            changes["name"] = values["name"]
        if values["upstreamUrl"] != current.upstream_url:
            changes["upstreamUrl"] = values["upstreamUrl"]
        if values["authType"] != current.auth_type.value:
            changes["authType"] = values["authType"]
        if values["headerName"] != (current.header_name or ""):
            changes["headerName"] = values["headerName"] or None
        if FEATURES.tls:
            for field in ("caCertificate", "clientCertificate"):
                values[field] = pem(form.get(field, ""))
                if values[field] != pem(record.get(field) or ""):
                    changes[field] = values[field] or None
        try:
            conn = await self.service.update_connection(slug, changes, actor=req.key_id)
        except ValidationError as exc:
            return self._edit_form(req, current, 422, values, errors_for(exc, _CONNECTION_FIELDS))
        req.notice(f"Connection {conn.slug} saved." if changes else "Nothing changed.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_authorize(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        if conn.auth_type is not AuthType.OAUTH2 or self.oauth is None:
            raise NotFound("this connection is not authorized by consent")
        if conn.credential_scope == "per_user":
            raise NotFound("a per-user connection is authorized per user, through the API")
        from .._oauth.gateway import OAuthConnection

        target = OAuthConnection.of(conn, await self.service.open_credential(conn))
        assert target is not None
        url = await self.oauth.begin(
            slug, target, redirect_uri=f"{req.base_url()}/api/v1/oauth/callback"
        )
        # A link, not a redirect: the pages' CSP keeps form submissions on this site.
        return req.page("connection_authorize.html", nav="connections", conn=conn, url=url)

    async def _h_connection_disable(self, req: Request, slug: str) -> Response:
        conn = await self.service.set_enabled(slug, False, actor=req.key_id)
        req.notice(f"Connection {conn.slug} disabled: the gateway refuses it now.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_enable(self, req: Request, slug: str) -> Response:
        conn = await self.service.set_enabled(slug, True, actor=req.key_id)
        req.notice(f"Connection {conn.slug} enabled.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_delete_form(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        return req.page("connection_delete.html", nav="connections", conn=conn, error=None)

    async def _h_connection_delete(self, req: Request, slug: str) -> Response:
        form = await req.form()
        if form.get("confirm") != slug:
            conn = await self.service.get_connection(slug)
            return req.page(
                "connection_delete.html",
                status=422,
                nav="connections",
                conn=conn,
                error="Confirm the deletion with the Delete button on this page.",
            )
        await self.service.delete_connection(slug, actor=req.key_id)
        req.notice(f"Connection {slug} deleted. Its audit trail is kept.")
        return req.redirect("/connections")
