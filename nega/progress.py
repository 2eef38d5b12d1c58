"""Progress of every long loop (sampling, scoring, training the toy model): a rich bar on a terminal,
plain lines in a log.

The description names what runs and for which arm or stage ("reference log-probs (d2o_online-r2)"),
since one run repeats the same loops for several arms.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

# Off a terminal a line is printed whenever another tenth of the loop is done, or this many seconds
# passed since the last line, whichever comes first ...
LOG_EVERY_S = 30.0
LOG_EVERY_FRACTION = 0.1
# ... but never more often than this: a loop of a few seconds needs its start and end lines only.
LOG_AT_MOST_EVERY_S = 2.0


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_fields(fields: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


class LogProgress:
    """Progress as whole lines, for a log: a start line, a line at least every LOG_EVERY_S seconds or
    every LOG_EVERY_FRACTION of `total` with the count, rate and time left, and an end line.

        [nega] reference log-probs (reflogps): 480/1200 (40%), 31.2/s, 23s left
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        initial: int = 0,
    ):
        self.description, self.total, self.stream, self.clock = description, total, stream, clock
        # A resumed loop starts at `initial`; its rate counts only what this process did.
        self.done = self.initial = initial
        self.fields: dict = {}
        self.start = self.last_line = clock()
        self.next_count = self._step()
        while self.next_count <= self.done:
            self.next_count += self._step()
        self._print(f"{description} ...")

    def _step(self) -> float:
        return self.total * LOG_EVERY_FRACTION if self.total else float("inf")

    def _print(self, text: str) -> None:
        print(f"[nega] {text}", file=self.stream, flush=True)

    def status(self) -> str:
        elapsed = self.clock() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        count = (
            f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
            if self.total
            else f"{self.done}"
        )
        parts = [count, f"{rate:.3g}/s"]
        if self.total and rate > 0:
            parts.append(f"{format_duration((self.total - self.done) / rate)} left")
        if self.fields:
            parts.append(format_fields(self.fields))
        return f"{self.description}: " + ", ".join(parts)

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        if self.total and self.done >= self.total:
            return  # the end line says it
        now = self.clock()
        since = now - self.last_line
        if since < LOG_AT_MOST_EVERY_S:
            return
        if self.done >= self.next_count or since >= LOG_EVERY_S:
            self._print(self.status())
            self.last_line = now
            step = self._step()
            while self.next_count <= self.done:
                self.next_count += step

    def finish(self) -> None:
        elapsed = self.clock() - self.start
        rate = f", {(self.done - self.initial) / elapsed:.3g}/s" if elapsed > 0 else ""
        total = self.total or self.done
        suffix = f", {format_fields(self.fields)}" if self.fields else ""
        self._print(
            f"{self.description}: {self.done}/{total} done in {format_duration(elapsed)}{rate}{suffix}"
        )


@contextmanager
def progress_bar(
    description: str,
    total: int | None,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; shows a rich bar on a terminal, `LogProgress` lines otherwise
    (a bar would print thousands of redraws into a log). `NEGA_QUIET=1` silences both.

    `stream` (default stderr) and `clock` are there for tests."""
    stream = stream if stream is not None else sys.stderr
    if os.environ.get("NEGA_QUIET") == "1":
        yield lambda n=1, **fields: None
        return
    if not stream.isatty():
        log = LogProgress(description, total, stream, clock)
        yield log.advance
        log.finish()
        return

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    fields: dict = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(file=stream),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance_rich(n: int = 1, **kw) -> None:
            fields.update(kw)
            bar.update(task, advance=n, info=format_fields(fields))

        yield advance_rich
