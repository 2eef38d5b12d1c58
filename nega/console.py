"""Terminal output that fits: tables sized to the terminal, and messages that start a line of their own.

`print_table` lays a table out for the terminal's width (`COLUMNS` when set, as in a log or CI), in
the first of these that fits:

1. every cell on one line, the table as given, else transposed (the columns as rows, which suits a
   results table with more metrics than arms), so that every name is shown whole where possible;
2. long cells wrapped: at spaces, and after `_`, `/` and `-` inside names, so `degenerate_rate`
   becomes `degenerate_` over `rate` and is never cut to `degener…`;
3. the shape that needs least folding (words split where they must be, every character kept).

Progress bars (nega's own, and the tqdm bars of transformers and datasets) hold the last line of the
terminal open. `install_message_hooks` makes warnings clear the bars before they print and redraw them
after, and uncaught errors end the bars' line first, so a message never lands in the middle of a bar.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TextIO

# Off a terminal without COLUMNS (a log file, a pipe), tables get this width rather than Python's 80.
LOG_WIDTH = 120
# A column never gets narrower than this when words must be folded.
MIN_FOLD_WIDTH = 6


def terminal_width(stream: TextIO | None = None) -> int:
    """Columns available: `COLUMNS` when set, else the terminal's width, else LOG_WIDTH."""
    import os

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = stream if stream is not None else sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return LOG_WIDTH


def pieces(text: str) -> list[tuple[str, bool]]:
    """`text` as (piece, starts a new word) in reading order; a line may break before any piece.

    Words break at spaces (the space is dropped) and after `_`, `/`, `-` (kept on the first line)."""
    out = []
    for word in text.split():
        parts = re.findall(r"[^_/\-]*[_/\-]+|[^_/\-]+", word)
        out += [(part, i == 0) for i, part in enumerate(parts)]
    return out


def wrap_cell(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken where `pieces` allows; a piece longer than
    `width` is folded (split across lines, every character kept)."""
    lines: list[str] = []
    line = ""
    for part, new_word in pieces(text):
        joined = f"{line} {part}" if (line and new_word) else line + part
        if len(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        while len(part) > width:
            lines.append(part[:width])
            part = part[width:]
        line = part
    lines.append(line)
    return lines


def _natural(column: Sequence[str]) -> int:
    return max((len(c) for c in column), default=0)


def _soft(column: Sequence[str]) -> int:
    """The narrowest width at which no piece of any cell is folded."""
    return max((len(p) for c in column for p, _ in pieces(c)), default=0)


def _folded_size(columns: Sequence[Sequence[str]]) -> int:
    return sum(map(_soft, columns)) + table_overhead(len(columns))


def table_overhead(n_columns: int) -> int:
    """Characters a rich table with its default box and padding adds to its columns' widths: a border
    at each edge and between columns, and one space of padding on each side of every cell."""
    return 3 * n_columns + 1


WHOLE, WRAPPED, FOLDED = 0, 1, 2  # how a layout treats its cells, best first


def layout(columns: Sequence[Sequence[str]], width: int) -> tuple[list[int], int]:
    """(column widths, WHOLE / WRAPPED / FOLDED) for columns given as [header, *cells] that must fit
    in `width` characters with the table's borders: every cell on one line if that fits, else cells
    wrapped at word and name boundaries, else folded where they must be."""
    room = width - table_overhead(len(columns))
    natural = [_natural(c) for c in columns]
    if sum(natural) <= room:
        return natural, WHOLE
    soft = [_soft(c) for c in columns]
    if sum(soft) <= room:
        widths = list(soft)
        # Spend the spare room first on columns it makes whole (the first column, which names each row,
        # then the others by fewest characters lacking), then on the columns still wrapped, in
        # proportion to what they lack.
        for i in sorted(range(len(widths)), key=lambda i: (i > 0, natural[i] - widths[i])):
            spare = room - sum(widths)
            if natural[i] - widths[i] <= spare:
                widths[i] = natural[i]
        lacking = {i: natural[i] - widths[i] for i in range(len(widths)) if natural[i] > widths[i]}
        spare = room - sum(widths)
        for i, short in lacking.items():
            widths[i] += min(short, spare * short // sum(lacking.values()))
        return widths, WRAPPED
    # Folding: each column keeps at least MIN_FOLD_WIDTH (or its natural width, if smaller), and
    # the rest is shared in proportion to the soft widths.
    floor = [min(n, MIN_FOLD_WIDTH) for n in natural]
    spare = max(0, room - sum(floor))
    extra = [max(0, s - f) for s, f in zip(soft, floor, strict=True)]
    total = sum(extra) or 1
    return [f + spare * e // total for f, e in zip(floor, extra, strict=True)], FOLDED


def transpose(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """Columns as rows: the first column's cells become the header, every other header a row label."""
    columns = [[h, *(row[i] for row in rows)] for i, h in enumerate(header)]
    return columns[0], [list(c) for c in columns[1:]]


def print_table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[int] = (),
    transposable: bool = False,
    stream: TextIO | None = None,
    width: int | None = None,
) -> None:
    """Print a table that fits the terminal (see the module docstring); cells are strings.

    `right` lists the columns aligned right (numbers). With `transposable`, a table that fits whole
    only with rows and columns swapped is printed so (then every column but the first is
    right-aligned, and `header[0]` heads the first column)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stream = stream if stream is not None else sys.stdout
    width = width or terminal_width(stream)
    header, rows = list(header), [list(map(str, r)) for r in rows]
    shapes = [(header, rows, right)]
    if transposable:
        t_header, t_rows = transpose(header, rows)
        shapes.append((t_header, t_rows, range(1, len(t_header))))
    # The shape that shows the most names whole: the table as given, then transposed; among shapes
    # that must fold, the one folding least.
    best = None
    for shape in shapes:
        columns = [[h, *(r[i] for r in shape[1])] for i, h in enumerate(shape[0])]
        widths, how = layout(columns, width)
        rank = (how, _folded_size(columns) if how == FOLDED else 0)
        if best is None or rank < best[0]:
            best = (rank, shape, widths)
    _, (header, rows, right), widths = best
    table = Table(title=title or None, box=box.HEAVY_HEAD, title_justify="left")
    for i, (name, w) in enumerate(zip(header, widths, strict=True)):
        table.add_column(
            Text("\n".join(wrap_cell(name, w))),
            justify="right" if i in right else "left",
            width=w,
            no_wrap=True,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(Text("\n".join(wrap_cell(c, w))) for c, w in zip(row, widths, strict=True)))
    console = Console(file=stream, width=width, soft_wrap=False, highlight=False)
    console.print(table)


# ---------------------------------------------------------------------------------------------------
# Messages that start a line of their own.


def _tqdm_class():
    """tqdm's bar class when tqdm is loaded (a library that shows bars imported it), else None."""
    module = sys.modules.get("tqdm.std")
    return getattr(module, "tqdm", None)


def end_progress_lines() -> None:
    """Close every open tqdm bar, leaving its last state on a line of its own, so the next message
    (an error on the way out) starts on a fresh line instead of after the bar."""
    tqdm = _tqdm_class()
    if tqdm is None:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a half-built or already-torn-down bar has nothing left to show
            pass


def install_message_hooks() -> None:
    """Warnings clear the open progress bars before they print and redraw them after; an uncaught
    exception closes them before its traceback. The hooks wrap whatever was installed before them;
    installing twice does nothing."""
    import warnings

    if not getattr(warnings.showwarning, "nega_hook", False):
        previous_warning = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            tqdm = _tqdm_class()
            if tqdm is None or not getattr(tqdm, "_instances", None):
                return previous_warning(message, category, filename, lineno, file, line)
            with tqdm.external_write_mode(file=file if file is not None else sys.stderr):
                return previous_warning(message, category, filename, lineno, file, line)

        showwarning.nega_hook = True
        warnings.showwarning = showwarning
    if not getattr(sys.excepthook, "nega_hook", False):
        previous_excepthook = sys.excepthook

        def excepthook(kind, value, traceback):
            end_progress_lines()
            previous_excepthook(kind, value, traceback)

        excepthook.nega_hook = True
        sys.excepthook = excepthook
