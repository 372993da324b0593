"""The report: files, plots, montages, the page, the terminal summary, and a headless-browser render."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from engine.errors import ConfigError
from engine.report import build_report, montage, outputs, plots, print_run_summary
from engine.report import html as html_module
from engine.report.rundata import ReportError

try:
    from report_fixtures import K, N_OUTLIERS, ODD_NAMES, RED_STEP, RED_TOP, SIZES, YELLOW, make_fake_run
except ImportError:  # pytest's importlib mode does not put tests/ on sys.path
    from tests.report_fixtures import K, N_OUTLIERS, ODD_NAMES, RED_STEP, RED_TOP, SIZES, YELLOW, make_fake_run


class _Links(HTMLParser):
    """Collects every src/href and every id of a page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for name in ("src", "href"):
            if attrs.get(name) is not None:
                self.links.append(attrs[name])


def _parse(index: Path) -> _Links:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


EXPECTED = {
    "index.html",
    "plots/pca_variance.png", "plots/silhouette_vs_k.png", "plots/metrics_vs_k.png",
    f"plots/silhouette_k{K - 1}.png", f"plots/silhouette_k{K}.png", f"plots/silhouette_k{K + 1}.png",
    "plots/cluster_sizes.png", "plots/scatter_2d.png",
    *(f"montages/cluster_{c}.jpg" for c in range(K)),
    *(f"clusters/cluster_{c}.csv" for c in range(K)),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One fake run with its report built (read-only for the tests that use it)."""
    fake = make_fake_run(tmp_path_factory.mktemp("built"))
    index = build_report(fake.run_dir, num_threads=2)
    return fake, index


def _montage_counts(size: int, max_montage: int = 36, n_outliers: int = N_OUTLIERS) -> tuple[int, int]:
    n_near = min(size, max_montage - n_outliers)
    return n_near, min(n_outliers, size - n_near)


def _tile_pixel(img: Image.Image, box, where: str = "centre") -> tuple[int, int, int]:
    x0, y0, x1, y1 = box
    xy = ((x0 + x1) // 2, (y0 + y1) // 2) if where == "centre" else (x0 + 4, y0 + 4)
    return img.getpixel(xy)[:3]


# --- files and sizes -------------------------------------------------------------------------------

def test_every_expected_file_is_written(built):
    fake, index = built
    assert index == fake.run_dir / "report" / "index.html"
    assert _files(index.parent) == EXPECTED


def test_pngs_have_the_documented_sizes(built):
    fake, index = built
    root = index.parent
    kinds = {"pca_variance": "pca_variance", "silhouette_vs_k": "silhouette_vs_k", "metrics_vs_k": "metrics_vs_k",
             "cluster_sizes": "cluster_sizes", "scatter_2d": "scatter_2d"}
    for name, kind in kinds.items():
        with Image.open(root / "plots" / f"{name}.png") as img:
            img.load()
            assert img.format == "PNG" and img.size == plots.SIZES[kind], name
    for kk in (K - 1, K, K + 1):
        with Image.open(root / "plots" / f"silhouette_k{kk}.png") as img:
            assert img.size == plots.SIZES["silhouette"]
    for cid, size in enumerate(SIZES):
        with Image.open(root / "montages" / f"cluster_{cid}.jpg") as img:
            img.load()
            assert img.size == montage.layout(*_montage_counts(size)).size


# --- the page ----------------------------------------------------------------------------------------

def test_html_links_only_to_files_that_exist(built):
    fake, index = built
    page = _parse(index)
    assert page.links, "the page has no links or images"
    for link in page.links:
        parts = urlsplit(link)
        if parts.scheme == "file":  # an image whose path was given absolute: linked where it is
            target = Path(unquote(parts.path))
            assert target.is_file() and fake.image_dir.resolve() in target.resolve().parents, link
            continue
        assert not parts.scheme and not parts.netloc, f"not a relative link: {link}"
        if not parts.path:  # in-page anchor
            assert parts.fragment in page.ids, f"anchor without target: {link}"
            continue
        target = (index.parent / unquote(parts.path)).resolve()
        assert target.is_file(), f"broken link: {link}"
        # the report's own files, or (the paths listed under a montage) the run's images themselves
        assert (fake.run_dir.resolve() in target.parents or fake.image_dir.resolve() in target.parents), \
            f"link leaves the run directory and is no image of the run: {link}"
    assert "../skipped.csv" in page.links
    srcs = {a["src"] for tag, a in page.tags if tag == "img"}
    assert srcs == {f for f in EXPECTED if f.endswith((".png", ".jpg"))}  # every plot and montage is on the page
    for tag, _ in page.tags:
        assert tag not in ("script", "link", "iframe"), f"page must be self-contained, found <{tag}>"


def test_html_escapes_path_and_config_text(built):
    _, index = built
    text = index.read_text(encoding="utf-8")
    assert "<name>" not in text and "<script>" not in text
    assert "odd &lt;name&gt; &amp; &#x27;q&#x27;.png" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_html_marks_the_chosen_k(built):
    fake, index = built
    page = _parse(index)
    chosen = [a for _, a in page.tags if a.get("id") == "chosen-k"]
    assert len(chosen) == 1 and chosen[0]["data-k"] == str(fake.k)
    rows = [a for tag, a in page.tags if tag == "tr" and "chosen" in (a.get("class") or "").split()]
    assert [r["data-k"] for r in rows] == [str(fake.k)]
    text = index.read_text(encoding="utf-8")
    for cid in range(K):  # every cluster: section, size, CSV link
        assert f'id="cluster-{cid}"' in text and f"{SIZES[cid]:,} images" in text
        assert f'href="clusters/cluster_{cid}.csv"' in text


def test_montage_paths_on_the_page_are_nearest_first(built):
    fake, index = built
    text = index.read_text(encoding="utf-8")
    members = fake.members(0)
    n_near, n_far = _montage_counts(SIZES[0])
    positions = [text.index(f"<code>{escape(fake.paths[i])}</code>") for i in members[:n_near]]
    assert positions == sorted(positions)
    far_positions = [text.index(f"<code>{escape(fake.paths[i])}</code>") for i in members[::-1][:n_far]]
    assert far_positions == sorted(far_positions) and far_positions[0] > positions[-1]


# --- plots: the data they draw -----------------------------------------------------------------------

def _gid(ax, gid):
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, f"expected one artist with gid {gid!r}"
    return found[0]


def test_silhouette_vs_k_marks_the_chosen_k(built):
    fake, _ = built
    fig = plots.silhouette_vs_k(fake.summary["scores"], fake.k)
    marker = _gid(fig.axes[0], "chosen-k")
    assert list(marker.get_xdata()) == [fake.k]
    assert marker.get_ydata()[0] == pytest.approx(0.62)
    # another K is marked where asked: the function does not pick its own maximum
    fig = plots.silhouette_vs_k(fake.summary["scores"], 5)
    assert list(_gid(fig.axes[0], "chosen-k").get_xdata()) == [5]


def test_metrics_small_multiple_marks_the_chosen_k(built):
    fake, _ = built
    fig = plots.metrics_vs_k(fake.summary["scores"], fake.k)
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert list(_gid(ax, "chosen-k").get_xdata()) == [fake.k]


def test_silhouette_plot_drops_nan_and_draws_the_mean(built):
    fake, _ = built
    sil = fake.silhouettes[K]
    fig = plots.silhouette_plot(fake.labels, sil, K, chosen=True)
    ax = fig.axes[0]
    assert _gid(ax, "mean-silhouette").get_xdata()[0] == pytest.approx(float(np.nanmean(sil)), abs=1e-6)
    assert len(ax.collections) == K  # one filled band per cluster
    assert "54 sampled of 60" in ax.get_title()


def test_silhouette_plot_downsamples_large_clusters():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200_000).astype(np.int32)
    sil = rng.uniform(-0.2, 0.9, 200_000).astype(np.float32)
    fig = plots.silhouette_plot(labels, sil, 4, max_points_per_cluster=300)
    for band in fig.axes[0].collections:
        assert len(band.get_paths()[0].vertices) < 1000
    plots.to_png(fig)


def test_scatter_subsample_keeps_small_clusters_and_is_seeded():
    labels = np.r_[np.zeros(100_000, np.int32), np.ones(30, np.int32)]
    idx = plots.subsample_indices(labels, 20_000, seed=3)
    assert 20_000 <= idx.size <= 20_030 and np.unique(idx).size == idx.size
    assert (labels[idx] == 1).sum() == 30
    assert np.array_equal(idx, plots.subsample_indices(labels, 20_000, seed=3))


# --- montages ----------------------------------------------------------------------------------------

def test_select_members_spread_from_the_centre_then_farthest():
    """Not only the nearest: a cluster mixing kinds of image showed its most typical kind alone
    (40 stripes shown, 12 grayscale checkerboards in it nowhere). The nearest, then even steps of
    distance rank to the farthest member outside the strip."""
    d = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    near, far = montage.select_members(d, max_montage=6, n_outliers=2)
    assert d[near].tolist() == [0.1, 0.3, 0.6, 0.8]  # ranks 0, 2, 5, 7 of the 8 outside the strip
    assert d[far].tolist() == [1.0, 0.9]
    mixed = np.r_[np.linspace(0.1, 0.2, 40), np.linspace(0.5, 0.6, 12)]  # 40 of one kind, 12 of another
    near, _ = montage.select_members(mixed, max_montage=13, n_outliers=0)
    assert (mixed[near] >= 0.5).sum() == 3  # the second kind in proportion (12/52 of 13), not absent
    near, far = montage.select_members(d[:4], max_montage=6, n_outliers=2)  # fits the grid: no outlier strip
    assert d[near].tolist() == sorted(d[:4].tolist()) and far.size == 0
    near, far = montage.select_members(d[:5], max_montage=6, n_outliers=2)  # one more: it goes in the strip
    assert d[near].tolist() == [0.1, 0.3, 0.5, 0.7] and d[far].tolist() == [0.9]
    near, far = montage.select_members(d[:5], max_montage=4, n_outliers=3)  # 1 near, 3 far, no repeats
    assert near.size == 1 and far.size == 3 and not set(near) & set(far)
    nan = np.array([np.nan, 0.2, np.nan, 0.1, 0.3])  # unknown distances: never called outliers
    near, far = montage.select_members(nan, max_montage=3, n_outliers=1)
    assert nan[near].tolist() == [0.1, 0.2] and nan[far].tolist() == [0.3]
    with pytest.raises(ConfigError):
        montage.select_members(d, max_montage=4, n_outliers=4)


def test_montage_shows_nearest_first_and_marks_the_farthest(built):
    fake, index = built
    with Image.open(index.parent / "montages" / "cluster_0.jpg") as img:
        img = img.convert("RGB")
    n_near, n_far = _montage_counts(SIZES[0])
    geo = montage.layout(n_near, n_far)
    reds = [_tile_pixel(img, box) for box in geo.near_boxes]
    for rank, (r, g, b) in enumerate(reds):  # cluster 0 encodes the distance rank in its red level
        assert abs(r - (RED_TOP - RED_STEP * rank)) <= 2 and g < 10 and b < 10, (rank, (r, g, b))
    for box in geo.far_boxes:
        assert np.allclose(_tile_pixel(img, box), YELLOW, atol=3)  # the farthest members are the yellow ones
        x0, y0, _, _ = box
        # red frame (montages are JPEG: a thin line beside a yellow tile comes back within a few levels)
        assert np.allclose(img.getpixel((x0 - 2, y0 + 20)), montage.OUTLIER_RED, atol=8)
    assert geo.label_box is not None


def test_broken_image_in_a_montage_becomes_a_placeholder(tmp_path):
    fake = make_fake_run(tmp_path)
    nearest = fake.members(1)[:3]
    Path(fake.paths[nearest[0]]).write_bytes(Path(fake.paths[nearest[0]]).read_bytes()[:200])  # truncated JPEG
    Path(fake.paths[nearest[1]]).unlink()  # deleted since the run
    index = build_report(fake.run_dir, num_threads=2)
    with Image.open(index.parent / "montages" / "cluster_1.jpg") as img:
        img = img.convert("RGB")
    geo = montage.layout(*_montage_counts(SIZES[1]))
    assert _tile_pixel(img, geo.near_boxes[0], "corner") == montage.PLACEHOLDER
    assert _tile_pixel(img, geo.near_boxes[1], "corner") == montage.PLACEHOLDER
    assert _tile_pixel(img, geo.near_boxes[2], "corner") != montage.PLACEHOLDER
    assert index.read_text(encoding="utf-8").count("(unreadable)") == 2


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 50])
def test_load_thumbnail_returns_none_for_bad_files(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    assert montage.load_thumbnail(path) is None
    assert montage.load_thumbnail(tmp_path / "missing.jpg") is None
    assert montage.load_thumbnail(tmp_path) is None  # a directory


def test_load_thumbnail_fits_the_tile(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (200, 100, 50)).save(big, quality=85)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 20), (0, 0, 255)).save(small)
    assert montage.load_thumbnail(big, 128).size == (128, 96)
    assert montage.load_thumbnail(small, 128).size == (128, 64)


# --- CSVs, rebuilds, errors --------------------------------------------------------------------------

def test_cluster_csvs_list_members_nearest_first(built):
    fake, index = built
    for cid in range(K):
        with open(index.parent / "clusters" / f"cluster_{cid}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["path"] for r in rows] == [fake.paths[i] for i in fake.members(cid)]
        dist = [float(r["distance_to_centroid"]) for r in rows]
        assert dist == sorted(dist)
        for r, i in zip(rows, fake.members(cid), strict=True):
            value = fake.silhouettes[K][i]
            if np.isnan(value):
                assert r["silhouette"] == ""
            else:
                assert float(r["silhouette"]) == pytest.approx(value, abs=1e-5)
    names = {Path(r["path"]).name for r in outputs.read_csv(index.parent / "clusters" / "cluster_2.csv")}
    assert set(ODD_NAMES) <= names  # commas and markup survive the CSV round trip


def test_build_twice_overwrites_cleanly(tmp_path):
    fake = make_fake_run(tmp_path)
    index = build_report(fake.run_dir, num_threads=1)
    first = {name: (index.parent / name).read_bytes() for name in EXPECTED}
    (index.parent / "montages" / "cluster_9.png").write_bytes(b"stale")  # e.g. from a run with more clusters
    (index.parent / "clusters" / ".cluster_0.csv.abc.tmp").write_bytes(b"left by a crash")
    assert build_report(fake.run_dir, num_threads=1) == index
    assert _files(index.parent) == EXPECTED
    second = {name: (index.parent / name).read_bytes() for name in EXPECTED}
    assert first["index.html"] == second["index.html"]
    assert all(first[n] == second[n] for n in EXPECTED if n.endswith(".csv"))
    assert not list(fake.run_dir.rglob("*.tmp"))


def test_pca_off_skips_the_plot_with_a_note(tmp_path):
    fake = make_fake_run(tmp_path)
    analysis = outputs.read_analysis(fake.run_dir)
    analysis.explained_variance_ratio = np.zeros(0, np.float32)
    analysis.n_components = 0
    outputs.write_analysis(fake.run_dir, analysis)
    summary = outputs.read_summary(fake.run_dir)
    summary["pca"] = {"mode": "off", "n_components": 0, "explained_variance": None}
    outputs.write_summary(fake.run_dir, summary)
    index = build_report(fake.run_dir, num_threads=1)
    assert not (index.parent / "plots" / "pca_variance.png").exists()
    assert "PCA was off" in index.read_text(encoding="utf-8")
    assert _files(index.parent) == EXPECTED - {"plots/pca_variance.png"}


def test_not_a_finished_run_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="summary.json is missing"):
        build_report(tmp_path)
    fake = make_fake_run(tmp_path)
    summary = outputs.read_summary(fake.run_dir)
    summary["cluster_sizes"] = [1, 2, 3]
    outputs.write_summary(fake.run_dir, summary)
    with pytest.raises(ReportError, match="cluster_sizes"):
        build_report(fake.run_dir)
    with pytest.raises(ConfigError, match="n_outliers"):
        build_report(fake.run_dir, max_montage=4, n_outliers=9)


def test_importing_outputs_stays_light():
    code = "import sys, engine.report.outputs; sys.exit('matplotlib' in sys.modules or 'PIL' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --- terminal ----------------------------------------------------------------------------------------

def test_print_run_summary(built):
    from rich.console import Console

    fake, _ = built
    console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
    print_run_summary(fake.summary, console)
    text = console.export_text()
    for needle in ("chosen K", "3 (by silhouette)", "0.620", "36, 14, 10", "skipped", "extract", "24.0 img/s",
                   "scores per K", "3 ◀"):
        assert needle in text, needle
    assert text.count("◀") == 1
    print_run_summary({"k": 2}, Console(file=io.StringIO()))  # a minimal summary does not crash


# --- a real browser ----------------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_page_renders_in_headless_chromium(built, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH "
                    "(install: apt-get install -y chromium)")
    _, index = built
    shot = tmp_path / "page.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2000", index.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 25, "screenshot is (nearly) blank"
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"only {len(colours)} colours: plots did not render"
    # the chosen-K row's pink background (#fde2e2): the page's CSS was applied
    pink = np.all(np.abs(pixels - np.array([253, 226, 226])) <= 3, axis=-1).sum()
    assert pink > 2000, f"chosen row highlight not found ({pink} px)"


@pytest.mark.parametrize("edit, match", [
    (lambda s: [1, 2], "expected a JSON object"),
    (lambda s: {**s, "k": "abc"}, "'k' must be a positive integer"),
    (lambda s: {**s, "k": 3.7}, "'k' must be a positive integer"),
    (lambda s: {**s, "k": True}, "'k' must be a positive integer"),
    (lambda s: {**s, "scores": {"a": 1}}, "'scores' must be a list"),
    (lambda s: {**s, "scores": [{"silhouette": 0.3}]}, "integer 'k'"),
    (lambda s: {**s, "scores": [{**s["scores"][0], "k": "x"}]}, "integer 'k'"),
    (lambda s: {**s, "timings": [1, 2]}, "'timings' must be an object"),
    (lambda s: {**s, "timings": {"total": 3.1}}, "timings 'total'"),
    (lambda s: {**s, "pca": "exact"}, "'pca' must be an object"),
    (lambda s: {**s, "backends": ["cpu"]}, "'backends' must be an object"),
    (lambda s: {**s, "inputs": "photos"}, "'inputs' must be a list"),
    (lambda s: {**s, "n_images": "many"}, "'n_images' must be a count"),
    (lambda s: {**s, "n_skipped": -1}, "'n_skipped' must be a count"),
    (lambda s: {**s, "cluster_sizes": "36,14,10"}, "'cluster_sizes' must be a list"),
    (lambda s: {**s, "silhouette": {"mode": "sampled", "sample_size": "54"}}, "sample_size"),
])
def test_summary_of_the_wrong_shape_is_a_report_error(tmp_path, edit, match):
    """A hand-edited or foreign summary.json is a one-line ReportError naming the key, not a traceback."""
    fake = make_fake_run(tmp_path)
    outputs.write_summary(fake.run_dir, edit(outputs.read_summary(fake.run_dir)))
    with pytest.raises(ReportError, match=match):
        build_report(fake.run_dir, num_threads=1)


def test_a_single_k_is_called_given_not_chosen_and_gets_no_curves(tmp_path):
    """--k 3 searches one K: the page must not claim silhouette chose it, nor draw one-dot 'curves'."""
    fake = make_fake_run(tmp_path)
    summary = outputs.read_summary(fake.run_dir)
    summary["scores"] = [e for e in summary["scores"] if e["k"] == K]
    outputs.write_summary(fake.run_dir, summary)
    index = build_report(fake.run_dir, num_threads=1)
    text = index.read_text(encoding="utf-8")
    assert "chosen K (by" not in text and "the only value searched" in text
    assert f"Only K = {K} was searched" in text
    assert _files(index.parent) == EXPECTED - {"plots/silhouette_vs_k.png", "plots/metrics_vs_k.png"}
    assert _parse(index).ids >= {"chosen-k"}


def test_skipped_files_and_their_reasons_are_on_the_page(tmp_path):
    """What was skipped and why is readable on the page itself (skipped.csv sits outside report/, so a
    copied report folder loses it), grouped by reason, escaped, and cut to the first ones on big runs."""
    fake = make_fake_run(tmp_path)
    rows = [(str(fake.image_dir / "<img src=x onerror=alert(1)>.jpg"), "corrupt or truncated image: Truncated File Read"),
            (str(fake.image_dir / "empty.jpg"), "empty file (0 bytes)")]
    rows += [(str(fake.image_dir / f"bad_{i:03d}.jpg"), f"corrupt or truncated image: detail {i}") for i in range(150)]
    outputs.write_skipped(fake.run_dir, rows)
    index = build_report(fake.run_dir, num_threads=1)
    text = index.read_text(encoding="utf-8")
    page = _parse(index)
    assert "skipped" in page.ids and "#skipped" in page.links and "../skipped.csv" in page.links
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    section = text[text.index('id="skipped"'):text.index('id="scores"')]
    assert "corrupt or truncated image</td><td>151</td>" in section and "empty file (0 bytes)</td><td>1</td>" in section
    assert section.count("<code>") == html_module.SKIPPED_SHOWN and "52 more in skipped.csv" in section
    outputs.write_skipped(fake.run_dir, [])  # none skipped: no section, no dangling anchor
    outputs.write_summary(fake.run_dir, {**outputs.read_summary(fake.run_dir), "n_skipped": 0})
    index = build_report(fake.run_dir, num_threads=1)
    assert 'id="skipped"' not in index.read_text(encoding="utf-8") and "#skipped" not in _parse(index).links


def test_relative_image_paths_say_what_they_are_relative_to(tmp_path):
    """A run started elsewhere stores paths relative to its folder: the page names that folder, and the
    montages still find the images from any working directory."""
    fake = make_fake_run(tmp_path)
    rel = [str(Path(p).relative_to(tmp_path)) for p in fake.paths]
    outputs.write_predictions(fake.run_dir, rel, fake.labels)
    summary = outputs.read_summary(fake.run_dir)
    summary["cwd"] = str(tmp_path / "<start>")  # markup in the folder name is escaped too
    outputs.write_summary(fake.run_dir, summary)
    (tmp_path / "<start>").symlink_to(tmp_path)
    index = build_report(fake.run_dir, num_threads=1)
    text = index.read_text(encoding="utf-8")
    assert "image paths relative to" in text and escape(str(tmp_path / "<start>")) in text
    assert "(unreadable)" not in text
    absolute = build_report(make_fake_run(tmp_path / "abs").run_dir, num_threads=1).read_text(encoding="utf-8")
    assert "image paths relative to" not in absolute  # absolute paths need no base


def test_silhouette_plot_names_every_cluster_band_even_tiny_ones():
    """One big cluster and several of 3 images (a common result): the thin bands must still carry their ids,
    or the reader cannot tell which band is which cluster."""
    rng = np.random.default_rng(2)
    sizes = [109, 27, 14, 3, 3, 3, 3, 3]
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    sil = rng.uniform(0.1, 0.9, labels.size).astype(np.float32)
    fig = plots.silhouette_plot(labels, sil, len(sizes), chosen=True)
    ids = sorted(int(t.get_text()) for t in fig.axes[0].texts)
    assert ids == list(range(len(sizes)))
    ys = sorted(t.get_position()[1] for t in fig.axes[0].texts)
    y_per_px = fig.axes[0].get_ylim()[1] / (0.85 * plots.SIZES["silhouette"][1])
    assert min(np.diff(ys)) / y_per_px >= 12  # labels do not overlap


def test_metrics_small_multiple_labels_k_only_under_the_bottom_row(built):
    fake, _ = built
    fig = plots.metrics_vs_k(fake.summary["scores"], fake.k)
    top, bottom = fig.axes[:2], fig.axes[2:]
    assert all(ax.get_xlabel() == "" for ax in top)  # shared x: no label without tick numbers
    assert all(ax.get_xlabel() == "number of clusters K" for ax in bottom)
    # each panel its own y numbers (Davies-Bouldin and balance had none: label_outer took them)
    fig.canvas.draw()
    assert all(any(t.get_visible() and t.get_text() for t in ax.get_yticklabels()) for ax in fig.axes)


def test_montage_finds_a_file_whose_name_is_not_utf8(tmp_path):
    """predictions.csv writes a non-UTF-8 byte of a file name as a '\\udcXX' escape; the montage must still
    find that file instead of drawing it as 'unreadable'."""
    import os

    fake = make_fake_run(tmp_path)
    i = fake.members(1)[0]
    raw = os.path.join(os.fsencode(fake.image_dir), b"caf\xe9.jpg")
    try:
        os.rename(fake.paths[i], raw)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    paths = list(fake.paths)
    paths[i] = outputs.path_to_text(os.fsdecode(raw))
    assert "\\udce9" in paths[i]
    outputs.write_predictions(fake.run_dir, paths, fake.labels)
    index = build_report(fake.run_dir, num_threads=1)
    assert "(unreadable)" not in index.read_text(encoding="utf-8")
    assert montage.file_for_text("/no/such/back\\udcslash.jpg") == "/no/such/back\\udcslash.jpg"


def test_clusters_overview_table_gives_sizes_silhouettes_and_negatives(tmp_path):
    """Before the per-cluster sections: one row per cluster with its size, share, mean silhouette, how
    many members have a negative silhouette, and its members CSV."""
    fake = make_fake_run(tmp_path)
    analysis = outputs.read_analysis(fake.run_dir)
    sil = analysis.silhouettes[K]
    sil[np.array(fake.members(1)[-3:])] = -0.2  # three likely misassignments in cluster 1
    outputs.write_analysis(fake.run_dir, analysis)
    summary = outputs.read_summary(fake.run_dir)
    summary["cluster_silhouettes"] = [float(np.nanmean(sil[fake.labels == c])) for c in range(K)]
    outputs.write_summary(fake.run_dir, summary)
    text = build_report(fake.run_dir, num_threads=1).read_text(encoding="utf-8")
    table = text[text.index('id="clusters"'):text.index("Jump to cluster")]
    for cid, size in enumerate(SIZES):
        values = sil[fake.labels == cid]
        negative = int((values[np.isfinite(values)] < 0).sum())
        row = table[table.index(f'href="#cluster-{cid}"'):]
        row = row[:row.index("</tr>")]
        cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
        expected = [f"{size:,}", f"{100 * size / sum(SIZES):.1f} %", f"{float(np.nanmean(values)):.3f}", str(negative)]
        assert cells[:4] == expected, cells
        assert f'href="clusters/cluster_{cid}.csv"' in row
    assert "<td>3</td>" in table[table.index('href="#cluster-1"'):]


def test_the_report_does_not_import_torch():
    """`imgcluster report` reads saved outputs only; importing torch would add ~2 s to every rebuild."""
    import subprocess
    import sys

    code = "import sys, engine.report.builder, engine.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_long_pca_spectrum_gets_a_log_axis():
    """3 components kept of 2,048 sat squeezed against the left edge on a linear axis."""
    long = plots.pca_variance(np.full(2048, 1 / 2048), 3)
    short = plots.pca_variance(np.full(20, 1 / 20), 3)
    assert long.axes[0].get_xscale() == "log" and short.axes[0].get_xscale() == "linear"


@pytest.mark.parametrize("where", ["report", "report/plots"])
def test_a_file_where_the_report_writes_a_folder_is_one_clear_error(tmp_path, where):
    from engine.report.rundata import ReportError

    fake = make_fake_run(tmp_path)
    blocker = fake.run_dir / where
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("mine")
    with pytest.raises(ReportError, match=f"{blocker.name} is a file, where the report writes a folder"):
        build_report(fake.run_dir, num_threads=1)
    assert blocker.read_text() == "mine"


def test_k_choice_says_runner_up_metrics_and_edges():
    """summary.json's k_choice and the page's note: how far ahead the chosen K is, which K each
    metric picks, and a chosen K at an edge of the range searched."""
    from engine.report.kchoice import k_choice

    def entry(k, sil, ch, db):
        return {"k": k, "silhouette": sil, "calinski_harabasz": ch, "davies_bouldin": db}

    scores = [entry(2, 0.522, 900.0, 0.9), entry(3, 0.475, 700.0, 0.8), entry(4, 0.60, 650.0, 0.7)]
    got = k_choice(scores, "silhouette", 4, n_images=100)
    assert got["by_metric"] == {"silhouette": 4, "calinski": 2, "davies": 4}
    assert got["runner_up"] == {"k": 2, "value": 0.522} and got["margin"] == pytest.approx(0.078)
    assert got["edge"] == "largest"
    assert k_choice(scores, "silhouette", 4, n_images=5)["edge"] is None  # 4 = n - 1: no larger K exists
    assert k_choice(scores[1:], "silhouette", 3)["edge"] == "smallest"  # --k 3:4 chose 3: K = 2 was not tried
    assert k_choice(scores, "silhouette", 3)["edge"] is None  # inside the range
    low = k_choice([entry(3, 0.5, 10.0, 1.0), entry(4, 0.4, 9.0, 1.1)], "calinski", 3)
    assert low["edge"] == "smallest" and low["runner_up"] == {"k": 4, "value": 9.0} and low["margin"] == 1.0
    davies = k_choice(scores, "davies", 4)
    assert davies["runner_up"] == {"k": 3, "value": 0.8} and davies["margin"] == pytest.approx(0.1)
    assert k_choice(scores[:1], "silhouette", 2) == {"by_metric": {"silhouette": 2, "calinski": 2, "davies": 2},
                                                     "runner_up": None, "margin": None, "edge": None}


def test_page_says_how_sure_the_k_choice_is(built):
    _, index = built
    text = " ".join(index.read_text(encoding="utf-8").split())
    # the fake run: K = 3 at 0.62, K = 2 at 0.45; Calinski-Harabasz and Davies-Bouldin best at 3 too
    assert "K = 3 has the best mean silhouette (0.620); the runner-up is K = 2 (0.450, 0.170 lower)." in text
    assert "mean silhouette, Calinski–Harabasz, Davies–Bouldin all pick K = 3." in text
    assert "largest K searched" not in text


def test_misfits_are_listed_worst_first_with_links(tmp_path):
    """Members with a negative silhouette (the likeliest misassignments) get their own list under
    their cluster, worst first and capped, each path a link to the image."""
    from types import SimpleNamespace

    from engine.report.builder import _href, _misfits

    data = SimpleNamespace(silhouettes=np.array([0.5, -0.2, np.nan, -0.05, 0.1, -0.4], dtype=np.float32),
                           paths=[f"img {i}#.jpg" for i in range(6)])
    members = np.array([5, 3, 1, 0, 2])  # cluster order (nearest first)
    found = _misfits(data.paths, members, data.silhouettes[members])
    assert found == [("img 5#.jpg", pytest.approx(-0.4)), ("img 1#.jpg", pytest.approx(-0.2)),
                                       ("img 3#.jpg", pytest.approx(-0.05))]
    report = tmp_path / "run" / "report"
    assert _href("img 5#.jpg", str(tmp_path / "photos"), report) == "../../photos/img%205%23.jpg"
    entry = html_module.ClusterEntry(cid=0, size=5, mean_silhouette=0.1, color="#000000", csv_file="clusters/c0.csv",
                                     montage_file=None, montage_size=None, n_negative=3,
                                     misfits=found, links={"img 5#.jpg": "x/img%205%23.jpg"})
    section = html_module._cluster(entry, 5)
    assert "3 members with a negative silhouette" in section
    assert section.index("img 5#.jpg") < section.index("img 1#.jpg") < section.index("img 3#.jpg")
    assert '<a href="x/img%205%23.jpg"><code>img 5#.jpg</code></a>' in section


def test_listed_paths_carry_their_distance_rank():
    """A spread montage shows ranks #1, #5, ...: its path list is numbered the same (the CSV's rows)."""
    items = [("a.jpg", 0.1, True), ("b.jpg", 0.5, False)]
    listed = html_module._path_list(items, {"a.jpg": "../a.jpg"}, [0, 4])
    assert '<li value="1"><a href="../a.jpg"><code>a.jpg</code></a>' in listed
    assert '<li value="5"><code>b.jpg</code>' in listed and "(unreadable)" in listed
    assert '<li><code>b.jpg</code>' in html_module._path_list(items[1:], {})  # no ranks: plain numbering


def test_k_choice_note_ties_one_metric_and_the_suggested_command(tmp_path):
    """A tie says so (it read '0.000 lower'); with one metric known nothing 'disagrees'; each
    metric's best K is stated, not judged; the suggested command is quoted, capped at n - 1 and
    writes to another folder."""
    from types import SimpleNamespace

    def note(scores, k, n=100, select="silhouette"):
        summary = {"scores": scores, "select": select, "n_images": None}
        data = SimpleNamespace(summary=summary, k=k, n=n, run_dir=tmp_path / "my run",
                               score_for=lambda kk: next((e for e in scores if e["k"] == kk), None))
        return " ".join(html_module._k_choice(data).split())

    tie = [{"k": 6, "silhouette": 0.8131}, {"k": 7, "silhouette": 0.8129}]
    assert "K = 6 ties with K = 7 on mean silhouette (0.813): a tie goes to the smaller K." in note(tie, 6)
    assert "Each metric" not in note(tie, 6) and "disagree" not in note(tie, 6)
    mixed = [{"k": 2, "silhouette": 0.5, "calinski_harabasz": 900.0, "davies_bouldin": 0.9},
             {"k": 6, "silhouette": 0.8, "calinski_harabasz": 700.0, "davies_bouldin": 0.5}]
    text = note(mixed, 6, n=10)
    assert "Each metric's best K: mean silhouette K = 6, Calinski–Harabasz K = 2, Davies–Bouldin K = 6." in text
    quoted = f"'{tmp_path / 'my run'}'"
    assert f"imgcluster cluster {quoted} --k 2:9 --out {quoted}-k2-9" in text.replace("&#x27;", "'")  # 2K > n - 1
    calinski = note(mixed, 2, select="calinski")
    assert "K = 2 has the best Calinski–Harabasz (900.0); the runner-up is K = 6 (700.0, 200.0 lower)." in calinski


def test_sampled_silhouettes_are_counted_as_such_and_absolute_paths_link_where_they_are(tmp_path):
    from engine.report.builder import _href

    entry = html_module.ClusterEntry(cid=0, size=160, mean_silhouette=0.1, color="#000000", csv_file="c.csv",
                                     montage_file=None, montage_size=None, n_negative=15, n_scored=37,
                                     misfits=[("a.jpg", -0.2)])
    assert "15 members of its 37 sampled members with a negative silhouette" in html_module._cluster(entry, 160)
    photo = tmp_path / "photos" / "a b.jpg"
    assert _href(str(photo), None, tmp_path / "run" / "report") == "file://" + str(photo).replace(" ", "%20")


def test_one_k_away_names_the_clusters_that_split_and_merge(built):
    """The fake run: K = 4 splits cluster 0 in two halves, K = 2 merges clusters 1 and 2."""
    from engine.report.neighbours import merges, splits

    fake, index = built
    text = " ".join(index.read_text(encoding="utf-8").split())
    assert ('At K = 4: <a href="#cluster-0">cluster 0</a> splits (50 % / 50 %).' in text)
    assert 'At K = 2: clusters <a href="#cluster-1">1</a> and <a href="#cluster-2">2</a> merge.' in text
    chosen = np.array([0] * 10 + [1] * 10)
    assert splits(chosen, 2, np.array([0] * 9 + [1] + [2] * 10), 3) == []  # one image moving is no split
    assert merges(chosen, 2, np.zeros(20, dtype=int), 1) == [[0, 1]]
    assert merges(chosen, 2, chosen, 2) == []
