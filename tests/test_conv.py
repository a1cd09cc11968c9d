"""``ops.conv``: lax's forward with its own gradients, against a numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference
import pytest

from sasmamba_jax.ops import conv

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
RTOL = 1e-5


@pytest.mark.parametrize(
    "kernel_size, padding, pads",
    [
        ((3, 3), "SAME", ((1, 1), (1, 1))),
        ((3, 3), "VALID", ((0, 0), (0, 0))),
        ((1, 3), ((0, 2), (1, 0)), ((0, 2), (1, 0))),
    ],
)
def test_forward_and_gradients_match_numpy(kernel_size, padding, pads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 5, 4)).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, 4, 6)).astype(np.float32)

    def forward(x, kernel):
        return conv.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMENSION_NUMBERS)

    y, vjp = jax.vjp(forward, jnp.asarray(x), jnp.asarray(kernel))
    grad_y = rng.standard_normal(y.shape).astype(np.float32)
    grad_x, grad_kernel = vjp(jnp.asarray(grad_y))
    expected_x, expected_kernel = numpy_reference.conv2d_vjp(x, kernel, pads, grad_y)
    for ours, expected in [
        (y, numpy_reference.conv2d(x, kernel, pads)),
        (grad_x, expected_x),
        (grad_kernel, expected_kernel),
    ]:
        assert ours.shape == expected.shape
        assert np.max(np.abs(np.asarray(ours) - expected)) <= RTOL * np.max(np.abs(expected))


def test_inside_a_scan_the_gradients_stay_the_same():
    """The case the module exists for: the convolution inside a loop body."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
    kernels = jnp.asarray(rng.standard_normal((2, 3, 3, 3, 3)), jnp.float32)

    def loss(x, kernels, conv_fn):
        def layer(h, kernel):
            return jnp.tanh(conv_fn(h, kernel, (1, 1), "SAME", dimension_numbers=DIMENSION_NUMBERS)), None

        return jnp.sum(jax.lax.scan(layer, x, kernels)[0] ** 2)

    gradients = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    ours = gradients(x, kernels, conv.conv_general_dilated)
    lax_own = gradients(x, kernels, jax.lax.conv_general_dilated)
    for a, b in zip(ours, lax_own):
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize(
    "options",
    [
        dict(window_strides=(2, 2)),
        dict(rhs_dilation=(2, 1)),
        dict(feature_group_count=2),
        dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
    ],
)
def test_other_kinds_of_convolution_are_refused(options):
    arguments = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DIMENSION_NUMBERS) | options
    with pytest.raises(ValueError, match="stride 1, no dilation, one feature group"):
        conv.conv_general_dilated(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), **arguments)


@pytest.mark.parametrize(
    "platform, convolutions, contractions", [("cpu", 2, 9), ("cuda", 3, 0), ("tpu", 3, 0)]
)
def test_only_the_cpu_gets_the_tap_gradients(platform, convolutions, contractions):
    """GPUs and TPUs keep lax's gradients, native convolutions that need less memory there."""

    def loss(x, kernel):
        y = conv.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DIMENSION_NUMBERS)
        return jnp.sum(y**2)

    arguments = (jnp.zeros((1, 5, 4, 2)), jnp.zeros((3, 3, 2, 2)))
    exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=[platform])(*arguments)
    module = exported.mlir_module()
    assert module.count("stablehlo.convolution") == convolutions
    assert module.count("stablehlo.dot_general") == contractions
