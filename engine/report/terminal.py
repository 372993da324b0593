"""The end-of-run summary in a terminal (rich tables), from summary.json's dict alone."""
from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.table import Table

CHOSEN_STYLE = "bold black on bright_yellow"


def _num(value, digits: int = 3) -> str:
    """A table cell: ints with separators, floats rounded, '–' for missing or NaN."""
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def _sizes_text(sizes, limit: int = 20) -> str:
    """'512, 300, 41' (ids 0.. in order); long lists are cut with a count of the rest."""
    sizes = [int(s) for s in sizes or []]
    text = ", ".join(f"{s:,}" for s in sizes[:limit])
    return text + (f", … (+{len(sizes) - limit} more)" if len(sizes) > limit else "")


def run_table(summary: dict) -> Table:
    """Overview: chosen K, mean silhouette, cluster sizes, images, skipped, then time and images/s per stage."""
    k = summary.get("k")
    chosen = next((s for s in summary.get("scores") or [] if s.get("k") == k), {})
    title = "imgcluster cluster (re-clustered)" if summary.get("reclustered_from") else "imgcluster run"
    table = Table(title=title, box=box.SIMPLE_HEAVY, show_header=False, title_style="bold")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("chosen K", f"[bold]{k}[/] (by {summary.get('select', 'silhouette')})")
    table.add_row("mean silhouette", _num(chosen.get("silhouette")))
    table.add_row("images clustered", _num(summary.get("n_images")))
    skipped = summary.get("n_skipped") or 0
    table.add_row("skipped", f"{skipped:,}" + (" (reasons in skipped.csv)" if skipped else ""))
    table.add_row("cluster sizes", _sizes_text(summary.get("cluster_sizes")))
    sils = summary.get("cluster_silhouettes")
    if sils:
        more = " …" if len(sils) > 20 else ""
        table.add_row("cluster silhouettes", ", ".join(_num(v, 2) for v in sils[:20]) + more)
    backends = summary.get("backends") or {}
    if backends:
        table.add_row("backends", ", ".join(f"{name}={value}" for name, value in backends.items()))
    timings = summary.get("timings") or {}
    if timings:
        table.add_section()
        table.add_row("[bold]stage[/]", "[bold]seconds · images/s[/]")
        for stage, t in timings.items():
            t = t or {}
            rate = f"within {t['within']}" if t.get("within") else f"{_num(t.get('images_per_s'), 1)} img/s"
            table.add_row(stage, f"{_num(t.get('seconds'), 2)} s · {rate}")
    return table


def scores_table(summary: dict) -> Table:
    """Per-K scores (k, silhouette, CH, DB, fraction negative, balance); the chosen row highlighted."""
    k = summary.get("k")
    table = Table(title="scores per K", caption="CH = Calinski–Harabasz, DB = Davies–Bouldin; silhouette and CH: "
                  "higher is better; DB and fraction negative: lower is better; balance = smallest / largest",
                  box=box.SIMPLE_HEAVY, title_style="bold")
    for name in ("k", "silhouette", "CH", "DB", "frac. negative", "balance"):
        table.add_column(name, justify="right")
    for entry in sorted(summary.get("scores") or [], key=lambda e: int(e["k"])):
        is_chosen = entry.get("k") == k
        table.add_row(f"{entry.get('k')}{' ◀' if is_chosen else ''}", _num(entry.get("silhouette")),
                      _num(entry.get("calinski_harabasz"), 1), _num(entry.get("davies_bouldin")),
                      _num(entry.get("fraction_negative")), _num(entry.get("balance")),
                      style=CHOSEN_STYLE if is_chosen else None)
    return table


def print_run_summary(summary: dict, console: Console | None = None) -> None:
    """Print the run overview and the per-K scores table to `console` (default: a new stdout Console)."""
    console = console or Console()
    console.print(run_table(summary))
    if summary.get("scores"):
        console.print(scores_table(summary))
