"""Horizontal flip of pose sequences, the release's only augmentation.

Works on numpy and jax arrays alike (also under `jax.jit`), so the data
pipeline and the test-time flip of model outputs share one definition.
"""

import numpy as np

from sasmamba_jax import skeleton


def flip_pose(poses, permutation=skeleton.FLIP_PERMUTATION):
    """Mirrors poses left-right.

    Channel 0 (x) is negated and left and right joints trade places; the other
    channels (y, depth, confidence) are only reordered with their joint.
    Flipping twice gives the input back.

    Args:
      poses: (..., J, C) numpy or jax array, C >= 1; J must match `permutation`.
      permutation: J joint indices; joint j of the output is joint
        `permutation[j]` of the input. Defaults to the Human3.6M order; pass
        `mpi3dhp.FLIP_PERMUTATION` for MPI-INF-3DHP poses.

    Returns:
      Array of the same type, shape and dtype as `poses`.
    """
    permutation = np.asarray(permutation)
    if poses.ndim < 2 or poses.shape[-2] != permutation.size:
        raise ValueError(f"poses must have shape (..., {permutation.size}, C), got {tuple(poses.shape)}")
    # A sign vector in the input's dtype keeps numpy from promoting float32 to
    # float64 and jax from promoting bfloat16.
    sign = np.ones(poses.shape[-1], dtype=poses.dtype)
    sign[0] = -1
    return poses[..., permutation, :] * sign
