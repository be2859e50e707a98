"""The self-contained HTML report: sections of sentences, tables and embedded PNG figures."""

from __future__ import annotations

from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png, render_report

__all__ = ["Figure", "Paragraph", "Section", "Table", "figure_png", "render_report"]
