"""Report building blocks and the renderer.

Sections hold structured blocks only (paragraphs, tables, figures); there is no way to inject
raw HTML, and the Jinja2 environment autoescapes every string, so a feature name like
``<script>`` is shown as text, never run.

Example:
    >>> section = Section("Demo", [Paragraph("a < b"), Table(["x"], [[1]])])
    >>> "a &lt; b" in render_report("Title", [section])
    True
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

__all__ = ["Figure", "Paragraph", "Section", "Table", "figure_png", "fmt", "render_report"]


@dataclass
class Paragraph:
    """A sentence or paragraph of plain text (escaped)."""

    text: str
    kind: str = "text"  # "text" | "finding" | "note" | "warning"


@dataclass
class Table:
    """A table of values; floats are formatted, everything else shown as escaped text."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG figure embedded as base64."""

    png: bytes
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Section:
    """One section of the report (one per stage)."""

    title: str
    blocks: list[Paragraph | Table | Figure] = field(default_factory=list)
    anchor: str = ""


def fmt(value: Any, digits: int = 4) -> str:
    """Format a table cell: floats to ``digits`` significant digits, None/NaN as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def figure_png(fig: Any, *, dpi: int = 90) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f7f8fa; line-height: 1.5; }
header { background: #1d2330; color: #fff; padding: 1.4rem 2rem; }
header h1 { margin: 0; font-size: 1.6rem; }
header p { margin: .3rem 0 0; color: #c9cfdb; }
nav { padding: .6rem 2rem; background: #e9ecf2; font-size: .92rem; }
nav a { margin-right: 1rem; color: #2a4d9b; text-decoration: none; }
main { padding: 1rem 2rem 3rem; max-width: 1200px; }
section { background: #fff; border-radius: 8px; padding: 1rem 1.4rem; margin: 1.2rem 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { margin-top: .2rem; font-size: 1.25rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border-bottom: 1px solid #e1e4ea; padding: .3rem .7rem; text-align: right; }
th { background: #f0f2f6; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
figure { margin: .8rem 0; } figure img { max-width: 100%; border: 1px solid #e1e4ea; }
figcaption { font-size: .88rem; color: #4a5263; }
p.finding { border-left: 4px solid #2a9b5b; padding-left: .7rem; }
p.warning { border-left: 4px solid #c9772a; padding-left: .7rem; }
p.note { color: #4a5263; font-size: .9rem; }
footer { color: #6b7385; font-size: .85rem; padding: 0 2rem 2rem; }
</style>
</head>
<body>
<header><h1>{{ title }}</h1><p>{{ subtitle }}</p></header>
<nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
{% for s in sections %}
<section id="{{ s.anchor }}">
<h2>{{ s.title }}</h2>
{% for b in s.blocks %}
{% if b.__class__.__name__ == "Paragraph" %}<p class="{{ b.kind }}">{{ b.text }}</p>
{% elif b.__class__.__name__ == "Table" %}<table>{% if b.caption %}<caption>{{ b.caption }}</caption>{% endif %}
<thead><tr>{% for c in b.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in b.rows %}<tr>{% for v in row %}<td>{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{% elif b.__class__.__name__ == "Figure" %}<figure><img src="{{ b.data_uri }}" alt="{{ b.caption }}">
{% if b.caption %}<figcaption>{{ b.caption }}</figcaption>{% endif %}</figure>
{% endif %}
{% endfor %}
</section>
{% endfor %}
</main>
<footer>{{ footer }}</footer>
</body>
</html>
"""


def render_report(
    title: str, sections: Sequence[Section], *, subtitle: str = "", footer: str = ""
) -> str:
    """Render sections into one self-contained HTML page (inline CSS, embedded PNGs)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_TEMPLATE)
    for i, section in enumerate(sections):
        if not section.anchor:
            section.anchor = f"s{i}"
    return template.render(
        title=title, subtitle=subtitle, footer=footer, sections=list(sections), fmt=fmt
    )
