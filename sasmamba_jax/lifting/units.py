"""Lifted poses in metres: scaled so that the person stands a given height.

The model's poses are root-relative in normalised units (2 per image width),
which say nothing about how big the person is. Given the person's height,
`scale_to_height` multiplies each person's poses by one number so that their
standing height, measured on the lifted bones, equals it.

The standing height (`chain_lengths`, per frame) is the length of the
ankle-to-head chain of bones, Human3.6M joints (`skeleton.JOINT_NAMES`):

    leg   = mean over right and left of |ankle - knee| + |knee - hip|
    trunk = |pelvis - spine| + |spine - thorax| + |thorax - neck| + |neck - head|
    chain = leg + trunk

The hip-to-pelvis bones are left out: they run sideways, across the body,
and add width, not height (the hip joints stand level with the pelvis).
Bone lengths rather than vertical extents are summed, so a frame where the
person bends, sits or turns measures the same as one where they stand
upright. The chain stops at the ankle and head joints, so it is a little
shorter than a stature (sole to crown). `standing_height` is the median
chain over the frames where every joint of it is present (NaN frames, a
person absent, are ignored), which a few badly lifted frames do not move.

Letters: T frames, J = 17 joints.
"""

import math
import numbers

import numpy as np

from sasmamba_jax import skeleton

# (hip, knee, ankle) of the right and left legs, and the trunk from the pelvis up to the head.
_LEGS = tuple(
    tuple(skeleton.JOINT_NAMES.index(f"{side}_{joint}") for joint in ("hip", "knee", "ankle"))
    for side in ("right", "left")
)
_TRUNK = tuple(skeleton.JOINT_NAMES.index(name) for name in ("pelvis", "spine", "thorax", "neck", "head"))


def check_subject_height(subject_height, name: str = "subject_height") -> float:
    """`subject_height` as a float after checking it is a positive finite number (metres).

    Raises:
        ValueError: anything else, in one line naming `name`.
    """
    if (
        isinstance(subject_height, bool)
        or not isinstance(subject_height, numbers.Real)
        or not math.isfinite(subject_height)
        or subject_height <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number of metres, got {subject_height!r}")
    return float(subject_height)


def chain_lengths(poses) -> np.ndarray:
    """(..., T) ankle-to-head chain of every frame of (..., T, 17, 3) poses (module docstring).

    NaN where a joint of the chain is NaN.
    """
    poses = np.asarray(poses, np.float64)

    def length(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(poses[..., a, :] - poses[..., b, :], axis=-1)

    right, left = (length(ankle, knee) + length(knee, hip) for hip, knee, ankle in _LEGS)
    trunk = sum(length(lower, upper) for lower, upper in zip(_TRUNK[:-1], _TRUNK[1:]))
    return (right + left) / 2 + trunk


def standing_height(poses):
    """The median ankle-to-head chain of a person's poses, in the poses' unit (module docstring).

    Args:
        poses: (T, 17, 3) poses of one person, or (..., T, 17, 3) of several;
            NaN in the frames a person is absent from.

    Returns:
        A float for (T, 17, 3), else a (...) float64 array, one height per person.

    Raises:
        ValueError: a wrong shape, or a person with no frame where every
            joint of the chain is present, or whose chain has no length.
    """
    poses = np.asarray(poses, np.float64)
    if poses.ndim < 3 or poses.shape[-2:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"poses must have shape (..., T, {skeleton.NUM_JOINTS}, 3), got {poses.shape}")
    chains = chain_lengths(poses)
    measured = np.isfinite(chains)
    if not measured.any(axis=-1).all():
        raise ValueError(
            "cannot measure the standing height: no frame has every joint from the ankles to the head"
        )
    heights = np.nanmedian(np.where(measured, chains, np.nan), axis=-1)
    if not (heights > 0).all():
        raise ValueError("cannot measure the standing height: the ankle-to-head bones have no length")
    return float(heights) if heights.ndim == 0 else heights


def scale_to_height(poses, subject_height):
    """Poses scaled so that each person's `standing_height` is `subject_height` metres.

    Each person (each (T, 17, 3) of the leading axes) is scaled by their own
    height, so every person comes out `subject_height` tall: their lifts'
    sizes in normalised units depend on their distance from the camera, not
    on how tall they are.

    Args:
        poses: (T, 17, 3) or (..., T, 17, 3) root-relative poses in any unit
            (normalised, pixels), NaN where a person is absent.
        subject_height: the person's ankle-to-head height in metres, a
            positive finite number.

    Returns:
        The poses in metres, of the input's float dtype (float64 for others).

    Raises:
        ValueError: a bad `subject_height`, or poses `standing_height` refuses.
    """
    subject_height = check_subject_height(subject_height)
    poses = np.asarray(poses)
    dtype = poses.dtype if np.issubdtype(poses.dtype, np.floating) else np.float64
    factors = subject_height / np.asarray(standing_height(poses))
    return (poses * factors[..., None, None, None]).astype(dtype)
