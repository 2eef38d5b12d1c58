"""Rich progress bars for every long loop (sampling, training, scoring)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; shows a rich bar on a terminal, plain lines otherwise.

    Off a terminal (CI, logs) a bar would print thousands of redraws, so it prints a start and an end
    line with the last fields instead. `NEGA_QUIET=1` silences both.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    quiet = os.environ.get("NEGA_QUIET") == "1"
    fields: dict[str, float] = {}

    def fmt() -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())

    if quiet or not sys.stderr.isatty():
        done = [0]

        def advance_plain(n: int = 1, **kw) -> None:
            done[0] += n
            fields.update(kw)

        if not quiet:
            print(f"[nega] {description} ...", file=sys.stderr, flush=True)
        yield advance_plain
        if not quiet:
            suffix = f" {fmt()}" if fields else ""
            print(
                f"[nega] {description}: {done[0]}/{total or done[0]} done{suffix}",
                file=sys.stderr,
                flush=True,
            )
        return

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance_rich(n: int = 1, **kw) -> None:
            fields.update(kw)
            bar.update(task, advance=n, info=fmt())

        yield advance_rich
