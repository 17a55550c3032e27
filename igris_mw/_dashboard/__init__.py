"""The admin dashboard served at ``/ui/``: server-rendered pages over ``Service``.

``app.py`` routes, signs in and out and shows the audit page;
``connections.py`` and ``keys.py`` are the page handlers; ``http.py`` the
request, cookies and security headers; ``sessions.py`` the sign-in sessions
and the failed-sign-in throttle; ``forms.py``, ``policy.py`` and
``audit_view.py`` turn forms into the API's JSON and events into rows;
``templates/`` and ``static/`` are the pages, the stylesheet and the one
small script.
"""

from __future__ import annotations

from .app import Dashboard

__all__ = ["Dashboard"]
