"""Exceptions. Every ImgclusterError is a user-facing problem: the CLI prints its message on one
line and exits with code 2 (no traceback). Per-image problems are DecodeError and never escape a loader."""


class ImgclusterError(Exception):
    """A problem the user can fix (bad argument, missing backend, unusable input). CLI exit code 2."""

    exit_code = 2


class ConfigError(ImgclusterError, ValueError):
    """A parameter is outside its allowed values; the message names the parameter and the values."""


class NotFittedError(ConfigError, AttributeError):
    """A fitted attribute or predict was asked of an ImageClusterer before fit (or load). An
    AttributeError too, as scikit-learn's, so hasattr(clusterer, "model_") is False before fit."""


class BackendUnavailable(ImgclusterError):
    """A backend asked for by name is not installed or cannot run here; the message has the install hint."""


class InputError(ImgclusterError):
    """No usable input: no images found, every file bad, or fewer good images than the smallest K."""


class WeightsUnavailable(ImgclusterError):
    """Pretrained weights could not be loaded (no cache, no network, bad file)."""


class ModelFileError(ImgclusterError):
    """A saved model file is truncated, tampered with, of another format version, or mismatched."""


class ReportInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while the HTML report was being built: the run's results are already
    written in `out_dir`, so what is left to do is `imgcluster report`, not the whole run."""

    def __init__(self, out_dir):
        super().__init__(str(out_dir))
        self.out_dir = out_dir


class CacheRestartInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while extracting, in a folder holding a finished run whose feature cache
    this run restarted (another model or settings): that run's predictions.csv and summary.json
    are still there, but `imgcluster cluster` on them needs this run to finish first."""

    def __init__(self, out_dir):
        super().__init__(str(out_dir))
        self.out_dir = out_dir


class DecodeError(Exception):
    """One image could not be decoded. Carries a short reason for skipped.csv; loaders catch it."""
