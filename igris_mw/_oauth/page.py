"""The page a person sees after consenting: what happened, in words.

Plain HTML with no script and no outside resource; every value is escaped.
The response is never cached, never framed, and sends no ``Referer`` (the
callback URL carried an authorization code).
"""

from __future__ import annotations

from html import escape

__all__ = ["PAGE_HEADERS", "callback_page"]

PAGE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
)

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - igris-mw</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}</style>
</head>
<body>
<h1>{title}</h1>
<p>{message}</p>
<p>{next_step}</p>
</body>
</html>
"""


def callback_page(*, ok: bool, slug: str | None, user: str | None, message: str) -> bytes:
    """The HTML body of the callback's answer."""
    if ok:
        who = f" for the user {escape(user)}" if user else ""
        title = "Connection authorized"
        text = (
            f"The connection <strong>{escape(slug or '')}</strong> is authorized{who}: "
            "the gateway now holds its tokens and uses them for the upstream."
        )
        next_step = "You can close this window."
    else:
        title = "Authorization failed"
        text = f"The connection was not authorized: {escape(message)}"
        next_step = "Start the authorization again from the gateway."
    return _TEMPLATE.format(title=title, message=text, next_step=next_step).encode()
