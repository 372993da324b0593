"""How the pipeline talks to whoever runs it: notices (one line each) and progress counters.

The library default is quiet-ish (notices go to the 'imgcluster' logger); the CLI passes a
rich implementation (engine.cli_progress). The pipeline never prints by itself.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from .api_wording import in_python_terms

logger = logging.getLogger("imgcluster")


class Reporter:
    """notify(msg): a one-line notice. task(description, total): a progress counter (a callable
    advanced with the number of items done); total None when it is not known in advance (files
    found by a walk); transient: the counter disappears when its stage ends (a terminal). A
    subclass's task must accept all three. advance may be called once per item: implementations
    keep it cheap (engine.cli_progress throttles its terminal updates). advance may also have a
    `fewer(n)` method: n items of the total need no work after all (the feature cache had them),
    so a rate or ETA leaves them out; callers use advance(n) where it has none."""

    # The logger is the Python caller's channel: a notice that names a CLI flag also says what a
    # Python caller writes instead (api_wording; the CLI's reporter prints the flag alone).
    def notify(self, message: str) -> None:
        logger.info(in_python_terms(message))

    def warn(self, message: str) -> None:
        logger.warning(in_python_terms(message))

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, transient: bool = False) -> Iterator[Callable[[int], None]]:
        yield lambda n: None
