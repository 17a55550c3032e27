"""From forms to the API's JSON, and from its ``ValidationError`` back to a field."""

from __future__ import annotations

import re

from .._errors import ValidationError
from ..models import parse_time
from .policy import input_for

__all__ = ["PEM_FIELDS", "errors_for", "field_message", "form_time", "pem"]

PEM_FIELDS = ("caCertificate", "clientCertificate", "clientKey")


def pem(text: str) -> str:
    """A textarea's PEM as the API takes it: browsers send CRLF line ends."""
    return text.replace("\r\n", "\n").strip() + "\n" if text.strip() else ""


def field_message(exc: ValidationError) -> str:
    """The message without its ``field:`` prefix (the page shows it at the field)."""
    prefix = f"{exc.field}: "
    text = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
    return text[:1].upper() + text[1:]


def errors_for(
    exc: ValidationError, fields: tuple[str, ...], *, default: str | None = None
) -> dict[str, str]:
    """The message keyed by the form field it belongs to ("form" when none)."""
    key = exc.field if exc.field in fields else (input_for(exc.field) or default or "form")
    return {key: field_message(exc)}


def form_time(text: str, field: str) -> str:
    """A ``datetime-local`` value (no zone: taken as UTC), a date, or RFC 3339, as RFC 3339.

    Raises:
        ValidationError: none of these (``field`` named).
    """
    text = text.strip()
    if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}\Z", text):
        return text + ":00Z"
    if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\Z", text):
        return text + "Z"
    if re.match(r"^\d{4}-\d{2}-\d{2}\Z", text):
        return text + "T00:00:00Z"
    parse_time(text, field=field)
    return text
