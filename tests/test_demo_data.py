"""Tests of tools/make_cmu_demo.py and of the committed CMU demo pickle.

The BVH and camera checks compare with positions worked out by hand; the
pickle checks recompute everything from the definitions (MotionBERT's
Human3.6M layout, the release's camera resolutions, the offsets printed in the
cgspeed BVH header) rather than through the tool.
"""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from sasmamba_jax import skeleton
from tools import make_cmu_demo

_ROOT = Path(__file__).resolve().parents[1]

_PICKLE = _ROOT / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"

# Channel orders differ between the root (Z Y X) and the child (X Y Z), so a
# parser that ignores them gets frame 1 wrong.
_TINY_BVH = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Knee
  {
    OFFSET 0 -2 0
    CHANNELS 3 Xrotation Yrotation Zrotation
    End Site
    {
      OFFSET 0 0 3
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
1 2 3 0 0 0 0 0 0
1 2 3 90 0 0 90 0 90
"""


def _tiny_positions():
    motion = make_cmu_demo.parse_bvh(_TINY_BVH)
    return motion, make_cmu_demo.forward_kinematics(
        motion.skeleton.parents, *make_cmu_demo.local_transforms(motion)
    )


def test_parse_bvh_reads_hierarchy_and_motion():
    motion, _ = _tiny_positions()
    assert motion.skeleton.names == ("Hips", "Knee", "Knee_end")
    assert motion.skeleton.parents == (-1, 0, 1)
    assert motion.skeleton.channels[1] == ("Xrotation", "Yrotation", "Zrotation")
    assert motion.skeleton.channels[2] == ()
    np.testing.assert_array_equal(motion.skeleton.offsets, [[0, 0, 0], [0, -2, 0], [0, 0, 3]])
    assert motion.frame_time == 0.5
    assert motion.values.shape == (2, 9)


def test_forward_kinematics_matches_hand_computation():
    _, positions = _tiny_positions()
    # Frame 0, no rotation: offsets add up from the root at (1, 2, 3).
    np.testing.assert_allclose(positions[0], [[1, 2, 3], [1, 0, 3], [1, 0, 6]], atol=1e-12)
    # Frame 1: the root turns 90 deg about z (x -> y, y -> -x), so the knee offset
    # (0, -2, 0) becomes (2, 0, 0): knee at (3, 2, 3). The knee's channels are
    # X then Z, so its rotation is Rx(90) @ Rz(90): (0, 0, 3) -> Rz -> (0, 0, 3)
    # -> Rx (y -> z, z -> -y) -> (0, -3, 0); the root's Rz(90) then gives
    # (3, 0, 0): end site at (6, 2, 3). (Rz @ Rx would give (3, 5, 3).)
    np.testing.assert_allclose(positions[1], [[1, 2, 3], [3, 2, 3], [6, 2, 3]], atol=1e-12)


@pytest.mark.parametrize(
    "text, problem",
    [
        (_TINY_BVH.replace("MOTION", "MOTIONLESS").replace("Frames", "X"), "Frames"),
        (_TINY_BVH.replace("1 2 3 90 0 0 90 0 90", "1 2 3 90 0 0 90 0"), "values"),
        (_TINY_BVH.replace("Xrotation Yrotation Zrotation", "Xrotation Yrotation Wrotation"), "channels"),
        (_TINY_BVH.replace("HIERARCHY", "HIERARCH"), "HIERARCHY"),
        (_TINY_BVH.replace("}\nMOTION", "}\n}\nMOTION"), "malformed"),
        (_TINY_BVH.replace("JOINT Knee", "ROOT Knee"), "one ROOT"),
    ],
)
def test_parse_bvh_rejects_malformed_text(text, problem):
    with pytest.raises(ValueError, match=problem):
        make_cmu_demo.parse_bvh(text)


def test_resampling_follows_a_constant_rotation():
    # The root spins about y at 120 deg/s, sampled at 120 fps for one second; a
    # joint 1 unit ahead along z then sits at (sin(a), 0, cos(a)) with a = 120 t.
    frames = "\n".join(f"0 0 0 {120.0 * i / 120}" for i in range(121))
    text = (
        "HIERARCHY\nROOT A\n{\nOFFSET 0 0 0\n"
        "CHANNELS 4 Xposition Yposition Zposition Yrotation\n"
        "End Site\n{\nOFFSET 0 0 1\n}\n}\n"
        f"MOTION\nFrames: 121\nFrame Time: {1 / 120}\n{frames}\n"
    )
    motion = make_cmu_demo.parse_bvh(text)
    rotations, translations = make_cmu_demo.resample_transforms(
        *make_cmu_demo.local_transforms(motion), motion.frame_time, 50.0
    )
    positions = make_cmu_demo.forward_kinematics(motion.skeleton.parents, rotations, translations)
    times = np.arange(51) / 50.0
    angles = np.deg2rad(120.0 * times)
    assert positions.shape == (51, 2, 3)
    np.testing.assert_allclose(
        positions[:, 1], np.stack([np.sin(angles), 0 * angles, np.cos(angles)], axis=-1), atol=1e-9
    )


def test_image_space_pose_matches_hand_computation():
    camera = make_cmu_demo.Camera(
        "54138969", (1000.0, 1100.0), (500.0, 510.0), (1000, 1002), (0.0, 0.0, -5000.0), (0.0, 0.0, 0.0)
    )
    # Looking along +z with y up: camera x is world -x, camera y is world -y.
    pose = np.zeros((1, skeleton.NUM_JOINTS, 3))
    pose[0, 1] = (100.0, 200.0, 0.0)
    pose[0, 2] = (0.0, 0.0, 1000.0)
    image, factor = make_cmu_demo.image_space_pose(camera, pose)
    np.testing.assert_allclose(factor, [5000.0 / 1000.0])
    np.testing.assert_allclose(image[0, 0], [500.0, 510.0, 0.0])
    np.testing.assert_allclose(image[0, 1], [500.0 - 1000.0 * 100 / 5000, 510.0 - 1100.0 * 200 / 5000, 0.0])
    # 1000 mm deeper than the pelvis, at fx / Z_pelvis = 0.2 px per mm.
    np.testing.assert_allclose(image[0, 2], [500.0, 510.0, 200.0])


def test_cameras_look_at_the_capture_area():
    for camera in make_cmu_demo.CAMERAS:
        rotation = camera.rotation()
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        target = make_cmu_demo.to_camera(camera, np.asarray(camera.target))
        np.testing.assert_allclose(target[:2], 0.0, atol=1e-9)
        horizontal_distance = np.hypot(camera.position[0], camera.position[2])
        assert 4000.0 < horizontal_distance < 6000.0 and 1500.0 <= camera.position[1] <= 1800.0


def test_detector_noise_is_deterministic_correlated_and_small():
    first = make_cmu_demo.detector_noise(np.random.default_rng(3), 2000, 50.0)
    second = make_cmu_demo.detector_noise(np.random.default_rng(3), 2000, 50.0)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    noise, confidence = first
    assert noise.shape == (2000, 17, 2) and confidence.shape == (2000, 17, 1)
    assert 1.0 < np.median(np.abs(noise)) < 6.0
    lag1 = np.mean(
        [np.corrcoef(noise[1:, j, c], noise[:-1, j, c])[0, 1] for j in range(17) for c in range(2)]
    )
    assert lag1 > 0.6
    assert np.all((confidence >= 0) & (confidence <= 1))


# --- The committed pickle -------------------------------------------------

_ARRAY_SPECS = {
    "joint_2d": (17, 2),
    "confidence": (17, 1),
    "joint3d_image": (17, 3),
    "joints_2.5d_image": (17, 3),
    "2.5d_factor": (),
}
# The release normalises by camera name (data/reader/h36m.py).
_RESOLUTION = {
    "54138969": (1000, 1002),
    "60457274": (1000, 1002),
    "55011271": (1000, 1000),
    "58860488": (1000, 1000),
}
_CAMERA_NUMBER = {"54138969": 1, "55011271": 2, "58860488": 3, "60457274": 4}

_CMU_UNIT_MM = 25.4 / 0.45
# Each Human3.6M bone is one CMU segment: its length is the child's OFFSET in
# the cgspeed BVH header (01_01.bvh and 01_03.bvh share the skeleton).
_BONE_OFFSETS = {
    ("pelvis", "right_hip"): (-1.30552, -1.79463, 0.83929),
    ("right_hip", "right_knee"): (-2.54253, -6.98555, 0.0),
    ("right_knee", "right_ankle"): (-2.56826, -7.05623, 0.0),
    ("pelvis", "left_hip"): (1.36306, -1.79463, 0.83929),
    ("left_hip", "left_knee"): (2.44811, -6.72613, 0.0),
    ("left_knee", "left_ankle"): (2.56220, -7.03959, 0.0),
    ("pelvis", "spine"): (0.02827, 2.03559, -0.19338),
    ("spine", "thorax"): (0.05672, 2.04885, -0.04275),
    ("thorax", "neck"): (-0.05417, 1.74624, 0.17202),
    ("neck", "head"): (0.10407, 1.76136, -0.12397),
    ("thorax", "left_shoulder"): (3.36241, 1.20089, -0.31121),
    ("left_shoulder", "left_elbow"): (4.98300, 0.0, 0.0),
    ("left_elbow", "left_wrist"): (3.48356, 0.0, 0.0),
    ("thorax", "right_shoulder"): (-3.13660, 1.37405, -0.40465),
    ("right_shoulder", "right_elbow"): (-5.24190, 0.0, 0.0),
    ("right_elbow", "right_wrist"): (-3.44417, 0.0, 0.0),
}


@pytest.fixture(scope="module")
def dataset():
    with open(_PICKLE, "rb") as f:
        return pickle.load(f)


def _camera_frame(split):
    """Camera-frame joints in mm, inverting the image-space pose camera by camera."""
    names = np.asarray(split["camera_name"])
    poses = np.zeros(split["joint3d_image"].shape)
    for name in _RESOLUTION:
        rows = names == name
        camera = make_cmu_demo.CAMERAS_BY_NAME[name]
        (fx, fy), (cx, cy) = camera.focal, camera.centre
        image = split["joint3d_image"][rows].astype(np.float64)
        depth = (
            split["2.5d_factor"][rows, None].astype(np.float64) * fx + split["joints_2.5d_image"][rows, :, 2]
        )
        poses[rows, :, 0] = (image[..., 0] - cx) / fx * depth
        poses[rows, :, 1] = (image[..., 1] - cy) / fy * depth
        poses[rows, :, 2] = depth
    return poses


def _bone_lengths(poses):
    return {
        (skeleton.JOINT_NAMES[p], skeleton.JOINT_NAMES[c]): np.linalg.norm(poses[:, c] - poses[:, p], axis=-1)
        for p, c in skeleton.BONES
    }


def _source_blocks(split):
    """Maps each source to the slice of its frames, checking the frames are contiguous."""
    blocks = {}
    for index, source in enumerate(split["source"]):
        if source in blocks:
            assert blocks[source].stop == index, f"{source} is not contiguous"
            blocks[source] = slice(blocks[source].start, index + 1)
        else:
            blocks[source] = slice(index, index + 1)
    return blocks


def test_pickle_is_small(dataset):
    assert _PICKLE.stat().st_size < 8 * 2**20
    assert set(dataset) == {"train", "test"}


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_pickle_has_motionbert_keys_shapes_and_dtypes(dataset, split_name):
    split = dataset[split_name]
    assert set(split) == set(_ARRAY_SPECS) | {"camera_name", "source", "action"}
    num_frames = len(split["2.5d_factor"])
    assert num_frames > 0
    for key, shape in _ARRAY_SPECS.items():
        assert split[key].dtype == np.float32, key
        assert split[key].shape == (num_frames,) + shape, key
        assert np.all(np.isfinite(split[key])), key
    for key, kind in (("camera_name", str), ("source", str), ("action", int)):
        assert len(split[key]) == num_frames, key
        assert all(type(value) is kind for value in split[key]), key
    assert set(split["camera_name"]) == set(_RESOLUTION)  # Every camera in both splits.


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_pickle_sources_follow_human36m_naming(dataset, split_name):
    split = dataset[split_name]
    for source, block in _source_blocks(split).items():
        match = re.fullmatch(r"s_(\d\d)_act_(\d\d)_subact_(\d\d)_ca_(\d\d)", source)
        assert match, source
        assert set(split["camera_name"][block]) == {
            name for name, number in _CAMERA_NUMBER.items() if number == int(match.group(4))
        }
        assert set(split["action"][block]) == {int(match.group(2))}


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_pickle_image_space_definitions(dataset, split_name):
    split = dataset[split_name]
    image, factor = split["joint3d_image"], split["2.5d_factor"]
    np.testing.assert_allclose(
        image * factor[:, None, None], split["joints_2.5d_image"], rtol=1e-6, atol=1e-3
    )
    assert np.all(image[:, skeleton.ROOT, 2] == 0)
    assert np.all(split["joints_2.5d_image"][:, skeleton.ROOT, 2] == 0)
    assert np.all((factor > 2.0) & (factor < 7.0))  # Pelvis 2.3-8 m from a ~1145 px camera.
    resolution = np.array([_RESOLUTION[name] for name in split["camera_name"]], dtype=np.float32)
    assert np.all((image[..., :2] >= 0) & (image[..., :2] <= resolution[:, None]))
    # 2.5D is metric at the pelvis depth: its bones match the camera-frame ones
    # up to perspective (joints off the pelvis depth or off the optical axis),
    # a few percent for a subject 3.5-7 m away.
    true = _bone_lengths(_camera_frame(split))
    flat = _bone_lengths(split["joints_2.5d_image"].astype(np.float64))
    for bone, lengths in true.items():
        assert np.median(np.abs(flat[bone] / lengths - 1)) < 0.06, bone


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_pickle_noise_is_bounded_and_confidence_follows_it(dataset, split_name):
    split = dataset[split_name]
    error = np.linalg.norm(split["joint_2d"] - split["joint3d_image"][..., :2], axis=-1)
    confidence = split["confidence"][..., 0]
    assert 1.0 < np.median(error) < 8.0
    assert error.max() < 60.0
    assert np.all((confidence >= 0) & (confidence <= 1))
    assert confidence[error < 3].mean() > 0.85
    assert confidence[error > 20].mean() < 0.3
    assert np.corrcoef(error.ravel(), confidence.ravel())[0, 1] < -0.5


def test_pickle_bone_lengths_are_the_bvh_offsets(dataset):
    for split in dataset.values():
        for bone, lengths in _bone_lengths(_camera_frame(split)).items():
            expected = np.linalg.norm(_BONE_OFFSETS[bone]) * _CMU_UNIT_MM
            assert 80.0 < expected < 450.0
            np.testing.assert_allclose(lengths, expected, atol=0.05, err_msg=str(bone))


def test_tool_inverse_matches_the_definition(dataset):
    split = dataset["test"]
    np.testing.assert_allclose(make_cmu_demo.camera_frame_poses(split), _camera_frame(split), atol=1e-6)


def test_pickle_splits_each_take_by_time(dataset):
    train, test = (_source_blocks(dataset[name]) for name in ("train", "test"))
    assert set(train) == set(test)
    for source in train:
        train_pose = dataset["train"]["joint3d_image"][train[source]].reshape(-1, 51)
        test_pose = dataset["test"]["joint3d_image"][test[source]].reshape(-1, 51)
        assert 0.15 < len(test_pose) / (len(train_pose) + len(test_pose)) < 0.25
        # No test frame repeats a train frame ...
        gaps = np.min(np.linalg.norm(test_pose[:, None] - train_pose[None], axis=-1), axis=1)
        assert gaps.min() > 0.5, source
        # ... and the test part continues where the train part stops.
        steps = np.abs(np.diff(train_pose, axis=0)).max(axis=1)
        assert np.abs(test_pose[0] - train_pose[-1]).max() <= steps.max(), source
