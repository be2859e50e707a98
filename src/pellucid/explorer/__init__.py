"""The explorer: browse examples, attributions, methods, model variants and metrics.

It reads saved files only (a study folder's per-example results, explanation files written
by ``Explanation.save`` / ``pellucid explain``) and shows them in one dependency-free page:
an example browser, one example under every method, one method on every model variant
with their agreement, a sortable metrics table and deletion/insertion curves. Nothing
upstream imports this package.

* :func:`write_static_page` writes a self-contained HTML file (``pellucid study`` writes
  ``report/explorer.html``): data embedded, works from ``file://`` without a network.
* :func:`serve` (``pellucid serve DIR``) starts a read-only server on 127.0.0.1 whose page
  loads a page of examples at a time.

Example:
    >>> import tempfile, torch
    >>> from pellucid import Explanation
    >>> folder = tempfile.mkdtemp()
    >>> x = torch.arange(6.0).reshape(2, 3)
    >>> _ = Explanation(x * 0.5, x, "saliency").save(f"{folder}/saliency.safetensors")
    >>> [(s.title, s.methods) for s in load_folder(folder)]
    [('explanations of 2 inputs (3,)', ['saliency'])]
"""

from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path

from pellucid._io import atomic_write_text
from pellucid.explorer._data import DEFAULT_PAGE_SIZE, ExampleSet
from pellucid.explorer._page import render_page
from pellucid.explorer._server import ExplorerServer
from pellucid.explorer._sources import ExplorerWarning, load_folder

__all__ = [
    "ExampleSet",
    "ExplorerServer",
    "ExplorerWarning",
    "load_folder",
    "serve",
    "write_static_page",
]


def write_static_page(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Path:
    """Write the explorer of ``folder`` as one self-contained HTML file (atomically).

    Args:
        folder: a study folder or a folder of explanation files.
        out: the HTML file (default ``folder/report/explorer.html``).
        page_size: examples per embedded page (the page parses one page at a time).

    Returns:
        The path written.
    """
    root = Path(folder)
    sets = load_folder(root)
    html = render_page(
        sets, title=f"pellucid explorer: {root.resolve().name}", static=True, page_size=page_size
    )
    return atomic_write_text(
        Path(out) if out is not None else root / "report" / "explorer.html", html
    )


def serve(folder: str | os.PathLike[str], *, port: int = 0, open_browser: bool = False) -> None:
    """Serve the explorer of ``folder`` on ``http://127.0.0.1:PORT/`` until interrupted.

    Args:
        folder: a study folder or a folder of explanation files.
        port: TCP port (0 picks a free one).
        open_browser: open the page in the default browser.
    """
    server = ExplorerServer(folder, port=port)
    print(f"pellucid explorer: {server.url} (Ctrl+C stops)", file=sys.stderr, flush=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
