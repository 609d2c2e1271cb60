"""The orthonormal DCT-II and its inverse (DCT-III) along the first axis, in numpy only.

FAST compresses an action chunk [H, A] with scipy's `dct(x, axis=0, norm="ortho")` over time (docs/model.md,
"FAST action tokens"). The lean runtime has no scipy, and at chunk sizes (H <= a few hundred) a cached H x H
basis times the chunk is as exact and as fast: y = C x, x = C^T y, since C is orthonormal.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=16)
def dct_basis(length: int) -> np.ndarray:
    """C[k, n] = sqrt(2 / N) * s_k * cos(pi * k * (2n + 1) / (2N)), s_0 = 1 / sqrt(2), s_k = 1 otherwise: the
    orthonormal DCT-II matrix (read-only, float64; k = frequency row, n = time column)."""
    if length < 1:
        raise ValueError(f"a DCT needs at least one sample, got length {length}")
    k = np.arange(length, dtype=np.float64)[:, None]
    n = np.arange(length, dtype=np.float64)[None, :]
    basis = np.sqrt(2.0 / length) * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * length))
    basis[0] /= np.sqrt(2.0)
    basis.setflags(write=False)
    return basis


def dct_ortho(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along axis 0 (scipy.fft.dct(x, type=2, axis=0, norm="ortho")), float64."""
    x = np.asarray(x, dtype=np.float64)
    return dct_basis(x.shape[0]) @ x  # [K, N] @ [N, A] -> [K, A]


def idct_ortho(coefficients: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-III along axis 0, the inverse of `dct_ortho` (scipy.fft.idct(..., norm="ortho")), float64."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    return dct_basis(coefficients.shape[0]).T @ coefficients  # [N, K] @ [K, A] -> [N, A]
