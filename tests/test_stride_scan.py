"""Tests of ``stride_scan`` / ``stride_merge`` against explicit numpy loops.

The gather tables are written out in tests/numpy_reference.py from
REFERENCE_MODEL.md section 3, not imported from the module under test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from sasmamba_jax.ops import stride_merge, stride_scan

NUM_FRAMES = 5
NUM_JOINTS = 17


def _random_map(seed, batch=2, frames=NUM_FRAMES, channels=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, frames, NUM_JOINTS, channels)).astype(np.float32)


def _random_sequences(seed, batch=2, frames=NUM_FRAMES, channels=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, frames * NUM_JOINTS, 4, channels)).astype(np.float32)


def _plain_stride_scan(x):
    """The forward in plain jnp (no custom gradient), from the definition."""
    stride2 = jnp.asarray(ref.STRIDE2_ANCHORS)
    stride3 = jnp.asarray(ref.STRIDE3_ANCHORS)
    batch, frames, joints, channels = x.shape
    merged = x + jnp.take(x, stride2, axis=2) + jnp.take(x, stride3, axis=2)
    frame_major = merged.reshape(batch, frames * joints, channels)
    joint_major = jnp.swapaxes(x, 1, 2).reshape(batch, frames * joints, channels)
    return jnp.stack([frame_major, joint_major, frame_major[:, ::-1], joint_major[:, ::-1]], 2)


@functools.cache
def _jitted_stride_scan_vjp(stride_grad):
    def scan_vjp(x, grad):
        return jax.vjp(functools.partial(stride_scan, stride_grad=stride_grad), x)[1](grad)[0]

    return jax.jit(scan_vjp)


@pytest.mark.parametrize("stride_grad", ["release", "exact"])
def test_forward_matches_numpy_loop(stride_grad):
    x = _random_map(0)
    y = stride_scan(jnp.asarray(x), stride_grad=stride_grad)
    assert y.shape == (2, NUM_FRAMES * NUM_JOINTS, 4, 3)
    np.testing.assert_allclose(np.asarray(y), ref.stride_scan(x), rtol=1e-6, atol=1e-6)


def test_forward_directions_by_hand():
    """Spot checks of single entries, independent of any loop structure."""
    x = _random_map(1, frames=4)
    y = np.asarray(stride_scan(jnp.asarray(x)))
    length = 4 * NUM_JOINTS
    # Frame 2, joint 7: stride-2 anchor 6, stride-3 anchor 6.
    merged = x[:, 2, 7] + x[:, 2, 6] + x[:, 2, 6]
    np.testing.assert_allclose(y[:, 2 * NUM_JOINTS + 7, 0], merged, rtol=1e-6)
    np.testing.assert_allclose(y[:, length - 1 - (2 * NUM_JOINTS + 7), 2], merged, rtol=1e-6)
    # Joint-major: frame 3 of joint 16 sits at 16 * T + 3.
    np.testing.assert_allclose(y[:, 16 * 4 + 3, 1], x[:, 3, 16])
    np.testing.assert_allclose(y[:, length - 1 - (16 * 4 + 3), 3], x[:, 3, 16])
    # Joint 16: both anchors differ from it (16 and 15).
    np.testing.assert_allclose(y[:, 16, 0], x[:, 0, 16] + x[:, 0, 16] + x[:, 0, 15], rtol=1e-6)


def test_merge_matches_numpy_loop():
    y = _random_sequences(2)
    merged = stride_merge(jnp.asarray(y), NUM_FRAMES)
    assert merged.shape == (2, NUM_FRAMES, NUM_JOINTS, 3)
    np.testing.assert_allclose(np.asarray(merged), ref.stride_merge(y, NUM_FRAMES), rtol=1e-6, atol=1e-6)


def test_numpy_exact_adjoint_is_the_transpose_of_the_numpy_forward():
    """<scan(x), g> == <x, scan_vjp(g)> for the numpy pair itself."""
    x = _random_map(3).astype(np.float64)
    grad = _random_sequences(4).astype(np.float64)
    lhs = np.sum(ref.stride_scan(x) * grad)
    rhs = np.sum(x * ref.stride_scan_vjp(grad, NUM_FRAMES))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_exact_gradient_is_the_true_adjoint():
    x = jnp.asarray(_random_map(5))
    grad = _random_sequences(6)
    ours = _jitted_stride_scan_vjp("exact")(x, jnp.asarray(grad))
    np.testing.assert_allclose(np.asarray(ours), ref.stride_scan_vjp(grad, NUM_FRAMES), rtol=1e-5, atol=1e-5)
    plain = jax.grad(lambda x: jnp.sum(_plain_stride_scan(x) * grad))(x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-5, atol=1e-5)


def test_release_gradient_is_the_cross_merge_of_the_cotangent():
    x = jnp.asarray(_random_map(7))
    grad = _random_sequences(8)
    ours = np.asarray(_jitted_stride_scan_vjp("release")(x, jnp.asarray(grad)))
    # The release's rule, element by element: every direction's cotangent goes
    # straight back to the grid cell it was read from as "x", gathers ignored.
    length = NUM_FRAMES * NUM_JOINTS
    expected = np.zeros(x.shape)
    for t in range(NUM_FRAMES):
        for j in range(NUM_JOINTS):
            frame_major, joint_major = t * NUM_JOINTS + j, j * NUM_FRAMES + t
            expected[:, t, j] = (
                grad[:, frame_major, 0]
                + grad[:, length - 1 - frame_major, 2]
                + grad[:, joint_major, 1]
                + grad[:, length - 1 - joint_major, 3]
            )
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)

    exact = ref.stride_scan_vjp(grad, NUM_FRAMES)
    assert np.max(np.abs(ours - exact)) > 0.1 * np.max(np.abs(exact))
    # Only the gathered terms differ: joints that are no other joint's anchor
    # get the same gradient from both rules.
    never_anchor = [j for j in range(NUM_JOINTS) if j not in ref.STRIDE2_ANCHORS + ref.STRIDE3_ANCHORS]
    assert never_anchor == [1, 5, 7, 11, 13]
    np.testing.assert_allclose(ours[:, :, never_anchor], exact[:, :, never_anchor], rtol=1e-5, atol=1e-5)


def test_stride_grad_does_not_change_the_forward():
    x = jnp.asarray(_random_map(9))
    np.testing.assert_array_equal(
        np.asarray(stride_scan(x, stride_grad="release")), np.asarray(stride_scan(x, stride_grad="exact"))
    )


def test_rejects_wrong_joint_count_and_unknown_stride_grad():
    with pytest.raises(ValueError, match="17"):
        stride_scan(jnp.zeros((1, 3, 16, 2)))
    with pytest.raises(ValueError, match="17"):
        stride_scan(jnp.zeros((1, 3, 18, 2)), stride_grad="exact")
    with pytest.raises(ValueError, match="stride_grad"):
        stride_scan(jnp.zeros((1, 3, 17, 2)), stride_grad="true")
