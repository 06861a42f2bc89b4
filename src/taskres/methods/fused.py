"""Fused CPU kernels for TaskRes's bf16-products step (optional: they need numba, ``pip install taskres[fast]``).

A TaskRes step at ImageNet scale is two bf16 matrix products plus memory-bound passes over the [C, D]
weights: t' = t + alpha x, its row norms, its bf16 copy, the gradient's correction term, and Adam over x
and its two moments. In torch these are six kernels; here they are two, each one pass over its rows:

- ``weights_bf16``: t' = t + alpha x -> its bf16 copy (round to nearest even, as torch's conversion) and
  the row norms |t'_c|.
- ``adam_step``: the gradient dL/dx_c = G_c - coef_c t'_c (G the bf16 product g^T f, with the per-class
  scalings of ``ResidualGradient`` already in g), plus Adam's coupled weight decay, then the Adam update of
  x, m and v: the same arithmetic as torch's Adam (a test holds the two together).

Both run over rows in parallel. The row-norm sum and the Adam arithmetic are compiled with fast-math, which
lets the compiler reorder the sum and vectorise. They are used only on the bf16 path, which rounds the
products' operands anyway; the fp32 path stays plain torch.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether numba is installed (it is imported, and the kernels compiled, only when first used)."""
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def _kernels():
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def weights_bf16(base, x, alpha, out_bits, norms):  # pragma: no cover - compiled
        rows, cols = base.shape
        for c in numba.prange(rows):
            acc = np.float32(0.0)
            for d in range(cols):
                w = base[c, d] + alpha * x[c, d]
                acc += w * w
                bits = np.float32(w).view(np.uint32)
                bits = np.uint32(bits + np.uint32(0x7FFF) + np.uint32((bits >> np.uint32(16)) & np.uint32(1)))
                out_bits[c, d] = np.uint16(np.uint32(bits >> np.uint32(16)))
            norms[c] = np.sqrt(acc)

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def adam_step(grad_bits, coef, base, x, alpha, m, v, step_size, beta1, beta2, eps, weight_decay,
                  inv_bias2_sqrt):  # pragma: no cover - compiled
        rows, cols = base.shape
        one_minus_b1 = np.float32(1.0) - beta1
        one_minus_b2 = np.float32(1.0) - beta2
        for c in numba.prange(rows):
            k = coef[c]
            for d in range(cols):
                g = np.uint32(np.uint32(grad_bits[c, d]) << np.uint32(16)).view(np.float32)
                xv = x[c, d]
                g = g - k * (base[c, d] + alpha * xv) + weight_decay * xv  # dL/dx + coupled L2
                mv = m[c, d] + one_minus_b1 * (g - m[c, d])
                vv = beta2 * v[c, d] + one_minus_b2 * g * g
                m[c, d] = mv
                v[c, d] = vv
                x[c, d] = xv - step_size * mv / (np.sqrt(vv) * inv_bias2_sqrt + eps)

    return numba, weights_bf16, adam_step


def _bits(t: torch.Tensor) -> np.ndarray:
    """A bf16 tensor's storage as a uint16 numpy array (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16)


class FusedBf16Adam:
    """The residual x, Adam's moments and the step count, updated by the fused kernels (CPU, float32)."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, lr: float, weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        if not available():
            raise RuntimeError("the fused kernels need numba (pip install taskres[fast])")
        numba, self._weights_kernel, self._adam_kernel = _kernels()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        if base.dtype != torch.float32 or residual.dtype != torch.float32 or not residual.is_contiguous():
            raise ValueError("the fused kernels take contiguous float32 CPU tensors")
        self.base, self.residual = base.contiguous(), residual  # residual: updated in place
        self.alpha, self.lr, self.weight_decay, self.betas, self.eps = alpha, lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(residual)
        self.exp_avg_sq = torch.zeros_like(residual)
        self.steps = 0
        self.low = torch.empty_like(base, dtype=torch.bfloat16)  # bf16 t'
        self.norms = torch.empty(base.shape[0], dtype=torch.float32)
        self._np = [a.numpy() for a in (self.base, residual, self.exp_avg, self.exp_avg_sq, self.norms)]
        self._low_bits = _bits(self.low)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """bf16 t' and the float32 norms of t', from the current x."""
        base, x, _, _, norms = self._np
        self._weights_kernel(base, x, np.float32(self.alpha), self._low_bits, norms)
        return self.low, self.norms

    def step(self, product: torch.Tensor, coef: torch.Tensor) -> None:
        """One Adam step with the gradient ``product - coef[:, None] * t'`` (``product`` bf16 [C, D])."""
        self.steps += 1
        beta1, beta2 = self.betas
        base, x, m, v, _ = self._np
        self._adam_kernel(_bits(product.contiguous()), coef.float().contiguous().numpy(), base, x,
                          np.float32(self.alpha), m, v, np.float32(self.lr / (1 - beta1 ** self.steps)),
                          np.float32(beta1), np.float32(beta2), np.float32(self.eps), np.float32(self.weight_decay),
                          np.float32(1 / math.sqrt(1 - beta2 ** self.steps)))
