"""Local HTTP origins ("CDNs") for the distribution tests: honest, garbage, and stoppable."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class GarbageHandler(_Quiet):
    """Answers every GET with 200 and bytes that are not what was asked for."""

    def do_GET(self) -> None:
        body = os.urandom(512)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve_directory(directory: Path, *, garbage: bool = False) -> Iterator[Origin]:
    handler = GarbageHandler if garbage else partial(_Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = Origin(server, thread)
    try:
        yield origin
    finally:
        origin.stop()


class Origin:
    """A running origin; `stop()` takes it down (connections then fail)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
