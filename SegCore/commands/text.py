"""What the commands share for people: aligned text tables and the `VALUE=NAME` label option syntax."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from SegCore.errors import SegCoreError


def format_table(rows: Sequence[Sequence[object]]) -> str:
    """The first row as a header, a dashed rule, then the other rows; columns left-aligned to their widest cell."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_label_names(items: Iterable[str] | None, *, option: str, require_names: bool = False) -> dict[int, str]:
    """Label options as `{value: name}`: items 'VALUE=NAME' (or 'VALUE:NAME', or a bare 'VALUE' unless
    `require_names`), given as separate arguments and/or comma-separated ('1=liver,2=spleen').

    Values must be foreground labels (>= 1); a bare value is named 'label_<value>'.
    """
    table: dict[int, str] = {}
    example = f"{option} 1=liver 2=spleen"
    for item in (part.strip() for text in items or () for part in text.split(",")):
        if not item:
            continue
        value_text, sep, name = item.replace(":", "=", 1).partition("=")
        try:
            value = int(value_text)
        except ValueError:
            raise SegCoreError(f"{option} item {item!r} does not start with a label value",
                               fix=f"write VALUE=NAME items, e.g. {example}") from None
        if value <= 0:
            raise SegCoreError(f"{option} value {value} is not a foreground label (values start at 1)")
        if require_names and not (sep and name.strip()):
            raise SegCoreError(f"{option} item {item!r} is not VALUE=NAME", fix=f"write e.g. {example}")
        table[value] = name.strip() or f"label_{value}"
    return table
