"""2D keypoints from detectors, made ready for the model.

A user's keypoints go through four steps, all in numpy, in this order
(`prepare_keypoints` runs them; each is also usable alone):

1. Check shapes and split off confidences: (T, 17, 2) x, y, or (T, 17, 3)
   x, y, confidence, or x, y plus a separate (T, 17) confidence array.
2. Reorder to the Human3.6M-17 joints of `skeleton.JOINT_NAMES`, either
   unchanged (``"h36m"``) or derived from a detector's layout by `to_h36m`
   with the one table `LAYOUTS`: COCO-17 (``"coco"``, what RTMPose, MMPose
   and ViTPose emit), Halpe-26 (``"halpe26"``, AlphaPose), OpenPose's BODY_25
   (``"body25"``) and COCO-18 (``"coco18"``), COCO-WholeBody-133
   (``"wholebody133"``, its body part).
3. Fill missing keypoints (NaN coordinates, or confidence 0 or NaN) by
   linear interpolation over time, joint by joint (`fill_missing`).
4. Normalise pixels by the image size, as the release does for Human3.6M
   (`normalize_by_image_size`): ``xy / W * 2 - [1, H / W]``, so x spans
   [-1, 1] and y keeps the aspect ratio. Without an image size the keypoints
   must be normalised already; pixels are refused (`check_normalised`).

Letters: T frames, J = 17 joints.
"""

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np

from sasmamba_jax import skeleton
from sasmamba_jax.data.h36m import normalize_screen_coordinates

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

# Halpe-26, AlphaPose's body layout: COCO-17, then head top, neck, mid-hip and
# the feet (github.com/Fang-Haoshu/Halpe-FullBody README, "26 body keypoints").
HALPE26_JOINT_NAMES = COCO_JOINT_NAMES + (
    "head",
    "neck",
    "hip",
    "left_big_toe",
    "right_big_toe",
    "left_small_toe",
    "right_small_toe",
    "left_heel",
    "right_heel",
)

# OpenPose's BODY_25 (CMU-Perceptual-Computing-Lab/openpose doc/02_output.md,
# "Pose Output Format (BODY_25)"; include/openpose/pose/poseParameters.hpp).
BODY25_JOINT_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "mid_hip",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
)

# OpenPose's COCO-18 model: BODY_25 without mid-hip and feet
# (same document, "Pose Output Format (COCO)").
COCO18_JOINT_NAMES = BODY25_JOINT_NAMES[:8] + BODY25_JOINT_NAMES[9:19]

# COCO-WholeBody-133: the 17 COCO body keypoints first, then 6 feet, 68 face
# and 2 x 21 hand points (github.com/jin-s13/COCO-WholeBody, data format);
# only the body part is read.
WHOLEBODY133_JOINT_NAMES = COCO_JOINT_NAMES + tuple(f"wholebody_{k}" for k in range(17, 133))


@dataclasses.dataclass(frozen=True)
class KeypointLayout:
    """A detector's keypoint order and how each Human3.6M joint is made from it.

    Attributes:
        name: the layout's name, a key of `LAYOUTS`.
        title: how people write it (``"COCO"``, ``"Halpe-26"``), for messages.
        joint_names: the K keypoint names in the detector's order.
        h36m_sources: for each of the 17 joints of `skeleton.JOINT_NAMES`, the
            keypoint indices whose mean is that joint (an index may repeat to
            weight it).
    """

    name: str
    title: str
    joint_names: tuple[str, ...]
    h36m_sources: tuple[tuple[int, ...], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.joint_names)


def _layout(name: str, title: str, joint_names: tuple[str, ...], **formulas: Sequence[str]) -> KeypointLayout:
    """A layout whose Human3.6M joints are the keypoints of the same name unless `formulas` says otherwise."""
    sources = []
    for joint in skeleton.JOINT_NAMES:
        source_names = formulas.get(joint, (joint,))
        sources.append(tuple(joint_names.index(source) for source in source_names))
    return KeypointLayout(name, title, joint_names, tuple(sources))


# The one table from every supported layout to Human3.6M-17. Human3.6M's
# joint 9 ("neck") is the neck/nose point and its head joint sits a little
# above the eyes; MotionBERT-family models (the release among them) are used
# with these conversions. Where a layout has a keypoint for a joint (Halpe's
# head, neck and hip; BODY_25's neck and mid-hip; COCO-18's neck) it is used
# rather than estimated; otherwise
#   pelvis = mid-hip, thorax = mid-shoulder, spine = (pelvis + thorax) / 2,
#   head = mid-eye, neck = nose.
# A derived joint's confidence is the minimum of its sources'.
_HIPS = ("left_hip", "right_hip")
_SHOULDERS = ("left_shoulder", "right_shoulder")
_EYES = ("left_eye", "right_eye")
LAYOUTS = {
    layout.name: layout
    for layout in (
        _layout("h36m", "Human3.6M", skeleton.JOINT_NAMES),
        _layout(
            "coco",
            "COCO",
            COCO_JOINT_NAMES,
            pelvis=_HIPS,
            spine=_HIPS + _SHOULDERS,
            thorax=_SHOULDERS,
            neck=("nose",),
            head=_EYES,
        ),
        _layout(
            "halpe26",
            "Halpe-26",
            HALPE26_JOINT_NAMES,
            pelvis=("hip",),
            spine=("hip", "neck"),
            thorax=("neck",),
            neck=("nose",),
            head=("head",),
        ),
        _layout(
            "body25",
            "BODY_25",
            BODY25_JOINT_NAMES,
            pelvis=("mid_hip",),
            spine=("mid_hip", "neck"),
            thorax=("neck",),
            neck=("nose",),
            head=_EYES,
        ),
        _layout(
            "coco18",
            "COCO-18",
            COCO18_JOINT_NAMES,
            pelvis=_HIPS,
            spine=_HIPS + ("neck", "neck"),
            thorax=("neck",),
            neck=("nose",),
            head=_EYES,
        ),
        _layout(
            "wholebody133",
            "COCO-WholeBody-133",
            WHOLEBODY133_JOINT_NAMES,
            pelvis=_HIPS,
            spine=_HIPS + _SHOULDERS,
            thorax=_SHOULDERS,
            neck=("nose",),
            head=_EYES,
        ),
    )
}
FORMATS = tuple(LAYOUTS)


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


def _layout_hint(num_keypoints: int) -> str:
    """Names the layouts that have `num_keypoints` points, for error messages."""
    names = [f"{lay.title} ({name})" for name, lay in LAYOUTS.items() if lay.num_keypoints == num_keypoints]
    return f"; {num_keypoints} is the keypoint count of {' or '.join(names)}" if names else ""


def split_confidences(
    keypoints, confidences=None, *, keypoint_format: str = "h36m"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks a keypoint sequence and separates x, y from the confidences.

    Args:
        keypoints: (T, K, 2) x, y or (T, K, 3) x, y, confidence, K the
            keypoint count of `keypoint_format` (17 for the default h36m);
            NaN marks a missing point.
        confidences: optional (T, K) (or (T, K, 1)) confidences; only with
            2-channel keypoints.
        keypoint_format: a key of `LAYOUTS`.

    Returns:
        xy: (T, K, 2) float64.
        confidences: (T, K) float64, or None.

    Raises:
        ValueError: wrong number of dimensions, joints or channels, no frames,
            infinite coordinates, confidences given twice or of the wrong shape.
    """
    expected = get_layout(keypoint_format).num_keypoints
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3:
        hint = " (a single frame needs a leading frame axis: keypoints[None])" if keypoints.ndim == 2 else ""
        raise ValueError(f"keypoints must have shape (T, {expected}, 2|3), got {keypoints.shape}{hint}")
    frames, joints, channels = keypoints.shape
    if joints != expected:
        raise ValueError(
            f"wrong joint count: {keypoint_format} expects {expected} joints per frame, "
            f"got {joints}{_layout_hint(joints)}"
        )
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


def get_layout(keypoint_format: str) -> KeypointLayout:
    """The `LAYOUTS` entry of `keypoint_format`.

    Raises:
        ValueError: an unknown format.
    """
    if keypoint_format not in LAYOUTS:
        raise ValueError(f"unknown keypoint format {keypoint_format!r}; expected one of {FORMATS}")
    return LAYOUTS[keypoint_format]


def to_h36m(xy: np.ndarray, confidences: np.ndarray | None, keypoint_format: str):
    """Converts a detector's keypoints to Human3.6M-17 with the `LAYOUTS` table.

    Missing source points (see `missing_mask`) make every joint derived from
    them missing (NaN).

    Args:
        xy: (..., K, 2) keypoints in the order of `keypoint_format`.
        confidences: optional (..., K) confidences.
        keypoint_format: a key of `LAYOUTS`.

    Returns:
        xy: (..., 17, 2) Human3.6M keypoints, NaN where a source was missing.
        confidences: (..., 17) minimum confidence of each joint's sources (NaN
            where one was NaN), or None.

    Raises:
        ValueError: an unknown format, or K not the format's keypoint count.
    """
    layout = get_layout(keypoint_format)
    if xy.shape[-2] != layout.num_keypoints:
        raise ValueError(
            f"{keypoint_format} keypoints come {layout.num_keypoints} per frame, got {xy.shape[-2]}"
        )
    xy = np.where(missing_mask(xy, confidences)[..., None], np.nan, xy)
    h36m_xy = np.stack([xy[..., sources, :].mean(axis=-2) for sources in layout.h36m_sources], axis=-2)
    if confidences is None:
        return h36m_xy, None
    h36m_confidences = np.stack(
        [confidences[..., sources].min(axis=-1) for sources in layout.h36m_sources], axis=-1
    )
    return h36m_xy, h36m_confidences


def coco_to_h36m(xy: np.ndarray, confidences: np.ndarray | None = None):
    """`to_h36m` for COCO-17 keypoints: (T, 17, 2) [and (T, 17)] -> Human3.6M-17."""
    return to_h36m(xy, confidences, "coco")


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
    """Human3.6M joint names, with their sources where those are named otherwise."""
    layout = get_layout(keypoint_format)
    names = []
    for name, sources in zip(skeleton.JOINT_NAMES, layout.h36m_sources):
        source_names = list(dict.fromkeys(layout.joint_names[s] for s in sources))
        sourced = f"{name} (from {layout.title} {', '.join(source_names)})"
        names.append(name if source_names == [name] else sourced)
    return tuple(names)


# Normalised screen coordinates (``xy / W * 2 - [1, H / W]``) have x within
# [-1, 1] across the image, whatever its shape, and y within [-H/W, H/W]
# (+-1.78 for a portrait 9:16 video); a detector's guess off the image lies a
# little beyond. Keypoints given as normalised with a present point beyond
# these bounds are pixels, and refused: without the image size they cannot be
# normalised.
NORMALISED_BOUNDS = (2.0, 4.0)  # |x|, |y|


def check_normalised(
    xy: np.ndarray, confidences: np.ndarray | None = None, *, fix: str = "image_size=(W, H)"
) -> None:
    """Refuses keypoints taken as normalised that are pixels (see `NORMALISED_BOUNDS`).

    Args:
        xy: (..., K, 2) keypoints; missing points (`missing_mask`) are ignored.
        confidences: optional (..., K) confidences.
        fix: how the caller gives the image size, for the message.

    Raises:
        ValueError: a present point's |x| or |y| beyond `NORMALISED_BOUNDS`.
    """
    points = np.asarray(xy)[~missing_mask(xy, confidences)]
    if not points.size:
        return
    x_max, y_max = np.abs(points).max(axis=0)
    if x_max > NORMALISED_BOUNDS[0] or y_max > NORMALISED_BOUNDS[1]:
        raise ValueError(
            f"the keypoints look like pixels (|x| up to {x_max:.6g}, |y| up to {y_max:.6g}) but no image "
            f"size was given to normalise them (normalised x lies within [-1, 1]): give {fix}"
        )


def prepare_keypoints(
    keypoints,
    *,
    keypoint_format: str = "h36m",
    image_size=None,
    confidences=None,
) -> PreparedKeypoints:
    """Checks, converts, fills and normalises a keypoint sequence.

    Args:
        keypoints: (T, K, 2) x, y or (T, K, 3) x, y, confidence, in pixels
            if `image_size` is given, else already normalised (pixels are
            refused then, see `check_normalised`); in the order of
            `keypoint_format` (K its keypoint count). NaN, or confidence 0,
            marks a missing point.
        keypoint_format: a key of `LAYOUTS`: ``"h36m"``
            (`skeleton.JOINT_NAMES`), ``"coco"`` (`COCO_JOINT_NAMES`),
            ``"halpe26"``, ``"body25"``, ``"coco18"`` or ``"wholebody133"``.
        image_size: (W, H) in pixels, or None.
        confidences: optional (T, K) confidences for 2-channel keypoints.

    Returns:
        A `PreparedKeypoints`.

    Raises:
        ValueError: any bad input (see `split_confidences`), an unknown
            format, a bad image size, pixels without an image size, or a
            joint missing in every frame.
    """
    get_layout(keypoint_format)
    if image_size is not None:
        image_size = check_image_size(image_size)
    xy, confidences = split_confidences(keypoints, confidences, keypoint_format=keypoint_format)
    if image_size is None:
        check_normalised(xy, confidences)
    if keypoint_format != "h36m":
        xy, confidences = to_h36m(xy, confidences, keypoint_format)
    missing = missing_mask(xy, confidences)
    xy = fill_missing(xy, missing, joint_names=_joint_names(keypoint_format)).astype(np.float32)
    if confidences is not None:
        confidences = np.where(missing, 0.0, confidences).astype(np.float32)
    normalised = xy if image_size is None else normalize_by_image_size(xy, image_size)
    return PreparedKeypoints(
        xy=xy, normalised=normalised, confidences=confidences, filled=missing, image_size=image_size
    )
