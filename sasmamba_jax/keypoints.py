"""2D keypoints from detectors, made ready for the model.

A user's keypoints go through four steps, all in numpy, in this order
(`prepare_keypoints` runs them; each is also usable alone):

1. Check shapes and split off confidences: (T, 17, 2) x, y, or (T, 17, 3)
   x, y, confidence, or x, y plus a separate (T, 17) confidence array.
2. Reorder to the Human3.6M-17 joints of `skeleton.JOINT_NAMES`, either
   unchanged (``"h36m"``) or derived from the 17 COCO keypoints (``"coco"``,
   what RTMPose, MMPose, ViTPose and OpenPose's COCO model emit) by
   `coco_to_h36m`.
3. Fill missing keypoints (NaN coordinates, or confidence 0 or NaN) by
   linear interpolation over time, joint by joint (`fill_missing`).
4. Normalise pixels by the image size, as the release does for Human3.6M
   (`normalize_by_image_size`): ``xy / W * 2 - [1, H / W]``, so x spans
   [-1, 1] and y keeps the aspect ratio.

Letters: T frames, J = 17 joints.
"""

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np

from sasmamba_jax import skeleton
from sasmamba_jax.data.h36m import normalize_screen_coordinates

FORMATS = ("h36m", "coco")

COCO_JOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# Each Human3.6M joint is the mean of these COCO keypoints, its confidence the
# minimum of theirs:
#   pelvis = (left_hip + right_hip) / 2
#   spine  = (pelvis + thorax) / 2 = (left_hip + right_hip + left_shoulder + right_shoulder) / 4
#   thorax = (left_shoulder + right_shoulder) / 2
#   neck   = nose (Human3.6M's joint 9 is the neck/nose point)
#   head   = (left_eye + right_eye) / 2
#   limbs  = the COCO keypoint of the same name and side.
# This is the conversion MotionBERT-family models (the release among them) are
# used with; Human3.6M's head joint sits a little above the eyes.
COCO_TO_H36M_SOURCES = (
    (11, 12),  # pelvis
    (12,),  # right_hip
    (14,),  # right_knee
    (16,),  # right_ankle
    (11,),  # left_hip
    (13,),  # left_knee
    (15,),  # left_ankle
    (5, 6, 11, 12),  # spine
    (5, 6),  # thorax
    (0,),  # neck
    (1, 2),  # head
    (5,),  # left_shoulder
    (7,),  # left_elbow
    (9,),  # left_wrist
    (6,),  # right_shoulder
    (8,),  # right_elbow
    (10,),  # right_wrist
)


@dataclasses.dataclass(frozen=True)
class PreparedKeypoints:
    """Keypoints in Human3.6M order with nothing missing.

    Attributes:
        xy: (T, 17, 2) float32 x, y in the units they came in (pixels when an
            image size was given), missing points filled.
        normalised: (T, 17, 2) float32 x, y in the model's screen
            normalisation (equal to ``xy`` when no image size was given).
        confidences: (T, 17) float32 detector confidences (0 where a point was
            missing, including filled ones), or None when none were given.
        filled: (T, 17) bool, True where a point was missing and filled.
        image_size: (W, H) in pixels, or None.
    """

    xy: np.ndarray
    normalised: np.ndarray
    confidences: np.ndarray | None
    filled: np.ndarray
    image_size: tuple[float, float] | None

    def model_input(self, in_chans: int) -> np.ndarray:
        """The (T, 17, in_chans) float32 input of a model with `in_chans` channels.

        Raises:
            ValueError: `in_chans` is not 2 or 3, or it is 3 (x, y, confidence,
                e.g. an MPI-INF-3DHP model) and no confidences were given.
        """
        if in_chans == 2:
            return self.normalised
        if in_chans == 3:
            if self.confidences is None:
                raise ValueError(
                    "the model takes 3 input channels (x, y, confidence) but no confidences "
                    "were given: pass (T, 17, 3) keypoints or confidences=(T, 17)"
                )
            return np.concatenate([self.normalised, self.confidences[..., None]], axis=-1)
        raise ValueError(f"models with {in_chans} input channels are not supported (expected 2 or 3)")


def split_confidences(keypoints, confidences=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks a keypoint sequence and separates x, y from the confidences.

    Args:
        keypoints: (T, 17, 2) x, y or (T, 17, 3) x, y, confidence; NaN marks
            a missing point.
        confidences: optional (T, 17) (or (T, 17, 1)) confidences; only with
            2-channel keypoints.

    Returns:
        xy: (T, 17, 2) float64.
        confidences: (T, 17) float64, or None.

    Raises:
        ValueError: wrong number of dimensions, joints or channels, no frames,
            infinite coordinates, confidences given twice or of the wrong shape.
    """
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3:
        hint = " (a single frame needs a leading frame axis: keypoints[None])" if keypoints.ndim == 2 else ""
        raise ValueError(
            f"keypoints must have shape (T, {skeleton.NUM_JOINTS}, 2|3), got {keypoints.shape}{hint}"
        )
    frames, joints, channels = keypoints.shape
    if joints != skeleton.NUM_JOINTS:
        raise ValueError(f"wrong joint count: expected {skeleton.NUM_JOINTS} joints per frame, got {joints}")
    if channels not in (2, 3):
        raise ValueError(
            f"wrong channel count: expected 2 (x, y) or 3 (x, y, confidence) channels, got {channels}"
        )
    if frames == 0:
        raise ValueError("empty sequence: keypoints have no frames")
    if np.isinf(keypoints).any():
        raise ValueError("keypoints contain infinite values (use NaN to mark a missing point)")
    xy = keypoints[..., :2]
    if channels == 3:
        if confidences is not None:
            raise ValueError("confidences given twice: as a third keypoint channel and as `confidences`")
        return xy, keypoints[..., 2]
    if confidences is None:
        return xy, None
    confidences = np.asarray(confidences, np.float64)
    if confidences.shape == (frames, joints, 1):
        confidences = confidences[..., 0]
    if confidences.shape != (frames, joints):
        raise ValueError(f"confidences must have shape ({frames}, {joints}), got {confidences.shape}")
    return xy, confidences


def missing_mask(xy: np.ndarray, confidences: np.ndarray | None) -> np.ndarray:
    """(T, J) True where a point is missing: a NaN coordinate, or confidence 0 or NaN."""
    missing = np.isnan(xy).any(axis=-1)
    if confidences is not None:
        missing |= (confidences == 0) | np.isnan(confidences)
    return missing


def coco_to_h36m(xy: np.ndarray, confidences: np.ndarray | None = None):
    """Converts COCO-17 keypoints to Human3.6M-17 (formulas at `COCO_TO_H36M_SOURCES`).

    Missing COCO points (see `missing_mask`) make every joint derived from
    them missing (NaN).

    Args:
        xy: (T, 17, 2) COCO keypoints.
        confidences: optional (T, 17) COCO confidences.

    Returns:
        xy: (T, 17, 2) Human3.6M keypoints, NaN where a source was missing.
        confidences: (T, 17) minimum confidence of each joint's sources (NaN
            where one was NaN), or None.
    """
    xy = np.where(missing_mask(xy, confidences)[..., None], np.nan, xy)
    h36m_xy = np.stack([xy[:, sources].mean(axis=1) for sources in COCO_TO_H36M_SOURCES], axis=1)
    if confidences is None:
        return h36m_xy, None
    h36m_confidences = np.stack(
        [confidences[:, sources].min(axis=1) for sources in COCO_TO_H36M_SOURCES], axis=1
    )
    return h36m_xy, h36m_confidences


def fill_missing(
    xy: np.ndarray,
    missing: np.ndarray,
    *,
    joint_names: Sequence[str] = skeleton.JOINT_NAMES,
) -> np.ndarray:
    """Fills missing points by linear interpolation over time, joint by joint.

    Each coordinate of a joint is interpolated between the nearest frames
    where that joint is present; before the first and after the last such
    frame it takes the nearest present value. Warns (``UserWarning``) with the
    number of points filled.

    Args:
        xy: (T, J, 2) keypoints.
        missing: (T, J) bool, True where a point is missing.
        joint_names: J names used in messages.

    Returns:
        (T, J, 2) keypoints with every missing point filled.

    Raises:
        ValueError: a joint is missing in every frame.
    """
    absent = [joint_names[j] for j in np.flatnonzero(missing.all(axis=0))]
    if absent:
        raise ValueError(
            f"joint(s) {', '.join(absent)} missing in every frame (NaN or zero confidence); "
            "cannot fill them by interpolation"
        )
    if not missing.any():
        return xy
    filled = xy.copy()
    frames = np.arange(xy.shape[0])
    counts = []
    for joint in np.flatnonzero(missing.any(axis=0)):
        present = ~missing[:, joint]
        for channel in range(xy.shape[-1]):
            filled[:, joint, channel] = np.interp(frames, frames[present], xy[present, joint, channel])
        counts.append(f"{joint_names[joint]}: {int(missing[:, joint].sum())}")
    warnings.warn(
        f"filled {int(missing.sum())} missing keypoint(s) by interpolation over time ({'; '.join(counts)})",
        UserWarning,
        stacklevel=2,
    )
    return filled


def check_image_size(image_size) -> tuple[float, float]:
    """Returns `image_size` as (W, H) floats, both finite and positive.

    Raises:
        ValueError: not two finite positive numbers.
    """
    try:
        width, height = (float(value) for value in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (W, H), two numbers, got {image_size!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in (width, height)):
        raise ValueError(f"image_size must be finite and positive, got ({width}, {height})")
    return width, height


def normalize_by_image_size(xy: np.ndarray, image_size) -> np.ndarray:
    """Pixels to the release's screen normalisation: ``xy / W * 2 - [1, H / W]``.

    Args:
        xy: (..., J, 2) pixel coordinates.
        image_size: (W, H) in pixels.

    Returns:
        (..., J, 2) float32: x in [-1, 1] across the image, y in [-H/W, H/W].
    """
    width, height = check_image_size(image_size)
    return normalize_screen_coordinates(xy, width, height)


def _joint_names(keypoint_format: str) -> tuple[str, ...]:
    """Human3.6M joint names, with their COCO sources where those are named otherwise."""
    if keypoint_format == "h36m":
        return skeleton.JOINT_NAMES
    names = []
    for name, sources in zip(skeleton.JOINT_NAMES, COCO_TO_H36M_SOURCES):
        source_names = [COCO_JOINT_NAMES[s] for s in sources]
        names.append(name if source_names == [name] else f"{name} (from COCO {', '.join(source_names)})")
    return tuple(names)


def prepare_keypoints(
    keypoints,
    *,
    keypoint_format: str = "h36m",
    image_size=None,
    confidences=None,
) -> PreparedKeypoints:
    """Checks, converts, fills and normalises a keypoint sequence.

    Args:
        keypoints: (T, 17, 2) x, y or (T, 17, 3) x, y, confidence, in pixels
            if `image_size` is given, else already normalised; in the order of
            `keypoint_format`. NaN, or confidence 0, marks a missing point.
        keypoint_format: ``"h36m"`` (`skeleton.JOINT_NAMES`) or ``"coco"``
            (`COCO_JOINT_NAMES`).
        image_size: (W, H) in pixels, or None.
        confidences: optional (T, 17) confidences for 2-channel keypoints.

    Returns:
        A `PreparedKeypoints`.

    Raises:
        ValueError: any bad input (see `split_confidences`), an unknown
            format, a bad image size, or a joint missing in every frame.
    """
    if keypoint_format not in FORMATS:
        raise ValueError(f"unknown keypoint format {keypoint_format!r}; expected one of {FORMATS}")
    if image_size is not None:
        image_size = check_image_size(image_size)
    xy, confidences = split_confidences(keypoints, confidences)
    if keypoint_format == "coco":
        xy, confidences = coco_to_h36m(xy, confidences)
    missing = missing_mask(xy, confidences)
    xy = fill_missing(xy, missing, joint_names=_joint_names(keypoint_format)).astype(np.float32)
    if confidences is not None:
        confidences = np.where(missing, 0.0, confidences).astype(np.float32)
    normalised = xy if image_size is None else normalize_by_image_size(xy, image_size)
    return PreparedKeypoints(
        xy=xy, normalised=normalised, confidences=confidences, filled=missing, image_size=image_size
    )
