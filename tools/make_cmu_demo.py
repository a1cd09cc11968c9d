"""Builds a small Human3.6M-format demo data set from CMU motion capture BVH takes.

Usage:
  python tools/make_cmu_demo.py --bvh 01_01.bvh 01_03.bvh \
      --output data/cmu_demo/h36m_cmu_s01.pkl --seed 0

The output is a plain pickle with the layout of MotionBERT's preprocessed
Human3.6M file (`h36m_sh_conf_cam_source_final.pkl`), so training and
evaluation read it through exactly the Human3.6M code path:

  {'train': {...}, 'test': {...}}, each with N frames:
    joint_2d           (N, 17, 2) float32  noisy 2D keypoints, pixels
    confidence         (N, 17, 1) float32  in [0, 1], lower for larger noise
    joint3d_image      (N, 17, 3) float32  x, y: exact projection in pixels;
                                           z: depth relative to the pelvis in
                                           the same pixel units
    joints_2.5d_image  (N, 17, 3) float32  joint3d_image * 2.5d_factor (mm)
    2.5d_factor        (N,)       float32  mm per pixel at the pelvis depth
    camera_name        list of N str       Human3.6M camera names
    source             list of N str       's_SS_act_TT_subact_01_ca_CC'
    action             list of N int       action id (the CMU trial number,
                                           as the act number in `source`)

Steps: parse the BVH hierarchy and motion, resample the joint rotations from
the capture rate to 50 fps (slerp, so the skeleton stays rigid), run forward
kinematics, keep 17 CMU joints in the Human3.6M order of
`sasmamba_jax.skeleton`, convert to millimetres, centre each take
horizontally, render it through fixed virtual cameras named and calibrated
like the Human3.6M ones (by default two of the four per take, so the file
stays small while every camera appears in both splits), add detector-like 2D
noise, and split it by time: the first 80 % to 'train', the rest to 'test'.

Image-space 3D follows LCN's Human3.6M preparation, which MotionBERT's file
comes from (MotionBERT issue #51: the factor is LCN's lambda): x, y are the
projection in pixels, and the depth relative to the pelvis is scaled by the
pixels per millimetre of a 2 m square at the pelvis depth, i.e. fx / Z_pelvis.
The 2.5d factor is its inverse, Z_pelvis / fx, so that
joint3d_image * 2.5d_factor has a depth in millimetres (LCN adds one pixel to
the square's width; we use the exact pinhole value).

World frame: the BVH axes (y up, the subject faces +z in the rest pose, floor
at y = 0), in millimetres.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from sasmamba_jax import skeleton


@dataclasses.dataclass(frozen=True)
class BvhSkeleton:
    """The hierarchy of a BVH file, end sites included as joints.

    Attributes:
      names: (J,) joint names; an end site is named after its parent plus "_end".
      parents: (J,) index of each joint's parent, -1 for the root. Parents come
        before their children.
      offsets: (J, 3) offset of each joint from its parent, in file units.
      channels: (J,) channel names of each joint in file order, e.g.
        ("Zrotation", "Yrotation", "Xrotation"); empty for end sites.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]

    def index(self, name: str) -> int:
        """Returns the index of the joint called `name`."""
        if name not in self.names:
            raise ValueError(f"no joint named {name!r} in the BVH hierarchy")
        return self.names.index(name)


@dataclasses.dataclass(frozen=True)
class BvhMotion:
    """A parsed BVH file.

    Attributes:
      skeleton: the hierarchy.
      frame_time: seconds between frames.
      values: (T, C) channel values of every frame, joints in hierarchy order and
        each joint's channels in file order; angles in degrees.
    """

    skeleton: BvhSkeleton
    frame_time: float
    values: np.ndarray


_POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
_ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")


def _parse_hierarchy(tokens) -> BvhSkeleton:
    """Parses the whitespace-separated tokens after HIERARCHY."""
    names, parents, offsets, channels = [], [], [], []
    stack = []  # Indices of the joints whose braces are open.
    pending = None  # (name, parent) of the joint whose opening brace comes next.
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if token in ("ROOT", "JOINT"):
            if (token == "ROOT") == bool(names):  # ROOT opens the hierarchy, JOINTs follow.
                raise ValueError("a BVH hierarchy has one ROOT, before every JOINT")
            pending = (tokens[position + 1], stack[-1] if stack else -1)
            position += 2
        elif token == "End":
            if tokens[position + 1] != "Site":
                raise ValueError("malformed End Site in BVH hierarchy")
            pending = (names[stack[-1]] + "_end", stack[-1])
            position += 2
        elif token == "{":
            if pending is None:
                raise ValueError("unexpected '{' in BVH hierarchy")
            names.append(pending[0])
            parents.append(pending[1])
            offsets.append(None)
            channels.append(())
            stack.append(len(names) - 1)
            pending = None
            position += 1
        elif token == "}":
            stack.pop()
            position += 1
        elif token == "OFFSET":
            offsets[stack[-1]] = [float(value) for value in tokens[position + 1 : position + 4]]
            position += 4
        elif token == "CHANNELS":
            count = int(tokens[position + 1])
            joint_channels = tuple(tokens[position + 2 : position + 2 + count])
            unknown = set(joint_channels) - set(_POSITION_CHANNELS + _ROTATION_CHANNELS)
            if unknown or len(joint_channels) != count:
                raise ValueError(f"bad BVH channels {joint_channels}")
            channels[stack[-1]] = joint_channels
            position += 2 + count
        else:
            raise ValueError(f"unexpected token {token!r} in BVH hierarchy")
    if stack or not names:
        raise ValueError("BVH hierarchy is empty or its braces are unbalanced")
    if any(offset is None or len(offset) != 3 for offset in offsets):
        raise ValueError("a BVH joint lacks a 3-value OFFSET")
    return BvhSkeleton(tuple(names), tuple(parents), np.array(offsets, dtype=np.float64), tuple(channels))


def parse_bvh(text: str) -> BvhMotion:
    """Parses the text of a BVH file.

    Args:
      text: the whole file.

    Returns:
      The hierarchy and the motion values.

    Raises:
      ValueError: the text is not a well-formed BVH file.
    """
    head, separator, motion_text = text.partition("MOTION")
    if not separator:
        raise ValueError("BVH text has no MOTION section")
    tokens = head.split()
    if not tokens or tokens[0] != "HIERARCHY":
        raise ValueError("BVH text does not start with HIERARCHY")
    try:
        hierarchy = _parse_hierarchy(tokens[1:])
    except IndexError as error:  # A statement cut short, or braces out of place.
        raise ValueError("malformed BVH hierarchy") from error

    frames = re.search(r"Frames:\s*(\d+)", motion_text)
    frame_time = re.search(r"Frame Time:\s*([0-9.eE+-]+)", motion_text)
    if frames is None or frame_time is None:
        raise ValueError("BVH MOTION section lacks 'Frames:' or 'Frame Time:'")
    num_frames = int(frames.group(1))
    values = np.array(motion_text[frame_time.end() :].split(), dtype=np.float64)
    num_channels = sum(len(c) for c in hierarchy.channels)
    if values.size != num_frames * num_channels:
        raise ValueError(
            f"BVH MOTION has {values.size} values, expected {num_frames} frames x {num_channels} channels"
        )
    return BvhMotion(hierarchy, float(frame_time.group(1)), values.reshape(num_frames, num_channels))


def read_bvh(path) -> BvhMotion:
    """Reads and parses the BVH file at `path`."""
    with open(path, encoding="utf-8") as f:
        return parse_bvh(f.read())


def axis_rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    """Rotation matrices about a coordinate axis (right-handed, column vectors).

    Args:
      axis: "X", "Y" or "Z".
      degrees: (...) angles in degrees.

    Returns:
      (..., 3, 3) matrices R such that R @ v rotates v by the angle about `axis`.
    """
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    cos, sin = np.cos(radians), np.sin(radians)
    zero, one = np.zeros_like(radians), np.ones_like(radians)
    rows = {
        "X": ((one, zero, zero), (zero, cos, -sin), (zero, sin, cos)),
        "Y": ((cos, zero, sin), (zero, one, zero), (-sin, zero, cos)),
        "Z": ((cos, -sin, zero), (sin, cos, zero), (zero, zero, one)),
    }
    if axis not in rows:
        raise ValueError(f"axis must be X, Y or Z, got {axis!r}")
    return np.stack([np.stack(row, axis=-1) for row in rows[axis]], axis=-2)


def local_transforms(motion: BvhMotion) -> tuple[np.ndarray, np.ndarray]:
    """Each joint's rotation and translation relative to its parent, per frame.

    A joint's rotation composes its rotation channels in file order, the first
    listed being the outermost: "Zrotation Yrotation Xrotation" gives
    Rz @ Ry @ Rx. Its translation is its OFFSET plus its position channels, if
    any (the usual convention; only roots normally have position channels).

    Args:
      motion: a parsed BVH file.

    Returns:
      rotations: (T, J, 3, 3).
      translations: (T, J, 3) in file units.
    """
    skeleton = motion.skeleton
    num_frames, num_joints = len(motion.values), len(skeleton.names)
    rotations = np.tile(np.eye(3), (num_frames, num_joints, 1, 1))
    translations = np.tile(skeleton.offsets, (num_frames, 1, 1))
    column = 0
    for joint, joint_channels in enumerate(skeleton.channels):
        for channel in joint_channels:
            values = motion.values[:, column]
            if channel in _ROTATION_CHANNELS:
                rotations[:, joint] = rotations[:, joint] @ axis_rotation(channel[0], values)
            else:
                translations[:, joint, _POSITION_CHANNELS.index(channel)] += values
            column += 1
    return rotations, translations


def forward_kinematics(parents, rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """World positions of the joints of a kinematic tree.

    Args:
      parents: (J,) parent indices, -1 for roots, parents before children.
      rotations: (T, J, 3, 3) rotation of each joint relative to its parent.
      translations: (T, J, 3) position of each joint in its parent's frame.

    Returns:
      (T, J, 3) joint positions in the world frame.
    """
    global_rotations = np.empty_like(rotations)
    positions = np.empty_like(translations)
    for joint, parent in enumerate(parents):
        if parent < 0:
            global_rotations[:, joint] = rotations[:, joint]
            positions[:, joint] = translations[:, joint]
        else:
            global_rotations[:, joint] = global_rotations[:, parent] @ rotations[:, joint]
            positions[:, joint] = positions[:, parent] + np.einsum(
                "tij,tj->ti", global_rotations[:, parent], translations[:, joint]
            )
    return positions


def resample_transforms(
    rotations: np.ndarray, translations: np.ndarray, frame_time: float, fps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples per-joint local transforms to a new frame rate.

    Rotations are interpolated by slerp and translations linearly, so forward
    kinematics of the result is the same rigid skeleton.

    Args:
      rotations: (T, J, 3, 3) local rotations sampled every `frame_time` seconds.
      translations: (T, J, 3) local translations at the same instants.
      frame_time: seconds between input frames.
      fps: output frame rate.

    Returns:
      rotations: (T', J, 3, 3) at times 0, 1/fps, ... up to the last input frame.
      translations: (T', J, 3).
    """
    num_frames, num_joints = rotations.shape[:2]
    if num_frames < 2:
        raise ValueError(f"need at least 2 frames to resample, got {num_frames}")
    times = np.arange(num_frames) * frame_time
    new_times = np.arange(int(np.floor(times[-1] * fps + 1e-9)) + 1) / fps
    new_rotations = np.stack(
        [
            Slerp(times, Rotation.from_matrix(rotations[:, j]))(new_times).as_matrix()
            for j in range(num_joints)
        ],
        axis=1,
    )
    new_translations = np.stack(
        [
            np.stack([np.interp(new_times, times, translations[:, j, axis]) for axis in range(3)], axis=-1)
            for j in range(num_joints)
        ],
        axis=1,
    )
    return new_rotations, new_translations


# Millimetres per unit of the CMU ASF/AMC skeleton, which the cgspeed BVH files
# keep: (1 / 0.45) * 2.54 / 100 m (mocap.cs.cmu.edu FAQ; 0.45 is the ASF length
# scale and the data are in inches).
CMU_UNIT_MM = 1000.0 * 2.54 / 100.0 / 0.45

# The CMU (cgspeed) joint standing for each Human3.6M joint, in the order of
# sasmamba_jax.skeleton. Every Human3.6M bone is then exactly one CMU segment,
# so bone lengths stay constant: the pelvis is the CMU root (about 100 mm above
# the hip joints, whose midpoint would make pelvis -> spine change with the
# LowerBack rotation) and the spine the top of LowerBack; the thorax is Spine1,
# where the cgspeed hierarchy attaches Neck and both shoulders; the neck/nose
# and head are the two ends of the upper-neck segment (Neck1, Head). The head's
# end site would make neck -> head span two rotating segments.
H36M_FROM_CMU = (
    "Hips",
    "RightUpLeg",
    "RightLeg",
    "RightFoot",
    "LeftUpLeg",
    "LeftLeg",
    "LeftFoot",
    "Spine",
    "Spine1",
    "Neck1",
    "Head",
    "LeftArm",
    "LeftForeArm",
    "LeftHand",
    "RightArm",
    "RightForeArm",
    "RightHand",
)
assert len(H36M_FROM_CMU) == skeleton.NUM_JOINTS


def h36m_joints(motion: BvhMotion, fps: float) -> np.ndarray:
    """The 17 Human3.6M joints of a CMU take, resampled, in millimetres.

    Args:
      motion: a parsed cgspeed CMU BVH file.
      fps: output frame rate.

    Returns:
      (T, 17, 3) joint positions in the BVH world axes, millimetres.
    """
    rotations, translations = resample_transforms(*local_transforms(motion), motion.frame_time, fps)
    positions = forward_kinematics(motion.skeleton.parents, rotations, translations)
    indices = [motion.skeleton.index(name) for name in H36M_FROM_CMU]
    return positions[:, indices] * CMU_UNIT_MM


def centre_horizontally(poses: np.ndarray) -> np.ndarray:
    """Shifts a take so the pelvis' horizontal range is centred on the origin.

    Args:
      poses: (T, J, 3) positions, y up.

    Returns:
      (T, J, 3) positions, the midpoint of the pelvis' x and z ranges at 0.
    """
    root = poses[:, skeleton.ROOT]
    shift = np.zeros(3)
    shift[[0, 2]] = (root[:, [0, 2]].min(axis=0) + root[:, [0, 2]].max(axis=0)) / 2
    return poses - shift


@dataclasses.dataclass(frozen=True)
class Camera:
    """A fixed pinhole camera looking at a point of the capture area.

    Attributes:
      name: Human3.6M camera name.
      focal: (fx, fy) in pixels.
      centre: principal point (cx, cy) in pixels.
      resolution: (width, height) in pixels, as the release normalises by name.
      position: optical centre in the world, mm (y up).
      target: world point on the optical axis, mm.
    """

    name: str
    focal: tuple[float, float]
    centre: tuple[float, float]
    resolution: tuple[int, int]
    position: tuple[float, float, float]
    target: tuple[float, float, float]

    def rotation(self) -> np.ndarray:
        """(3, 3) world-to-camera rotation: x right, y down, z forward (OpenCV)."""
        forward = np.subtract(self.target, self.position)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, (0.0, 1.0, 0.0))
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        return np.stack([right, down, forward])


# Intrinsics rounded from the published Human3.6M calibration (no distortion);
# placement like the Human3.6M studio: near the corners of a rectangle around
# the capture area, 4.8-5.5 m from its centre, 1.5-1.6 m high, looking at the
# centre 1 m above the floor.
_TARGET_MM = (0.0, 1000.0, 0.0)
CAMERAS = (
    Camera("54138969", (1145.0, 1143.8), (512.5, 515.5), (1000, 1002), (1850.0, 1560.0, 4950.0), _TARGET_MM),
    Camera("55011271", (1149.7, 1147.6), (508.8, 508.1), (1000, 1000), (1750.0, 1610.0, -5050.0), _TARGET_MM),
    Camera("58860488", (1149.1, 1148.8), (519.8, 501.4), (1000, 1000), (-1850.0, 1500.0, 5200.0), _TARGET_MM),
    Camera(
        "60457274", (1145.5, 1144.8), (515.0, 501.9), (1000, 1002), (-1800.0, 1570.0, -4500.0), _TARGET_MM
    ),
)
CAMERAS_BY_NAME = {camera.name: camera for camera in CAMERAS}


def to_camera(camera: Camera, points: np.ndarray) -> np.ndarray:
    """World points (..., 3) in mm to camera coordinates (..., 3) in mm."""
    return (points - np.asarray(camera.position)) @ camera.rotation().T


def image_space_pose(camera: Camera, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MotionBERT's image-space 3D pose and 2.5d factor (see the module docstring).

    Args:
      camera: the camera.
      poses: (T, 17, 3) world joint positions, mm.

    Returns:
      joint3d_image: (T, 17, 3) pixel x, y and pelvis-relative depth in pixels.
      factor: (T,) millimetres per pixel at the pelvis depth, Z_pelvis / fx.
    """
    points = to_camera(camera, poses)
    depth = points[..., 2]
    if np.any(depth <= 0):
        raise ValueError(f"a joint is behind camera {camera.name}")
    (fx, fy), (cx, cy) = camera.focal, camera.centre
    factor = depth[:, skeleton.ROOT] / fx
    joint3d_image = np.stack(
        [
            fx * points[..., 0] / depth + cx,
            fy * points[..., 1] / depth + cy,
            (depth - depth[:, skeleton.ROOT : skeleton.ROOT + 1]) / factor[:, None],
        ],
        axis=-1,
    )
    return joint3d_image, factor


# Detector-like 2D noise: temporally correlated Gaussian jitter per joint (std
# in pixels, larger at the extremities) plus rare bursts of a constant larger
# offset, as when a detector locks onto the wrong limb for a few frames.
_NOISE_STD_PX = (2.5, 2.5, 3.5, 5.0, 2.5, 3.5, 5.0, 2.5, 2.5, 2.5, 2.5, 2.5, 3.5, 5.0, 2.5, 3.5, 5.0)
_NOISE_CORRELATION_S = 0.1
_BURST_START_PROBABILITY = 0.002  # Per joint and frame.
_BURST_FRAMES = (3, 12)
_BURST_OFFSET_PX = (15.0, 40.0)
# Confidence 1 / (1 + (error / scale)^2) plus a little jitter: 0.5 at 10 px.
_CONFIDENCE_SCALE_PX = 10.0
_CONFIDENCE_JITTER = 0.02


def detector_noise(rng: np.random.Generator, num_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise of a 2D keypoint detector and the confidence it would report.

    Args:
      rng: random generator, the only source of randomness.
      num_frames: T.
      fps: frame rate, which sets the per-frame correlation.

    Returns:
      noise: (T, 17, 2) offsets in pixels.
      confidence: (T, 17, 1) in [0, 1], decreasing with the offset's length.
    """
    std = np.asarray(_NOISE_STD_PX)[:, None]
    correlation = np.exp(-1.0 / (fps * _NOISE_CORRELATION_S))
    innovations = rng.normal(size=(num_frames, skeleton.NUM_JOINTS, 2)) * std
    noise = np.empty_like(innovations)
    noise[0] = innovations[0]
    innovation_scale = np.sqrt(1.0 - correlation**2)  # Keeps the stationary std at `std`.
    for t in range(1, num_frames):
        noise[t] = correlation * noise[t - 1] + innovation_scale * innovations[t]
    starts = np.argwhere(rng.random((num_frames, skeleton.NUM_JOINTS)) < _BURST_START_PROBABILITY)
    for t, joint in starts:
        length = rng.integers(_BURST_FRAMES[0], _BURST_FRAMES[1] + 1)
        angle = rng.uniform(0.0, 2 * np.pi)
        offset = rng.uniform(*_BURST_OFFSET_PX) * np.array([np.cos(angle), np.sin(angle)])
        noise[t : t + length, joint] += offset
    error = np.linalg.norm(noise, axis=-1, keepdims=True)
    confidence = 1.0 / (1.0 + (error / _CONFIDENCE_SCALE_PX) ** 2)
    confidence += rng.normal(scale=_CONFIDENCE_JITTER, size=confidence.shape)
    return noise, np.clip(confidence, 0.0, 1.0)


FPS = 50.0  # Human3.6M's frame rate in MotionBERT's file.


def take_ids(path) -> tuple[int, int]:
    """(subject, trial) of a CMU take from a file name like '01_03.bvh'."""
    match = re.fullmatch(r"(\d+)_(\d+)", Path(path).stem)
    if match is None:
        raise ValueError(f"BVH file name {Path(path).name!r} is not CMU's 'SS_TT.bvh'")
    return int(match.group(1)), int(match.group(2))


def take_cameras(take_index: int, views_per_take: int) -> tuple[Camera, ...]:
    """The cameras rendering a take: consecutive ones, continuing across takes."""
    return tuple(CAMERAS[(take_index * views_per_take + k) % len(CAMERAS)] for k in range(views_per_take))


def build_dataset(paths, seed: int, views_per_take: int = 2, test_fraction: float = 0.2) -> dict:
    """Builds the train/test dictionaries from CMU BVH takes.

    Each take is split by time: its first (1 - test_fraction) goes to 'train',
    the rest to 'test'. It is rendered through `views_per_take` of the four
    cameras (consecutive cameras, continuing from one take to the next), with
    independent noise per view; within a split, frames are grouped by source
    (take and camera) in time order.

    Args:
      paths: BVH files named like CMU's 'SS_TT.bvh'.
      seed: seed of the 2D noise.
      views_per_take: cameras per take, 1 to 4.
      test_fraction: share of each take, at its end, that goes to 'test'.

    Returns:
      {'train': {...}, 'test': {...}} with the keys of the module docstring.
    """
    if not 1 <= views_per_take <= len(CAMERAS):
        raise ValueError(f"views_per_take must be in [1, {len(CAMERAS)}], got {views_per_take}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "test": []}
    for take_index, path in enumerate(paths):
        subject, trial = take_ids(path)
        poses = centre_horizontally(h36m_joints(read_bvh(path), FPS))
        num_test = int(round(test_fraction * len(poses)))
        if not 0 < num_test < len(poses):
            raise ValueError(f"{path} is too short to split ({len(poses)} frames)")
        for camera in take_cameras(take_index, views_per_take):
            joint3d_image, factor = image_space_pose(camera, poses)
            noise, confidence = detector_noise(rng, len(poses), FPS)
            source = f"s_{subject:02d}_act_{trial:02d}_subact_01_ca_{CAMERAS.index(camera) + 1:02d}"
            frames = {
                "joint_2d": joint3d_image[..., :2] + noise,
                "confidence": confidence,
                "joint3d_image": joint3d_image,
                "2.5d_factor": factor,
            }
            labels = {"camera_name": camera.name, "source": source, "action": trial}
            boundary = len(poses) - num_test
            for split, part in (("train", slice(0, boundary)), ("test", slice(boundary, None))):
                parts[split].append(({key: value[part] for key, value in frames.items()}, labels))
    return {split: _assemble(views) for split, views in parts.items()}


def _assemble(views) -> dict:
    """Concatenates the (per-frame arrays, per-view labels) pairs of one split."""
    split = {
        key: np.concatenate([arrays[key] for arrays, _ in views]).astype(np.float32) for key in views[0][0]
    }
    # The float32 product, so joint3d_image * 2.5d_factor == joints_2.5d_image exactly.
    split["joints_2.5d_image"] = split["joint3d_image"] * split["2.5d_factor"][:, None, None]
    # One label object repeated per view keeps the pickle small (pickle memoises it).
    for key in views[0][1]:
        split[key] = [labels[key] for arrays, labels in views for _ in range(len(arrays["2.5d_factor"]))]
    return split


def camera_frame_poses(split: dict) -> np.ndarray:
    """Camera-frame 3D joints (N, 17, 3) in mm, recovered from a split's image-space 3D.

    Inverts `image_space_pose` with the intrinsics of each frame's camera: the
    pelvis depth is 2.5d_factor * fx and the other depths follow from the
    millimetre depths of joints_2.5d_image.
    """
    focal = np.array([CAMERAS_BY_NAME[name].focal for name in split["camera_name"]])
    centre = np.array([CAMERAS_BY_NAME[name].centre for name in split["camera_name"]])
    image = split["joint3d_image"].astype(np.float64)
    factor = split["2.5d_factor"].astype(np.float64)
    depth = factor[:, None] * focal[:, None, 0] + split["joints_2.5d_image"][..., 2]
    xy = (image[..., :2] - centre[:, None]) / focal[:, None] * depth[..., None]
    return np.concatenate([xy, depth[..., None]], axis=-1)


def summary(dataset: dict) -> str:
    """A few lines describing a built data set."""
    lines = []
    for split_name, split in dataset.items():
        names = np.asarray(split["camera_name"])
        lines.append(
            f"{split_name}: {len(names)} frames, "
            f"{len(dict.fromkeys(split['source']))} sources, actions "
            f"{sorted(set(split['action']))}"
        )
        for camera in CAMERAS:
            chosen = names == camera.name
            if not chosen.any():
                continue
            image = split["joint3d_image"][chosen]
            outside = np.any((image[..., :2] < 0) | (image[..., :2] > camera.resolution), axis=-1)
            lines.append(
                f"  {camera.name}: {chosen.sum()} frames, x {image[..., 0].min():.0f}.."
                f"{image[..., 0].max():.0f} px, y {image[..., 1].min():.0f}.."
                f"{image[..., 1].max():.0f} px of {camera.resolution[0]}x"
                f"{camera.resolution[1]} ({outside.sum()} joints outside), 2.5d factor "
                f"{split['2.5d_factor'][chosen].min():.2f}.."
                f"{split['2.5d_factor'][chosen].max():.2f} mm/px"
            )
        error = np.linalg.norm(split["joint_2d"] - split["joint3d_image"][..., :2], axis=-1)
        lines.append(
            f"  2D noise: median {np.median(error):.1f} px, 99th percentile "
            f"{np.percentile(error, 99):.1f} px, max {error.max():.1f} px; mean confidence "
            f"{split['confidence'].mean():.3f}"
        )
    poses = camera_frame_poses(dataset["train"])
    lengths = np.linalg.norm(
        poses[:, [c for _, c in skeleton.BONES]] - poses[:, [p for p, _ in skeleton.BONES]], axis=-1
    )
    lines.append("bone lengths (train, mm, mean +- std over frames):")
    for (parent, child), mean, std in zip(skeleton.BONES, lengths.mean(0), lengths.std(0)):
        lines.append(
            f"  {skeleton.JOINT_NAMES[parent]:>14} -> {skeleton.JOINT_NAMES[child]:<14} "
            f"{mean:6.1f} +- {std:.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bvh", nargs="+", required=True, help="CMU BVH takes, named SS_TT.bvh")
    parser.add_argument("--output", required=True, help="pickle to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 2D noise")
    parser.add_argument(
        "--views-per-take",
        type=int,
        default=2,
        help="cameras rendering each take (the four cameras are shared out)",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of each take, at its end, used for testing"
    )
    args = parser.parse_args(argv)
    dataset = build_dataset(args.bvh, args.seed, args.views_per_take, args.test_fraction)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        # Protocol 4 is readable by the release's Python 3.8.
        pickle.dump(dataset, f, protocol=4)
    print(summary(dataset))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
