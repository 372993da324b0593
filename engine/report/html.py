"""index.html: one self-contained page (inline CSS, no scripts, no network) over the report's files.

Every link is relative to report/ and points at a file the builder wrote (or ../skipped.csv when it
exists). All text taken from the run (paths, inputs, config) goes through html.escape.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from html import escape

from ..skip_reasons import count_reasons
from .kchoice import k_choice, score_key
from .neighbours import merges, splits
from .rundata import RunData

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:28px}h2{margin-top:36px;border-bottom:2px solid #d0d4da;padding-bottom:4px}
.sub{color:#555;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #d0d4da;border-radius:8px;padding:10px 16px;min-width:130px}
.card .v{font-size:24px;font-weight:600}.card .l{color:#555;font-size:13px}
.card.chosen{border:2px solid #d62728}.card.chosen .v{color:#d62728}
table{border-collapse:collapse;background:#fff;margin:8px 0;font-size:14px}
th,td{border:1px solid #d0d4da;padding:4px 10px;text-align:right}th{background:#eef0f3}
td.l,th.l{text-align:left}
tr.chosen td{background:#fde2e2;font-weight:600}
.mark{color:#d62728;font-weight:700}
figure{background:#fff;border:1px solid #d0d4da;border-radius:8px;padding:10px;margin:16px 0;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figure.half{width:calc(50% - 34px);vertical-align:top;margin-right:10px}
figcaption{color:#444;font-size:14px;margin-top:6px;max-width:900px}
.note{background:#fff8e1;border:1px solid #f0d58c;border-radius:6px;padding:8px 12px}
.cluster{background:#fff;border:1px solid #d0d4da;border-radius:8px;padding:12px 16px;margin:18px 0}
.cluster h3{margin:0 0 6px}
.swatch{display:inline-block;width:14px;height:14px;border-radius:3px;margin-right:6px;vertical-align:-1px;border:1px solid #0004}
.cluster figure{border:none;padding:0;margin:8px 0}
nav a{margin-right:12px}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px}
pre{background:#fff;border:1px solid #d0d4da;padding:10px;overflow:auto;max-height:420px}
ol.paths{font-size:13px;columns:2;word-break:break-all}
.bad{color:#a00}
"""


@dataclass
class PlotEntry:
    """One plot on the page: `file` relative to report/, size in pixels."""

    file: str
    title: str
    caption: str
    size: tuple[int, int]
    css_class: str = ""  # "half": shown two to a row (the silhouette plots for K-1, K, K+1)


@dataclass
class ClusterEntry:
    """One cluster's section. near/far: [(path text, distance, decoded ok)] in montage order."""

    cid: int
    size: int
    mean_silhouette: float
    color: str
    csv_file: str
    montage_file: str | None
    montage_size: tuple[int, int] | None
    near: list[tuple[str, float, bool]] = field(default_factory=list)
    far: list[tuple[str, float, bool]] = field(default_factory=list)
    n_negative: int | None = None  # members with a negative silhouette (closer to another cluster); None: unknown
    # [(path text, silhouette)] of members with a negative silhouette, worst first (at most MISFITS_SHOWN)
    misfits: list[tuple[str, float]] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # path text -> href to the image, relative to report/
    near_ranks: list[int] = field(default_factory=list)  # distance rank (0 = nearest) of each `near` member
    far_ranks: list[int] = field(default_factory=list)  # and of each `far` member
    n_scored: int | None = None  # members with a silhouette value (fewer than size when it was sampled)
    spread: bool = True  # every distance known: `near` is spread over the cluster (montage.select_members)


MISFITS_SHOWN = 50  # per cluster, on the page; the cluster's CSV has every member's silhouette


def fmt(value, digits: int = 3) -> str:
    """Numbers for tables: ints with thousands separators, floats with `digits` decimals, '–' for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return escape(str(value))
    if not math.isfinite(value):
        return "–"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _card(label: str, value: str, cls: str = "", extra: str = "") -> str:
    return f'<div class="card {cls}"{extra}><div class="v">{value}</div><div class="l">{escape(label)}</div></div>'


def _summary(data: RunData) -> str:
    s = data.summary
    chosen = data.score_for(data.k) or {}
    skipped = int(s.get("n_skipped", 0) or 0)
    skipped_html = f'<a href="#skipped">{skipped:,}</a>' if data.skipped else f"{skipped:,}"
    cards = [
        _card("images clustered", fmt(int(s.get("n_images") or data.n))),
        _card("files skipped", skipped_html),
        _card(f"chosen K (by {s.get('select', 'silhouette')})" if len(s.get("scores") or []) != 1 else
              "K (the only value searched)", str(data.k), "chosen", f' id="chosen-k" data-k="{data.k}"'),
        _card("mean silhouette at chosen K", fmt(chosen.get("silhouette"))),
    ]
    total = (s.get("timings") or {}).get("total") or {}
    if total.get("seconds") is not None:
        cards.append(_card("total time (s)", fmt(total.get("seconds"), 1)))
    pca = s.get("pca") or {}
    explained = pca.get("explained_variance")
    explained = fmt(100 * float(explained), 1) if explained is not None else "–"
    sil = s.get("silhouette") or {}
    inputs = s.get("inputs") or []
    rows = [
        ("inputs", "<br>".join(f"<code>{escape(str(i))}</code>" for i in inputs) or "–"),
        ("created", escape(str(s.get("created", "–")))),
        ("imgcluster version", escape(str(s.get("imgcluster_version", "–")))),
        ("K selected by", escape(str(s.get("select", "silhouette")))),
        ("PCA", "off" if pca.get("mode") == "off" else
         escape(f"{pca.get('mode', '–')}, {pca.get('n_components', '–')} components, "
                f"{explained} % of variance explained")),
        ("silhouette", escape(f"{sil.get('mode', '–')}"
                              + (f", sample of {int(sil['sample_size']):,}" if sil.get("sample_size") else ""))),
    ]
    cwd = s.get("cwd")
    if cwd and any(not _is_absolute(p) for p in data.paths[:1000]):
        found = f"<code>{escape(str(cwd))}</code> (the folder the run started in; "
        if data.base is not None and data.base != cwd:  # the project moved: where they were found instead
            found = (f"<code>{escape(str(data.base))}</code> (the run started in <code>{escape(str(cwd))}</code>; "
                     "the project has moved since, and its images were found here; ")
        rows.append(("image paths relative to", found + "paths on this page and in the CSVs are as given to the "
                                                        "run; the links on this page open the images)"))
    files = ["predictions.csv", "summary.json"] + ["skipped.csv"] * data.has_skipped_csv \
        + ["duplicates.csv"] * data.has_duplicates_csv
    rows.append(("the run's files", " · ".join(f'<a href="../{name}">{name}</a>' for name in files)
                 + " (in the run folder, beside report/)"))
    copies = s.get("n_copies")
    if copies:
        link = '<a href="../duplicates.csv">duplicates.csv</a>' if data.has_duplicates_csv else "duplicates.csv"
        rows.append(("byte-identical copies", escape(f"{int(copies):,} image(s) have the same bytes as another ")
                     + f"({link} lists the pairs; which is the original, the bytes cannot tell); "
                       "each is clustered with the other"))
    ignored = s.get("ignored")
    if isinstance(ignored, dict) and ignored:
        counts = {str(k): int(v) for k, v in ignored.items() if isinstance(v, int)}
        n = sum(counts.values())
        kinds = ", ".join(f"{kind} ({count:,})" for kind, count in list(counts.items())[:8])
        rows.append(("not named like images", escape(
            f"{n:,} file{'s' if n != 1 else ''} passed over by the folder walk: {kinds}"
            + (", …" if len(counts) > 8 else "") + "; a file given by name or in an @list.txt is opened whatever "
                                                   "its name")))
    left_out = s.get("left_out") or {}
    if any(left_out.values()):
        from ..hidden_entries import LeftOut

        rows.append(("left out by the folder walk", escape(
            LeftOut.describe(int(left_out.get("hidden_or_system_folders") or 0),
                             int(left_out.get("hidden_image_files") or 0), int(left_out.get("export_folders") or 0),
                             run_reports=int(left_out.get("other_runs_reports") or 0))
            + "; --include-hidden takes them")))
    if data.skipped:
        rows.append(("skipped files", f'{len(data.skipped):,} — <a href="#skipped">reasons below</a> and in '
                                      f'<a href="../skipped.csv">skipped.csv</a>'))
    table = "".join(f'<tr><th class="l">{escape(k)}</th><td class="l">{v}</td></tr>' for k, v in rows)
    return f'<div class="cards">{"".join(cards)}</div><table>{table}</table>'


def _is_absolute(path: str) -> bool:
    return path.startswith("/") or (len(path) > 2 and path[1] == ":" and path[2] in "\\/")  # POSIX or Windows


SKIPPED_SHOWN = 100  # files listed on the page; the rest are in skipped.csv


def _skipped(data: RunData) -> str:
    """Files not used: a count per reason and the first SKIPPED_SHOWN files with theirs ('' when none)."""
    if not data.skipped:
        return ""
    counts = count_reasons(reason or "(no reason given)" for _, reason in data.skipped)
    by_reason = "".join(f'<tr><td class="l">{escape(kind)}</td><td>{n:,}</td></tr>' for kind, n in counts.items())
    shown = data.skipped[:SKIPPED_SHOWN]
    files = "".join(f'<tr><td class="l"><code>{escape(path)}</code></td><td class="l">{escape(reason)}</td></tr>'
                    for path, reason in shown)
    more = len(data.skipped) - len(shown)
    csv_link = ' (all of them in <a href="../skipped.csv">skipped.csv</a>)' if data.has_skipped_csv else ""
    return (f'<h2 id="skipped">Skipped files</h2><p>{len(data.skipped):,} input files were not clustered'
            f"{csv_link}.</p>"
            f'<table><tr><th class="l">reason</th><th>files</th></tr>{by_reason}</table>'
            f"<details{' open' if len(data.skipped) <= 20 else ''}><summary>"
            f"{'The files' if not more else f'The first {len(shown):,} files'} and why</summary>"
            f'<table><tr><th class="l">path</th><th class="l">reason</th></tr>{files}</table>'
            + (f"<p>… and {more:,} more in skipped.csv.</p>" if more else "") + "</details>")


def _scores_table(data: RunData) -> str:
    head = ("K", "mean silhouette", "inertia", "Calinski–Harabasz", "Davies–Bouldin", "fraction negative",
            "balance", "smallest", "largest")
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for entry in sorted(data.summary.get("scores", []) or [], key=lambda e: int(e["k"])):
        k = int(entry["k"])
        sizes = entry.get("cluster_sizes") or []
        chosen = k == data.k
        mark = ' <span class="mark">◀ chosen</span>' if chosen else ""
        cls = ' class="chosen"' if chosen else ""
        out.append(
            f'<tr{cls} data-k="{k}"><td>{k}{mark}</td><td>{fmt(entry.get("silhouette"))}</td>'
            f'<td>{fmt(entry.get("inertia"), 1)}</td><td>{fmt(entry.get("calinski_harabasz"), 1)}</td>'
            f'<td>{fmt(entry.get("davies_bouldin"))}</td><td>{fmt(entry.get("fraction_negative"))}</td>'
            f'<td>{fmt(entry.get("balance"))}</td><td>{fmt(min(sizes) if sizes else None)}</td>'
            f'<td>{fmt(max(sizes) if sizes else None)}</td></tr>')
    out.append("</table>")
    return "".join(out)


_METRIC_LABELS = {"silhouette": "mean silhouette", "calinski": "Calinski–Harabasz", "davies": "Davies–Bouldin"}


def _k_choice(data: RunData) -> str:
    """Why this K, and how sure: the runner-up and its margin, what each metric would pick, and a
    K at the edge of the range searched ('' for a single K). Computed from the scores table
    (check_summary validated it), not read from summary.json's k_choice, which is for scripts."""
    s = data.summary
    scores = s.get("scores") or []
    if len(scores) < 2:
        return ""
    select = str(s.get("select", "silhouette"))
    choice = k_choice(scores, select, data.k, int(s.get("n_images") or data.n))
    label = _METRIC_LABELS.get(select, select)
    digits = 1 if select == "calinski" else 3  # as the scores table shows it
    key, higher = score_key(select)
    chosen = (data.score_for(data.k) or {}).get(key)
    lines = []
    runner, margin = choice["runner_up"], choice["margin"]
    if runner is not None and margin is not None:
        if fmt(margin, digits) == fmt(0.0, digits):
            lines.append(f"K = {data.k} ties with K = {runner['k']} on {escape(label)} ({fmt(chosen, digits)}): "
                         "a tie goes to the smaller K.")
        else:
            worse = "lower" if higher else "higher"
            lines.append(f"K = {data.k} has the best {escape(label)} ({fmt(chosen, digits)}); the runner-up is "
                         f"K = {runner['k']} ({fmt(runner['value'], digits)}, {fmt(margin, digits)} {worse}).")
    picks = {name: k for name, k in choice["by_metric"].items() if k is not None}
    if len(picks) >= 2:
        if len(set(picks.values())) == 1:
            lines.append(f"{', '.join(escape(_METRIC_LABELS[n]) for n in picks)} all pick K = "
                         f"{next(iter(picks.values()))}.")
        else:  # each has its own bias (Calinski-Harabasz tends to grow with K): say which, not which is right
            lines.append("Each metric's best K: " + ", ".join(f"{escape(_METRIC_LABELS[n])} K = {k}"
                                                            for n, k in picks.items()) + ".")
    ks = sorted(int(e["k"]) for e in scores)
    run = escape(shlex.quote(str(data.run_dir.resolve())))
    if choice["edge"] == "largest":
        top = min(2 * data.k, int(s.get("n_images") or data.n) - 1)
        lines.append(f'<span class="mark">K = {data.k} is the largest K searched</span>: a larger one may score '
                     f"better. <code>imgcluster cluster {run} --k {ks[0]}:{top} --out {run}-k{ks[0]}-{top}</code> "
                     "searches a wider range from the feature cache, decoding no image.")
    elif choice["edge"] == "smallest":
        lines.append(f'<span class="mark">K = {data.k} is the smallest K searched</span>: smaller ones were not '
                     f"tried (<code>imgcluster cluster {run} --k 2:{ks[-1]} --out {run}-k2-{ks[-1]}</code> "
                     "tries them).")
    return '<div class="note">' + "<br>".join(lines) + "</div>" if lines else ""


def _one_k_away(data: RunData) -> str:
    """Which clusters split at K + 1 and merge at K - 1 (from the labels analysis.npz keeps for
    the neighbours; '' when it kept none)."""
    labels, k = data.analysis.labels, data.k
    lines = []
    finer = labels.get(k + 1)
    if finer is not None and finer.shape == data.labels.shape:
        found = splits(data.labels, k, finer, k + 1)
        lines.append(f"At K = {k + 1}: " + ("; ".join(
            f'<a href="#cluster-{i}">cluster {i}</a> splits ({" / ".join(f"{100 * share:.0f} %" for _, share in parts)})'
            for i, parts in found) if found else "no cluster splits in two (images move, groups stay)") + ".")
    coarser = labels.get(k - 1)
    if coarser is not None and coarser.shape == data.labels.shape and k > 1:
        groups = merges(data.labels, k, coarser, k - 1)
        lines.append(f"At K = {k - 1}: " + ("; ".join(
            "clusters " + " and ".join(f'<a href="#cluster-{i}">{i}</a>' for i in group) + " merge"
            for group in groups) if groups else "no two clusters merge whole") + ".")
    if not lines:
        return ""
    return ("<p><b>One K away</b> (the silhouette plots for K − 1 and K + 1 below show the same): "
            + " ".join(lines) + "</p>")


def _timings_and_backends(data: RunData) -> str:
    timings = data.summary.get("timings") or {}
    rows = "".join(
        f'<tr><td class="l">{escape(str(stage))}</td><td>{fmt((t or {}).get("seconds"), 2)}</td>'
        f'<td>{fmt((t or {}).get("images_per_s"), 1)}</td></tr>' for stage, t in timings.items())
    timing_html = (f'<table><tr><th class="l">stage</th><th>seconds</th><th>images / s</th></tr>{rows}</table>'
                   if rows else '<p class="note">No timings recorded.</p>')
    backends = data.summary.get("backends") or {}
    brow = "".join(f'<tr><th class="l">{escape(str(k))}</th><td class="l">{escape(str(v))}</td></tr>'
                   for k, v in backends.items())
    backend_html = f"<table>{brow}</table>" if brow else ""
    return (f'<div style="display:flex;gap:32px;flex-wrap:wrap"><div><h3>Time per stage</h3>{timing_html}</div>'
            f"<div><h3>Backends</h3>{backend_html}</div></div>")


def _plots(plots: list[PlotEntry], notes: list[str]) -> str:
    parts = [f'<p class="note">{escape(n)}</p>' for n in notes]
    for p in plots:
        w, h = p.size
        cls = f' class="{escape(p.css_class)}"' if p.css_class else ""
        parts.append(f'<figure{cls}><a href="{escape(p.file)}"><img src="{escape(p.file)}" width="{w}" height="{h}" '
                     f'alt="{escape(p.title)}"></a>'
                     f"<figcaption><b>{escape(p.title)}.</b> {escape(p.caption)}</figcaption></figure>")
    return "".join(parts)


def _path(path: str, links: dict[str, str]) -> str:
    """A path as shown: a link to the image where the builder found where it is."""
    href = links.get(path)
    code = f"<code>{escape(path)}</code>"
    return f'<a href="{escape(href)}">{code}</a>' if href else code


def _path_list(items: list[tuple[str, float, bool]], links: dict[str, str], ranks: list[int] | None = None) -> str:
    """The listed paths, numbered by distance rank when given (the montage's #r, the CSV's row)."""
    numbers = [f' value="{r + 1}"' for r in ranks] if ranks and len(ranks) == len(items) else [""] * len(items)
    lis = "".join(f'<li{num}>{_path(path, links)} <span>d={fmt(dist)}</span>'
                  f'{"" if ok else " <span class=bad>(unreadable)</span>"}</li>'
                  for num, (path, dist, ok) in zip(numbers, items))
    return f'<ol class="paths">{lis}</ol>'


def _misfits(c: ClusterEntry) -> str:
    """The members with a negative silhouette, worst first ('' when none is known)."""
    if not c.misfits or not c.n_negative:
        return ""
    more = c.n_negative - len(c.misfits)
    lis = "".join(f"<li>{_path(path, c.links)} <span>silhouette {fmt(value)}</span></li>" for path, value in c.misfits)
    of = (f" of its {c.n_scored:,} sampled members" if c.n_scored is not None and c.n_scored < c.size else "")
    return (f"<details><summary class=bad>{c.n_negative:,} member{'s' if c.n_negative != 1 else ''}{of} with a "
            f"negative silhouette (closer, on average, to another cluster: the likeliest misassignments)"
            + (", worst first" if len(c.misfits) > 1 else "") + f"</summary><ol class=\"paths\">{lis}</ol>"
            + (f'<p>… and {more:,} more in <a href="{escape(c.csv_file)}">{escape(c.csv_file)}</a> (its silhouette '
               "column).</p>" if more > 0 else "")
            + "</details>")


def _cluster(c: ClusterEntry, n_total: int) -> str:
    share = 100.0 * c.size / n_total if n_total else 0.0
    parts = [f'<section class="cluster" id="cluster-{c.cid}">',
             f'<h3><span class="swatch" style="background:{escape(c.color)}"></span>Cluster {c.cid}</h3>',
             f"<p>{c.size:,} images ({share:.1f} %) · mean silhouette {fmt(c.mean_silhouette)} · "
             f'members: <a href="{escape(c.csv_file)}">{escape(c.csv_file)}</a> '
             f"(path, distance to centre, silhouette; nearest first)</p>"]
    if c.montage_file and c.montage_size:
        w, h = c.montage_size
        parts.append(f'<figure><img src="{escape(c.montage_file)}" width="{w}" height="{h}" '
                     f'alt="montage of cluster {c.cid}"><figcaption>'
                     + (f"All {c.size:,} of its members, nearest to the centre first" if len(c.near) + len(c.far) >= c.size
                        else f"{len(c.near)} of its {c.size:,} members, from the nearest to the centre outwards at "
                             "even steps, so each kind of image it holds shows in proportion (#r: the r-th "
                             "nearest, its row in the CSV)" if c.spread
                        else f"{len(c.near)} of its {c.size:,} members, those with a known distance to the centre "
                             "first (the run did not save every distance)")
                     + (f"; under the red label, the {len(c.far)} farthest from the centre "
                        "(where outliers would be, if it has any), farthest first" if c.far else "")
                     + ".</figcaption></figure>")
        parts.append(f"<details><summary>Paths of the images shown</summary>{_path_list(c.near, c.links, c.near_ranks)}"
                     + (f"<p class=mark>farthest from centre</p>{_path_list(c.far, c.links, c.far_ranks)}"
                        if c.far else "")
                     + "</details>")
    parts.append(_misfits(c))
    parts.append("</section>")
    return "".join(parts)


def _cluster_table(clusters: list[ClusterEntry], n_total: int) -> str:
    """One row per cluster: size, share, mean silhouette, members with a negative silhouette, the members CSV."""
    rows = "".join(
        f'<tr><td class="l"><span class="swatch" style="background:{escape(c.color)}"></span>'
        f'<a href="#cluster-{c.cid}">{c.cid}</a></td><td>{c.size:,}</td>'
        f"<td>{100.0 * c.size / n_total if n_total else 0.0:.1f} %</td><td>{fmt(c.mean_silhouette)}</td>"
        f"<td>{fmt(c.n_negative)}</td>"
        f'<td class="l"><a href="{escape(c.csv_file)}">{escape(c.csv_file)}</a></td></tr>' for c in clusters)
    return ('<table><tr><th class="l">cluster</th><th>images</th><th>share</th><th>mean silhouette</th>'
            '<th>negative silhouettes</th><th class="l">members (path, distance to centre, silhouette)</th></tr>'
            f"{rows}</table><p>A negative silhouette means an image is closer, on average, to another cluster "
            "than to its own: the likeliest misassignments. Each CSV lists the cluster's images nearest the "
            "centre first; the last rows are its outliers.</p>")


def render_page(data: RunData, plots: list[PlotEntry], clusters: list[ClusterEntry], notes: list[str]) -> str:
    """The whole index.html as text."""
    title = f"imgcluster report: {data.run_dir.resolve().name}"
    nav_clusters = " ".join(f'<a href="#cluster-{c.cid}">{c.cid}</a>' for c in clusters)
    extra = {key: data.summary.get(key) for key in ("config", "versions") if data.summary.get(key) is not None}
    extra_html = "".join(
        f"<details><summary>{escape(key)}</summary><pre>{escape(json.dumps(value, indent=2, default=str))}</pre>"
        f"</details>" for key, value in extra.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="sub">{escape(str(data.summary.get("created", "")))} · {data.n:,} images in {data.k} clusters</p>
<nav><a href="#summary">Summary</a>{'<a href="#skipped">Skipped</a>' if data.skipped else ""}<a href="#scores">Scores per K</a><a href="#timings">Timings</a>
<a href="#plots">Plots</a><a href="#clusters">Clusters</a></nav>
<h2 id="summary">Summary</h2>{_summary(data)}
{_skipped(data)}
<h2 id="scores">Scores per K</h2>
<p>The chosen K ({data.k}) is highlighted. Silhouette and Calinski–Harabasz: higher is better;
Davies–Bouldin and fraction negative: lower is better; balance = smallest / largest cluster.</p>
{_k_choice(data)}
{_one_k_away(data)}
{_scores_table(data)}
<h2 id="timings">Timings and backends</h2>{_timings_and_backends(data)}
<h2 id="plots">Plots</h2>{_plots(plots, notes)}
<h2 id="clusters">Clusters</h2>{_cluster_table(clusters, data.n)}<p>Jump to cluster: {nav_clusters}</p>
{"".join(_cluster(c, data.n) for c in clusters)}
<h2 id="run">Configuration</h2>{extra_html or "<p>–</p>"}
</main></body></html>
"""
