"""`imgcluster demo`: the built-in sample set, clustered end to end, offline."""
from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import ConfigError, WeightsUnavailable
from .sample_data import GROUPS, generate_sample_set, sample_set_files

DEMO_K = "2:10"
MODEL_FILE = "model.imgc"
HELD_OUT = "held-out"


def run_demo(out: Path, model: str = "resnet152", device: str = "auto", per_group: int = 24, quiet: bool = False,
             console: Console | None = None, err_console: Console | None = None):
    """Write out/images/<group>/*.jpg (6 groups) and cluster them into out/results/; save the
    fitted model to out/model.imgc and write new images of the same groups to out/held-out/<group>/.

    ImageNet weights are used when torchvision has them cached (or can download them); otherwise
    the demo says so and uses the weight-free `pixels` features. Returns the fitted ImageClusterer.

    A rerun replaces the previous run's images, held-out images and results, so each folder holds
    exactly this run's. Raises ConfigError (before writing anything) for per_group < 1, or when
    out/images or out/held-out holds image files the demo did not generate.
    """
    if per_group < 1:
        raise ConfigError(f"--per-group must be at least 1 (got {per_group})")
    from .api import ImageClusterer
    from .cli_progress import RichReporter
    from .report.terminal import print_run_summary

    console = console or Console()
    reporter = RichReporter(err_console or Console(stderr=True), quiet=quiet)
    out = Path(out)
    images, held_out, results = out / "images", out / HELD_OUT, out / "results"
    # An earlier run's images would be clustered with this run's (and its held-out images could
    # be this run's training images): remove them. Both folders are checked before either is touched.
    stale = sample_set_files(images) + sample_set_files(held_out)
    _remove_previous_results(results, images)  # checked (and refused) before any image is deleted
    for path in stale:
        path.unlink()
    generate_sample_set(images, per_group=per_group)
    # Marks results/ as the demo's before the run writes there: an interrupted demo leaves a feature
    # cache without a summary.json, and its rerun must know the folder is its own to replace
    results.mkdir(parents=True, exist_ok=True)
    (results / DEMO_MARKER).touch()
    reporter.notify(f"Sample set: {per_group * len(GROUPS)} images in {len(GROUPS)} groups under {images}/")
    clusterer = ImageClusterer(model=model, device=device, k=DEMO_K, pca=0.9)
    try:
        clusterer.fit([images], out_dir=results, reporter=reporter, report=True)
    except WeightsUnavailable as exc:
        if model == "pixels":
            raise
        # exc says where torchvision looked; the notice says what the demo does about it.
        reporter.notify(f"ImageNet weights for {model} are not cached and could not be downloaded: "
                        f"the demo uses the weight-free pixels features instead ({str(exc).split('. Use')[0]})")
        clusterer.set_params(model="pixels").fit([images], out_dir=results, reporter=reporter, report=True)
    print_run_summary(clusterer.result_.summary, console)
    console.print(f"Chosen K = [bold]{clusterer.k_}[/bold] (the sample set has {len(GROUPS)} groups); "
                  f"results in {escape(str(results))}/, report at {escape(str(results / 'report' / 'index.html'))}",
                  soft_wrap=True)
    # A model to ship, and new images of the same groups (never seen in training) to try it on.
    model_file = clusterer.save(out / MODEL_FILE)
    per_held_out = held_out_size(per_group)
    generate_sample_set(held_out, per_group=per_held_out, start_index=per_group)
    command = escape(f"imgcluster predict {model_file} {held_out} --out {out / 'held-out-predictions.csv'}")
    console.print(f"Model saved to {escape(str(model_file))}; {per_held_out * len(GROUPS)} held-out images in "
                  f"{escape(str(held_out))}/. Try:\n  [bold]{command}[/bold]",
                  highlight=False, soft_wrap=True)
    return clusterer


DEMO_MARKER = ".imgcluster-demo"  # in results/: written by the demo (hidden: walks leave it out)


def held_out_size(per_group: int) -> int:
    """Held-out images per group: a third of the training set, at least 4."""
    return max(4, per_group // 3)


def _remove_previous_results(results: Path, images: Path) -> None:
    """Delete what an earlier demo run wrote to results/ (only the names the pipeline and the
    feature store write), so that if this run fails the folder is empty rather than describing
    older images. Raises ConfigError when results/ holds anything and is not a demo run's
    (its summary.json clustered another folder than `images`): it is not the demo's to delete."""
    from .report import outputs
    from .store import remove_store_files

    if not results.is_dir() or not any(results.iterdir()):
        return
    try:
        summary = outputs.read_summary(results)
        inputs = [os.path.join(summary.get("cwd") or "", i) for i in summary.get("inputs") or []]
        ours = [os.path.realpath(i) for i in inputs] == [os.path.realpath(images)]
    except (OSError, ValueError, AttributeError, TypeError):
        ours = (results / DEMO_MARKER).is_file()  # a demo interrupted before its summary was written
    if not ours:
        raise ConfigError(f"{results} holds files an earlier demo did not write: the demo replaces that folder "
                          "on every run; move them out or give the demo another --out")
    for name in outputs.RUN_FILES:
        (results / name).unlink(missing_ok=True)
    outputs.remove_stale(results, features=True, report=True)
    # The feature cache: every image is rewritten (new mtime), so none of its rows can be used again
    # and it would only grow.
    remove_store_files(results / outputs.FEATURE_CACHE)
