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
    corners = (
        (row0, col0, (1 - frac_row) * (1 - frac_col)),
        (row0, col0 + 1, (1 - frac_row) * frac_col),
        (row0 + 1, col0, frac_row * (1 - frac_col)),
        (row0 + 1, col0 + 1, frac_row * frac_col),
    )
    indices, weights = [], []
    for row, col, corner_weight in corners:
        valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
        indices.append(jnp.where(valid, sample_offset + row * width + col, 0))
        weights.append(jnp.where(valid, corner_weight, 0.0))
    return _weighted_gather(table, jnp.stack(indices), jnp.stack(weights))


@jax.custom_vjp
def _weighted_gather(table, indices, weights):
    """sum_c weights[c] * table[indices[c]]: (R, E), (4, *S), (4, *S) -> (*S, E) float32."""
    values = jnp.take(table, indices.reshape(4, -1), axis=0).astype(jnp.float32)
    out = jnp.einsum("cp,cpe->pe", weights.reshape(4, -1), values)
    return out.reshape(*indices.shape[1:], table.shape[-1])


def _weighted_gather_forward(table, indices, weights):
    return _weighted_gather(table, indices, weights), (table, indices, weights)


def _weighted_gather_backward(residuals, grad):
    # Written out because differentiating the gathers keeps four (*S, E)
    # arrays for the backward pass and ran 2.5x slower on CPU; here the
    # gathered values are fetched again (cheap) and the table's gradient is
    # one scatter-add.
    table, indices, weights = residuals
    flat_indices = indices.reshape(4, -1)
    grad = grad.reshape(-1, table.shape[-1])
    values = jnp.take(table, flat_indices, axis=0).astype(jnp.float32)
    grad_weights = jnp.einsum("pe,cpe->cp", grad, values).reshape(weights.shape)
    contributions = (weights.reshape(4, -1)[..., None] * grad[None]).reshape(-1, table.shape[-1])
    grad_table = jnp.zeros(table.shape, jnp.float32).at[flat_indices.reshape(-1)].add(contributions)
    return grad_table.astype(table.dtype), None, grad_weights


_weighted_gather.defvjp(_weighted_gather_forward, _weighted_gather_backward)
