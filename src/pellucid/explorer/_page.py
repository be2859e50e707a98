"""Assemble the explorer page: one HTML file with its script, style and (static) data inline.

The page is built from three committed assets (``assets/explorer.{html,js,css}``): no build
step, no Node.js, no network. Data goes into ``<script type="application/json">`` blocks,
which the browser never runs, with ``<``, ``>`` and ``&`` written as JSON escapes so no string
in the data can close the block. A Content-Security-Policy allows only the page's own script
(by its SHA-256), so even markup that slipped into the document could not run code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources
from typing import Any

from pellucid.explorer._data import DEFAULT_PAGE_SIZE, ExampleSet

__all__ = ["manifest", "render_page"]


def _asset(name: str) -> str:
    return resources.files("pellucid.explorer").joinpath("assets", name).read_text("utf-8")


def embed_json(value: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def manifest(
    sets: list[ExampleSet], *, title: str, page_size: int = DEFAULT_PAGE_SIZE
) -> dict[str, Any]:
    """The small, always-loaded part of the data."""
    return {
        "version": 1,
        "title": title,
        "datasets": [s.manifest(i, page_size) for i, s in enumerate(sets)],
    }


def render_page(
    sets: list[ExampleSet],
    *,
    title: str,
    static: bool,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> str:
    """The explorer page; ``static=True`` embeds every page of examples (for ``file://``),
    otherwise the page fetches them from the server as they are shown."""
    script = _asset("explorer.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    blocks: list[str] = []
    if static:
        for i, example_set in enumerate(sets):
            for number in range(max(1, -(-len(example_set) // page_size))):
                page = example_set.page(number, page_size)
                blocks.append(
                    f'<script type="application/json" id="px-page-d{i}-{number}">'
                    f"{embed_json(page)}</script>"
                )
    values = {
        "SCRIPT_HASH": f"sha256-{digest}",
        "CSS": _asset("explorer.css"),
        "MODE": "static" if static else "server",
        "MANIFEST": embed_json(manifest(sets, title=title, page_size=page_size)),
        "PAGES": "\n".join(blocks),
        "SCRIPT": script,
    }
    # One pass: text substituted in is never scanned again for placeholders.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _asset("explorer.html"))
