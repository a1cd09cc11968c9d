"""The fused selective scan: Pallas kernels that never store every state.

``selective_scan`` here is the "pallas" back end of
``sasmamba_jax.ops.selective_scan``: the same function as the XLA back ends
(float32 state, softplus, exp and accumulation; output in the dtype of u),
computed by

* a Mosaic kernel on TPU (``pallas_scan_tpu``): the state in VMEM across a
    sequential grid axis over tiles of L, reading the model's own
    (B, L, K, E) layout, softplus and the skip term inside the kernel;
* Triton kernels on GPU (``pallas_scan_gpu``): chunks of L in parallel, the
    state in registers, a carry across chunks between two passes, reading
    the model's layout and computing the whole op like the TPU kernel;
* on any other platform, the TPU kernel in Pallas interpret mode (slow: for
    tests; ``auto`` never picks it there).

Both save only the state entering each tile or chunk for the backward pass
(a ``jax.custom_vjp``), which recomputes a tile's states on chip.

XLA cannot split a Pallas kernel across devices by itself, so under a mesh
the op runs on each device's slice of the batch (``batch_split``).
"""

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from sasmamba_jax.ops import pallas_scan_gpu, pallas_scan_tpu
from sasmamba_jax.ops.batch_split import split_over_batch

Kernel = Literal["tpu", "gpu"]
KERNELS = ("tpu", "gpu")
# Which of (u, delta, A, B, C, D, delta_bias) carry the batch on axis 0.
_BATCHED = (True, True, False, True, True, False, False)


def selective_scan(u, delta, A, B, C, D, delta_bias, *, kernel: Kernel | None = None):
    """The selective scan; arguments and result as ``ops.selective_scan``.

    Args:
        u, delta: (B, L, K, E).
        A: (K, E, N).
        B, C: (B, L, K, N).
        D, delta_bias: (K, E).
        kernel: None picks by the platform lowered for (the TPU kernel on TPU,
            the GPU kernel on CUDA, the TPU kernel interpreted elsewhere);
            "tpu" or "gpu" forces one, interpreted off its own platform.

    Returns:
        (B, L, K, E) outputs in the dtype of u.
    """
    if kernel is None:
        branches = dict(
            tpu=functools.partial(_tpu_scan, False),
            cuda=functools.partial(_gpu_scan, False),
            default=functools.partial(_tpu_scan, True),
        )
    elif kernel == "tpu":
        branches = dict(tpu=functools.partial(_tpu_scan, False), default=functools.partial(_tpu_scan, True))
    elif kernel == "gpu":
        branches = dict(cuda=functools.partial(_gpu_scan, False), default=functools.partial(_gpu_scan, True))
    else:
        raise ValueError(f"unknown Pallas scan kernel {kernel!r}; expected one of {KERNELS}")
    branches = {platform: split_over_batch(scan, _BATCHED) for platform, scan in branches.items()}
    return jax.lax.platform_dependent(u, delta, A, B, C, D, delta_bias, **branches)


# --- TPU: the kernels take the model's layout and compute the whole op. ---


def _tpu_scan(interpret, u, delta, A, B, C, D, delta_bias):
    # The small operands go to the kernel's layout outside the custom VJP, so
    # autodiff carries their gradients back through the transposes and casts.
    f32 = jnp.float32
    return _tpu_kernels(
        interpret,
        u,
        delta,
        A.astype(f32).transpose(0, 2, 1),
        B.astype(f32).transpose(0, 2, 3, 1),
        C.astype(f32).transpose(0, 2, 3, 1),
        D.astype(f32),
        delta_bias.astype(f32),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tpu_kernels(interpret, u, delta, A_t, B_t, C_t, D, delta_bias):
    """u, delta (B, L, K, E); A_t (K, N, E); B_t, C_t (B, K, N, L); D, delta_bias (K, E)."""
    return _tpu_forward(interpret, u, delta, A_t, B_t, C_t, D, delta_bias)[0]


def _tpu_forward(interpret, *operands):
    y, tile_starts = pallas_scan_tpu.forward(*operands, interpret=interpret)
    return y, (operands, tile_starts)


def _tpu_backward(interpret, residuals, grad_y):
    operands, tile_starts = residuals
    grad_u, grad_delta, *partials = pallas_scan_tpu.backward(
        *operands, tile_starts, grad_y, interpret=interpret
    )
    # One partial per batch element or channel block, summed here in a fixed
    # order: deterministic, unlike atomics.
    return (grad_u, grad_delta, *(p.sum(0) for p in partials))


_tpu_kernels.defvjp(_tpu_forward, _tpu_backward)


# --- GPU: the kernels read the model's layout and compute the whole op. ---


def _gpu_scan(interpret, u, delta, A, B, C, D, delta_bias):
    # As on TPU, the small operands are cast outside the custom VJP. E is
    # padded to whole channel blocks only where it is not one already
    # (never at the published sizes): padded channels have u = 0 and A = 0,
    # so their state stays 0, and they are cut off again.
    f32 = jnp.float32
    channels = u.shape[-1]
    pad = -channels % pallas_scan_gpu.BLOCK_E
    if pad:
        u, delta = (_pad_last(t, pad, 0) for t in (u, delta))
        A = _pad_last(A, pad, 1)
        D, delta_bias = (_pad_last(t, pad, 0) for t in (D, delta_bias))
    y = _gpu_kernels(interpret, u, delta, A.astype(f32), B, C, D.astype(f32), delta_bias.astype(f32))
    return y[..., :channels]


def _pad_last(t, pad, axes_after):
    """Zero-pads axis -1 - axes_after of ``t`` by ``pad``."""
    widths = [(0, 0)] * t.ndim
    widths[t.ndim - 1 - axes_after] = (0, pad)
    return jnp.pad(t, widths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gpu_kernels(interpret, u, delta, A, B, C, D, delta_bias):
    """u, delta (B, L, K, E); A (K, E, N); B, C (B, L, K, N); D, delta_bias (K, E)."""
    return _gpu_forward(interpret, u, delta, A, B, C, D, delta_bias)[0]


def _gpu_forward(interpret, *operands):
    y, chunk_starts, dt_sums = pallas_scan_gpu.forward(*operands, interpret=interpret)
    return y, (operands, chunk_starts, dt_sums)


def _gpu_backward(interpret, residuals, grad_y):
    operands, chunk_starts, dt_sums = residuals
    grads = pallas_scan_gpu.backward(*operands, chunk_starts, dt_sums, grad_y, interpret=interpret)
    return tuple(g.astype(x.dtype) for g, x in zip(grads, operands, strict=True))


_gpu_kernels.defvjp(_gpu_forward, _gpu_backward)
