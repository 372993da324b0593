"""`imgcluster doctor`: what this machine has, and what `auto` picks."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .backbones import DEFAULT_MODEL
from .device import capabilities, resolve_cluster_backend, resolve_decoder, resolve_device, resolve_precision
from .loaders.decode import AVIF_HINT, avif_available, heif_status
from .versions import versions


def doctor_report() -> dict:
    """JSON-able: capabilities (available, version, reason) and the auto choices."""
    caps = capabilities()
    device = resolve_device("auto")
    return {
        "capabilities": {name: {"available": c.available, "version": c.version, "reason": c.reason}
                         for name, c in caps.items()},
        "auto": {"device": str(device), "decoder": resolve_decoder("auto", device),
                 "cluster_backend": resolve_cluster_backend("auto", device),
                 "precision": resolve_precision("auto", device),
                 "silhouette": "triton" if device.type == "cuda" and caps["triton"].available else "torch (chunked)"},
        "image_formats": image_formats(),
        "imagenet_weights": imagenet_weights(),
        "versions": versions(),
    }


def imagenet_weights() -> dict:
    """{"cached": [model, ...], "folder": str}: the ImageNet weights `--weights auto` finds
    without a download (the default run downloads resnet152's, ~230 MB, on first use)."""
    from .backbones import cached_imagenet_weights

    cached, folder = cached_imagenet_weights()
    return {"cached": cached, "folder": str(folder)}


def image_formats() -> dict[str, dict]:
    """The optional image formats: {"HEIC/HEIF": {"available", "reason"}, "AVIF": {...}}. Files
    of a format that is not available are skipped with this reason (skipped.csv)."""
    heif = heif_status()
    return {"HEIC/HEIF": {"available": not heif, "reason": heif},
            "AVIF": {"available": avif_available(),
                     "reason": "" if avif_available() else AVIF_HINT}}


def print_doctor(console: Console) -> dict:
    report = doctor_report()
    caps = report["capabilities"]
    table = Table(title="Backends")
    table.add_column("backend")
    table.add_column("available")
    table.add_column("version")
    table.add_column("why not / notes")
    cpu_rows = [("pil decoder", True, report["versions"].get("pillow", ""), "CPU reference decoder"),
                ("torch backend (CPU)", True, report["versions"].get("torch", ""), "PCA, KMeans, all-K silhouette"),
                ("sklearn backend", True, report["versions"].get("scikit-learn", ""), "reference clustering")]
    for name, ok, version, note in cpu_rows:
        table.add_row(name, "[green]yes[/green]", version, note)
    labels = {"cuda": "CUDA (torch)", "dali": "DALI decoder", "nvimgcodec": "nvImageCodec decoder", "cupy": "CuPy", "cuml": "cuML backend",
              "triton": "Triton kernels", "compile": "torch.compile", "cpu_bf16": "bf16 on the CPU"}
    for name, cap in caps.items():
        ok = "[green]yes[/green]" if cap["available"] else "[red]no[/red]"
        table.add_row(labels.get(name, name), ok, cap["version"], escape(cap["reason"]))
    nvjpeg_ok = caps["cuda"]["available"]  # nvJPEG (through torchvision) and CUDA graphs need CUDA only
    table.add_row("nvJPEG decoder", "[green]yes[/green]" if nvjpeg_ok else "[red]no[/red]", "",
                  "" if nvjpeg_ok else escape("needs CUDA: " + caps["cuda"]["reason"]))
    table.add_row("CUDA graphs", "[green]yes[/green]" if nvjpeg_ok else "[red]no[/red]", "",
                  "--cuda-graphs (opt-in: no faster on an H100)" if nvjpeg_ok else escape("needs CUDA: " + caps["cuda"]["reason"]))
    formats = {"HEIC/HEIF": report["versions"].get("pillow-heif", ""), "AVIF": report["versions"].get("pillow", "")}
    for name, fmt in report["image_formats"].items():
        ok = "[green]yes[/green]" if fmt["available"] else "[red]no[/red]"
        table.add_row(f"{name} images", ok, formats[name] if fmt["available"] else "",
                      escape(fmt["reason"]) or ("pillow-heif" if name == "HEIC/HEIF" else "Pillow's own plugin"))
    weights = report["imagenet_weights"]
    default_cached = DEFAULT_MODEL in weights["cached"]
    table.add_row("ImageNet weights", "[green]yes[/green]" if default_cached else "[yellow]not cached[/yellow]",
                  ", ".join(weights["cached"]),
                  escape(f"in {weights['folder']}" if default_cached else
                         f"{DEFAULT_MODEL}'s are not in {weights['folder']}: the first run downloads them "
                         "(offline: --weights PATH to a state dict, or --weights random for tests)"))
    console.print(table)
    auto = Table(title="What auto chooses here")
    auto.add_column("stage")
    auto.add_column("choice")
    for stage, choice in report["auto"].items():
        auto.add_row(stage, choice)
    console.print(auto)
    console.print("Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), highlight=False)
    return report
