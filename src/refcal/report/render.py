"""The report's blocks as one self-contained HTML page or as Markdown; every string read from a file is escaped."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from .blocks import Image, Table

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1250px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}.wide{overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
td:first-child{white-space:normal;min-width:9em}th{background:#f0f4f8}
td:first-child,th:first-child{text-align:left}td strong{color:#0b5394}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{background:#fff6db;border-left:4px solid #e0a800;padding:.6em 1em}
details{margin:.6em 0}summary{cursor:pointer;color:#1f4e79}
"""


def to_html(blocks: list[Any], plot_dir: Path) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>refcal report</title>", f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Table):
            t = ["<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr></thead><tbody>"]
            for r, row in enumerate(b.rows):
                cells = [f"<strong>{e(c)}</strong>" if (r, i) in b.bold else e(c) for i, c in enumerate(row)]
                t.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            t.append("</tbody></table>")
            body = '<div class="wide">' + "".join(t) + "</div>"  # wide tables scroll instead of overflowing
            parts.append(f"<details><summary>{e(b.collapsed)}</summary>{body}</details>" if b.collapsed else body)
        elif isinstance(b, Image):
            data = base64.b64encode((plot_dir / f"{b.stem}.png").read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.stem)}">'
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
        else:
            kind, text = b
            tag = {"h1": "h1", "h2": "h2", "p": "p", "note": 'p class="note"'}[kind]
            parts.append(f"<{tag}>{e(text)}</{tag.split()[0]}>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
_MD_LINE_START = re.compile(r"^(\s*(?:\d+)?)([#>]|[-+=](?=\s|$)|(?<=\d)[.)](?=\s|$))")


def _md_cell(s: str) -> str:
    """Text as inert Markdown: every character Markdown could read as inline markup (links, images,
    emphasis, code, HTML, table pipes) is backslash-escaped, as is a block marker (heading, quote, list)
    at its start; ``&`` becomes an entity and newlines become spaces."""
    text = _MD_SPECIAL.sub(r"\\\1", str(s).replace("&", "&amp;")).replace("\n", " ").replace("\r", " ")
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text)


def to_markdown(blocks: list[Any]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Table):
            if b.collapsed:
                lines.append(f"*{_md_cell(b.collapsed)}*")
                lines.append("")
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(b.header) - 1)) + "|")
            for r, row in enumerate(b.rows):
                cells = [f"**{_md_cell(c)}**" if (r, i) in b.bold else _md_cell(c) for i, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
        elif isinstance(b, Image):
            lines.append(f"![{b.stem}](plots/{b.stem}.png)")
            lines.append("")
            lines.append(f"*{_md_cell(b.caption)}*")
        else:
            kind, text = b
            prefix = {"h1": "# ", "h2": "## ", "p": "", "note": "> **Note.** "}[kind]
            lines.append(prefix + _md_cell(text))
        lines.append("")
    return "\n".join(lines)
