"""`report.md` and a self-contained `report.html` from one list of blocks (headings, text, tables, figures).

The HTML embeds every SVG and table inline, so it opens offline with nothing beside it; the Markdown links the PNGs
that sit next to it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Block:
    """One piece of the report: `kind` is heading/text/table/figure/list; `level` applies to headings."""

    kind: str
    text: str = ""
    table: pd.DataFrame | None = None
    image: Path | None = None
    items: tuple[str, ...] = ()
    level: int = 2


def heading(text: str, level: int = 2) -> Block:
    """A section heading."""
    return Block("heading", text=text, level=level)


def text(value: str) -> Block:
    """A paragraph (inline `code` allowed)."""
    return Block("text", text=value)


def bullet_list(items: Sequence[str]) -> Block:
    """A bulleted list."""
    return Block("list", items=tuple(items))


def table(frame: pd.DataFrame, caption: str = "") -> Block:
    """A table of already-formatted cells (strings)."""
    return Block("table", text=caption, table=frame)


def figure(svg: Path, caption: str) -> Block:
    """A figure: the Markdown shows the PNG beside `svg`, the HTML embeds the SVG itself."""
    return Block("figure", text=caption, image=svg)


def fmt_number(value: object, digits: int = 3) -> str:
    """A float with `digits` decimals; NaN/None as an em dash."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_interval(value: object, low: object, high: object, digits: int = 3) -> str:
    """`mean [low, high]`; just the mean when the interval is missing (NaN)."""
    out = fmt_number(value, digits)
    if out == "—" or fmt_number(low, digits) == "—" or fmt_number(high, digits) == "—":
        return out
    return f"{out} [{fmt_number(low, digits)}, {fmt_number(high, digits)}]"


def fmt_p(value: object) -> str:
    """A p-value with 2 significant digits (`<0.001` below that); NaN as an em dash."""
    if value is None or not np.isfinite(float(value)):  # type: ignore[arg-type]
        return "—"
    v = float(value)  # type: ignore[arg-type]
    return "<0.001" if v < 0.001 else f"{v:.2g}"


def fmt_percent(value: object) -> str:
    """A fraction as a signed percentage with one decimal; NaN as an em dash."""
    if value is None or not np.isfinite(float(value)):  # type: ignore[arg-type]
        return "—"
    return f"{100 * float(value):+.1f}%"  # type: ignore[arg-type]


_CODE_SPAN = re.compile(r"(`[^`\n]*`)")
_MD_SPECIAL = re.compile(r"([\\<>\[\]|])")


def md_safe(value: str) -> str:
    """`value` as one line of Markdown in which nothing read from a results folder can become markup: outside code
    spans, `\\ < > [ ] |` are backslash-escaped (no HTML, links, images or table cells), and line breaks become
    spaces (no new blocks). Code spans stay as they are: their content is shown literally."""
    parts = _CODE_SPAN.split(" ".join(str(value).splitlines()))
    return "".join(p if i % 2 else _MD_SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts))


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The report as GitHub-flavoured Markdown; every piece of text goes through `md_safe`."""
    out = [f"# {md_safe(title)}", ""]
    for b in blocks:
        out += _MD[b.kind](b)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md_heading(b: Block) -> list[str]:
    return ["#" * b.level + " " + md_safe(b.text)]


def _md_cell(value: object) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", md_safe(str(value)))  # GFM ends a cell at `|` even inside a code span


def _md_table(b: Block) -> list[str]:
    assert b.table is not None
    cols = [_md_cell(c) for c in b.table.columns]
    esc = [[_md_cell(v) for v in row] for row in b.table.astype(str).to_numpy()]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return ([md_safe(b.text), ""] if b.text else []) + lines


def _md_figure(b: Block) -> list[str]:
    assert b.image is not None
    png = b.image.with_suffix(".png").name
    return [f"![{md_safe(b.text)}]({png})", "", f"*{md_safe(b.text)}* ([SVG]({b.image.name}))"]


_MD: dict[str, Callable[[Block], list[str]]] = {
    "heading": _md_heading,
    "text": lambda b: [md_safe(b.text)],
    "list": lambda b: [f"- {md_safe(item)}" for item in b.items],
    "table": _md_table,
    "figure": _md_figure,
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}
td:nth-child(2),td:nth-child(3){text-align:left}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
figcaption{font-style:italic;color:#555}
code{background:#f4f4f4;padding:0 3px}
"""


def render_html(title: str, blocks: Sequence[Block]) -> str:
    """The report as one self-contained HTML page (inline CSS, SVGs and tables; no external resources)."""
    body = "\n".join(_HTML[b.kind](b) for b in blocks)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n"
            "</html>\n")


def _inline(value: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(value))


def _html_table(b: Block) -> str:
    assert b.table is not None
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b.table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>\n"
                   for row in b.table.astype(str).to_numpy())
    caption = f"<p>{_inline(b.text)}</p>\n" if b.text else ""
    return f"{caption}<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"


def _html_figure(b: Block) -> str:
    assert b.image is not None
    svg = b.image.read_text(encoding="utf-8")
    svg = svg[svg.index("<svg"):]
    return f"<figure>\n{svg}\n<figcaption>{_inline(b.text)}</figcaption>\n</figure>"


_HTML: dict[str, Callable[[Block], str]] = {
    "heading": lambda b: f"<h{b.level}>{_inline(b.text)}</h{b.level}>",
    "text": lambda b: f"<p>{_inline(b.text)}</p>",
    "list": lambda b: "<ul>\n" + "".join(f"<li>{_inline(i)}</li>\n" for i in b.items) + "</ul>",
    "table": _html_table,
    "figure": _html_figure,
}
