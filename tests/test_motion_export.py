"""BVH and CSV export: the written BVH, parsed and posed here independently, points every bone as lifted."""

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from sasmamba_jax import skeleton
from sasmamba_jax.lifting import motion_export

_DEMO = Path(__file__).resolve().parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"
MAX_ANGLE_DEGREES = 2.0


def parse_bvh(text):
    """A small BVH reader: joints (name, parent, offset, channels) in file order and the motion rows."""
    tokens = text.split()
    assert tokens[0] == "HIERARCHY"
    joints, stack, i = [], [], 1
    while tokens[i] != "MOTION":
        token = tokens[i]
        if token in ("ROOT", "JOINT"):
            joints.append({"name": tokens[i + 1], "parent": stack[-1] if stack else -1, "channels": []})
            i += 2
        elif token == "End":  # "End Site": no channels, not a joint of its own
            joints.append({"name": None, "parent": stack[-1], "channels": []})
            i += 2
        elif token == "{":
            stack.append(len(joints) - 1)
            i += 1
        elif token == "}":
            stack.pop()
            i += 1
        elif token == "OFFSET":
            joints[-1]["offset"] = np.array(tokens[i + 1 : i + 4], float)
            i += 4
        elif token == "CHANNELS":
            count = int(tokens[i + 1])
            joints[-1]["channels"] = tokens[i + 2 : i + 2 + count]
            i += 2 + count
        else:
            raise AssertionError(f"unexpected BVH token {token!r}")
    assert tokens[i + 1] == "Frames:" and tokens[i + 3 : i + 5] == ["Frame", "Time:"]
    frames, frame_time = int(tokens[i + 2]), float(tokens[i + 5])
    motion = np.array(tokens[i + 6 :], float).reshape(frames, -1)
    assert motion.shape[1] == sum(len(j["channels"]) for j in joints)
    return joints, motion, frame_time


def _axis_rotation(axis, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "Y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def forward_kinematics(joints, row):
    """World positions of every joint for one motion row; rotations compose in channel order."""
    positions, rotations, column = [], [], 0
    for joint in joints:
        local, translation = np.eye(3), joint["offset"].copy()
        for channel in joint["channels"]:
            value = row[column]
            column += 1
            if channel.endswith("position"):
                translation["XYZ".index(channel[0])] = value
            else:
                local = local @ _axis_rotation(channel[0], value)
        if joint["parent"] < 0:
            positions.append(translation)
            rotations.append(local)
        else:
            parent = joint["parent"]
            positions.append(positions[parent] + rotations[parent] @ joint["offset"])
            rotations.append(rotations[parent] @ local)
    return np.array(positions)


def bone_angles(poses, text):
    """(T, bones) angles in degrees between the BVH's posed bones and the poses' bones."""
    joints, motion, _ = parse_bvh(text)
    index = {j["name"]: k for k, j in enumerate(joints) if j["name"] in skeleton.JOINT_NAMES}
    # Camera frame (x right, y down, z away) to BVH's Y-up frame, as documented.
    expected = poses * np.array([1.0, -1.0, -1.0])
    angles = np.zeros((len(poses), len(skeleton.BONES)))
    for t, row in enumerate(motion):
        posed = forward_kinematics(joints, row)
        for b, (parent, child) in enumerate(skeleton.BONES):
            names = skeleton.JOINT_NAMES[parent], skeleton.JOINT_NAMES[child]
            got = posed[index[names[1]]] - posed[index[names[0]]]
            want = expected[t, child] - expected[t, parent]
            cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
            angles[t, b] = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    return angles


@pytest.fixture(scope="module")
def demo_poses():
    """(120, 17, 3) root-relative 3D poses of the demo test split (pixels, y down)."""
    with open(_DEMO, "rb") as f:
        poses = pickle.load(f)["test"]["joint3d_image"][:120].astype(np.float64)
    return poses - poses[:, :1]


def test_bvh_points_every_bone_as_lifted(demo_poses):
    rng = np.random.default_rng(0)
    # A lifter does not keep bones rigid: noise makes hips, spine and shoulders move apart.
    poses = demo_poses + rng.normal(scale=8.0, size=demo_poses.shape)
    angles = bone_angles(poses, motion_export.bvh_text(poses))
    assert angles.max() < MAX_ANGLE_DEGREES, angles.max(axis=0)


def test_bvh_skeleton_names_root_and_median_bone_lengths(demo_poses):
    joints, motion, frame_time = parse_bvh(motion_export.bvh_text(demo_poses, fps=50))
    assert frame_time == pytest.approx(0.02)
    assert len(motion) == len(demo_poses)
    assert joints[0]["name"] == "pelvis" and joints[0]["parent"] == -1
    assert joints[0]["channels"][:3] == ["Xposition", "Yposition", "Zposition"]
    names = [j["name"] for j in joints if j["name"] is not None]
    assert set(skeleton.JOINT_NAMES) <= set(names)
    assert set(names) - set(skeleton.JOINT_NAMES) == {
        f"{parent}_to_{child}"
        for parent, children in (("pelvis", ("right_hip", "left_hip", "spine")),)
        + (("thorax", ("neck", "left_shoulder", "right_shoulder")),)
        for child in children
    }
    by_name = {j["name"]: j for j in joints}
    for parent, child in skeleton.BONES:
        length = np.median(np.linalg.norm(demo_poses[:, child] - demo_poses[:, parent], axis=-1))
        offset = by_name[skeleton.JOINT_NAMES[child]]["offset"]
        assert np.linalg.norm(offset) == pytest.approx(length, rel=1e-5)
    # Upright rest pose: the legs hang down, the head is up.
    assert by_name["right_knee"]["offset"][1] < 0 and by_name["head"]["offset"][1] > 0
    # The root's translation is the (root-relative) pelvis.
    np.testing.assert_allclose(motion[:, :3], 0.0, atol=1e-6)


def test_absent_frames_hold_the_nearest_present_pose(demo_poses):
    poses = demo_poses[:10].copy()
    poses[:3] = np.nan
    poses[6] = np.nan
    _, motion, _ = parse_bvh(motion_export.bvh_text(poses))
    assert len(motion) == 10
    np.testing.assert_array_equal(motion[0], motion[3])
    np.testing.assert_array_equal(motion[6], motion[5])
    held = demo_poses[:10].copy()
    held[:3], held[6] = held[3], held[5]
    assert bone_angles(held, motion_export.bvh_text(poses)).max() < MAX_ANGLE_DEGREES


def test_bvh_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(T, 17, 3\)"):
        motion_export.bvh_text(np.zeros((4, 16, 3)))
    with pytest.raises(ValueError, match="no frame of the poses is present"):
        motion_export.bvh_text(np.full((4, 17, 3), np.nan))
    with pytest.raises(ValueError, match="fps must be a positive number"):
        motion_export.bvh_text(np.ones((4, 17, 3)), fps=0)


def test_bvh_paths_need_an_id_for_several_people():
    assert motion_export.bvh_paths("a.bvh", [4]) == ["a.bvh"]
    assert motion_export.bvh_paths("p{id}.bvh", [3, 7]) == ["p3.bvh", "p7.bvh"]
    with pytest.raises(ValueError, match=r"2 people need one file each; put \{id\} in the name"):
        motion_export.bvh_paths("a.bvh", [3, 7])


def test_csv_has_one_row_per_person_frame_joint(tmp_path):
    poses = np.arange(2 * 3 * 17 * 3, dtype=np.float64).reshape(2, 3, 17, 3)
    poses[1, 0] = np.nan
    motion_export.write_csv(tmp_path / "p.csv", poses, [3, 7])
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["person_id", "frame", "joint", "x", "y", "z"]
    assert len(rows) == 1 + 2 * 3 * 17
    row = rows[1 + 17 * 3 + 17 + 2]  # person 7, frame 1, third joint
    assert row[:3] == ["7", "1", skeleton.JOINT_NAMES[2]]
    np.testing.assert_allclose([float(v) for v in row[3:]], poses[1, 1, 2])
    assert rows[1 + 17 * 3][3:] == ["", "", ""]  # person 7 absent in frame 0
    with pytest.raises(ValueError, match="person ids"):
        motion_export.write_csv(tmp_path / "q.csv", poses, [3])
