"""ASGI type aliases and scope helpers shared by the gateway, the forwarder and the API.

Plain mappings, as Starlette types them: the TypedDicts of
``asgiref.typing`` make every pass-through of a message a cast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "local_path"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def local_path(scope: Scope) -> str:
    """``scope["path"]`` without the mount's ``root_path``.

    Servers differ on whether ``path`` includes ``root_path``; both are
    accepted. The root is stripped only at a segment boundary (``/api`` is not
    the root of ``/apix``).
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path
