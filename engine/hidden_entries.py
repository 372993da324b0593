"""Folder walks leave out hidden entries and the folders that NAS boxes, operating systems and
photo apps keep inside photo folders. A Synology share holds an `@eaDir` folder beside each
photo folder with several thumbnail JPEGs of every photo: walked as images, they would be clustered
with (and outnumber) the photos themselves. macOS copies leave a `._IMG_0001.jpg` (metadata, not
an image) beside every file on non-Mac disks.

Left out: names starting with "." (hidden: `.thumbnails`, `._x.jpg`, `.Trash-1000`, QNAP's
`.@__thumb`) and the folders in SYSTEM_FOLDERS. Globs pass over hidden names (as glob.glob
does) and over system folders their wildcards reach (engine.sources._system_folder_filter).
Folder walks also leave out `imgcluster export` folders below the folder they start from (known by
EXPORT_MARKER): links or copies of images already clustered, which would come back as duplicates
or as second copies. Globs do not look for the marker.
`--include-hidden` takes everything; a folder named on the command line, or literally in a glob,
is walked whatever its name.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Exact names (case-sensitive, as these systems write them).
SYSTEM_FOLDERS = frozenset({
    "@eaDir",                     # Synology: per-photo thumbnails and metadata
    "#recycle", "#snapshot",      # Synology: recycle bin, snapshots (copies of the same photos)
    "@Recycle", "@Recently-Snapshot",  # QNAP: recycle bin, snapshots
    # Windows: recycle bin (spelt so on removable drives, "$Recycle.Bin" on system drives), restore points
    "$RECYCLE.BIN", "$Recycle.Bin", "System Volume Information",
    "lost+found",                 # ext file systems: recovered fragments
})


# The hidden file `imgcluster export` writes at the top of each export folder.
EXPORT_MARKER = ".imgcluster-export"


def is_hidden_or_system_folder(name: str) -> bool:
    """True for a folder a walk leaves out by default (see the module docstring)."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def is_hidden_file(name: str) -> bool:
    """True for a file a walk leaves out by default: a hidden name, including AppleDouble `._*`."""
    return name.startswith(".")


@dataclass
class LeftOut:
    """What folder walks left out: folders by name (name -> how many), hidden files named like
    images (others are counted with the files not named like images), and export folders."""

    folders: Counter = field(default_factory=Counter)
    files: int = 0
    exports: int = 0  # folders written by `imgcluster export` (EXPORT_MARKER)
    run_reports: int = 0  # other runs' output folders met on the way, whose report images were left out

    def __bool__(self) -> bool:
        return bool(self.folders) or self.files > 0 or self.exports > 0 or self.run_reports > 0

    def as_dict(self) -> dict[str, int]:
        """summary.json's "left_out": how many folders, hidden image files, export folders and
        other runs whose report images were left out."""
        return {"hidden_or_system_folders": sum(self.folders.values()), "hidden_image_files": self.files,
                "export_folders": self.exports, "other_runs_reports": self.run_reports}

    def filter_folders(self, names: list[str]) -> list[str]:
        """`names` (one folder's subfolders) without those left out, which are counted."""
        kept = []
        for name in names:
            if is_hidden_or_system_folder(name):
                self.folders[name] += 1
            else:
                kept.append(name)
        return kept

    @staticmethod
    def describe(folders: int, files: int, exports: int, folder_names: str = "", run_reports: int = 0) -> str:
        """'3 hidden or system folders (@eaDir ×2, .thumbnails), 2 hidden image files (such as
        macOS's ._ files) and 1 imgcluster export folder (...)': the parts that are not zero.
        folder_names: the parenthesis after the folders (default: Synology's @eaDir as example)."""
        parts = []
        if folders:
            parts.append(f"{folders:,} hidden or system folder{'s' if folders != 1 else ''} "
                         f"({folder_names or 'such as Synology @eaDir thumbnails'})")
        if files:
            parts.append(f"{files:,} hidden image file{'s' if files != 1 else ''} (such as macOS's ._ files)")
        if exports:
            parts.append(f"{exports:,} imgcluster export folder{'s' if exports != 1 else ''} "
                         "(links or copies of clustered images)")
        if run_reports:
            parts.append(f"the report images (plots, montages) of {run_reports:,} other imgcluster "
                         f"run{'s' if run_reports != 1 else ''}")
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"

    def note(self, limit: int = 4) -> str:
        """'Left out 3 hidden or system folders (@eaDir ×2, .thumbnails) and 5 hidden image
        files (such as macOS's ._ files): --include-hidden takes them', or '' when nothing was."""
        if not self:
            return ""
        ranked = sorted(self.folders.items(), key=lambda kv: (-kv[1], kv[0]))
        names = [f"{name} ×{count}" if count > 1 else name for name, count in ranked[:limit]]
        if len(ranked) > limit:
            names.append(f"{len(ranked) - limit} other name(s)")
        what = self.describe(sum(self.folders.values()), self.files, self.exports, ", ".join(names), self.run_reports)
        return f"Left out {what}: --include-hidden takes them"
