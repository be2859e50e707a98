"""The HTML report is inert: every string from files or config shows as text.

A parser walks the rendered page: no script element, no event-handler attribute, no
``javascript:`` URL, nothing but the page's own tags; and each hostile string comes back
verbatim as text (escaped in the HTML, unescaped by the parser).
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from pellucid.report.html import Figure, Paragraph, Section, Table, render_report

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "'><svg onload=alert(3)>",
    "javascript:alert(4)",
    "</table></section><iframe src=//evil>",
    "{{ 7 * 7 }}{% raw %}",
]

#: Every tag the report's own template writes.
OWN_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "p", "nav", "a",
    "main", "section", "h2", "table", "caption", "thead", "tr", "th", "tbody", "td",
    "figure", "img", "figcaption", "footer",
}  # fmt: skip


class _Walker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def _page(s: str) -> str:
    png = bytes.fromhex("89504e470d0a1a0a")
    return render_report(
        s,
        [
            Section(
                s,
                [
                    Paragraph(s),
                    Paragraph(s, kind=s),
                    Table([s, "value"], [[s, 1.0], [s, s]], caption=s),
                    Figure(png, caption=s),
                ],
                anchor=s,
            )
        ],
        subtitle=s,
        footer=s,
    )


@pytest.mark.parametrize("s", HOSTILE)
def test_hostile_strings_render_as_text(s):
    html = _page(s)
    walker = _Walker()
    walker.feed(html)
    assert set(walker.tags) <= OWN_TAGS, set(walker.tags) - OWN_TAGS
    assert "script" not in walker.tags and "iframe" not in walker.tags
    assert not [k for k, _ in walker.attrs if k.startswith("on")]
    for key, value in walker.attrs:
        if key in ("href", "src"):
            assert not value.lower().startswith("javascript:"), (key, value)
    text = "".join(walker.text)
    assert text.count(s) >= 8  # title, subtitle, headings, cells, captions, footer
    assert "49" not in text or "49" in s  # no template evaluation of user strings
