"""A read-only local web server for the explorer (standard library only).

It binds to the loopback interface, answers GET and HEAD only, and serves:

* ``/``: the explorer page (its data fetched lazily from the routes below);
* ``/api/manifest``: names, labels, predictions and per-example metrics;
* ``/api/page?dataset=d0&page=0``: inputs, attributions and curves of one page of examples;
* ``/files/<path>``: a file under the served folder (e.g. ``/files/report/index.html``).

Paths with ``..`` segments, absolute paths, backslashes or control characters are refused
(403) before the file system is touched, and a path whose resolved target (after symbolic
links) leaves the folder is refused too. Requests naming another host (DNS rebinding) are
refused.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pellucid.explorer._data import DEFAULT_PAGE_SIZE, ExampleSet
from pellucid.explorer._page import manifest, render_page
from pellucid.explorer._sources import inside, load_folder

__all__ = ["ExplorerServer", "safe_relative_path"]


def safe_relative_path(raw: str) -> str | None:
    """The percent-decoded relative path, or None when it is absolute, climbs with ``..``
    or holds a backslash or control character."""
    path = unquote(raw)
    if not path or path.startswith(("/", "~")) or "\\" in path:
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return None
    parts = path.split("/")
    if any(part in ("..", ".") for part in parts) or ":" in parts[0]:
        return None
    return path


class ExplorerServer(ThreadingHTTPServer):
    """Serves one folder's explorer on ``host:port`` (port 0 picks a free one).

    Args:
        root: the study folder or folder of explanation files.
        port: TCP port; 0 lets the system choose.
        page_size: examples per lazily loaded page.
    """

    daemon_threads = True

    def __init__(self, root: str | os.PathLike[str], *, port: int = 0, page_size: int = 0):
        self.root = Path(root).resolve()
        self.sets: list[ExampleSet] = load_folder(self.root)
        self.page_size = page_size or DEFAULT_PAGE_SIZE
        self.title = f"pellucid explorer: {self.root.name}"
        self.html = render_page(
            self.sets, title=self.title, static=False, page_size=self.page_size
        ).encode("utf-8")
        self._pages: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    @cached_property
    def manifest_json(self) -> bytes:
        data = manifest(self.sets, title=self.title, page_size=self.page_size)
        return json.dumps(data, allow_nan=False).encode("utf-8")

    def page_json(self, dataset: int, number: int) -> bytes | None:
        if not 0 <= dataset < len(self.sets):
            return None
        pages = max(1, -(-len(self.sets[dataset]) // self.page_size))
        if not 0 <= number < pages:
            return None
        with self._lock:
            if (dataset, number) not in self._pages:
                page = self.sets[dataset].page(number, self.page_size)
                self._pages[(dataset, number)] = json.dumps(page).encode("utf-8")
            return self._pages[(dataset, number)]

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (stop with ``shutdown()`` then ``server_close()``)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    server_version = "pellucid-explorer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        """Quiet: the explorer prints only its address."""

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _refuse(self, status: HTTPStatus, why: str, head: bool) -> None:
        self._send(status, why.encode("utf-8"), "text/plain; charset=utf-8", head)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _answer(self, head: bool) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost"):
            return self._refuse(HTTPStatus.FORBIDDEN, "unknown host", head)
        raw = self.path
        if "/../" in raw or raw.endswith("/..") or "\\" in raw:
            return self._refuse(HTTPStatus.FORBIDDEN, "path traversal refused", head)
        parts = urlsplit(raw)
        route = parts.path
        if route in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, self.server.html, "text/html; charset=utf-8", head)
        if route == "/api/manifest":
            return self._send(HTTPStatus.OK, self.server.manifest_json, "application/json", head)
        if route == "/api/page":
            return self._page(parse_qs(parts.query), head)
        if route.startswith("/files/"):
            return self._file(route[len("/files/") :], head)
        return self._refuse(HTTPStatus.NOT_FOUND, "not found", head)

    def _page(self, query: dict[str, list[str]], head: bool) -> None:
        dataset = (query.get("dataset") or [""])[0]
        number = (query.get("page") or [""])[0]
        if not (dataset.startswith("d") and dataset[1:].isdigit() and number.isdigit()):
            return self._refuse(HTTPStatus.BAD_REQUEST, "dataset=dN&page=K expected", head)
        body = self.server.page_json(int(dataset[1:]), int(number))
        if body is None:
            return self._refuse(HTTPStatus.NOT_FOUND, "no such page", head)
        return self._send(HTTPStatus.OK, body, "application/json", head)

    def _file(self, raw: str, head: bool) -> None:
        rel = safe_relative_path(raw)
        if rel is None:
            return self._refuse(HTTPStatus.FORBIDDEN, "only relative paths inside DIR", head)
        path = self.server.root / rel
        if not inside(self.server.root, path):
            return self._refuse(HTTPStatus.FORBIDDEN, "outside the served folder", head)
        if not path.is_file():
            return self._refuse(HTTPStatus.NOT_FOUND, "not found", head)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind == "application/json":
            kind += "; charset=utf-8"
        return self._send(HTTPStatus.OK, path.read_bytes(), kind, head)
