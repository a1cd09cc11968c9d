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

from sasmamba_jax.ops.batch_split import split_over_batch


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
    out = split_over_batch(_deform_conv, (True, True, False))(x, offsets, weight)
    return (out + bias).astype(x.dtype)


def _deform_conv(x: jax.Array, offsets: jax.Array, weight: jax.Array) -> jax.Array:
    """``deform_conv2d_depthwise`` without the bias: (B, H, W, E) float32."""
    batch, height, width, channels = x.shape
    k = weight.shape[0]
    pad = (k - 1) // 2
    # Sample points and interpolation weights in float32 whatever the compute
    # dtype: bfloat16 cannot even tell row 200 from row 201.
    offsets = offsets.astype(jnp.float32).reshape(batch, height * width, k * k, 2)
    tap_rows, tap_cols = jnp.divmod(jnp.arange(k * k), k)
    grid_rows, grid_cols = jnp.divmod(jnp.arange(height * width), width)
    rows = (grid_rows[:, None] - pad + tap_rows) + offsets[..., 0]
    cols = (grid_cols[:, None] - pad + tap_cols) + offsets[..., 1]
    indices, corner_weights = _bilinear_corners(rows, cols, height, width)
    kernel = weight.reshape(k * k, channels).astype(jnp.float32)

    # One sample at a time: libtpu's compile time of a scatter-add grows with
    # its number of updates. For a v5e chip at B=16, T=243 the whole batch's
    # backward took 49 s to compile, a loop over its samples 4 s.
    def sample(inputs):
        table, sample_indices, sample_weights = inputs
        return _gather_weighted_sum(table, sample_indices, sample_weights, kernel)

    grids = x.reshape(batch, height * width, channels)
    return jax.lax.map(sample, (grids, indices, corner_weights)).reshape(x.shape)


def _bilinear_corners(rows: jax.Array, cols: jax.Array, height: int, width: int) -> tuple[jax.Array, ...]:
    """The four grid corners of each fractional point and their bilinear weights.

    Zero padding is expressed in the weights: a point outside the grid, and
    a corner outside it, get weight 0 (and the harmless index 0).

    Args:
        rows: (*S) fractional row of each point.
        cols: (*S) fractional column of each point.
        height, width: the grid's size.

    Returns:
        indices (*S, 4) int32 into the (height * width) flattened grid, and
        weights (*S, 4) float32, corners in the order (r, c), (r, c + 1),
        (r + 1, c), (r + 1, c + 1) with r, c the floor of the point.
    """
    inside = (rows > -1) & (rows < height) & (cols > -1) & (cols < width)
    row0 = jnp.floor(rows)
    col0 = jnp.floor(cols)
    frac_row = rows - row0
    frac_col = cols - col0
    row0 = row0.astype(jnp.int32)
    col0 = col0.astype(jnp.int32)
    corners = (
        (row0, col0, (1 - frac_row) * (1 - frac_col)),
        (row0, col0 + 1, (1 - frac_row) * frac_col),
        (row0 + 1, col0, frac_row * (1 - frac_col)),
        (row0 + 1, col0 + 1, frac_row * frac_col),
    )
    indices, weights = [], []
    for row, col, corner_weight in corners:
        valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
        indices.append(jnp.where(valid, row * width + col, 0))
        weights.append(jnp.where(valid, corner_weight, 0.0))
    return jnp.stack(indices, axis=-1), jnp.stack(weights, axis=-1)


def _per_tap(*arrays):
    """Moves the tap axis (axis 1) of each array to the front, for a scan over taps."""
    return tuple(jnp.moveaxis(a, 1, 0) for a in arrays)


def _gather(table, indices):
    """table[indices] in float32; every index is in range by construction."""
    return jnp.asarray(table).at[indices].get(mode="promise_in_bounds").astype(jnp.float32)


@jax.custom_vjp
def _gather_weighted_sum(table, indices, corner_weights, kernel):
    """out[s] = sum_{p, c} corner_weights[s, p, c] * kernel[p] * table[indices[s, p, c]].

    Args:
        table: (R, E) one sample's flattened grid.
        indices: (S, P, 4) rows of ``table`` each output point reads per tap.
        corner_weights: (S, P, 4) float32 bilinear weights.
        kernel: (P, E) float32 per-channel tap weights.

    Returns:
        (S, E) float32.
    """

    # One tap at a time: gathering every tap at once stores (S, P, 4, E)
    # values, 36x the input, as XLA does not fuse a gather into the
    # reduction that consumes it.
    def add_tap(out, tap):
        tap_indices, tap_weights, tap_kernel = tap
        sampled = (tap_weights[..., None] * _gather(table, tap_indices)).sum(axis=1)
        return out + tap_kernel * sampled, None

    out = jnp.zeros((indices.shape[0], table.shape[-1]), jnp.float32)
    out, _ = jax.lax.scan(add_tap, out, (*_per_tap(indices, corner_weights), kernel))
    return out


def _gather_weighted_sum_forward(*args):
    return _gather_weighted_sum(*args), args


def _gather_weighted_sum_backward(residuals, grad):
    # Differentiating the forward scan would store every tap's gathered
    # values; here one tap at a time fetches them again and produces that
    # tap's three gradients, the table's by a scatter-add.
    table, indices, corner_weights, kernel = residuals

    def tap_gradients(grad_table, tap):
        tap_indices, tap_weights, tap_kernel = tap
        values = _gather(table, tap_indices)
        weighted_grad = grad * tap_kernel
        grad_weights = (weighted_grad[:, None, :] * values).sum(axis=-1)
        grad_kernel = (grad * (tap_weights[..., None] * values).sum(axis=1)).sum(axis=0)
        contributions = tap_weights[..., None] * weighted_grad[:, None, :]
        grad_table = grad_table.at[tap_indices.reshape(-1)].add(
            contributions.reshape(-1, table.shape[-1]), mode="promise_in_bounds"
        )
        return grad_table, (grad_weights, grad_kernel)

    grad_table = jnp.zeros(table.shape, jnp.float32)
    grad_table, (grad_weights, grad_kernel) = jax.lax.scan(
        tap_gradients, grad_table, (*_per_tap(indices, corner_weights), kernel)
    )
    return grad_table.astype(table.dtype), None, jnp.moveaxis(grad_weights, 0, 1), grad_kernel


_gather_weighted_sum.defvjp(_gather_weighted_sum_forward, _gather_weighted_sum_backward)
