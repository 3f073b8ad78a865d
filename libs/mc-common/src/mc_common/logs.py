"""Structured JSON logs that carry the tenant and the trace id of the current call."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

from mc_common.tenancy import current_peer, current_principal, current_tenant
from mc_common.tracecontext import current_ids

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, tenant, trace ids, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (tenant := current_tenant()) is not None:
            entry["tenant"] = tenant
        if (principal := current_principal()) is not None:
            entry["principal"] = str(principal)
        if (peer := current_peer()) is not None:
            entry["peer"] = peer
        if (ids := current_ids()) is not None:
            entry["trace_id"] = f"{ids[0]:032x}"
            entry["span_id"] = f"{ids[1]:016x}"
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send the root logger's output to stderr as JSON lines (called by serve(), not on import).

    Everything that would print a multi-line traceback goes through it too, as one JSON line
    with the exception: uncaught exceptions (main and threads) and warnings.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    crash = logging.getLogger("mc.crash")

    def log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        crash.critical("uncaught exception", exc_info=(kind, value, tb))

    def log_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            crash.critical(
                "uncaught exception in a thread",
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                extra={"thread": getattr(args.thread, "name", None)},
            )

    sys.excepthook = log_uncaught
    threading.excepthook = log_thread
