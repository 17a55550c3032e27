"""The admin dashboard served at ``/ui/``: server-rendered pages over ``Service``.

``app.py`` routes and renders, ``sessions.py`` keeps the sign-in sessions and
the failed-sign-in throttle, ``templates/`` and ``static/`` are the pages,
the stylesheet and the one small script.
"""

from __future__ import annotations

from .app import Dashboard

__all__ = ["Dashboard"]
