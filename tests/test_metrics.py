"""Tests of the evaluation metrics and the training losses.

Metrics are checked against plain loops and an alternative Procrustes solver
(Horn's quaternion method); losses against the numbers the PyTorch release
recorded on its own training steps, against independent numpy versions, and
their gradients against PyTorch autograd.
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sasmamba_jax.evaluate import metrics
from sasmamba_jax.train import losses

TRAINSTEP_FILE = pathlib.Path(__file__).parent / "data" / "official_tiny_trainstep.npz"


def _random_poses(seed, num_frames=40, num_joints=17, noise_mm=30.0):
    rng = np.random.default_rng(seed)
    target = rng.normal(scale=300.0, size=(num_frames, num_joints, 3))
    pred = target + rng.normal(scale=noise_mm, size=target.shape)
    return pred, target


def _random_rotation(rng):
    """A uniformly random proper rotation matrix (3, 3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _loop_joint_errors(pred, target):
    """(N, J) Euclidean errors, one joint at a time."""
    num_frames, num_joints, _ = pred.shape
    errors = np.zeros((num_frames, num_joints))
    for n in range(num_frames):
        for j in range(num_joints):
            errors[n, j] = math.sqrt(sum((pred[n, j, c] - target[n, j, c]) ** 2 for c in range(3)))
    return errors


def _horn_align(pred, target):
    """Similarity-aligns one pose (J, 3) to another with Horn's unit quaternions.

    The optimal rotation is the quaternion of the largest eigenvalue of Horn's
    4x4 matrix; quaternions only ever give proper rotations.
    """
    pred_mean, target_mean = pred.mean(axis=0), target.mean(axis=0)
    p, x = pred - pred_mean, target - target_mean
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = p.T @ x
    horn = np.array(
        [
            [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
            [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
            [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
            [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
        ]
    )
    eigenvalues, eigenvectors = np.linalg.eigh(horn)
    w, a, b, c = eigenvectors[:, np.argmax(eigenvalues)]
    rotation = np.array(
        [
            [w * w + a * a - b * b - c * c, 2 * (a * b - w * c), 2 * (a * c + w * b)],
            [2 * (a * b + w * c), w * w - a * a + b * b - c * c, 2 * (b * c - w * a)],
            [2 * (a * c - w * b), 2 * (b * c + w * a), w * w - a * a - b * b + c * c],
        ]
    )
    rotated = p @ rotation.T
    scale = np.sum(rotated * x) / np.sum(p * p)
    return scale * rotated + target_mean


def _horn_p_mpjpe(pred, target):
    """(N,) MPJPE after aligning each frame with `_horn_align`."""
    return np.array([np.mean(np.linalg.norm(_horn_align(p, t) - t, axis=-1)) for p, t in zip(pred, target)])


# Metrics.


def test_per_joint_error_and_mpjpe_match_loops():
    pred, target = _random_poses(0)
    expected = _loop_joint_errors(pred, target)
    np.testing.assert_allclose(metrics.per_joint_error(pred, target), expected, rtol=1e-12)
    np.testing.assert_allclose(metrics.mpjpe(pred, target), expected.mean(axis=1), rtol=1e-12)
    assert metrics.mpjpe(pred, target).shape == (40,)


def test_p_mpjpe_matches_horn_quaternion_solver():
    pred, target = _random_poses(1, noise_mm=80.0)
    np.testing.assert_allclose(metrics.p_mpjpe(pred, target), _horn_p_mpjpe(pred, target), rtol=1e-9)


def test_p_mpjpe_is_zero_for_a_similar_copy_of_the_target():
    rng = np.random.default_rng(2)
    _, target = _random_poses(2, num_frames=8)
    pred = np.stack(
        [
            rng.uniform(0.3, 3.0) * pose @ _random_rotation(rng) + rng.normal(scale=1000.0, size=3)
            for pose in target
        ]
    )
    assert metrics.mpjpe(pred, target).min() > 100.0
    np.testing.assert_allclose(metrics.p_mpjpe(pred, target), 0.0, atol=1e-9)


def test_p_mpjpe_is_invariant_to_similarity_transforms_of_the_prediction():
    rng = np.random.default_rng(3)
    pred, target = _random_poses(3, num_frames=8, noise_mm=60.0)
    moved = np.stack(
        [
            rng.uniform(0.3, 3.0) * pose @ _random_rotation(rng) + rng.normal(scale=1000.0, size=3)
            for pose in pred
        ]
    )
    np.testing.assert_allclose(metrics.p_mpjpe(moved, target), metrics.p_mpjpe(pred, target), rtol=1e-9)


def test_p_mpjpe_does_not_undo_reflections():
    _, target = _random_poses(4, num_frames=8)
    mirrored = target * np.array([-1.0, 1.0, 1.0])
    errors = metrics.p_mpjpe(mirrored, target)
    # A reflection would map the mirror image back exactly; a rotation cannot.
    assert errors.min() > 10.0
    np.testing.assert_allclose(errors, _horn_p_mpjpe(mirrored, target), rtol=1e-9)


def test_acceleration_error_matches_loops():
    pred, target = _random_poses(5, num_frames=12)
    num_frames, num_joints, _ = pred.shape
    expected = np.zeros(num_frames - 2)
    for n in range(num_frames - 2):
        for j in range(num_joints):
            accel_pred = pred[n, j] - 2 * pred[n + 1, j] + pred[n + 2, j]
            accel_target = target[n, j] - 2 * target[n + 1, j] + target[n + 2, j]
            expected[n] += math.dist(accel_pred, accel_target) / num_joints
    np.testing.assert_allclose(metrics.acceleration_error(pred, target), expected, rtol=1e-10)


def test_acceleration_error_ignores_constant_velocity_offsets():
    _, target = _random_poses(6, num_frames=10)
    drift = np.arange(10)[:, None, None] * np.array([3.0, -2.0, 5.0]) + 7.0
    np.testing.assert_allclose(metrics.acceleration_error(target + drift, target), 0.0, atol=1e-9)


def _loop_pck(pred, target, threshold, joints):
    errors = _loop_joint_errors(pred, target)
    return np.array(
        [sum(1.0 for j in joints if errors[n, j] < threshold) / len(joints) for n in range(len(pred))]
    )


@pytest.mark.parametrize("joints", [None, metrics.MPI_INF_3DHP_PCK_JOINTS, (16, 3, 5)])
def test_pck_and_auc_match_loops(joints):
    pred, target = _random_poses(7, noise_mm=90.0)
    loop_joints = range(17) if joints is None else joints
    for threshold in (0.0, 50.0, 150.0):
        np.testing.assert_allclose(
            metrics.pck(pred, target, threshold=threshold, joints=joints),
            _loop_pck(pred, target, threshold, loop_joints),
            rtol=1e-12,
        )
    thresholds = [5.0 * k for k in range(31)]
    expected_auc = sum(_loop_pck(pred, target, t, loop_joints) for t in thresholds) / len(thresholds)
    np.testing.assert_allclose(metrics.auc(pred, target, joints=joints), expected_auc, rtol=1e-12)


def test_pck_counts_a_joint_exactly_at_the_threshold_as_wrong():
    target = np.zeros((1, 4, 3))
    pred = np.array([[[149.0, 0, 0], [150.0, 0, 0], [0, 151.0, 0], [0, 0, -10.0]]])
    np.testing.assert_allclose(metrics.pck(pred, target), [0.5])


def test_auc_of_a_perfect_prediction_misses_only_the_zero_threshold():
    _, target = _random_poses(8, num_frames=3)
    np.testing.assert_allclose(metrics.auc(target, target), 30.0 / 31.0)


def test_3dhp_joint_subset_leaves_out_pelvis_spine_and_head():
    assert metrics.MPI_INF_3DHP_PCK_JOINTS == tuple(range(14))
    target = np.zeros((1, 17, 3))
    pred = np.zeros((1, 17, 3))
    pred[0, 14:] = 1000.0
    scored = metrics.pck(pred, target, joints=metrics.MPI_INF_3DHP_PCK_JOINTS)
    np.testing.assert_allclose(scored, [1.0])
    np.testing.assert_allclose(metrics.pck(pred, target), [14 / 17])


@pytest.mark.parametrize(
    "metric",
    [
        metrics.mpjpe,
        metrics.p_mpjpe,
        metrics.per_joint_error,
        metrics.acceleration_error,
        metrics.pck,
        metrics.auc,
    ],
)
@pytest.mark.parametrize(
    "pred_shape, target_shape",
    [((5, 17, 3), (5, 16, 3)), ((5, 17, 2), (5, 17, 2)), ((2, 5, 17, 3), (2, 5, 17, 3))],
)
def test_metrics_reject_bad_shapes(metric, pred_shape, target_shape):
    with pytest.raises(ValueError):
        metric(np.zeros(pred_shape), np.zeros(target_shape))


@pytest.mark.parametrize(
    "call",
    [
        lambda p: metrics.acceleration_error(p[:2], p[:2]),
        lambda p: metrics.pck(p, p, joints=(0, 17)),
        lambda p: metrics.pck(p, p, joints=()),
        lambda p: metrics.auc(p, p, joints=(-1,)),
        lambda p: metrics.auc(p, p, thresholds=np.ones((2, 2))),
    ],
)
def test_metrics_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call(np.zeros((5, 17, 3)))


# Losses.


def _numpy_pose_losses(pred, target):
    """Independent float64 losses: per-frame scale from a least-squares solve."""
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    batch, frames, joints, _ = pred.shape
    mpjpe = np.sqrt(np.einsum("btjc,btjc->btj", pred - target, pred - target)).mean()
    scaled = np.empty_like(pred)
    for b in range(batch):
        for t in range(frames):
            column = pred[b, t].reshape(-1, 1)
            scale = np.linalg.lstsq(column, target[b, t].reshape(-1), rcond=None)[0][0]
            scaled[b, t] = scale * pred[b, t]
    n_mpjpe = np.linalg.norm(scaled - target, axis=-1).mean()
    if frames == 1:
        velocity = 0.0
    else:
        velocity = np.linalg.norm(np.diff(pred, axis=1) - np.diff(target, axis=1), axis=-1).mean()
    total = mpjpe + 0.5 * n_mpjpe + 20.0 * velocity
    return total, {"mpjpe": mpjpe, "n_mpjpe": n_mpjpe, "velocity": velocity}


@pytest.mark.parametrize("step", [0, 1, 2])
def test_pose_loss_matches_the_release_training_steps(step):
    data = np.load(TRAINSTEP_FILE)
    total, terms = losses.pose_loss(data[f"pred{step}"], data[f"y{step}"])
    np.testing.assert_allclose(float(total), data["loss"][step], rtol=1e-5)
    np.testing.assert_allclose(float(terms["mpjpe"]), data["loss_3d_pos"][step], rtol=1e-5)
    np.testing.assert_allclose(float(terms["n_mpjpe"]), data["loss_3d_scale"][step], rtol=1e-5)
    np.testing.assert_allclose(float(terms["velocity"]), data["loss_3d_velocity"][step], rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 9, 17, 3), (2, 1, 17, 3)])
def test_pose_loss_matches_numpy(shape):
    rng = np.random.default_rng(9)
    target = rng.normal(size=shape).astype(np.float32)
    pred = (0.8 * target + 0.3 * rng.normal(size=shape)).astype(np.float32)
    expected_total, expected_terms = _numpy_pose_losses(pred, target)
    total, terms = jax.jit(losses.pose_loss)(pred, target)
    assert total.dtype == jnp.float32
    np.testing.assert_allclose(float(total), expected_total, rtol=1e-5)
    for name, value in expected_terms.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, atol=1e-7)
    single_losses = {
        "mpjpe": losses.mpjpe_loss,
        "n_mpjpe": losses.n_mpjpe_loss,
        "velocity": losses.velocity_loss,
    }
    for name, loss in single_losses.items():
        value = float(loss(pred, target))
        np.testing.assert_allclose(value, expected_terms[name], rtol=1e-5, atol=1e-7)


def test_losses_compute_in_float32_from_bfloat16():
    rng = np.random.default_rng(10)
    target = jnp.asarray(rng.normal(size=(2, 4, 17, 3)), jnp.bfloat16)
    pred = jnp.asarray(rng.normal(size=(2, 4, 17, 3)), jnp.bfloat16)
    total, terms = losses.pose_loss(pred, target)
    expected_total, _ = _numpy_pose_losses(np.asarray(pred), np.asarray(target))
    assert total.dtype == jnp.float32
    assert all(value.dtype == jnp.float32 for value in terms.values())
    np.testing.assert_allclose(float(total), expected_total, rtol=1e-5)


def test_pose_loss_gradient_is_finite_and_zero_at_a_perfect_prediction():
    target = jnp.asarray(np.random.default_rng(11).normal(size=(2, 5, 17, 3)), jnp.float32)
    target = target - target[:, :, :1]  # root-relative, so the root joint is exactly 0
    grad = jax.grad(lambda p: losses.pose_loss(p, target)[0])(target)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_mpjpe_loss_gradient_matches_the_analytic_one_with_exact_joints():
    rng = np.random.default_rng(12)
    target = rng.normal(size=(2, 3, 17, 3)).astype(np.float32)
    pred = target + rng.normal(size=target.shape).astype(np.float32)
    pred[:, :, ::2] = target[:, :, ::2]
    error = pred.astype(np.float64) - target
    length = np.linalg.norm(error, axis=-1, keepdims=True)
    # d|e|/de = e / |e|, taken as 0 where e = 0 (PyTorch's convention).
    expected = np.divide(error, length, out=np.zeros_like(error), where=length > 0) / length.size
    grad = jax.grad(losses.mpjpe_loss)(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-9)


def test_pose_loss_gradient_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    data = np.load(TRAINSTEP_FILE)
    pred, target = data["pred0"].copy(), data["y0"]
    pred[:, 3:6] = target[:, 3:6]  # some exact frames: zero velocity and position errors
    pred[1, :, 0] = target[1, :, 0]  # an exact joint

    torch_pred = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    torch_target = torch.tensor(target, dtype=torch.float64)
    error = torch_pred - torch_target
    position = torch.linalg.vector_norm(error, dim=-1).mean()
    scale = (torch_target * torch_pred).sum(dim=(-2, -1), keepdim=True) / (torch_pred**2).sum(
        dim=(-2, -1), keepdim=True
    )
    scaled = torch.linalg.vector_norm(scale * torch_pred - torch_target, dim=-1).mean()
    velocity = torch.linalg.vector_norm(error[:, 1:] - error[:, :-1], dim=-1).mean()
    (position + 0.5 * scaled + 20.0 * velocity).backward()

    grad = jax.grad(lambda p: losses.pose_loss(p, target)[0])(jnp.asarray(pred))
    np.testing.assert_allclose(np.asarray(grad), torch_pred.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_loss_weights():
    assert (losses.MPJPE_WEIGHT, losses.N_MPJPE_WEIGHT, losses.VELOCITY_WEIGHT) == (1.0, 0.5, 20.0)


@pytest.mark.parametrize(
    "loss", [losses.mpjpe_loss, losses.n_mpjpe_loss, losses.velocity_loss, losses.pose_loss]
)
@pytest.mark.parametrize(
    "pred_shape, target_shape",
    [((2, 4, 17, 3), (2, 4, 16, 3)), ((4, 17, 3), (4, 17, 3)), ((2, 4, 17, 2), (2, 4, 17, 2))],
)
def test_losses_reject_bad_shapes(loss, pred_shape, target_shape):
    with pytest.raises(ValueError):
        loss(jnp.zeros(pred_shape), jnp.zeros(target_shape))
