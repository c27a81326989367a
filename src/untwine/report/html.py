"""Small HTML builders: every piece of text goes through esc(), every picture becomes a data URI."""
from __future__ import annotations

import base64
import html
import math
from typing import Any, Iterable, Sequence

from untwine.report.console import number
from untwine.report.scores import is_number


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A cell's text, escaped: floats as report.console.number writes them (4 significant digits,
    integral ones whole, nats to one decimal), None as a dash."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, float):
        return esc(number(value))
    if isinstance(value, (list, tuple)):
        return esc("[" + ", ".join(fmt_plain(v) for v in value) + "]")
    return esc(value)


def fmt_plain(value: Any) -> str:
    return number(value) if isinstance(value, float) else str(value)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(data: bytes, mime: str, caption: str, css: str = "", width: int | None = None) -> str:
    """An embedded picture with its caption; the page's script opens it full size on a click."""
    cls = f"zoomable {css}".strip()
    size = f' width="{int(width)}"' if width else ""
    return (f'<figure><img class="{esc(cls)}"{size} src="{data_uri(data, mime)}" alt="{esc(caption)}" '
            f'title="click to open full size"><figcaption>{esc(caption)}</figcaption></figure>')


def heat(value: Any, top: float) -> str:
    """A cell's background by its share of the largest value (matrices read at a glance)."""
    if not is_number(value) or not math.isfinite(value) or top <= 0 or value <= 0:
        return ""
    return f' style="background: rgba(33, 113, 181, {min(1.0, value / top) * 0.55:.3f})"'


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], css: str = "", raw_header: bool = False,
          shade: bool = False, row_header: bool = True) -> str:
    """A table in a horizontally scrolling box; cells are formatted and escaped (header too, unless
    raw_header: then the caller has escaped it; None: no header row). shade colours numeric cells by size."""
    rows = [list(r) for r in rows]
    top = max((v for r in rows for v in r[1:] if is_number(v) and math.isfinite(v)), default=0.0) if shade else 0.0
    head = "".join(f"<th>{h if raw_header else esc(h)}</th>" for h in header or ())
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = []
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            if i == 0 and row_header:
                cells.append(f'<th scope="row">{fmt(v)}</th>')
            else:
                num = ' class="num"' if is_number(v) else ""
                cells.append(f"<td{num}{heat(v, top) if shade else ''}>{fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{esc(css)}"' if css else ""
    return (f'<div class="scroll"><table{cls}>{thead}'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def details(summary: str, body: str, open_: bool = False) -> str:
    return f'<details{" open" if open_ else ""}><summary>{esc(summary)}</summary>{body}</details>'


def note(text: str, css: str = "note") -> str:
    return f'<p class="{esc(css)}">{esc(text)}</p>'
