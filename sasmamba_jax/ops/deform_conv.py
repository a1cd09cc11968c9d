"""Depthwise deformable 2D convolution with torchvision's ``deform_conv2d`` semantics.

Dimension letters: B batch, H and W the grid (frames and joints in SasMamba),
E channels, k kernel size, P = k * k kernel taps.

One offset group: every channel samples at the same displaced points. For
output position (h, w) and tap (a, b), the sample point is
``(h - pad + a + dy, w - pad + b + dx)`` with ``(dy, dx)`` the offset
channels ``2 * (a * k + b)`` and ``2 * (a * k + b) + 1`` at (h, w). The value
there is the bilinear interpolation of the input, zero outside the grid: a
point with row <= -1, row >= H, col <= -1 or col >= W reads 0; otherwise each
of its four integer corners contributes only if it lies inside the grid.
"""

import jax
import jax.numpy as jnp


def deform_conv2d_depthwise(
    x: jax.Array,
    offsets: jax.Array,
    weight: jax.Array,
    bias: jax.Array,
) -> jax.Array:
    """Depthwise deformable convolution, stride 1, "same" padding (k - 1) / 2.

    Args:
        x: (B, H, W, E) input.
        offsets: (B, H, W, 2 * P) sampling offsets, (dy, dx) per tap, taps in
            row-major kernel order.
        weight: (k, k, E) per-channel kernel.
        bias: (E,) per-channel bias.

    Returns:
        (B, H, W, E) output in the dtype of ``x``; sample points, weights and
        sums are float32.
    """
    batch, height, width, channels = x.shape
    k = weight.shape[0]
    if weight.shape != (k, k, channels):
        raise ValueError(f"weight must be (k, k, {channels}), got {weight.shape}")
    if offsets.shape != (batch, height, width, 2 * k * k):
        raise ValueError(
            f"offsets must be {(batch, height, width, 2 * k * k)} for a {k}x{k} kernel, got {offsets.shape}"
        )
    pad = (k - 1) // 2
    # Sample points and interpolation weights in float32 whatever the compute
    # dtype: bfloat16 cannot even tell row 200 from row 201.
    offsets = offsets.astype(jnp.float32).reshape(batch, height, width, k * k, 2)
    tap_rows, tap_cols = jnp.divmod(jnp.arange(k * k), k)
    rows = (jnp.arange(height)[:, None, None] - pad + tap_rows) + offsets[..., 0]
    cols = (jnp.arange(width)[None, :, None] - pad + tap_cols) + offsets[..., 1]
    samples = bilinear_sample_zero_padded(x, rows, cols)
    out = jnp.einsum("bhwpe,pe->bhwe", samples, weight.reshape(k * k, channels).astype(jnp.float32))
    return (out + bias).astype(x.dtype)


def bilinear_sample_zero_padded(x: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Bilinear interpolation of ``x`` at fractional points, zero outside the grid.

    Args:
        x: (B, H, W, E) grid.
        rows: (B, *S) fractional row of each point.
        cols: (B, *S) fractional column of each point.

    Returns:
        (B, *S, E) interpolated values in float32.
    """
    batch, height, width, channels = x.shape
    inside = (rows > -1) & (rows < height) & (cols > -1) & (cols < width)
    row0 = jnp.floor(rows)
    col0 = jnp.floor(cols)
    frac_row = rows - row0
    frac_col = cols - col0
    row0 = row0.astype(jnp.int32)
    col0 = col0.astype(jnp.int32)
    # One table of rows for the whole batch: a gather without batch dimensions
    # runs about ten times faster on CPU than take_along_axis per sample.
    table = x.reshape(batch * height * width, channels)
    sample_offset = (jnp.arange(batch) * height * width).reshape((batch,) + (1,) * (rows.ndim - 1))

    def corner(row, col, corner_weight):
        valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
        index = jnp.where(valid, sample_offset + row * width + col, 0)
        values = jnp.take(table, index.reshape(-1), axis=0).reshape(*rows.shape, channels)
        return values.astype(jnp.float32) * jnp.where(valid, corner_weight, 0.0)[..., None]

    return (
        corner(row0, col0, (1 - frac_row) * (1 - frac_col))
        + corner(row0, col0 + 1, (1 - frac_row) * frac_col)
        + corner(row0 + 1, col0, frac_row * (1 - frac_col))
        + corner(row0 + 1, col0 + 1, frac_row * frac_col)
    )
