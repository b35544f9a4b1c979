"""Progress bars for long loops outside Lightning (imports, caching, embedding)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_iter(items: Iterable[T], total: int | None = None, label: str = "", enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` with a rich bar on stderr; silent when disabled or not a terminal
    (a log file then gets one line at the start and one at the end instead of redraws)."""
    if not enabled:
        yield from items
        return
    if not sys.stderr.isatty():
        print(f"{label}: {total if total is not None else '?'} items ...", file=sys.stderr, flush=True)
        count = 0
        for item in items:
            count += 1
            yield item
        print(f"{label}: done ({count})", file=sys.stderr, flush=True)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)
