"""Why files were skipped, counted by kind: the one-line notice and summary.json's
`skipped_reasons`, so a run with 40,000 HEIC photos says so up front instead of leaving it to
skipped.csv (which still lists every file with its full reason)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from .loaders.decode import depends_on_environment

# Reasons that name a file or a size after a fixed opening: counted under one label.
_VARIABLE_OPENINGS = {"duplicate of": "duplicate (the same file reached twice)", "invalid dimensions": "invalid dimensions"}


def reason_kind(reason: str) -> str:
    """The kind of a skip reason: its text before the first ':' outside parentheses ("corrupt or
    truncated image"), one label for reasons that name a file or a size ("duplicate of a.jpg"),
    or the whole reason when installing something cures it (it carries the install hint)."""
    if depends_on_environment(reason):
        return reason
    for opening, label in _VARIABLE_OPENINGS.items():
        if reason.startswith(opening):
            return label
    return _before_first_colon(reason).strip() or reason


def _before_first_colon(text: str) -> str:
    """text up to its first ':' outside parentheses ('removed since the run (not re-extracted:
    rerun ...)' has none, so it is its own kind)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == ":" and depth == 0:
            return text[:i]
    return text


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
    """{kind: files}, most frequent first (ties by name)."""
    counts = Counter(reason_kind(r) for r in reasons)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def skipped_note(counts: dict[str, int], limit: int = 3, where: str = "skipped.csv") -> str:
    """'Skipped 7 file(s): 4 corrupt or truncated image; 2 empty file (0 bytes); 1 duplicate (the
    same file reached twice) (see skipped.csv)': the `limit` most frequent kinds (all of them when
    one more would be left), then how many files of how many other kinds; `where` names the list of
    them. '' when none."""
    total = sum(counts.values())
    if not total:
        return ""
    if len(counts) == limit + 1:  # naming the last kind costs no more than "1 more kind(s)"
        limit += 1
    kinds = [f"{n:,} {kind}" for kind, n in list(counts.items())[:limit]]
    if len(counts) > limit:
        rest = sum(list(counts.values())[limit:])
        kinds.append(f"{rest:,} file(s) of {len(counts) - limit} more kind(s)")
    return f"Skipped {total:,} file(s): {'; '.join(kinds)} (see {where})"
