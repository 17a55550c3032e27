"""The API keys pages: list, New API key (shown once), Edit, Revoke."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .._errors import NotFound, ValidationError
from .._service import Service
from ..models import ApiKey
from .forms import errors_for, form_time
from .http import Request, Response
from .policy import FEATURES, POLICY_INPUTS, policy_body, policy_values
from .sessions import SessionStore

__all__ = ["KeyPages"]

_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


class KeyPages:
    """Handlers (``_h_*``) for the API key routes; mixed into ``Dashboard``."""

    service: Service
    sessions: SessionStore

    async def _h_api_keys(self, req: Request) -> Response:
        keys = await self.service.list_api_keys()
        keys = sorted(keys, key=lambda k: k.created_at, reverse=True)
        return req.page("api_keys.html", nav="api-keys", keys=keys)

    async def _api_key_form(
        self, req: Request, status: int, values: Mapping[str, Any], errors: Mapping[str, str]
    ) -> Response:
        page = await self.service.list_connections(limit=200)
        return req.page(
            "api_key_new.html",
            status=status,
            nav="api-keys",
            values=values,
            errors=errors,
            slugs=[c.slug for c in page.items],
        )

    async def _h_api_key_new(self, req: Request) -> Response:
        return await self._api_key_form(req, 200, {"scope": "mcp", "connections": []}, {})

    async def _h_api_key_create(self, req: Request) -> Response:
        form = await req.form()
        connections = req.form_list("connections")
        values: dict[str, Any] = {
            "name": form.get("name", ""),
            "scope": form.get("scope", "mcp"),
            "connections": connections,
            "expiresAt": form.get("expiresAt", ""),
        }
        values.update({k: form.get(k, "") for k in POLICY_INPUTS})
        body: dict[str, Any] = {"name": values["name"], "scopes": [values["scope"]]}
        if connections:
            body["connections"] = connections
        body.update(
            policy_body(
                form,
                rate_limit=FEATURES.key_rate_limit,
                tools=FEATURES.key_tools,
                max_concurrent=FEATURES.key_max_concurrent,
            )
        )
        try:
            if values["expiresAt"]:
                body["expiresAt"] = form_time(values["expiresAt"], "expiresAt")
            record, key = await self.service.create_api_key(body, actor=req.key_id)
        except ValidationError as exc:
            errors = errors_for(exc, ("name", "scopes", "connections", "expiresAt"))
            if "scopes" in errors:
                errors = {**errors, "scope": errors["scopes"]}
            return await self._api_key_form(req, 422, values, errors)
        assert req.session is not None
        req.session.flash_key = key
        req.session.flash_key_id = record.id
        return req.redirect("/api-keys/created")

    async def _h_api_key_created(self, req: Request) -> Response:
        session = req.session
        assert session is not None
        key, key_id = session.flash_key, session.flash_key_id
        session.flash_key = session.flash_key_id = None
        if key is None:
            return req.redirect("/api-keys")
        return req.page("api_key_created.html", nav="api-keys", new_key=key, key_id=key_id)

    async def _key_record(self, key_id: str) -> ApiKey:
        if _KEY_ID_RE.match(key_id):
            for record in await self.service.list_api_keys():
                if record.id == key_id:
                    return record
        raise NotFound("no such API key")

    async def _api_key_edit_page(
        self,
        req: Request,
        record: ApiKey,
        status: int,
        values: Mapping[str, Any],
        errors: Mapping[str, str],
    ) -> Response:
        page = await self.service.list_connections(limit=200)
        return req.page(
            "api_key_edit.html",
            status=status,
            nav="api-keys",
            record=record.to_json(),
            values=values,
            errors=errors,
            slugs=[c.slug for c in page.items],
        )

    async def _h_api_key_edit_form(self, req: Request, key_id: str) -> Response:
        if not FEATURES.key_policy:
            raise NotFound("no such page")
        record = await self._key_record(key_id)
        j = record.to_json()
        values: dict[str, Any] = {
            "name": record.name,
            "connections": j["connections"] or [],
            "expiresAt": j["expiresAt"][:16] if j["expiresAt"] else "",
            **policy_values(j),
        }
        return await self._api_key_edit_page(req, record, 200, values, {})

    async def _h_api_key_edit(self, req: Request, key_id: str) -> Response:
        if not FEATURES.key_policy:
            raise NotFound("no such page")
        record = await self._key_record(key_id)
        j = record.to_json()
        form = await req.form()
        values: dict[str, Any] = {
            "name": form.get("name", ""),
            "connections": req.form_list("connections"),
            "expiresAt": form.get("expiresAt", ""),
            **{k: form.get(k, "") for k in POLICY_INPUTS},
        }
        # Only what changed goes to the service, as a PATCH would send it.
        changes: dict[str, Any] = {}
        if values["name"] != record.name:
            changes["name"] = values["name"]
        if "mcp" in j["scopes"] and sorted(values["connections"]) != (j["connections"] or []):
            changes["connections"] = values["connections"] or None
        policy_changes = policy_body(
            form,
            rate_limit=FEATURES.key_rate_limit,
            tools=FEATURES.key_tools,
            max_concurrent=FEATURES.key_max_concurrent,
            clear=True,
        )
        changes.update({k: v for k, v in policy_changes.items() if v != j.get(k)})
        try:
            expires = form_time(values["expiresAt"], "expiresAt") if values["expiresAt"] else None
            # Minutes are what the form shows; compare at that precision.
            if (expires or "")[:16] != (j["expiresAt"] or "")[:16]:
                changes["expiresAt"] = expires
            updated = await self.service.update_api_key(record.id, changes, actor=req.key_id)
        except ValidationError as exc:
            errors = errors_for(exc, ("name", "connections", "expiresAt"))
            return await self._api_key_edit_page(req, record, 422, values, errors)
        req.notice(
            f"API key {updated.name} ({updated.id}) saved." if changes else "Nothing changed."
        )
        return req.redirect("/api-keys")

    async def _h_api_key_revoke(self, req: Request, key_id: str) -> Response:
        if not _KEY_ID_RE.match(key_id):
            raise NotFound("no such API key")
        record = await self.service.revoke_api_key(key_id, actor=req.key_id)
        self.sessions.drop_key(record.id)
        req.notice(f"API key {record.name} ({record.id}) revoked.")
        return req.redirect("/api-keys")
