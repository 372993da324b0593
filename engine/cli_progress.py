"""The CLI's Reporter: rich progress bars with ETA, notices as one dim line on stderr."""
from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .progress import Reporter


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._seen: set[str] = set()

    def notify(self, message: str) -> None:
        # The same notice twice (e.g. "Using CPU" when the demo refits with pixels) is noise.
        if message in self._seen:
            return
        self._seen.add(message)
        if not self.quiet:
            self.console.print(f"[cyan]•[/cyan] {escape(message)}", highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]Warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        if self.quiet:
            yield lambda n: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[speed_text]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False,
                      disable=not self.console.is_terminal and "pytest" in sys.modules) as progress:
            task = progress.add_task(description, total=total, speed_text="")

            def advance(n: int) -> None:
                progress.advance(task, n)
                speed = progress.tasks[0].speed
                progress.update(task, speed_text=f"{speed:,.0f}/s" if speed else "")

            yield advance
