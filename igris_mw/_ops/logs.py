"""``serve --log-format json|text``: how the process's log lines are written.

``text`` (the default) keeps uvicorn's lines and formats; the gateway's own
lines (``igris_mw.*``) go to standard error the same way, and with
``--access-log`` a gateway request's access line is the gateway's (request
id, method, path, key id, user, outcome, status, latency) instead of
uvicorn's, on standard output like uvicorn's.

``json`` writes every log line (uvicorn's and the gateway's) to standard
output as one JSON object per line (``serve``'s own start-up notices, the
one-time admin key among them, stay on standard error, as JSON lines too)::

    {"time": "2026-12-01T01:02:03.456Z", "level": "info", "logger": "igris_mw.access",
     "message": "...", "requestId": "evt_...", ...}

A gateway request gets one access line from ``igris_mw.access`` with
``requestId`` (also in the ``X-Igris-Request-Id`` response header and the
audit event's ``id``), ``connection``, ``apiKeyId``, ``user``, ``method``,
``path`` (no query string), ``outcome``, ``status`` and ``latencyMs``.
Other requests (management API, health) get uvicorn's access line as
``method``, ``path`` (no query string), ``status`` and ``client``. A line
logged while a gateway request runs carries that request's ``requestId``.
No line holds a request header value (other than the end user's id that
the contract puts in the access line), a body or a credential; an
exception is written as its type and traceback (``exception``).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any, Final

from .access import current_request_id

__all__ = ["LOG_FORMATS", "JsonFormatter", "log_config"]

LOG_FORMATS: Final = ("text", "json")
_GATEWAY_PREFIX: Final = "/v1/mcp/"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "igris_access", None)
        if isinstance(access, dict):
            line["message"] = record.getMessage()
            line.update(access)
        elif record.name == "uvicorn.access" and _is_uvicorn_access(record.args):
            client, method, full_path, _, status = record.args  # type: ignore[misc]
            path = str(full_path).split("?", 1)[0][:2048]
            line["message"] = f"{method} {path} {status}"
            line.update({"method": method, "path": path, "status": status, "client": str(client)})
        else:
            line["message"] = record.getMessage()
            request_id = current_request_id.get()
            if request_id is not None:
                line["requestId"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def _is_uvicorn_access(args: Any) -> bool:
    return isinstance(args, tuple) and len(args) == 5


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class SkipGatewayAccess(logging.Filter):
    """Drops uvicorn's access line for gateway paths: the gateway writes a richer one."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if _is_uvicorn_access(args):
            return not str(args[2]).startswith(_GATEWAY_PREFIX)  # type: ignore[index]
        return True


def log_config(log_format: str, level: str, *, access_log: bool = True) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)``.

    ``access_log`` matters for ``text`` only: JSON always has access lines.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    numeric = "DEBUG" if level == "trace" else level.upper()
    if log_format == "text":
        return _text_config(numeric, access_log)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "filters": {"skip_gateway": {"()": f"{__name__}.SkipGatewayAccess"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"handlers": ["stdout"], "level": numeric},
        "loggers": {
            "uvicorn": {"level": numeric, "propagate": True},
            "uvicorn.error": {"level": numeric, "propagate": True},
            # Access lines are the point of --log-format json: on at any level.
            "uvicorn.access": {"level": "INFO", "propagate": True, "filters": ["skip_gateway"]},
            "igris_mw.access": {"level": "INFO", "propagate": True},
        },
    }


def _text_config(numeric: str, access_log: bool) -> dict[str, Any]:
    """uvicorn's own configuration, plus the gateway's loggers in its format."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["skip_gateway"] = {"()": f"{__name__}.SkipGatewayAccess"}
    config["handlers"]["igris_access"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    loggers = config["loggers"]
    loggers["uvicorn.access"]["filters"] = ["skip_gateway"]
    loggers["igris_mw"] = {"handlers": ["default"], "level": numeric, "propagate": False}
    loggers["igris_mw.access"] = {
        "handlers": ["igris_access"],
        "level": "INFO" if access_log else "WARNING",
        "propagate": False,
    }
    return config
