"""The whole job: discover -> features -> PCA -> K search -> outputs.

`run_pipeline` is what ImageClusterer.fit and `imgcluster run` both call. Each stage is a
backend chosen once (engine.device); the data stays on the chosen device until labels come back.
"""
from __future__ import annotations

import datetime as _dt
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backbones import Backbone, check_weights_argument, load_backbone
from .config import DEFAULT_PCA, Config
from .device import resolve_cluster_backend, resolve_compile, resolve_cuda_graphs, resolve_decoder, resolve_device
from .duplicates import CHECK_LIMIT as COPIES_CHECK_LIMIT
from .duplicates import identical_copies
from .errors import CacheRestartInterrupted, InputError, ReportInterrupted
from .features import Extraction, StreamingPCA, auto_batch_size, extract_features
from .loaders import make_loader
from .loaders.decode import DRAFT_MIN_SIZE
from .loaders.preprocess import describe as describe_preprocess
from .progress import Reporter
from .reduce import PCAResult, fit_pca
from .report import outputs
from .report.kchoice import k_choice
from .select import KSearch, search_k, search_progress_steps, usable_ks
from .skip_reasons import count_reasons, skipped_note
from .sources import RunOutputs, check_named_paths_exist, discover, no_images_message
from .versions import imgcluster_version, versions

# How the PIL path decodes JPEGs (engine.loaders.decode.DRAFT_MIN_SIZE), in the feature cache's
# made_with and summary.json: a change of it must not mix features in one cache.
PIL_JPEG_DECODE = f"reduced scale, sides >= {DRAFT_MIN_SIZE}"


@dataclass
class Backends:
    """The resolved backend of every stage (what actually ran)."""

    device: torch.device
    decoder: str
    cluster: str

    def as_dict(self, backbone: Backbone | BackboneInfo | None = None, silhouette: str | None = None) -> dict:
        out = {"device": str(self.device), "decoder": self.decoder, "cluster": self.cluster}
        if backbone is not None:
            how = [backbone.weights, backbone.precision]
            how += [word for flag, word in (("compiled", "compiled"), ("cuda_graphs", "cuda graphs"))
                    if getattr(backbone, flag, False)]
            out["backbone"] = f"{backbone.name} ({', '.join(how)})"
        if silhouette:
            out["silhouette"] = silhouette
        return out


@dataclass
class BackboneInfo:
    """What a run records about its backbone, without the model itself (re-clustering cached
    features needs no network; see engine.recluster). Has the fields of Backbone that summaries read."""

    name: str
    weights: str
    dim: int
    fingerprint: str
    precision: str = "fp32"
    # how the run got its weights, for a model file saved after re-clustering with another seed or
    # from another folder: the run's seed (random weights) and its weights file as an absolute path
    weights_seed: int | None = None
    weights_file: str | None = None


@dataclass
class RunResult:
    """Everything a finished run knows.

    paths:    the n good images, in input order (a sequence of Path: an engine.pathlist.PathList
              from run_pipeline and from recluster); labels: (n,) int64 cluster ids of the chosen K
    reduced:  (n, n_components) float32 on the device (PCA output, what KMeans saw)
    centroids: (k, n_components) float32 of the chosen K
    skipped:  [(path, reason)] for every input not used
    left_out: {"hidden_or_system_folders": n, "hidden_image_files": m} that the folder walks left
              out (engine.hidden_entries); None when include_hidden took them
    backbone: the loaded Backbone, or a BackboneInfo record when re-clustering cached features
    copies:   [(i, j)]: paths[i] is a byte-identical copy of paths[j], j < i (engine.duplicates);
              None when not checked (more than engine.duplicates.CHECK_LIMIT images)
    ignored:  {name suffix: files} the folder walks passed over as not named like images
              (".txt", "(none)"); None when not recorded (a re-clustering of an older run)
    """

    config: Config
    paths: Sequence[Path]
    labels: np.ndarray
    k: int
    search: KSearch
    pca: PCAResult
    reduced: torch.Tensor
    centroids: torch.Tensor
    extraction: Extraction
    skipped: list[tuple[Path, str]]
    backbone: Backbone | BackboneInfo
    backends: Backends
    timings: dict[str, dict[str, float]]
    inputs: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    left_out: dict | None = None
    copies: list[tuple[int, int]] | None = field(default_factory=list)
    ignored: dict[str, int] | None = field(default_factory=dict)

    @property
    def features(self) -> torch.Tensor:
        """(n, d) float32 backbone features of the good images, on the device; already PCA-reduced,
        (n, n_components), when PCA was fitted while streaming (pca.mode == "streamed")."""
        return self.extraction.features


def resolve_backends(config: Config, reporter: Reporter) -> Backends:
    device = resolve_device(config.features.device, reporter.notify)
    decoder = resolve_decoder(config.features.decoder, device, reporter.notify)
    cluster = resolve_cluster_backend(config.cluster.cluster_backend, device, reporter.notify)
    resolve_compile(config.features.compile)
    resolve_cuda_graphs(config.features.cuda_graphs, device)
    return Backends(device, decoder, cluster)


def _stage(seconds: float, images: int) -> dict[str, float]:
    return {"seconds": round(seconds, 4), "images_per_s": round(images / seconds, 1) if seconds > 0 else 0.0}


def cluster_features(features: torch.Tensor, config: Config, backend: str, reporter: Reporter,
                     pca: PCAResult | None = None):
    """(n, d) features -> (PCAResult, reduced (n, k) tensor, KSearch, timings). Shared by `run` and
    `cluster` (re-clustering cached features). With `pca` (fitted while streaming), `features`
    are already reduced and PCA is not fitted again."""
    n = features.shape[0]
    timings = {}
    t0 = time.perf_counter()
    if pca is None:
        pca = fit_pca(features, config.reduce.pca, backend, seed=config.cluster.seed,
                      fit_limit=config.reduce.pca_fit_limit)
        reduced = pca.transform(features)
    else:
        reduced = features
    if reduced.is_cuda:
        torch.cuda.synchronize(reduced.device)  # charge the projection to "pca", not to "kmeans"
    timings["pca"] = _stage(time.perf_counter() - t0, n)
    if pca.mode == "streamed":
        # fitted and applied batch by batch inside "extract": a rate over the ~0 s left here
        # read as billions of images/s
        timings["pca"]["images_per_s"] = None
        timings["pca"]["within"] = "extract"
    if pca.mode == "sampled":
        reporter.notify(f"PCA fitted on a seeded sample of {pca.fit_rows} of {n} images")
    requested = config.reduce.pca
    if isinstance(requested, int) and requested != DEFAULT_PCA and requested > pca.n_components > 0:
        # (not for the default: a run of fewer than 200 images, or a narrow backbone, would always say so)
        reporter.notify(f"PCA: {pca.n_components} components, not {requested} (at most min(images, feature "
                        "width) exist)")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested == 1:
        # "1" reads like "all of it"; a fraction needs the point
        reporter.notify("PCA: --pca 1 keeps 1 component; to keep all the variance write --pca 1.0 (or --pca 0: no PCA)")
    with reporter.task("K search", search_progress_steps(len(usable_ks(config.cluster.k, n)))) as advance:
        search = search_k(reduced, config.cluster.k, backend, n_init=config.cluster.n_init,
                          max_iter=config.cluster.max_iter, seed=config.cluster.seed,
                          select=config.cluster.select, silhouette_sample=config.cluster.silhouette_sample,
                          progress=advance, notify=reporter.notify)
    timings["kmeans"] = _stage(search.timings["kmeans"], n * len(search.ks))
    timings["silhouette"] = _stage(search.timings["silhouette"], n * len(search.ks))
    timings["metrics"] = _stage(search.timings["metrics"], n * len(search.ks))
    return pca, reduced, search, timings


def run_outputs(out_dir) -> RunOutputs:
    """The files a run writes in out_dir, which the next run over a folder holding out_dir must
    not take as inputs (the report's JPEG montages) nor count as ignored files."""
    names = [*outputs.RUN_FILES, outputs.FEATURES, outputs.FAILED_RUN_SKIPPED, outputs.WRITER_LOCK]
    return RunOutputs.of(out_dir, skip=outputs.RUN_IMAGE_DIRS, quiet=[outputs.REPORT, outputs.FEATURE_CACHE],
                         names=names)


def run_pipeline(inputs: Sequence[str | os.PathLike], config: Config, out_dir: str | os.PathLike | None = None,
                 reporter: Reporter | None = None, save_features: bool = False, report: bool = False,
                 cache: bool = True) -> RunResult:
    """Cluster the images found under `inputs`. With out_dir, write the run's files there."""
    # read once: a generator would be used up by the first look (the early path check)
    inputs = [inputs] if isinstance(inputs, (str, bytes, os.PathLike)) else list(inputs)
    reporter = reporter or Reporter()
    started = time.perf_counter()
    timings: dict[str, dict[str, float]] = {}

    with contextlib.ExitStack() as writing:  # the folder lock (exclusive_writer), held to the end
        # What can be checked without the inputs is checked before walking them (minutes on a large
        # share): the backends, a weights file, an --out that is a file. The folder is made later, so
        # a mistyped input path leaves no empty one.
        check_named_paths_exist(inputs)  # a mistyped path, before the backends' probes and notices
        backends = resolve_backends(config, reporter)
        check_weights_argument(config.features.model, config.features.weights)
        locked = False
        if out_dir is not None:
            outputs.refuse_file_as_out_dir(out_dir)
            if Path(out_dir).is_dir():  # an existing folder: take it now, before a walk of a large share
                writing.enter_context(outputs.exclusive_writer(out_dir))
                locked = True
        t0 = time.perf_counter()
        own = run_outputs(out_dir) if out_dir is not None else None
        with reporter.task("Finding images", None, transient=True) as advance:
            found = discover(list(inputs), own, include_hidden=config.inputs.include_hidden, progress=advance)
        if own is not None and own.left_out:
            reporter.notify(f"Left out the earlier run's own files in {out_dir} (its report, feature cache and CSVs): "
                            "they are outputs, not inputs")
        timings["discover"] = _stage(time.perf_counter() - t0, len(found.paths))
        if found.ignored and found.paths:
            reporter.notify(found.ignored_note())
        if found.left_out and found.paths:
            reporter.notify(found.left_out.note())
        if not found.paths:
            raise InputError(no_images_message(inputs, found) + _failed_run_outputs(out_dir, found.skipped))
        if out_dir is not None:  # before the heavy work (a mistyped input path leaves no empty folder)
            out_dir = outputs.prepare_out_dir(out_dir)
            # one command writing the folder at a time: two runs there mixed one's CSVs with the other's cache
            if not locked:
                writing.enter_context(outputs.exclusive_writer(out_dir))

        fc = config.features
        backbone = load_backbone(fc.model, fc.weights, backends.device, seed=config.cluster.seed,
                                 precision=fc.precision, compile=fc.compile, cuda_graphs=fc.cuda_graphs,
                                 warn=reporter.warn)
        loader = make_loader(backends.decoder, backends.device, max_pixels=fc.max_pixels, num_threads=fc.num_threads,
                             io_threads=fc.io_threads)
        batch_size = fc.batch_size or auto_batch_size(backends.device, fc.model)
        store = None
        if out_dir is not None and cache:
            from .store import FeatureStore

            store = FeatureStore.open(Path(out_dir) / outputs.FEATURE_CACHE, backbone.fingerprint, notify=reporter.notify,
                                      made_with={"precision": backbone.precision, "decoder": backends.decoder,
                                                 "max_pixels": fc.max_pixels,
                                                 # the PIL path's reduced-scale JPEG decode (every decoder's fallback)
                                                 "pil_jpeg_decode": PIL_JPEG_DECODE},
                                      dim=backbone.dim)

        streaming = None
        if config.reduce.pca and config.reduce.pca_fit_limit and len(found.paths) > config.reduce.pca_fit_limit:
            # Too many images to hold at full width: fit PCA on a seeded sample of pca_fit_limit, reduce the rest as they come.
            streaming = StreamingPCA(config.reduce.pca, config.reduce.pca_fit_limit,
                                     "sklearn" if backends.cluster == "sklearn" else backends.cluster,
                                     config.cluster.seed)
        try:
            with reporter.task("Extracting features", len(found.paths)) as advance:
                extraction = extract_features(found.paths, loader, backbone, batch_size, progress=advance,
                                              store=store, notify=reporter.notify, streaming=streaming)
        except KeyboardInterrupt as exc:
            if store is not None and store.discarded and outputs.is_run_folder(out_dir):
                raise CacheRestartInterrupted(out_dir) from exc  # the message must say what it means for that run
            raise
        if store is not None:
            store.close()
        if hasattr(loader, "close"):  # DALI: its memory pool back before clustering needs the GPU
            loader.close()
        if extraction.resumed:
            failed = (f" ({extraction.resumed_failed:,} of them recorded as unusable: still skipped)"
                      if extraction.resumed_failed else "")
            reporter.notify(f"Resumed {extraction.resumed:,} of {len(found.paths):,} images from the feature cache{failed}")
        timings["extract"] = _stage(extraction.seconds, len(found.paths))
        timings["extract"]["waited_for_loader_s"] = round(extraction.waited_for_loader, 4)
        extraction.drop_non_finite()  # before PCA and KMeans, which a NaN row would fail or poison
        skipped = list(found.skipped) + [(found.paths[i], reason) for i, reason in extraction.failures]
        good_paths = found.paths.take(extraction.good)  # a PathList sharing found.paths' bytes
        cache_discarded = store is not None and store.discarded  # for a failure's message: `cluster` needs the cache
        if not good_paths:
            raise InputError(f"none of the {len(found.paths)} files could be used"
                             + _failed_run_outputs(out_dir, skipped, cache_discarded))
        if skipped:
            # without out_dir no skipped.csv is written: the list is the result's (ImageClusterer.skipped_)
            where = "skipped.csv" if out_dir is not None else "ImageClusterer.skipped_"
            reporter.notify(skipped_note(count_reasons(reason for _, reason in skipped), where=where))

        try:
            pca, reduced, search, cluster_timings = cluster_features(extraction.features, config, backends.cluster,
                                                                     reporter, pca=extraction.pca)
        except InputError as exc:  # e.g. fewer good images than the smallest K: still say which files were bad
            note = _failed_run_outputs(out_dir, skipped, cache_discarded)
            if note:
                raise InputError(f"{exc}{note}") from exc
            raise
        timings.update(cluster_timings)
        timings["total"] = _stage(time.perf_counter() - started, len(found.paths))

        fit = search.fits[search.chosen_k]
        copies = find_copies(good_paths, out_dir, reporter)
        result = RunResult(config=config, paths=good_paths, labels=fit.labels.cpu().numpy(), k=search.chosen_k,
                           search=search, pca=pca, reduced=reduced, centroids=fit.centroids, extraction=extraction,
                           skipped=skipped, backbone=backbone, backends=backends, timings=timings,
                           inputs=[os.fspath(i) for i in inputs], left_out=None if found.left_out is None else found.left_out.as_dict(),
                           ignored=dict(found.ignored.most_common()),
                           copies=copies)
        result.summary = build_summary(result)
        if out_dir is not None:
            write_run(result, out_dir, save_features=save_features, report=report, reporter=reporter)
        return result


def build_summary(result: RunResult) -> dict:
    """The JSON summary of a run (see engine.report.outputs for the file contract)."""
    search = result.search
    k = result.k
    sil = search.silhouettes[k]
    cluster_sil = [float(sil.cluster_means.get(c, float("nan"))) for c in range(k)]
    ext = result.extraction
    scores = search.scores_table()
    return {
        "imgcluster_version": imgcluster_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": result.inputs,
        "cwd": os.getcwd(),  # relative paths in predictions.csv are relative to this
        "n_images": len(result.paths),
        "n_skipped": len(result.skipped),
        # byte-identical copies among the n images (duplicates.csv); None: not checked (too many images)
        "n_copies": None if result.copies is None else len(result.copies),
        "skipped_reasons": count_reasons(reason for _, reason in result.skipped),
        "left_out": result.left_out,
        "ignored": result.ignored,  # files not named like images, by suffix: passed over, not opened
        "k": k,
        "select": search.select,
        "scores": scores,
        # how sure the choice is: runner-up and margin, each metric's K, a K at an edge of the range
        "k_choice": k_choice(scores, search.select, k, len(result.paths)),
        "cluster_sizes": search.score(k).cluster_sizes,
        "cluster_silhouettes": cluster_sil,
        "pca": {"mode": result.pca.mode, "n_components": result.pca.n_components,
                "explained_variance": round(result.pca.explained_variance, 6), "fit_rows": result.pca.fit_rows},
        "silhouette": {"mode": search.silhouette_mode, "sample_size": search.silhouette_sample,
                       "backend": search.silhouette_backend, "seconds": round(search.timings["silhouette"], 4)},
        "features": {"model": result.backbone.name, "weights": result.backbone.weights, "dim": result.backbone.dim,
                     "fingerprint": result.backbone.fingerprint, "precision": result.backbone.precision,
                     "preprocess": describe_preprocess(), "pil_jpeg_decode": PIL_JPEG_DECODE,
                     "micro_batch": ext.micro_batch,
                     "oom_halvings": ext.oom_halvings},
        "cache": {"resumed": ext.resumed, "extracted": ext.extracted, "shards_written": ext.shards_written},
        "oom_halvings": {"extract": ext.oom_halvings, **search.oom_halvings},
        "timings": result.timings,
        "backends": result.backends.as_dict(result.backbone, search.silhouette_backend),
        "config": result.config.flat(),
        "versions": versions(),
    }


def run_analysis(result: RunResult) -> outputs.RunAnalysis:
    """The arrays the report needs: chosen K and neighbours' labels/silhouettes, 2-D projection, distances."""
    search = result.search
    k = result.k
    neighbours = [kk for kk in (k - 1, k, k + 1) if kk in search.fits]
    reduced = result.reduced
    if result.pca.mode != "off" and reduced.shape[1] >= 2:
        projection = reduced[:, :2]
    else:
        projection = fit_pca(reduced, 2, "torch").transform(reduced)[:, :2] if reduced.shape[1] >= 2 else \
            torch.cat([reduced, torch.zeros_like(reduced)], 1)
    fit = search.fits[k]
    dist = (reduced - fit.centroids[fit.labels]).norm(dim=1)
    return outputs.RunAnalysis(
        explained_variance_ratio=result.pca.explained_variance_ratio,
        n_components=result.pca.n_components,
        ks=np.asarray(search.ks),
        labels={kk: search.fits[kk].labels.cpu().numpy() for kk in neighbours},
        silhouettes={kk: search.silhouettes[kk].samples for kk in neighbours},
        projection_2d=projection.float().cpu().numpy(),
        distance_to_centroid=dist.float().cpu().numpy(),
    )


def _failed_run_outputs(out_dir, skipped, cache_discarded: bool = False) -> str:
    """For a run that is failing (no images, none usable, too few for K): write its skip list and
    return what the error should add, " (... listed in ...; ...)", or "".

    A folder that holds a finished run keeps that run's CSVs and summary as they were: the list
    goes to outputs.FAILED_RUN_SKIPPED there, not over skipped.csv (which must match
    predictions.csv). cache_discarded: this run's feature store emptied the folder's cache (another
    configuration), which the error must say, since `imgcluster cluster` there needs it."""
    if out_dir is None:
        return ""
    out = outputs.prepare_out_dir(out_dir)
    finished = outputs.is_run_folder(out)
    parts = []
    if skipped:
        name = outputs.FAILED_RUN_SKIPPED if finished else outputs.SKIPPED
        outputs.write_skipped(out, skipped, name)
        parts.append(f"{len(skipped)} skipped file(s) listed in {out / name}")
    elif finished:
        (out / outputs.FAILED_RUN_SKIPPED).unlink(missing_ok=True)  # an earlier failure's, stale now
    if finished:
        parts.append("the finished run's predictions.csv, skipped.csv and summary.json there are unchanged"
                     + (", but its feature cache was restarted for this run's settings: rerun that run before "
                        "`imgcluster cluster` on it" if cache_discarded else ""))
    return f" ({'; '.join(parts)})" if parts else ""


def find_copies(paths, out_dir, reporter: Reporter, base=None) -> list[tuple[int, int]] | None:
    """RunResult.copies for a run's good `paths` (engine.duplicates.identical_copies; base: what
    relative paths are relative to), with its notice; None, also said, above COPIES_CHECK_LIMIT."""
    if len(paths) > COPIES_CHECK_LIMIT:
        reporter.notify(f"Byte-identical copies not looked for: more than {COPIES_CHECK_LIMIT:,} images")
        return None
    copies = identical_copies(paths, base=base)
    if copies:
        where = "duplicates.csv" if out_dir is not None else "RunResult.copies"
        reporter.notify(f"{len(copies):,} image(s) have the same bytes as another (listed in {where}; which is the "
                        "original, the bytes cannot tell): each is clustered with the other")
    return copies


def write_run(result: RunResult, out_dir, save_features: bool = False, report: bool = False,
              reporter: Reporter | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    earlier_run = outputs.is_run_folder(out)  # before this run's summary replaces it
    # where the run started, seen from its folder: relative paths survive moving both (outputs.run_base)
    if isinstance(result.summary.get("cwd"), str):
        result.summary["cwd_from_out"] = os.path.relpath(result.summary["cwd"], out.resolve())
    (out / outputs.FAILED_RUN_SKIPPED).unlink(missing_ok=True)  # ours by name; stale once this run is written
    outputs.write_predictions(out, result.paths, result.labels)
    outputs.write_skipped(out, result.skipped)
    if result.copies is not None:
        outputs.write_duplicates(out, result.paths, result.copies)
    else:  # not checked: an earlier run's list would describe other images
        (out / outputs.DUPLICATES).unlink(missing_ok=True)
    outputs.write_analysis(out, run_analysis(result))
    if save_features:
        outputs.write_npy(out / outputs.FEATURES, result.features.float().cpu().numpy())
    outputs.write_summary(out, result.summary)
    if earlier_run:
        outputs.remove_stale(out, features=not save_features, report=not report)
        if report:  # the earlier run's page goes now: an interrupted build must not leave it looking current
            outputs.remove_report_index(out)
    if report:
        from .report import build_report

        t0 = time.perf_counter()
        try:
            build_report(out, warn=reporter.warn if reporter is not None else None)
        except KeyboardInterrupt as exc:
            raise ReportInterrupted(out) from exc
        result.summary["timings"]["report"] = _stage(time.perf_counter() - t0, len(result.paths))
        outputs.write_summary(out, result.summary)
    return out
