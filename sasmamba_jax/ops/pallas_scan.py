"""The fused selective scan: Pallas kernels that never store every state.

``selective_scan`` here is the "pallas" back end of
``sasmamba_jax.ops.selective_scan``: the same function as the XLA back ends
(float32 state, softplus, exp and accumulation; output in the dtype of u),
computed by

* a Mosaic kernel on TPU (``pallas_scan_tpu``): the state in VMEM across a
    sequential grid axis over tiles of L, reading the model's own
    (B, L, K, E) layout, softplus and the skip term inside the kernel;
* a Triton kernel on GPU (``pallas_scan_gpu``): chunks of L in parallel, the
    state in registers, a cross-chunk correction between two passes, on
    time-major rows of (batch, direction) pairs;
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


# --- GPU: softplus and the skip term in XLA, the recurrence in the kernels. ---


def _gpu_scan(interpret, u, delta, A, B, C, D, delta_bias):
    u32, A32, B32, C32, D32 = (t.astype(jnp.float32) for t in (u, A, B, C, D))
    dt = jax.nn.softplus(delta.astype(jnp.float32) + delta_bias.astype(jnp.float32))
    y = _rows_scan(interpret, u32, dt, A32, B32, C32)
    return (y + u32 * D32).astype(u.dtype)


def _padded(t, multiples):
    """Zero-pads each axis of ``t`` up to a multiple of ``multiples[axis]``.

    Padding steps have dt = 0 (decay 1, no input), so they leave the state
    unchanged; padded rows and channels are zero and cut off again.
    """
    pad = [(0, -size % multiple) for size, multiple in zip(t.shape, multiples)]
    return jnp.pad(t, pad)


def _to_rows(t):
    """(B, L, K, X) -> (L, B * K, X): row b * K + k, time-major."""
    batch, length, k, x = t.shape
    return t.transpose(1, 0, 2, 3).reshape(length, batch * k, x)


def _from_rows(t, shape):
    """(L', R', X') padded rows -> (B, L, K, X) of ``shape``."""
    batch, length, k, x = shape
    return t[:length, : batch * k, :x].reshape(length, batch, k, x).transpose(1, 0, 2, 3)


def _sequence_multiples():
    pad = pallas_scan_gpu.PAD
    return pad["length"], pad["rows"], pad["channels"]


def _rows_operands(u, dt, A, B, C):
    """The GPU kernels' layout: u, dt (L, R, E); A_rows (N, R, E); B, C (L, R, N), padded."""
    batch = u.shape[0]
    k, e, n = A.shape
    length_multiple, rows_multiple, channels_multiple = _sequence_multiples()
    A_rows = jnp.broadcast_to(A.transpose(2, 0, 1)[:, None], (n, batch, k, e)).reshape(n, batch * k, e)
    projection = (length_multiple, rows_multiple, 1)
    return (
        _padded(_to_rows(u), _sequence_multiples()),
        _padded(_to_rows(dt), _sequence_multiples()),
        _padded(A_rows, (1, rows_multiple, channels_multiple)),
        _padded(_to_rows(B), projection),
        _padded(_to_rows(C), projection),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rows_scan(interpret, u, dt, A, B, C):
    return _rows_forward(interpret, u, dt, A, B, C)[0]


def _rows_forward(interpret, u, dt, A, B, C):
    operands = _rows_operands(u, dt, A, B, C)
    y, chunk_starts = pallas_scan_gpu.forward(*operands, interpret=interpret)
    return _from_rows(y, u.shape), (operands, chunk_starts, A.shape)


def _rows_backward(interpret, residuals, grad_y):
    operands, chunk_starts, (k, e, n) = residuals
    grad_y_rows = _padded(_to_rows(grad_y), _sequence_multiples())
    grad_u, grad_dt, grad_A_rows, grad_B, grad_C = pallas_scan_gpu.backward(
        *operands, chunk_starts, grad_y_rows, interpret=interpret
    )
    batch, length = grad_y.shape[:2]
    # Each row's share of grad_A, summed over the batch rows of its direction.
    grad_A = grad_A_rows[:, : batch * k, :e].reshape(n, batch, k, e).sum(1).transpose(1, 2, 0)
    projection_shape = (batch, length, k, n)
    return (
        _from_rows(grad_u, grad_y.shape),
        _from_rows(grad_dt, grad_y.shape),
        grad_A,
        _from_rows(grad_B, projection_shape),
        _from_rows(grad_C, projection_shape),
    )


_rows_scan.defvjp(_rows_forward, _rows_backward)
