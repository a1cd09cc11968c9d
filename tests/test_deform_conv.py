"""Tests of ``deform_conv2d_depthwise`` against a numpy loop with torchvision's rules.

torchvision's CPU kernel reads a fractional point (row, col) as 0 when
row <= -1, row >= H, col <= -1 or col >= W, and otherwise sums the four
bilinear corners that lie inside the grid. The numpy loop in
tests/numpy_reference.py follows that; it is itself checked against plain
zero-padded convolution (zero offsets), against integer shifts, and against
``torch.nn.functional.grid_sample`` (zeros padding, align_corners=True), which
interpolates with the same rule. torchvision itself is not installed.

Error measure: max |ours - reference| / max |reference|.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
import torch

from sasmamba_jax.ops import deform_conv2d_depthwise

HEIGHT, WIDTH, CHANNELS = 5, 6, 3


def _relative_error(ours, reference):
    reference = np.asarray(reference, np.float64)
    return np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference))


def _random_tensors(seed, k, batch=2, height=HEIGHT, width=WIDTH, channels=CHANNELS):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, height, width, channels))
    weight = rng.normal(size=(k, k, channels)) / k
    bias = rng.normal(size=(channels,))
    return x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32)


def _boundary_coordinates(size):
    """Sample coordinates along one axis of length ``size``, by kind.

    All are multiples of 1/8, so base + offset is exact in float32 and points
    land exactly on integers and on the -1 / size cut-offs when meant to.
    """
    return {
        "inside": [0.375, 1.625, size - 1.875, 0.5 * (size - 1) + 0.125],
        "integer": [0.0, 1.0, size - 2.0, size - 1.0],
        "border_low": [-0.875, -0.5, -0.125],
        "border_high": [size - 0.875, size - 0.5, size - 0.125],
        "cutoff": [-1.0, float(size)],
        "outside": [-1.125, -2.5, size + 0.25, size + 3.0],
    }


def _offsets_to_targets(rows, cols, k):
    """Offsets (B, H, W, 2 * k * k) that move every tap onto the given points.

    Args:
        rows, cols: (B, H, W, k * k) target sample coordinates.
        k: kernel size.
    """
    pad = (k - 1) // 2
    _, height, width, _ = rows.shape
    tap_rows, tap_cols = np.divmod(np.arange(k * k), k)
    base_rows = np.arange(height)[:, None, None] - pad + tap_rows
    base_cols = np.arange(width)[None, :, None] - pad + tap_cols
    offsets = np.stack([rows - base_rows, cols - base_cols], axis=-1)
    return offsets.reshape(*rows.shape[:3], 2 * k * k).astype(np.float32)


def _mixed_boundary_offsets(seed, k, batch=2, height=HEIGHT, width=WIDTH):
    """Offsets whose points cover every kind of `_boundary_coordinates`, rows and columns mixed."""
    rng = np.random.default_rng(seed)
    shape = (batch, height, width, k * k)
    row_pool = np.concatenate([np.asarray(v) for v in _boundary_coordinates(height).values()])
    col_pool = np.concatenate([np.asarray(v) for v in _boundary_coordinates(width).values()])
    rows = rng.choice(row_pool, size=shape)
    cols = rng.choice(col_pool, size=shape)
    return _offsets_to_targets(rows, cols, k), rows, cols


@functools.cache
def _jitted_value_and_vjp():
    def value_and_vjp(x, offsets, weight, bias, grad):
        out, vjp = jax.vjp(deform_conv2d_depthwise, x, offsets, weight, bias)
        return out, vjp(grad)

    return jax.jit(value_and_vjp)


def test_numpy_reference_with_zero_offsets_is_zero_padded_depthwise_conv():
    k = 3
    x, weight, bias = _random_tensors(0, k)
    offsets = np.zeros((2, HEIGHT, WIDTH, 2 * k * k))
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = bias + sum(
        weight[a, c] * padded[:, a : a + HEIGHT, c : c + WIDTH] for a in range(k) for c in range(k)
    )
    np.testing.assert_allclose(ref.deform_conv2d_depthwise(x, offsets, weight, bias), expected)


def test_numpy_bilinear_matches_torch_grid_sample():
    """grid_sample with zeros padding, align_corners=True uses the same corner rule."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(HEIGHT, WIDTH))
    points = {
        axis: np.concatenate([np.asarray(v) for v in _boundary_coordinates(size).values()])
        for axis, size in (("row", HEIGHT), ("col", WIDTH))
    }
    rows, cols = np.meshgrid(points["row"], points["col"], indexing="ij")
    ours = np.vectorize(lambda r, c: ref.bilinear_sample(image, r, c))(rows, cols)
    grid = np.stack([cols / (WIDTH - 1) * 2 - 1, rows / (HEIGHT - 1) * 2 - 1], axis=-1)
    theirs = torch.nn.functional.grid_sample(
        torch.from_numpy(image)[None, None],
        torch.from_numpy(grid)[None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[0, 0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    # The cut-off points and everything beyond them read exactly zero.
    outside = (rows <= -1) | (rows >= HEIGHT) | (cols <= -1) | (cols >= WIDTH)
    assert outside.any() and np.all(ours[outside] == 0)


@pytest.mark.parametrize("k", [3, 5])
def test_integer_offsets_shift_the_input(k):
    """Every tap moved onto one integer point (r, c) gives x[r, c] * sum(weight) + bias."""
    x, weight, bias = _random_tensors(2, k)
    rng = np.random.default_rng(3)
    rows = np.broadcast_to(rng.integers(0, HEIGHT, size=(2, HEIGHT, WIDTH, 1)), (2, HEIGHT, WIDTH, k * k))
    cols = np.broadcast_to(rng.integers(0, WIDTH, size=(2, HEIGHT, WIDTH, 1)), (2, HEIGHT, WIDTH, k * k))
    offsets = _offsets_to_targets(rows.astype(float), cols.astype(float), k)
    batch_index = np.arange(2)[:, None, None]
    picked = x[batch_index, rows[..., 0], cols[..., 0]].astype(np.float64)
    expected = picked * weight.astype(np.float64).sum(axis=(0, 1)) + bias
    ours = deform_conv2d_depthwise(*(jnp.asarray(t) for t in (x, offsets, weight, bias)))
    assert _relative_error(ours, expected) < 1e-5


@pytest.mark.parametrize("k", [3, 5])
def test_forward_matches_numpy_on_boundary_points(k):
    x, weight, bias = _random_tensors(4, k)
    offsets, rows, cols = _mixed_boundary_offsets(5, k)
    expected = ref.deform_conv2d_depthwise(x, offsets, weight, bias)
    grad = np.ones_like(x)
    out, grads = _jitted_value_and_vjp()(*(jnp.asarray(t) for t in (x, offsets, weight, bias, grad)))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert _relative_error(out, expected) < 1e-5
    # Kinks sit at integer points, but the gradients stay finite there.
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    # The sampled points really cover every case the rules distinguish.
    for coords, size in ((rows, HEIGHT), (cols, WIDTH)):
        assert np.any(coords == -1) and np.any(coords == size)
        assert np.any((coords > -1) & (coords < 0)) and np.any((coords > size - 1) & (coords < size))
        assert np.any(coords < -1) and np.any(coords > size)
        assert np.any((coords >= 0) & (coords <= size - 1) & (coords == np.round(coords)))


def _smooth_region_offsets(seed, k, batch, height, width):
    """Offsets whose points have fractional parts in 0.2 .. 0.8 on both axes.

    The integer parts run from -2 to size, so points fall inside, in the
    border bands (-1, 0) and (size - 1, size), and beyond the grid, all away
    from the kinks at integer coordinates.
    """
    rng = np.random.default_rng(seed)
    shape = (batch, height, width, k * k)

    def coordinates(size):
        cell = rng.integers(-2, size + 1, size=shape)
        return cell + rng.uniform(0.2, 0.8, size=shape)

    rows, cols = coordinates(height), coordinates(width)
    return _offsets_to_targets(rows, cols, k), rows, cols


@pytest.mark.parametrize(("k", "height", "width"), [(3, 4, 5), (5, 3, 4)])
def test_gradients_match_finite_differences_of_numpy(k, height, width):
    x, weight, bias = _random_tensors(6, k, batch=1, height=height, width=width, channels=2)
    offsets, rows, cols = _smooth_region_offsets(7, k, 1, height, width)
    grad = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
    _, grads = _jitted_value_and_vjp()(*(jnp.asarray(t) for t in (x, offsets, weight, bias, grad)))
    grads = dict(zip(("x", "offsets", "weight", "bias"), grads, strict=True))
    values = {
        name: value.astype(np.float64)
        for name, value in (("x", x), ("offsets", offsets), ("weight", weight), ("bias", bias))
    }
    grad = grad.astype(np.float64)
    step = 1e-4

    def loss(shifted):
        return np.sum(grad * ref.deform_conv2d_depthwise(**shifted))

    def pixel_loss(shifted, b, h, w):
        return np.sum(grad[b, h, w] * ref.deform_conv2d_depthwise_pixel(**shifted, b=b, h=h, w=w))

    for name in ("x", "offsets", "weight", "bias"):
        numeric = np.zeros_like(values[name])
        for index in np.ndindex(values[name].shape):
            evaluate = loss
            if name == "offsets":  # An offset only moves its own output position.
                evaluate = functools.partial(pixel_loss, b=index[0], h=index[1], w=index[2])
            shifted = {key: value.copy() for key, value in values.items()}
            shifted[name][index] += step
            up = evaluate(shifted)
            shifted[name][index] -= 2 * step
            numeric[index] = (up - evaluate(shifted)) / (2 * step)
        assert grads[name].shape == values[name].shape, name
        assert _relative_error(grads[name], numeric) < 1e-5, name
    # Taps that sample fully outside the grid get exactly zero offset gradient.
    outside = (rows <= -1) | (rows >= height) | (cols <= -1) | (cols >= width)
    offset_grads = np.asarray(grads["offsets"]).reshape(*outside.shape, 2)
    assert outside.any() and np.all(offset_grads[outside] == 0)


def test_rejects_wrong_weight_and_offset_shapes():
    x = jnp.zeros((1, 4, 5, 3))
    offsets = jnp.zeros((1, 4, 5, 18))
    bias = jnp.zeros((3,))
    with pytest.raises(ValueError, match="weight"):
        deform_conv2d_depthwise(x, offsets, jnp.zeros((3, 3, 2)), bias)
    with pytest.raises(ValueError, match="weight"):
        deform_conv2d_depthwise(x, offsets, jnp.zeros((3, 5, 3)), bias)
    with pytest.raises(ValueError, match="offsets"):
        deform_conv2d_depthwise(x, jnp.zeros((1, 4, 5, 50)), jnp.zeros((3, 3, 3)), bias)
    with pytest.raises(ValueError, match="offsets"):
        deform_conv2d_depthwise(x, jnp.zeros((1, 5, 4, 18)), jnp.zeros((3, 3, 3)), bias)
    with pytest.raises(ValueError, match="offsets"):
        deform_conv2d_depthwise(x, jnp.zeros((2, 4, 5, 18)), jnp.zeros((3, 3, 3)), bias)


def test_gathered_values_are_never_all_stored():
    # Every output point reads 9 taps x 4 corners of the input, so storing
    # the gathered values at once costs 36 input-sized arrays (the previous
    # implementation compiled to 45x / 119x the input here); one tap at a
    # time keeps the compiled temporaries a few inputs in size.
    x = jnp.zeros((2, 60, 17, 128))
    args = (x, jnp.zeros((2, 60, 17, 18)), jnp.zeros((3, 3, 128)), jnp.zeros((128,)))
    forward_and_backward = jax.grad(lambda *a: deform_conv2d_depthwise(*a).sum(), argnums=(0, 1, 2))
    for fn, bound in ((deform_conv2d_depthwise, 12), (forward_and_backward, 40)):
        temp_bytes = jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
        assert temp_bytes < bound * x.nbytes
