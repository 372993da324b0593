"""The CLI's Reporter: rich progress bars with ETA, notices as one dim line on stderr.

When stderr is not a terminal (a long job logging to a file) a bar would print only once, at
the end of its stage; there a plain line reports the progress every `progress_interval` seconds.
"""
from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .progress import Reporter


UPDATE_INTERVAL = 0.1  # seconds between a terminal bar's updates


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None, quiet: bool = False, progress_interval: float = 30.0):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.progress_interval = progress_interval  # seconds between plain progress lines (not a terminal)
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
    def task(self, description: str, total: int | None, transient: bool = False):
        if self.quiet:
            yield lambda n: None
            return
        if not self.console.is_terminal:
            plain = _PlainProgress(self.console, description, total, self.progress_interval)
            yield plain
            plain.close()
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[speed_text]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        if total is None:  # a count without a bar: nothing to compare it to yet
            columns = [TextColumn("{task.description}"), TextColumn("{task.completed:,.0f}"),
                       TextColumn("{task.fields[speed_text]}"), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=transient) as progress:
            task = progress.add_task(description, total=total, speed_text="")
            pending = [0, time.monotonic()]  # items not shown yet, when rich was last told

            def push() -> None:
                progress.advance(task, pending[0])
                pending[0], pending[1] = 0, time.monotonic()
                speed = progress.tasks[0].speed
                progress.update(task, speed_text=f"{speed:,.0f}/s" if speed else "")

            def advance(n: int) -> None:
                # rich takes ~77 us an update: a walk that reports per file (a glob's matches, an
                # @list) would spend more time there than finding the files, so at most 10 a second
                pending[0] += n
                if time.monotonic() - pending[1] >= UPDATE_INTERVAL:
                    push()

            def fewer(n: int) -> None:  # n items need no work: out of the total, not into the speed
                total = progress.tasks[0].total
                if total is not None and n < total - progress.tasks[0].completed - pending[0]:
                    progress.update(task, total=total - n)
                else:  # nothing left to time: the bar ends full (0/0 read as a stage that did nothing)
                    advance(n)

            advance.fewer = fewer
            try:
                yield advance
            finally:
                if pending[0]:
                    push()


class _PlainProgress:
    """Progress as plain lines, at most one per `interval` seconds, and a last one at the end when
    any was printed (a stage shorter than the interval prints nothing)."""

    def __init__(self, console: Console, description: str, total: int | None, interval: float):
        self.console, self.description, self.total, self.interval = console, description, total, interval
        self.done = 0
        self.start = self.last = time.monotonic()
        self.printed = False

    def __call__(self, n: int) -> None:
        self.advance(n)

    def fewer(self, n: int) -> None:
        """n items of the total need no work (see Reporter): the rate and ETA leave them out
        (unless that is all that is left: then they count as done, as on a terminal)."""
        if self.total is not None and n < self.total - self.done:
            self.total -= n
        else:
            self.advance(n)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def close(self) -> None:
        if self.printed:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total is None:  # a count without a known end (files found by a walk)
            done, eta = f"{self.done:,}", ""
        else:
            share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
            done = f"{self.done:,}/{self.total:,}{share}"
            eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate and self.done < self.total else ""
        self.console.print(f"{escape(self.description)}: {done}, {rate:,.1f}/s, "
                           f"{_duration(elapsed)} elapsed{eta}", highlight=False, soft_wrap=True)
        self.printed = True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
