"""Tables for people: a self-contained HTML rendering of any afo table for the Snakemake report."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from afo.io import atomic_write_text


def _cell(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #eee; }
td.key { text-align: left; }
td.best { font-weight: bold; background: #e6f4e6; }
p.note { color: #444; max-width: 60em; }
"""


def html_table(
    table: pd.DataFrame,
    title: str,
    note: str = "",
    best_of: Sequence[str] = (),
    digits: int = 3,
) -> str:
    """A self-contained HTML page with ``table`` (the Snakemake report shows it inline).

    Args:
        table: the table; non-float columns are left-aligned keys.
        title: page heading.
        note: a paragraph under the heading (plain text).
        best_of: numeric columns among which the largest value of each row is shown in bold.
        digits: decimals of float columns.
    """
    keys = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c]) and c not in best_of]
    rows = []
    for _, row in table.iterrows():
        best = None
        if best_of:
            values = pd.to_numeric(row[list(best_of)], errors="coerce")
            if values.notna().sum() > 1:
                best = values.idxmax()
        cells = []
        for c in table.columns:
            cls = "key" if c in keys else ("best" if c == best else "")
            cells.append(
                f'<td class="{cls}">{_cell(row[c], digits)}</td>' if cls else f"<td>{_cell(row[c], digits)}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>{note_html}"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></body></html>\n"
    )


def write_html_table(
    table: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    note: str = "",
    best_of: Sequence[str] = (),
    digits: int = 3,
) -> Path:
    return atomic_write_text(path, html_table(table, title, note, best_of, digits))


def render_csv(
    csv_path: str | os.PathLike, out: str | os.PathLike, title: str = "", note: str = "", best_of: Sequence[str] = ()
) -> Path:
    """Any afo CSV table as a self-contained HTML page (a report item); ``best_of`` columns present get row maxima in bold."""
    from afo.io.tables import read_table

    table = read_table(csv_path)
    return write_html_table(table, out, title or Path(csv_path).name, note, best_of=[c for c in best_of if c in table])
