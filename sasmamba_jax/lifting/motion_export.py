"""Lifted poses out to animation tools: BVH (Blender, Maya, MotionBuilder) and CSV.

BVH: one skeleton with the joints of `skeleton.JOINT_NAMES`, root
``pelvis``, each bone's length the median of its lifted lengths. The rest
pose stands upright facing +Z (Y up, the person's left at +X): legs down,
spine, neck and head up, hips, shoulders and arms out sideways. Every frame
gives each joint the smallest rotation from its parent's frame that points
its bone as lifted (so limbs do not twist). The pelvis and the thorax each
start three bones that a lifter does not keep rigid, which one rotation
cannot point at once; each of those bones therefore hangs from a connector
joint with no offset, ``<joint>_to_<child>`` (e.g. ``pelvis_to_spine``),
whose rotation points it exactly, while the pelvis and thorax themselves
turn by the least-squares fit (Kabsch) of their three bones. The lifted
poses' camera frame (x right, y down, z away from the camera) becomes
BVH's as X = x, Y = -y, Z = -z, a half turn about x. Rotation channels are
``Zrotation Xrotation Yrotation`` in degrees, composed in that order
(R = Rz Rx Ry), the convention of the CMU BVH files and of Blender's
importer.

CSV: one row per (person, frame, joint): ``person_id,frame,joint,x,y,z`` in
the lifted camera frame, empty coordinates where the person is absent.

Letters: T frames, J = 17 joints, P people.
"""

import csv
import os

import numpy as np

from sasmamba_jax import skeleton

# Rest direction of each joint's incoming bone (the root has none), BVH frame.
_LEFT, _RIGHT, _UP, _DOWN = (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, -1.0, 0.0)
_REST_DIRECTIONS = {
    "right_hip": _RIGHT,
    "right_knee": _DOWN,
    "right_ankle": _DOWN,
    "left_hip": _LEFT,
    "left_knee": _DOWN,
    "left_ankle": _DOWN,
    "spine": _UP,
    "thorax": _UP,
    "neck": _UP,
    "head": _UP,
    "left_shoulder": _LEFT,
    "left_elbow": _LEFT,
    "left_wrist": _LEFT,
    "right_shoulder": _RIGHT,
    "right_elbow": _RIGHT,
    "right_wrist": _RIGHT,
}
_CHILDREN = tuple(
    tuple(child for child, parent in enumerate(skeleton.PARENTS) if parent == joint)
    for joint in range(skeleton.NUM_JOINTS)
)
# End Sites continue a leaf's bone by this fraction of its length.
_END_SITE_FRACTION = 0.25
CSV_HEADER = ("person_id", "frame", "joint", "x", "y", "z")


def _bvh_joints() -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
    """The BVH hierarchy in file order: (name, BVH parent, skeleton joint, bones it points).

    "Bones it points" are the skeleton children whose bones the joint's
    rotation orients; a connector sits at its skeleton joint's position.
    """
    joints = []

    def visit(joint: int, bvh_parent: int):
        children = _CHILDREN[joint]
        index = len(joints)
        joints.append((skeleton.JOINT_NAMES[joint], bvh_parent, joint, children))
        for child in children:
            parent = index
            if len(children) > 1:
                parent = len(joints)
                name = f"{skeleton.JOINT_NAMES[joint]}_to_{skeleton.JOINT_NAMES[child]}"
                joints.append((name, index, joint, (child,)))
            visit(child, parent)

    visit(skeleton.ROOT, -1)
    return tuple(joints)


BVH_JOINTS = _bvh_joints()


def camera_to_bvh(points: np.ndarray) -> np.ndarray:
    """(..., 3) camera frame (x right, y down, z away) -> BVH frame (X right, Y up, Z towards the camera)."""
    return points * np.array([1.0, -1.0, -1.0])


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _smallest_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations taking unit vectors a (T, 3) to b (T, 3) about a x b."""
    axis = np.cross(a, b)
    sin = np.linalg.norm(axis, axis=-1)
    cos = np.sum(a * b, axis=-1)
    # Opposite vectors: any axis perpendicular to a will do.
    fallback = np.cross(a, np.where(np.abs(a[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]))
    axis = np.where((sin < 1e-12)[:, None], fallback, axis)
    axis = _normalise(axis)
    k = np.zeros(a.shape[:1] + (3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - np.swapaxes(k, 1, 2)
    angle = np.arctan2(sin, cos)[:, None, None]
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _fit_rotation(rest: np.ndarray, lifted: np.ndarray) -> np.ndarray:
    """(T, 3, 3) least-squares rotations taking the rest offsets (C, 3) to lifted (T, C, 3) (Kabsch)."""
    covariance = np.einsum("ci,tcj->tij", rest, lifted)
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)))
    correction = np.broadcast_to(np.eye(3), sign.shape + (3, 3)).copy()
    correction[:, 2, 2] = sign
    return np.swapaxes(vt, 1, 2) @ correction @ np.swapaxes(u, 1, 2)


def rest_offsets(poses: np.ndarray) -> np.ndarray:
    """(len(BVH_JOINTS), 3) OFFSETs: median lifted bone lengths along the rest directions.

    Args:
        poses: (T, J, 3) BVH-frame poses, nothing missing.
    """
    offsets = np.zeros((len(BVH_JOINTS), 3))
    for index, (name, bvh_parent, joint, _) in enumerate(BVH_JOINTS):
        parent = skeleton.PARENTS[joint]
        if bvh_parent < 0 or BVH_JOINTS[bvh_parent][2] == joint:
            continue  # the root, or a connector (no offset from its joint)
        length = np.median(np.linalg.norm(poses[:, joint] - poses[:, parent], axis=-1))
        offsets[index] = length * np.asarray(_REST_DIRECTIONS[name])
    return offsets


def joint_rotations(poses: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(T, len(BVH_JOINTS), 3, 3) local rotations that point every bone of `poses` as lifted.

    Args:
        poses: (T, J, 3) BVH-frame poses, nothing missing.
        offsets: (len(BVH_JOINTS), 3) rest offsets (`rest_offsets`).
    """
    frames = len(poses)
    # The rest offset of each skeleton joint's incoming bone (connectors have none of their own).
    offset_of = {joint: offsets[i] for i, (_, _, joint, _) in enumerate(BVH_JOINTS) if offsets[i].any()}
    global_rotations = np.zeros((frames, len(BVH_JOINTS), 3, 3))
    local = np.broadcast_to(np.eye(3), global_rotations.shape).copy()
    for index, (_, bvh_parent, joint, targets) in enumerate(BVH_JOINTS):
        if bvh_parent < 0:
            parent_rotation = np.broadcast_to(np.eye(3), (frames, 3, 3))
        else:
            parent_rotation = global_rotations[:, bvh_parent]
        if not targets:
            global_rotations[:, index] = parent_rotation
            continue
        lifted = poses[:, list(targets)] - poses[:, joint : joint + 1]
        if len(targets) == 1:
            rest = np.einsum("tij,j->ti", parent_rotation, offset_of[targets[0]])
            turn = _smallest_rotation(_normalise(rest), _normalise(lifted[:, 0]))
            global_rotations[:, index] = turn @ parent_rotation
        else:
            rest = np.stack([offset_of[target] for target in targets])
            global_rotations[:, index] = _fit_rotation(rest, lifted)
        local[:, index] = np.swapaxes(parent_rotation, 1, 2) @ global_rotations[:, index]
    return local


def euler_zxy_degrees(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations R = Rz Rx Ry -> (..., 3) angles (z, x, y) in degrees."""
    x = np.arcsin(np.clip(rotations[..., 2, 1], -1.0, 1.0))
    z = np.arctan2(-rotations[..., 0, 1], rotations[..., 1, 1])
    y = np.arctan2(-rotations[..., 2, 0], rotations[..., 2, 2])
    return np.degrees(np.stack([z, x, y], axis=-1))


def _hold_nearest_present(poses: np.ndarray) -> np.ndarray:
    """(T, J, 3) poses with each absent (NaN) frame replaced by the nearest present one."""
    present = np.flatnonzero(~np.isnan(poses).any(axis=(1, 2)))
    if len(present) == 0:
        raise ValueError("no frame of the poses is present (all NaN); nothing to export")
    nearest = present[np.abs(np.arange(len(poses))[:, None] - present[None]).argmin(axis=1)]
    return poses[nearest]


def _hierarchy_lines(offsets: np.ndarray) -> list[str]:
    """The HIERARCHY section: BVH_JOINTS nested by parent, End Sites at the leaves."""
    children = [[i for i, joint in enumerate(BVH_JOINTS) if joint[1] == p] for p in range(len(BVH_JOINTS))]
    lines = []

    def visit(index: int, depth: int):
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {BVH_JOINTS[index][0]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {' '.join(f'{v:.6f}' for v in offsets[index])}")
        position = "Xposition Yposition Zposition " if depth == 0 else ""
        lines.append(f"{pad}  CHANNELS {6 if depth == 0 else 3} {position}Zrotation Xrotation Yrotation")
        for child in children[index]:
            visit(child, depth + 1)
        if not children[index]:
            end = " ".join(f"{v:.6f}" for v in offsets[index] * _END_SITE_FRACTION)
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {end}", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    visit(0, 0)
    return lines


def bvh_text(poses_3d, *, fps: float = 25.0) -> str:
    """A BVH animation of one person's lifted poses (conventions in the module docstring).

    Args:
        poses_3d: (T, 17, 3) camera-frame poses (`lift`'s output,
            in any unit); NaN frames (the person absent) hold the nearest
            present pose, so the animation keeps the video's frame numbers.
        fps: frames per second of the video.

    Returns:
        The file's text.

    Raises:
        ValueError: a wrong shape, no present frame, or a bad fps.
    """
    poses = np.asarray(poses_3d, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"poses_3d must have shape (T, {skeleton.NUM_JOINTS}, 3), got {poses.shape}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    poses = camera_to_bvh(_hold_nearest_present(poses))
    offsets = rest_offsets(poses)
    angles = euler_zxy_degrees(joint_rotations(poses, offsets))
    # BVH_JOINTS is in file order, so its angles are the MOTION columns after the root's position.
    motion = np.concatenate([poses[:, skeleton.ROOT], angles.reshape(len(poses), -1)], axis=1)
    lines = ["HIERARCHY", *_hierarchy_lines(offsets), "MOTION", f"Frames: {len(poses)}"]
    lines.append(f"Frame Time: {1.0 / fps:.8f}")
    lines.extend(" ".join(f"{v:.6f}" for v in row) for row in motion)
    return "\n".join(lines) + "\n"


def write_bvh(path: str | os.PathLike, poses_3d, *, fps: float = 25.0) -> str:
    """Writes `bvh_text(poses_3d, fps=fps)` to `path`; returns the path."""
    text = bvh_text(poses_3d, fps=fps)
    with open(path, "w") as f:
        f.write(text)
    return os.fspath(path)


def bvh_paths(pattern: str, person_ids) -> list[str]:
    """One BVH path per person: `pattern` itself for one, ``{id}`` filled in for several.

    Raises:
        ValueError: several people and no ``{id}`` in `pattern`.
    """
    person_ids = list(person_ids)
    if len(person_ids) > 1 and "{id}" not in pattern:
        raise ValueError(
            f"--bvh {pattern}: {len(person_ids)} people need one file each; put {{id}} in the name "
            "(e.g. person_{id}.bvh) or pick one with --person"
        )
    return [pattern.replace("{id}", str(person_id)) for person_id in person_ids]


def write_csv(path: str | os.PathLike, poses_3d, person_ids) -> str:
    """Writes one row per (person, frame, joint) (module docstring); returns the path.

    Args:
        path: output file.
        poses_3d: (P, T, 17, 3) poses, NaN where a person is absent.
        person_ids: the P ids.

    Raises:
        ValueError: a wrong shape or a wrong number of ids.
    """
    poses = np.asarray(poses_3d, np.float64)
    person_ids = list(person_ids)
    if poses.ndim != 4 or poses.shape[2:] != (skeleton.NUM_JOINTS, 3) or len(person_ids) != len(poses):
        raise ValueError(
            f"poses_3d must have shape (P, T, {skeleton.NUM_JOINTS}, 3) with P = {len(person_ids)} "
            f"person ids, got {poses.shape}"
        )
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for person_id, person in zip(person_ids, poses):
            for frame, pose in enumerate(person):
                for name, point in zip(skeleton.JOINT_NAMES, pose):
                    coordinates = ["" if np.isnan(v) else f"{v:.6f}" for v in point]
                    writer.writerow([person_id, frame, name, *coordinates])
    return os.fspath(path)
