"""The `imgcluster` command line: thin typer wrappers over the Python API.

Every ImgclusterError becomes one line on stderr and exit code 2; nothing here computes
anything a Python user would also need.
"""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .api_wording import without_python_terms
from .errors import CacheRestartInterrupted, ConfigError, ImgclusterError, ReportInterrupted

APP_HELP = "Cluster large unlabeled image collections: ResNet features → PCA → KMeans over K → silhouette picks K."


class _HelpFlag:
    """--help shown as the flag it is, like ours (flag() below): typer labels its own help
    option with its type, `--help <bool>`."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(_HelpFlag, typer.core.TyperGroup):
    pass


class _Command(_HelpFlag, typer.core.TyperCommand):
    pass


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich", cls=_Group,
                  context_settings={"help_option_names": ["-h", "--help"]}, help=APP_HELP)
err_console = Console(stderr=True)
out_console = Console()


def fail(message: str, code: int = 2):
    err_console.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, Slurm, systemd), handled as Ctrl-C is: the feature rows
    already queued are written, so a rerun resumes; the exit code is 143 (128 + SIGTERM)."""


def _terminate(signum, frame):
    raise Terminated()


def _stopped(exc: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(exc, Terminated) else "interrupted"


def interrupted_code(exc: KeyboardInterrupt) -> int:
    signalled = exc.__cause__ if isinstance(exc, (ReportInterrupted, CacheRestartInterrupted)) else exc
    return 128 + signal.SIGTERM if isinstance(signalled, Terminated) else 130


def report_interrupted_message(exc: ReportInterrupted) -> str:
    return (f"interrupted while writing the report: the results are in {exc.out_dir}/; "
            f"`imgcluster report {exc.out_dir}` writes the report")


def user_errors(func):
    """Turn ImgclusterError into a one-line message and exit 2 (no traceback)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ImgclusterError as exc:  # `run` goes through ImageClusterer: its Python wording is dropped here
            fail(without_python_terms(str(exc)), exc.exit_code)
        except ReportInterrupted as exc:
            fail(report_interrupted_message(exc), interrupted_code(exc))
        except CacheRestartInterrupted as exc:
            fail(f"{_stopped(exc.__cause__)}; rerun the same command to resume from the feature cache. The finished "
                 f"run in {exc.out_dir} (its predictions.csv and summary.json) had its feature cache restarted "
                 "for this run's settings: `imgcluster cluster` on it works again once this run finishes",
                 interrupted_code(exc))
        except KeyboardInterrupt as exc:
            # only run extracts into a feature cache it keeps (the demo remakes its images, so its
            # cache is of no use again); cluster, report, export and predict have nothing to resume
            resumable = func.__name__ == "run" and kwargs.get("cache", True)
            resume = "; rerun the same command to resume from the feature cache" if resumable else ""
            fail(f"{_stopped(exc)}{resume}", interrupted_code(exc))
        except OSError as exc:  # a file system problem the checks before the work could not foresee (disk full, ...)
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)
    return wrapper


def _report_at(run_dir: Path, written: bool) -> str:
    """The closing line's pointer at the page to open ('' without a report)."""
    return f"; report: {escape(str(Path(run_dir) / 'report' / 'index.html'))}" if written else ""


def parse_pca(text: str) -> float | int:
    """'200' -> 200 components, '0.9' -> keep 90 % of variance, '0' -> off."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--pca {text!r} is not a number (a count like 200, a fraction like 0.9, or 0)") from None
    if value.is_integer() and "." not in text:
        return int(value)
    return value


def flag(default: bool, *names: str, **kwargs):
    """A boolean option, shown in --help without a value: typer labels options with their type
    (`--compile <bool>`), which reads as if it took one (`--compile true` then fails as a path)."""
    return typer.Option(default, *names, metavar="", **kwargs)


# Options shared by the commands that extract features.
ModelOpt = typer.Option("resnet152", "--model", "-m", help="Backbone: resnet152 (default), resnet18/34/50/101, or pixels (weight-free).")
WeightsOpt = typer.Option("auto", "--weights", help="auto (torchvision ImageNet weights: cache, else download), a local .pth/.safetensors state dict, or random.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cuda | cuda:N | cpu.")
DecoderOpt = typer.Option("auto", "--decoder", help="auto | dali | nvjpeg | nvimgcodec | pil.")
BatchOpt = typer.Option(None, "--batch-size", help="Images per batch (default: chosen from the device).")
IncludeHiddenOpt = flag(False, "--include-hidden", help="Also take hidden folders and files and NAS/OS system folders (Synology @eaDir thumbnails, recycle bins), which folder walks leave out.")
IoThreadsOpt = typer.Option(None, "--io-threads", help="GPU decoders: threads that read files (default auto: one, more when reads wait on storage).")
CudaGraphsOpt = flag(False, "--cuda-graphs", help="Replay the backbone from CUDA graphs: one launch per batch instead of ~670 (CUDA only; measured no faster than eager on an H100, see README).")
SeedOpt = typer.Option(0, "--seed", help="Random seed (KMeans init, random weights, samples).")


def run_config(**kwargs) -> dict:
    """CLI option values -> ImageClusterer keyword arguments (None means 'default')."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _print_version(value: bool) -> None:
    if value:
        from .versions import imgcluster_version

        typer.echo(f"imgcluster {imgcluster_version()}")
        raise typer.Exit()


@app.callback(help=APP_HELP)
def _options(version: bool = flag(False, "--version", callback=_print_version, is_eager=True,
                                  help="Print the version and exit.")) -> None:
    """The options before the command (--version)."""


@app.command()
@user_errors
def run(
    paths: List[str] = typer.Argument(..., help="Folders (recursive), files, @list.txt files, or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created)."),
    model: str = ModelOpt,
    weights: str = WeightsOpt,
    device: str = DeviceOpt,
    decoder: str = DecoderOpt,
    k: str = typer.Option("2:20", "--k", help="Candidate K: a range 2:20, a single 11, or a list 3,5,8."),
    pca: str = typer.Option("200", "--pca", help="PCA: components (200), variance fraction (0.9), or 0 (off)."),
    select: str = typer.Option("silhouette", "--select", help="How K is chosen: silhouette | calinski | davies."),
    cluster_backend: str = typer.Option("auto", "--cluster-backend", help="auto | torch | cuml | sklearn."),
    n_init: int = typer.Option(3, "--n-init", help="KMeans initialisations per K (best inertia wins)."),
    silhouette_sample: Optional[int] = typer.Option(None, "--silhouette-sample", help="Score K on a stratified sample of this many images (default: exact up to a size limit)."),
    # Defaults repeat ReduceConfig.pca_fit_limit and decode.DEFAULT_MAX_PIXELS (a test checks they
    # agree): importing those modules here would load torch for every `--help`.
    pca_fit_limit: int = typer.Option(200_000, "--pca-fit-limit", help="Above this many images, fit PCA on a seeded sample of this many (extracted first) and reduce the rest as they stream in."),
    max_pixels: int = typer.Option(178_956_970, "--max-pixels", help="Skip images with more pixels than this (decompression-bomb guard)."),
    batch_size: Optional[int] = BatchOpt,
    io_threads: Optional[int] = IoThreadsOpt,
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16 | fp16."),
    compile: bool = flag(False, "--compile", help="torch.compile the backbone (faster on GPUs after a warm-up)."),
    cuda_graphs: bool = CudaGraphsOpt,
    seed: int = SeedOpt,
    save_features: bool = flag(False, "--save-features", help="Also write features.npy (n × d float32)."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="Also save the fitted model to this file (e.g. model.imgc) for `imgcluster predict`."),
    report: bool = flag(True, "--report/--no-report", help="Write the HTML report to OUT/report/."),
    cache: bool = flag(True, "--cache/--no-cache", help="Keep a feature cache in OUT/features/ so an interrupted run resumes."),
    include_hidden: bool = IncludeHiddenOpt,
    quiet: bool = flag(False, "--quiet", "-q", help="No progress bars or notices."),
):
    """Cluster the images under PATHS and write predictions.csv, summary.json and skipped.csv to --out.

    Example: [bold]imgcluster run ./photos --out results/ --k 2:15 --pca 0.9[/bold]
    """
    from .sources import check_named_paths_exist

    check_named_paths_exist(paths)  # before importing torch (seconds): a mistyped path is said at once
    from .api import ImageClusterer
    from .cli_progress import RichReporter
    from .report.outputs import check_out_file
    from .report.terminal import print_run_summary

    if save_model is not None:  # checked now: the model is saved after the whole run
        check_out_file(save_model, "--save-model")
    reporter = RichReporter(err_console, quiet=quiet)
    params = run_config(model=model, weights=weights, device=device, decoder=decoder, k=k, pca=parse_pca(pca),
                        select=select, cluster_backend=cluster_backend, n_init=n_init,
                        silhouette_sample=silhouette_sample, batch_size=batch_size, precision=precision,
                        compile=compile, seed=seed, pca_fit_limit=pca_fit_limit, max_pixels=max_pixels,
                        io_threads=io_threads, cuda_graphs=cuda_graphs, include_hidden=include_hidden)
    clusterer = ImageClusterer(**params)
    try:
        clusterer.fit(paths, out_dir=out, reporter=reporter, save_features=save_features, report=report, cache=cache)
    except ReportInterrupted as exc:  # the model is saved after fit: say so, and how to get it
        if save_model is None:
            raise
        fail(f"{report_interrupted_message(exc)}; the model file {save_model} was not saved: `imgcluster cluster "
             f"{out} --no-report --save-model {save_model}` saves it from the cache", interrupted_code(exc))
    try:
        if save_model is not None:
            clusterer.save(save_model)
            _say_model_saved(save_model, reporter)
        _warn_of_earlier_models(out, clusterer.result_, save_model, reporter)
        print_run_summary(clusterer.result_.summary, out_console)
        out_console.print(f"Chosen K = [bold]{clusterer.k_}[/bold]; results in {escape(str(out))}/"
                          + _report_at(out, report), soft_wrap=True)
    except KeyboardInterrupt as exc:  # the results are written: say so rather than "rerun to resume"
        fail(f"{_stopped(exc)} after the run: its results are in {out}/"
             + (f" (the model file {save_model} may not be saved)" if save_model is not None else ""),
             interrupted_code(exc))


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("imgcluster-demo"), "--out", "-o", help="Folder for the sample images and the results; a rerun replaces the demo's earlier images and results there."),
    model: str = typer.Option("resnet152", "--model", "-m", help="Backbone; falls back to pixels when ImageNet weights are unavailable."),
    device: str = DeviceOpt,
    per_group: int = typer.Option(24, "--per-group", help="Sample images per group (6 groups), at least 1."),
    quiet: bool = flag(False, "--quiet", "-q", help="No progress bars or notices."),
):
    """Generate the built-in sample set (6 groups of synthetic images) and cluster it. Works offline.

    Example: [bold]imgcluster demo[/bold]  (results in ./imgcluster-demo/results/, report at results/report/index.html)
    """
    from .demo import run_demo

    run_demo(out, model=model, device=device, per_group=per_group, quiet=quiet,
             console=out_console, err_console=err_console)


@app.command()
@user_errors
def doctor():
    """List devices, backends and versions, and what `auto` would choose here.

    Example: [bold]imgcluster doctor[/bold]
    """
    from .doctor import print_doctor

    print_doctor(out_console)


@app.command()
@user_errors
def bench(
    folder: Optional[Path] = typer.Option(None, "--folder", help="Folder for the bench's own generated JPEGs (bench_NNNNN.jpg): new, empty, or from an earlier bench; default $TMPDIR/imgcluster-bench."),
    n: Optional[int] = typer.Option(None, "--n", help="Images, at least 3 (default: 4096 on CUDA, 96 on the CPU)."),
    model: str = typer.Option("resnet152", "--model", "-m", help="Backbone (random weights: speed does not depend on them)."),
    device: str = DeviceOpt,
    decoder: str = DecoderOpt,
    k: str = typer.Option("2:20", "--k", help="K range for the clustering stages."),
    pca: str = typer.Option("200", "--pca", help="PCA components or variance fraction."),
    batch_size: Optional[int] = BatchOpt,
    io_threads: Optional[int] = IoThreadsOpt,
    compile: bool = flag(False, "--compile", help="torch.compile the backbone."),
    cuda_graphs: bool = CudaGraphsOpt,
    seed_like: bool = flag(True, "--seed-like/--no-seed-like", help="Also measure the seed-like configuration (PIL + fp32 + scikit-learn) and print the ratio."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures to this JSON file."),
):
    """Measure images/s per stage (read, decode+resize, backbone, PCA, KMeans, silhouette) and end to end.

    Example: [bold]imgcluster bench --device cpu --n 64 --json bench.json[/bold]
    """
    from .bench import print_bench, run_bench
    from .cli_progress import RichReporter
    from .report.outputs import write_json

    result = run_bench(folder, n, model=model, device=device, decoder=decoder, k=k, pca=parse_pca(pca),
                       batch_size=batch_size, compile=compile, seed_like=seed_like, io_threads=io_threads,
                       cuda_graphs=cuda_graphs,
                       reporter=RichReporter(err_console))
    print_bench(result, out_console)
    if json_out:
        write_json(json_out, result.as_dict())
        out_console.print(f"Figures written to {escape(str(json_out))}", soft_wrap=True)


@app.command()
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A finished run's --out folder."),
    max_montage: int = typer.Option(36, "--max-montage", help="Thumbnails per cluster montage."),
):
    """Rebuild RUN_DIR/report/ from a finished run's saved outputs (no features are recomputed).

    Example: [bold]imgcluster report results/[/bold]  then open results/report/index.html
    """
    from .report import build_report

    from .report.outputs import SUMMARY, exclusive_writer, not_a_finished_run

    if not (run_dir / SUMMARY).is_file():
        fail(not_a_finished_run(run_dir, SUMMARY))

    with exclusive_writer(run_dir, None):  # not while a run or re-clustering writes the folder
        index = build_report(run_dir, max_montage=max_montage,
                             warn=lambda message: err_console.print(f"[yellow]Warning:[/yellow] {escape(message)}",
                                                                    soft_wrap=True))
    out_console.print(f"Report written to {escape(str(index))}", soft_wrap=True)


@app.command()
@user_errors
def cluster(
    run_dir: Path = typer.Argument(..., help="A folder written by `imgcluster run` (predictions.csv, summary.json, features/)."),
    k: Optional[str] = typer.Option(None, "--k", help="Candidate K: a range 2:20, a single 11, or a list 3,5,8 (default: the run's)."),
    pca: Optional[str] = typer.Option(None, "--pca", help="PCA: components (200), variance fraction (0.9), or 0 (off) (default: the run's)."),
    select: Optional[str] = typer.Option(None, "--select", help="How K is chosen: silhouette | calinski | davies (default: the run's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for KMeans init and samples (default: the run's)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: RUN_DIR, replacing its outputs)."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="Also save the re-clustered model to this file (e.g. model.imgc) for `imgcluster predict`."),
    report: bool = flag(True, "--report/--no-report", help="Write the HTML report to OUT/report/."),
    quiet: bool = flag(False, "--quiet", "-q", help="No progress bars or notices."),
):
    """Re-cluster a finished run from its feature cache with a new K range, PCA, selection or seed; decodes no image.

    Example: [bold]imgcluster cluster results/ --k 2:30 --pca 0.9 --out results-k30/[/bold]
    """
    from .cli_progress import RichReporter
    from .recluster import recluster
    from .report.terminal import print_run_summary

    from .model_file import ModelState
    from .report.outputs import check_out_file

    if save_model is not None:  # checked now: the model is saved after the re-clustering
        check_out_file(save_model, "--save-model")
    reporter = RichReporter(err_console, quiet=quiet)
    result = recluster(run_dir, out_dir=out, reporter=reporter, report=report,
                       **run_config(k=k, pca=parse_pca(pca) if pca is not None else None, select=select, seed=seed))
    if save_model is not None:
        ModelState.from_result(result).save(save_model)
        _say_model_saved(save_model, reporter)
    _warn_of_earlier_models(out or run_dir, result, save_model, reporter)
    print_run_summary(result.summary, out_console)
    out_console.print(f"Chosen K = [bold]{result.k}[/bold]; results in {escape(str(out or run_dir))}/"
                      + _report_at(out or run_dir, report), soft_wrap=True)


@app.command()
@user_errors
def predict(
    model_file: Path = typer.Argument(..., metavar="MODEL", help="A model file saved by `imgcluster run --save-model` or ImageClusterer.save."),
    paths: List[str] = typer.Argument(..., help="Folders (recursive), files, @list.txt files, or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write: path,cluster,distance,confidence (files not used go to OUT's name with .skipped.csv beside it)."),
    device: str = DeviceOpt,
    decoder: str = DecoderOpt,
    batch_size: Optional[int] = BatchOpt,
    io_threads: Optional[int] = IoThreadsOpt,
    weights: Optional[str] = typer.Option(None, "--weights", help="Backbone weights file to use instead of the one the model records (its fingerprint must match)."),
    allow_fingerprint_mismatch: bool = flag(False, "--allow-fingerprint-mismatch", help="Use weights whose fingerprint differs from the model's (a warning instead of an error)."),
    include_hidden: Optional[bool] = typer.Option(None, "--include-hidden/--exclude-hidden", metavar="", help="Take (or leave out) hidden folders and files and NAS/OS system folders; default: as the model was fitted.", show_default=False),
    quiet: bool = flag(False, "--quiet", "-q", help="No progress bars or notices."),
):
    """Assign new images to the clusters of a saved model; write path,cluster,distance,confidence to --out.

    confidence = 1 − d1/d2 (nearest / second-nearest centroid distance): 0 on a boundary, near 1 deep inside a cluster.

    Example: [bold]imgcluster predict results/model.imgc ./new-photos --out new.csv[/bold]
    """
    from .cli_progress import RichReporter
    from .model import load_model, predict_files

    reporter = RichReporter(err_console, quiet=quiet)
    fitted = load_model(model_file, device=device, weights=weights, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
                        decoder=decoder, batch_size=batch_size, io_threads=io_threads, warn=reporter.warn,
                        notify=reporter.notify)
    with fitted:
        done = predict_files(fitted, paths, out, reporter=reporter, include_hidden=include_hidden)
    skipped = f"; {len(done.skipped)} skipped (see {done.skipped_csv})" if done.skipped else ""
    out_console.print(f"Assigned {len(done.paths)} image(s) to K = {fitted.k} clusters: {escape(str(out) + skipped)}",
                      soft_wrap=True)


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A finished run's --out folder (its predictions.csv is read)."),
    to: Path = typer.Option(..., "--to", help="New or empty folder to write cluster_00/, cluster_01/, ... into."),
    mode: str = typer.Option("symlink", "--mode", help="symlink (nothing copied) | hardlink (same file system) | copy (self-contained)."),
    quiet: bool = flag(False, "--quiet", "-q", help="No progress bar."),
):
    """Write one folder per cluster holding the run's images (links or copies), to browse a result in any file manager.

    Example: [bold]imgcluster export results/ --to results-by-cluster/[/bold]
    """
    from .cli_progress import RichReporter
    from .export import export_clusters

    done = export_clusters(run_dir, to, mode=mode, reporter=RichReporter(err_console, quiet=quiet))
    missing = f"; {len(done.missing)} missing image(s) listed in {done.folder / 'missing.csv'}" if done.missing else ""
    out_console.print(f"Exported {done.written} image(s) into {done.clusters} cluster folder(s) under "
                      f"{escape(str(done.folder))}/ ({mode}){escape(missing)}", soft_wrap=True)


for _info in app.registered_commands:  # every command's --help as a flag (_HelpFlag)
    if _info.cls in (None, typer.core.TyperCommand):  # typer's default, filled in at registration
        _info.cls = _Command


def _say_model_saved(path, reporter) -> None:
    reporter.notify(f"Model saved to {path} (try: imgcluster predict {path} NEW_IMAGES --out predictions.csv)")


def _warn_of_earlier_models(folder, result, saved, reporter) -> None:
    """A notice per model file in `folder` that holds another clustering than this run's
    (engine.model_file.other_clusterings_in), `saved` (this run's --save-model) excepted."""
    from .model_file import other_clusterings_notice

    for line in other_clusterings_notice(folder, result.k, result.centroids, keep=saved):
        reporter.notify(line)


def main():  # console-script entry point
    # only for the command line: a program that imports engine keeps its own SIGTERM handling
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # an inherited "ignore" stays (as Python does for SIGINT)
        signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    sys.exit(main())
