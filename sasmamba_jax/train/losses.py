"""The release's training loss for 3D pose sequences.

total = mpjpe + 0.5 * n_mpjpe + 20 * velocity, on predictions and targets of
shape (B, T, J, 3): B clips, T frames, J joints. The release also computes
limb and angle terms but weights them by 0, so they are left out here.

Losses are computed in float32 whatever the input dtype, and shapes are
checked at trace time, so every function can be jitted.
"""

import jax.numpy as jnp

MPJPE_WEIGHT = 1.0
N_MPJPE_WEIGHT = 0.5
VELOCITY_WEIGHT = 20.0


def _check_poses(pred, target):
    """Returns `pred` and `target` in float32, checking they are (B, T, J, 3)."""
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"poses must have shape (B, T, J, 3), got {pred.shape}")
    return pred, target


def _safe_norm(x):
    """Euclidean norm over the last axis whose gradient is 0 where the norm is 0.

    PyTorch's `torch.norm` backward gives 0 at the origin; the plain
    sqrt(sum(x**2)) gives NaN there, which a perfect joint would spread to every
    parameter.
    """
    squared = jnp.sum(x * x, axis=-1)
    is_zero = squared == 0
    # The inner `where` keeps sqrt's derivative away from 0 on the unused branch.
    return jnp.where(is_zero, 0.0, jnp.sqrt(jnp.where(is_zero, 1.0, squared)))


def mpjpe_loss(pred, target):
    """Mean per-joint position error.

    Args:
      pred: (B, T, J, 3) predicted joint positions.
      target: (B, T, J, 3) target joint positions.

    Returns:
      Scalar mean over B, T and J of the Euclidean error.
    """
    pred, target = _check_poses(pred, target)
    return jnp.mean(_safe_norm(pred - target))


def n_mpjpe_loss(pred, target):
    """MPJPE after scaling each predicted frame by its least-squares scale.

    For every (clip, frame) the prediction is multiplied by
    s = sum_j <target_j, pred_j> / sum_j |pred_j|^2, the scale that best fits it
    to the target. The scale is not detached, so gradients flow through it, as
    in the release. A frame predicted as all zeros gets scale 1 instead of 0/0.

    Args:
      pred: (B, T, J, 3) predicted joint positions.
      target: (B, T, J, 3) target joint positions.

    Returns:
      Scalar mean over B, T and J of the Euclidean error of the scaled prediction.
    """
    pred, target = _check_poses(pred, target)
    pred_energy = jnp.sum(pred * pred, axis=(-2, -1), keepdims=True)
    correlation = jnp.sum(target * pred, axis=(-2, -1), keepdims=True)
    is_zero = pred_energy == 0
    scale = jnp.where(is_zero, 1.0, correlation / jnp.where(is_zero, 1.0, pred_energy))
    return jnp.mean(_safe_norm(scale * pred - target))


def velocity_loss(pred, target):
    """Mean per-joint error of the first temporal difference.

    Args:
      pred: (B, T, J, 3) predicted joint positions.
      target: (B, T, J, 3) target joint positions.

    Returns:
      Scalar mean over B, T - 1 and J of |(pred[t+1] - pred[t]) - (target[t+1] - target[t])|;
      0 when T == 1.
    """
    pred, target = _check_poses(pred, target)
    if pred.shape[1] == 1:
        return jnp.zeros((), jnp.float32)
    error = pred - target
    return jnp.mean(_safe_norm(error[:, 1:] - error[:, :-1]))


def pose_loss(pred, target):
    """The release's training objective.

    Args:
      pred: (B, T, J, 3) predicted joint positions.
      target: (B, T, J, 3) target joint positions.

    Returns:
      (total, terms): the scalar weighted sum and a dict of the unweighted
      scalar terms "mpjpe", "n_mpjpe" and "velocity".
    """
    terms = {
        "mpjpe": mpjpe_loss(pred, target),
        "n_mpjpe": n_mpjpe_loss(pred, target),
        "velocity": velocity_loss(pred, target),
    }
    total = (
        MPJPE_WEIGHT * terms["mpjpe"]
        + N_MPJPE_WEIGHT * terms["n_mpjpe"]
        + VELOCITY_WEIGHT * terms["velocity"]
    )
    return total, terms
