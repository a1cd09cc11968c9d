"""A 2D convolution whose gradients are plain convolutions and contractions.

``conv_general_dilated`` is a drop-in for ``jax.lax.conv_general_dilated``
(``nnx.Conv(..., conv_general_dilated=conv_general_dilated)``) for the one
kind of convolution the model has: NHWC input, HWIO kernel, stride 1, no
dilation, one feature group. Its forward pass is lax's own; on the CPU its
backward pass computes the input gradient as a convolution of the output
gradient with the kernel flipped in space, and the kernel gradient as one
(C_in, C_out) contraction per kernel tap.

Why: XLA's CPU back end runs the gradients of ``lax.conv_general_dilated``
inside a loop (the model's layer scan) with a slow generic emitter. For the
demo model's offset convolution, (8, 27, 17, 64) -> 18 channels, 3x3, inside
a two-layer scan, the two gradients took 106 ms against 12 ms with these
(``benchmarks/conv_gradients.py``); outside a loop both take about 4 ms.

Only the CPU back end gets these gradients (``lax.platform_dependent``). On
GPUs and TPUs lax's own gradients are native convolutions and need less
memory: compiled for one H100, the large published step with remat peaks at
3.68 GB with them and at 4.22 GB with the per-tap contractions.
"""

import functools

import jax
import jax.numpy as jnp

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    out_sharding=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` for (B, H, W, C_in) x (kh, kw, C_in, C_out), stride 1.

    Args:
        lhs: (B, H, W, C_in) input.
        rhs: (kh, kw, C_in, C_out) kernel.
        padding: "SAME", "VALID" or ((top, bottom), (left, right)).
        The other arguments are lax's; only their identity values are taken.

    Returns:
        (B, H', W', C_out).

    Raises:
        ValueError: strides, dilations, feature groups, layouts or options
            other than the ones above.
    """
    unit = (None, (1, 1), [1, 1])
    if (
        tuple(window_strides) != (1, 1)
        or lhs_dilation not in unit
        or rhs_dilation not in unit
        or feature_group_count != 1
        or out_sharding is not None
        or preferred_element_type is not None
        or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, DIMENSION_NUMBERS)
    ):
        raise ValueError(
            "conv.conv_general_dilated takes NHWC x HWIO, stride 1, no dilation, one feature group; got "
            f"strides {window_strides}, dilations {lhs_dilation} and {rhs_dilation}, "
            f"{feature_group_count} groups, dimension numbers {dimension_numbers}"
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    pads = tuple((int(low), int(high)) for low, high in padding)
    return _conv(lhs, rhs, pads, precision)


def _lax_conv(x, kernel, pads, precision):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), pads, dimension_numbers=DIMENSION_NUMBERS, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, pads, precision):
    return _lax_conv(x, kernel, pads, precision)


def _conv_forward(x, kernel, pads, precision):
    return _lax_conv(x, kernel, pads, precision), (x, kernel)


def _conv_backward(pads, precision, residuals, grad_y):
    x, kernel = residuals
    return jax.lax.platform_dependent(
        x,
        kernel,
        grad_y,
        cpu=functools.partial(_tap_gradients, pads, precision),
        default=functools.partial(_lax_gradients, pads, precision),
    )


def _lax_gradients(pads, precision, x, kernel, grad_y):
    _, vjp = jax.vjp(lambda x, kernel: _lax_conv(x, kernel, pads, precision), x, kernel)
    return vjp(grad_y)


def _tap_gradients(pads, precision, x, kernel, grad_y):
    """(x's gradient, the kernel's gradient) as one flipped-kernel convolution and one contraction per tap."""
    taps = kernel.shape[:2]
    # y[h] = sum_i x_padded[h + i] k[i]: x's gradient correlates grad_y with the
    # flipped kernel, padded so that it has x's size again.
    transposed_pads = tuple((tap - 1 - low, tap - 1 - high) for tap, (low, high) in zip(taps, pads))
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    grad_x = _lax_conv(grad_y, flipped, transposed_pads, precision)
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    height, width = grad_y.shape[1:3]
    per_tap = [
        jnp.einsum(
            "bhwc,bhwo->co",
            padded[:, i : i + height, j : j + width],
            grad_y,
            precision=precision,
            preferred_element_type=jnp.float32,
        )
        for i in range(taps[0])
        for j in range(taps[1])
    ]
    grad_kernel = jnp.stack(per_tap).reshape(kernel.shape)
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


_conv.defvjp(_conv_forward, _conv_backward)
