"""Evaluation metrics for 3D pose sequences, in numpy.

All metrics take a prediction and a target of shape (N, J, 3): N frames (or
poses), J joints, coordinates in millimetres for the published numbers. Each
returns one value per frame so the caller decides how to pool (the release
averages frames covered by several clips, then averages per action).

Definitions follow the release (`loss/pose3d.py`) for MPJPE, P-MPJPE and the
acceleration error, and the MPI-INF-3DHP test-set script
(`mpii_compute_3d_pck.m`, which the release and P-STMO rely on) for PCK and
AUC.
"""

import numpy as np

# Joints scored by PCK/AUC on MPI-INF-3DHP, as indices into the 17-joint
# "relevant" order of that dataset (root = 14). The official test script
# groups head-top, neck, shoulders, elbows, wrists, hips, knees and ankles
# (indices 0-13) and leaves out the pelvis (14, the root, error 0 after root
# alignment), the spine (15) and the head (16).
MPI_INF_3DHP_PCK_JOINTS = tuple(range(14))

# Thresholds of the 3DHP PCK curve, 0 to 150 mm in steps of 5 mm.
PCK_CURVE_THRESHOLDS_MM = np.linspace(0.0, 150.0, 31)
PCK_CURVE_THRESHOLDS_MM.setflags(write=False)  # shared as a default argument


def _check_poses(pred, target):
    """Returns `pred` and `target` as float64 arrays, checking they are (N, J, 3)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"poses must have shape (N, J, 3), got {pred.shape}")
    return pred, target


def per_joint_error(pred, target):
    """Euclidean distance between predicted and target joints.

    Args:
      pred: (N, J, 3) predicted joint positions.
      target: (N, J, 3) target joint positions.

    Returns:
      (N, J) distances.
    """
    pred, target = _check_poses(pred, target)
    return np.linalg.norm(pred - target, axis=-1)


def mpjpe(pred, target):
    """Mean per-joint position error (Protocol 1).

    Args:
      pred: (N, J, 3) predicted joint positions.
      target: (N, J, 3) target joint positions.

    Returns:
      (N,) mean over joints of the Euclidean error.
    """
    return per_joint_error(pred, target).mean(axis=-1)


def _similarity_align(pred, target):
    """Aligns each predicted pose to its target with a similarity transform.

    Solves min over rotation R (det +1), scale s and translation t of
    sum_j |s * pred_j @ R + t - target_j|^2 in closed form (Umeyama): the SVD of
    the cross-covariance gives R, with the last singular direction flipped when
    that is needed to exclude reflections.

    Args:
      pred: (N, J, 3) float64 predicted poses.
      target: (N, J, 3) float64 target poses.

    Returns:
      (N, J, 3) aligned predictions.
    """
    pred_mean = pred.mean(axis=1, keepdims=True)
    target_mean = target.mean(axis=1, keepdims=True)
    pred_centred = pred - pred_mean
    target_centred = target - target_mean

    cross_cov = np.einsum("nji,njk->nik", pred_centred, target_centred)
    u, singular_values, vt = np.linalg.svd(cross_cov)
    # A negative determinant means the best orthogonal map is a reflection; the
    # best rotation then gives up the weakest singular direction instead.
    reflection = np.linalg.det(u @ vt) < 0
    signs = np.ones_like(singular_values)
    signs[:, -1] = np.where(reflection, -1.0, 1.0)
    rotation = (u * signs[:, None, :]) @ vt

    scale = (singular_values * signs).sum(axis=-1) / (pred_centred**2).sum(axis=(1, 2))
    return scale[:, None, None] * (pred_centred @ rotation) + target_mean


def p_mpjpe(pred, target):
    """MPJPE after per-frame Procrustes alignment (Protocol 2).

    Each predicted pose is rotated (no reflection), uniformly scaled and
    translated to best fit its target in the least-squares sense before the
    error is measured.

    Args:
      pred: (N, J, 3) predicted joint positions.
      target: (N, J, 3) target joint positions.

    Returns:
      (N,) aligned mean per-joint position error.
    """
    pred, target = _check_poses(pred, target)
    aligned = _similarity_align(pred, target)
    return np.linalg.norm(aligned - target, axis=-1).mean(axis=-1)


def acceleration_error(pred, target):
    """Mean per-joint error of the second temporal difference.

    Args:
      pred: (N, J, 3) predicted joint positions of N consecutive frames, N >= 3.
      target: (N, J, 3) target joint positions.

    Returns:
      (N - 2,) for frame i, the mean over joints of
      |(pred[i] - 2 pred[i+1] + pred[i+2]) - (target[i] - 2 target[i+1] + target[i+2])|.
    """
    pred, target = _check_poses(pred, target)
    if pred.shape[0] < 3:
        raise ValueError(f"acceleration needs at least 3 frames, got {pred.shape[0]}")
    error = pred - target
    accel_error = error[:-2] - 2.0 * error[1:-1] + error[2:]
    return np.linalg.norm(accel_error, axis=-1).mean(axis=-1)


def _scored_joint_errors(pred, target, joints):
    """Returns (N, K) per-joint errors restricted to `joints` (all when None)."""
    errors = per_joint_error(pred, target)
    if joints is None:
        return errors
    joints = np.asarray(joints)
    num_joints = errors.shape[1]
    if joints.ndim != 1 or joints.size == 0 or not np.issubdtype(joints.dtype, np.integer):
        raise ValueError(f"joints must be a non-empty 1-D sequence of integers, got {joints!r}")
    if joints.min() < 0 or joints.max() >= num_joints:
        raise ValueError(f"joints {joints.tolist()} out of range for {num_joints} joints")
    return errors[:, joints]


def pck(pred, target, threshold=150.0, joints=None):
    """Percentage of correct keypoints, as a fraction, per frame.

    A joint is correct when its Euclidean error is strictly below `threshold`,
    as in the MPI-INF-3DHP test script. For that benchmark pass
    `joints=MPI_INF_3DHP_PCK_JOINTS`; the script reports 100 times this value.

    Args:
      pred: (N, J, 3) predicted joint positions.
      target: (N, J, 3) target joint positions.
      threshold: distance, in the units of the poses (mm for 3DHP's 150 mm).
      joints: indices of the joints to score; None scores all J.

    Returns:
      (N,) fraction of scored joints whose error is below `threshold`.
    """
    errors = _scored_joint_errors(pred, target, joints)
    return (errors < threshold).mean(axis=-1)


def auc(pred, target, thresholds=PCK_CURVE_THRESHOLDS_MM, joints=None):
    """Area under the PCK curve, as the mean PCK over `thresholds`, per frame.

    This is the MPI-INF-3DHP definition (31 thresholds from 0 to 150 mm, plain
    mean). The release's unused `auc` helper integrates with the trapezoid rule
    instead, which weights the two end thresholds by half and gives a different
    number.

    Args:
      pred: (N, J, 3) predicted joint positions.
      target: (N, J, 3) target joint positions.
      thresholds: (K,) distances at which PCK is taken.
      joints: indices of the joints to score; None scores all J.

    Returns:
      (N,) mean over thresholds of the fraction of correct joints.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D array, got shape {thresholds.shape}")
    errors = _scored_joint_errors(pred, target, joints)
    correct = errors[:, :, None] < thresholds
    return correct.mean(axis=(1, 2))
