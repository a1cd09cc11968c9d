"""The structure-aware stride scan: four scan orders over the (T, J) pose grid.

Dimension letters: B batch, T frames, J joints (17), E channels, K = 4 scan
directions, L = T * J sequence length.

``stride_scan`` turns a (B, T, J, E) map into K sequences of length L:

* direction 0: the stride-merged map ``g = x + x[:, :, s2] + x[:, :, s3]``,
  frame-major (position t * J + j), where every joint also sees the anchor
  joint of its stride-2 and stride-3 group;
* direction 1: ``x`` itself, joint-major (position j * T + t);
* directions 2 and 3: directions 0 and 1 reversed.

``stride_merge`` adds the four scanned sequences back onto the grid without
undoing the stride gathers (as the release does).

Gradients. The release's backward of the stride scan passes the gradient of
direction 0 straight to ``x`` and ignores the gathered terms; training with
its recorded steps requires the same, so that is the default
(``stride_grad="release"``). ``stride_grad="exact"`` uses the true adjoint.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

StrideGrad = Literal["release", "exact"]
STRIDE_GRADS = ("release", "exact")

NUM_DIRECTIONS = 4
STRIDE2_ANCHORS = np.array([0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14, 16])
STRIDE3_ANCHORS = np.array([0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 12, 12, 12, 15, 15])


def stride_scan(x: jax.Array, stride_grad: StrideGrad = "release") -> jax.Array:
    """Builds the four scan sequences.

    Args:
        x: (B, T, J, E) feature map, J = 17.
        stride_grad: "release" (the release's backward) or "exact".

    Returns:
        (B, L, K, E) sequences, L = T * J.
    """
    if x.shape[2] != len(STRIDE2_ANCHORS):
        raise ValueError(f"the stride scan needs J = {len(STRIDE2_ANCHORS)} joints, got {x.shape[2]}")
    if stride_grad == "exact":
        return _stride_scan_forward(x)
    if stride_grad == "release":
        return _stride_scan_release_grad(x)
    raise ValueError(f"unknown stride_grad {stride_grad!r}; expected one of {STRIDE_GRADS}")


def stride_merge(y: jax.Array, num_frames: int) -> jax.Array:
    """Adds the four scanned sequences back onto the pose grid.

    Args:
        y: (B, L, K, E) scan outputs, L = T * J.
        num_frames: T.

    Returns:
        (B, T, J, E): ``y0 + flip(y2)`` frame-major plus ``y1 + flip(y3)`` joint-major.
    """
    batch, length, _, channels = y.shape
    num_joints = length // num_frames
    frame_major = y[:, :, 0] + y[:, ::-1, 2]
    joint_major = y[:, :, 1] + y[:, ::-1, 3]
    joint_major = joint_major.reshape(batch, num_joints, num_frames, channels).transpose(0, 2, 1, 3)
    return frame_major.reshape(batch, num_frames, num_joints, channels) + joint_major


def _stride_merged_map(x):
    return x + x[:, :, STRIDE2_ANCHORS] + x[:, :, STRIDE3_ANCHORS]


def _stride_scan_forward(x):
    batch, frames, joints, channels = x.shape
    frame_major = _stride_merged_map(x).reshape(batch, frames * joints, channels)
    joint_major = x.transpose(0, 2, 1, 3).reshape(batch, frames * joints, channels)
    return jnp.stack([frame_major, joint_major, frame_major[:, ::-1], joint_major[:, ::-1]], axis=2)


@jax.custom_vjp
def _stride_scan_release_grad(x):
    return _stride_scan_forward(x)


def _release_fwd(x):
    return _stride_scan_forward(x), x.shape[1]


def _release_bwd(num_frames, grad):
    # The release's backward is the plain cross merge of the incoming
    # gradient: the gathered x[:, :, s2] and x[:, :, s3] terms get nothing.
    return (stride_merge(grad, num_frames),)


_stride_scan_release_grad.defvjp(_release_fwd, _release_bwd)
