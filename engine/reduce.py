"""PCA: fit on (n, d) features, keep components by count or by fraction of variance.

Backends: 'torch' (covariance + eigh, on the tensor's own device), 'sklearn' (the reference),
'cuml' (engine.cuml_adapter). Component signs follow scikit-learn's svd_flip convention
(u_based_decision=False): the largest-magnitude entry of each component is positive, so every
backend gives the same signs.
"""
from __future__ import annotations

import numbers

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError


@dataclass
class PCAResult:
    """A fitted PCA.

    mean:       (d,) float32, on the fitting device
    components: (k, d) float32, rows are unit principal axes, descending variance
    explained_variance_ratio: (m,) float32 on the host, m = min(n, d): the whole spectrum (for plots)
    n_components: k; mode: 'exact' (all rows) | 'sampled' (fit on a seeded row sample) |
    'streamed' (fit on a seeded row sample extracted first, see features.StreamingPCA) | 'off'
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance_ratio: np.ndarray
    n_components: int
    mode: str
    fit_rows: int

    @property
    def explained_variance(self) -> float:
        """Fraction of variance kept by the n_components."""
        return float(self.explained_variance_ratio[: self.n_components].sum()) if self.n_components else 1.0

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, k) float32 on features' device. Identity when PCA is off."""
        if self.mode == "off":
            return features.float()
        mean = self.mean.to(features.device)
        comps = self.components.to(features.device)
        return (features.float() - mean) @ comps.T


def validate_pca(value: float | int) -> float | int:
    """int >= 0 components (0 = off), or a fraction in (0, 1] of variance to keep. NumPy numbers
    count as Python ones (np.int64(5) is 5 components, not a fraction)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"pca={value!r} must be a component count (200), a variance fraction (0.9) or 0")
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, float) and value.is_integer() and value > 1:
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"pca={value} is below 0: use a component count >= 1, a variance fraction in (0, 1], or 0 for off")
        return value
    if not (0.0 < value <= 1.0):
        raise ConfigError(f"pca={value} is outside (0, 1]: use a variance fraction in (0, 1], a component count >= 1, or 0 for off")
    return float(value)


def components_for(spectrum_ratio: np.ndarray, request: float | int, max_components: int) -> int:
    """Number of components for `request` (count or variance fraction) given the variance ratios."""
    if isinstance(request, float):
        cumulative = np.cumsum(spectrum_ratio, dtype=np.float64)
        k = int(np.searchsorted(cumulative, request - 1e-9) + 1)
        return max(1, min(k, max_components))
    return max(1, min(int(request), max_components))


def _svd_flip_rows(components: torch.Tensor) -> torch.Tensor:
    """Make the largest-|.| entry of each row positive (sklearn svd_flip, u_based_decision=False)."""
    idx = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(components.shape[0], device=components.device), idx])
    signs[signs == 0] = 1
    return components * signs[:, None]


def _sample_rows(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    if limit is None or n <= limit:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _covariance(x: torch.Tensor, chunk_rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) -> (mean (d,), covariance (d, d)), both float64, accumulated over row chunks so the
    extra memory is O(chunk * d + d^2) instead of a centred float64 copy of all of x. Float64
    keeps small eigenvalues (which decide a variance-fraction cut) clear of cancellation. On CUDA
    the chunks multiply in float32 (fp64 matmul is slow on most cards) and accumulate in float64."""
    n, d = x.shape
    acc = torch.float64 if x.device.type == "cpu" else torch.float32
    mean = torch.zeros(d, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_rows):
        mean += x[start:start + chunk_rows].double().sum(0)
    mean /= max(1, n)
    cov = torch.zeros((d, d), dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_rows):
        centred = x[start:start + chunk_rows].to(acc) - mean.to(acc)
        cov += (centred.T @ centred).double()
    return mean, cov / max(1, n - 1)


def pca_torch(features: torch.Tensor, request: float | int, seed: int = 0, fit_limit: int | None = None) -> PCAResult:
    """Covariance + eigh on the features' device (see _covariance for the precision); an economy
    SVD when there are fewer rows than columns."""
    n, d = features.shape
    rows = _sample_rows(n, fit_limit, seed)
    fit = features if rows is None else features[torch.as_tensor(rows, device=features.device)]
    if fit.shape[0] < d:
        # Fewer images than dimensions: an economy SVD of the centred (n, d) data costs O(n^2 d),
        # where eigh of the (d, d) covariance would cost O(d^3) (0.9 s for 96 x 2048 on 2 cores).
        mean = fit.double().mean(0)
        _, svals, vt = torch.linalg.svd(fit.double() - mean, full_matrices=False)
        evals, evecs = svals**2 / max(1, fit.shape[0] - 1), vt.T
    else:
        mean, cov = _covariance(fit)
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0), evecs.flip(1)
    evals = evals.clamp_min(0)
    m = min(fit.shape[0], d)
    total = float(evals.sum()) or 1.0
    ratio = (evals[:m] / total).float().cpu().numpy()
    k = components_for(ratio, request, m)
    comps = _svd_flip_rows(evecs[:, :k].T.contiguous()).float()
    return PCAResult(mean.float(), comps, ratio, k, "exact" if rows is None else "sampled", int(fit.shape[0]))


def pca_sklearn(features: torch.Tensor, request: float | int, seed: int = 0, fit_limit: int | None = None) -> PCAResult:
    """scikit-learn's PCA (full SVD): the reference."""
    from sklearn.decomposition import PCA

    x = features.detach().float().cpu().numpy()
    rows = _sample_rows(x.shape[0], fit_limit, seed)
    fit = x if rows is None else x[rows]
    m = min(fit.shape)
    full = PCA(n_components=m, svd_solver="full", random_state=seed).fit(fit)
    ratio = full.explained_variance_ratio_.astype(np.float32)
    k = components_for(ratio, request, m)
    comps = torch.from_numpy(full.components_[:k].astype(np.float32)).to(features.device)
    mean = torch.from_numpy(full.mean_.astype(np.float32)).to(features.device)
    return PCAResult(mean, _svd_flip_rows(comps), ratio, k, "exact" if rows is None else "sampled", int(fit.shape[0]))


def no_pca(features: torch.Tensor) -> PCAResult:
    d = features.shape[1]
    return PCAResult(torch.zeros(d, device=features.device), torch.eye(d, device=features.device),
                     np.zeros(0, dtype=np.float32), 0, "off", int(features.shape[0]))


def fit_pca(features: torch.Tensor, request: float | int, backend: str = "torch", seed: int = 0,
            fit_limit: int | None = None) -> PCAResult:
    """features: (n, d) float32 tensor (CPU or CUDA). request: count, fraction or 0 (off).
    fit_limit: above this many rows, fit on a seeded random sample of that size ('sampled' mode)."""
    request = validate_pca(request)
    if request == 0:
        return no_pca(features)
    if backend == "torch":
        return pca_torch(features, request, seed, fit_limit)
    if backend == "sklearn":
        return pca_sklearn(features, request, seed, fit_limit)
    if backend == "cuml":
        from .cuml_adapter import pca_cuml

        return pca_cuml(features, request, seed, fit_limit)
    raise ConfigError(f"cluster_backend={backend!r} is not one of: torch, sklearn, cuml")
