"""Re-cluster a finished run from its feature cache: new K range, PCA, selection or seed, no decoding.

    from engine.recluster import recluster
    result = recluster("results/", k="2:30", pca=0.9)          # rewrites results/predictions.csv, ...
    result = recluster("results/", out_dir="results-k5", k=5)   # or writes a new run folder

What a run leaves behind is enough: predictions.csv lists its good images in input order,
summary.json its configuration and the backbone fingerprint, and features/ the cached features
(engine.store). Every image is looked up in the cache by (path, size, mtime): one changed or
removed since the run is not decoded again but reported in skipped.csv with the reason (rerun
`imgcluster run` to include it). Relative paths are resolved from the folder the run was made in
(summary.json "cwd"), so a run folder can be re-clustered from anywhere.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .device import resolve_cluster_backend, resolve_device
from .errors import ConfigError, InputError
from .features import Extraction
from .pathlist import PathList
from .pipeline import Backends, BackboneInfo, RunResult, _stage, build_summary, cluster_features, find_copies, write_run
from .progress import Reporter
from .report import outputs
from .store import FeatureStore

# Parameters a re-clustering may change; the rest (model, weights, decoding) are fixed by the cache.
OVERRIDABLE = ("pca", "pca_fit_limit", "k", "n_init", "max_iter", "cluster_backend", "select",
               "silhouette_sample", "seed", "device")
CACHE_DIR = outputs.FEATURE_CACHE

def text_to_path(text: str) -> Path:
    """A path read back from a run's CSV (outputs.file_for_text: non-UTF-8 bytes restored)."""
    return Path(outputs.file_for_text(text))


def _read_run(run_dir: Path) -> tuple[dict, PathList, list[tuple[str, str]]]:
    """(summary, good images in order (as text_to_path gives them, in a PathList: no Path or
    dict per row), previous skipped [(path text, reason)])."""
    try:
        summary = outputs.read_summary(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(outputs.not_a_finished_run(run_dir, outputs.SUMMARY, hint=" (make one with `imgcluster run`)")) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {run_dir / outputs.SUMMARY}: {exc}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("features"), dict) \
            or "fingerprint" not in summary["features"]:
        raise InputError(f"{run_dir / outputs.SUMMARY} has no features fingerprint: not a run folder of this version")
    try:
        paths = outputs.read_paths(run_dir / outputs.PREDICTIONS)
    except FileNotFoundError:
        raise InputError(f"{run_dir} has no {outputs.PREDICTIONS}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {run_dir / outputs.PREDICTIONS}: {exc}") from None
    skipped: list[tuple[str, str]] = []
    try:
        skipped = [(row["path"], row["reason"]) for row in outputs.read_csv(run_dir / outputs.SKIPPED)]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no previous skipped list: nothing to carry over
    return summary, paths, skipped


def _config(summary: dict, overrides: dict) -> Config:
    fixed = sorted(set(overrides) - set(OVERRIDABLE))
    if fixed:
        raise ConfigError(f"cannot change {', '.join(fixed)} when re-clustering cached features "
                          f"(changeable: {', '.join(OVERRIDABLE)}); run `imgcluster run` again for a new model")
    known = set(Config.parameter_names())
    flat = {k: v for k, v in (summary.get("config") or {}).items() if k in known}
    flat.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_kwargs(**flat)


def _weights_seed(description, run_config: dict) -> int:
    """The seed random weights were made with: from the backbone's description, "random(seed=0)"
    (a re-clustered run's config may hold another seed, for KMeans), else the run's seed."""
    found = re.fullmatch(r"random\(seed=(-?\d+)\)", str(description or ""))
    return int(found.group(1)) if found else int(run_config.get("seed", 0))


def _cache_folder(run_dir: Path, summary: dict) -> Path:
    """The run's own features/ folder, else the one a re-clustered run's summary points to."""
    own = run_dir / CACHE_DIR
    if own.is_dir():
        return own
    recorded = (summary.get("cache") or {}).get("dir")
    return Path(recorded) if recorded else own


def recluster(run_dir, out_dir=None, reporter: Reporter | None = None, report: bool = False,
              **overrides) -> RunResult:
    """Cluster a finished run's cached features again, with `overrides` (k=, pca=, select=, seed=, ...).

    run_dir: a folder written by `imgcluster run` (predictions.csv, summary.json, features/).
    out_dir: where to write the new run's files (default: run_dir, replacing its outputs).
    report: also build the HTML report (when engine.report.build_report is available).
    Returns the RunResult; its `extraction.features` are (m, d) float32 on the chosen device, for
    the m images still in the cache (input order). Nothing is decoded: images missing from the
    cache go to skipped.csv. Raises InputError when the run folder or its cache is unusable.
    """
    reporter = reporter or Reporter()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    summary, paths, previous_skipped = _read_run(run_dir)
    config = _config(summary, overrides)
    outputs.prepare_out_dir(out_dir)  # before the work, as in `run`
    with outputs.exclusive_writer(out_dir):  # one command writing the folder at a time
        feat = summary["features"]
        cache_dir = _cache_folder(run_dir, summary)

        t0 = time.perf_counter()
        store = FeatureStore.open(cache_dir, feat["fingerprint"], notify=reporter.notify,
                                  dim=feat.get("dim"), create=False)
        # what relative input paths are relative to (the run folder's new place if the project moved)
        run_cwd = outputs.run_base(run_dir, summary, paths.strings()) or os.getcwd()
        positions, features_np, _ = store.gather(paths, base=run_cwd)
        missing = np.ones(len(paths), dtype=bool)  # not a set of every found position: ~60 bytes an image
        missing[positions] = False
        skipped: list[tuple] = [(Path(p), r) for p, r in previous_skipped]
        for pos in np.flatnonzero(missing).tolist():
            path = paths[pos]
            if not os.path.lexists(os.path.join(run_cwd, path)):
                reason = "removed since the run (not re-extracted: rerun `imgcluster run`)"
            else:
                reason = "changed since the run or not in the feature cache (not re-extracted: rerun `imgcluster run`)"
            skipped.append((path, reason))
        if not len(positions):
            raise InputError(f"none of the {len(paths)} images of {run_dir} are in its feature cache {cache_dir} "
                             "(moved, changed or removed since?); rerun `imgcluster run`")
        if len(positions) < len(paths):
            reporter.notify(f"{len(paths) - len(positions)} image(s) changed or removed since the run: "
                            "left out (see skipped.csv)")
        device = resolve_device(config.features.device, reporter.notify)
        backend = resolve_cluster_backend(config.cluster.cluster_backend, device, reporter.notify)
        features = torch.from_numpy(features_np).to(device)
        del features_np
        load_seconds = time.perf_counter() - t0
        checked = Extraction(features, positions, [], load_seconds)
        if checked.drop_non_finite():  # a damaged cache: skipped, not fed to PCA
            skipped += [(paths[p], reason) for p, reason in checked.failures]
            reporter.notify(f"{len(checked.failures)} cached feature row(s) are not finite: left out (see skipped.csv)")
            features, positions = checked.features, checked.good
            if not len(positions):
                raise InputError(f"every cached feature row of {run_dir} is NaN or inf: the cache in {cache_dir} "
                                 "is damaged; rerun `imgcluster run`")
        reporter.notify(f"Re-clustering {len(positions):,} images from the feature cache (nothing decoded)")

        timings = {"load_features": _stage(load_seconds, len(positions))}
        pca, reduced, search, cluster_timings = cluster_features(features, config, backend, reporter)
        timings.update(cluster_timings)
        timings["total"] = _stage(time.perf_counter() - started, len(positions))

        extraction = Extraction(features, positions, [], load_seconds, resumed=len(positions), extracted=0,
                                shards_written=0)
        run_config = summary.get("config") or {}
        run_weights = os.fspath(run_config.get("weights", "auto"))
        backbone = BackboneInfo(name=feat.get("model", "?"), weights=feat.get("weights", "?"),
                                dim=int(feat.get("dim", features.shape[1])), fingerprint=feat["fingerprint"],
                                precision=feat.get("precision", "fp32"),
                                weights_seed=_weights_seed(feat.get("weights"), run_config),
                                weights_file=None if run_weights in ("auto", "random")
                                else os.path.join(run_cwd, run_weights))  # relative to where the run started
        fit = search.fits[search.chosen_k]
        kept = paths.take(positions)
        copies = find_copies(kept, out_dir, reporter, base=run_cwd)
        result = RunResult(config=config, paths=kept, labels=fit.labels.cpu().numpy(),
                           k=search.chosen_k, search=search, pca=pca, reduced=reduced, centroids=fit.centroids,
                           extraction=extraction, skipped=skipped, backbone=backbone,
                           backends=Backends(device, "none (cached features)", backend), timings=timings,
                           inputs=list(summary.get("inputs") or []),
                           left_out=summary.get("left_out"),  # the original run's walk (None before it was recorded)
                           ignored=summary.get("ignored"),
                           copies=copies)
        result.summary = build_summary(result)
        result.summary["cwd"] = run_cwd  # the paths are still relative to the original run's folder
        result.summary["cache"]["dir"] = os.path.abspath(cache_dir)
        result.summary["reclustered_from"] = os.path.abspath(run_dir)
        if out_dir is not None:
            # a features.npy the run saved is rewritten to match the new predictions.csv row for row
            write_run(result, out_dir, save_features=(run_dir / outputs.FEATURES).is_file(), report=report,
                      reporter=reporter)
        return result


__all__ = ["recluster", "text_to_path", "OVERRIDABLE"]
