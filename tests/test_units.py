"""Poses in metres: scaled to a subject's ankle-to-head height, by lift, lift_people and infer."""

import csv

import numpy as np
import pytest
from test_inference import random_model
from test_motion_export import parse_bvh

from sasmamba_jax.cli import infer
from sasmamba_jax.io import model_dirs
from sasmamba_jax.lifting import motion_export, sequences, units

HEIGHT = 1.75
FRAMES = 40
# Human3.6M joints written out here (not taken from skeleton.py or units.py).
PELVIS, R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, SPINE, THORAX, NECK, HEAD = range(11)
BAD_HEIGHTS = [0.0, -1.75, float("nan"), float("inf"), "1.75", True]


def ankle_to_head(poses):
    """Independent reference: median over complete frames of leg (mean of both sides) + trunk bones."""
    poses = np.asarray(poses, np.float64)

    def bone(pose, a, b):
        return float(np.sqrt(np.sum((pose[a] - pose[b]) ** 2)))

    heights = []
    for p in poses:
        if np.isnan(p[:11]).any():
            continue
        right = bone(p, R_ANKLE, R_KNEE) + bone(p, R_KNEE, R_HIP)
        left = bone(p, L_ANKLE, L_KNEE) + bone(p, L_KNEE, L_HIP)
        trunk = bone(p, PELVIS, SPINE) + bone(p, SPINE, THORAX) + bone(p, THORAX, NECK) + bone(p, NECK, HEAD)
        heights.append((right + left) / 2 + trunk)
    return float(np.median(heights))


def upright_pose(scale=1.0):
    """(17, 3) a person standing straight, camera frame (y down), legs and trunk vertical."""
    pose = np.zeros((17, 3))
    for hip, knee, ankle, x in ((R_HIP, R_KNEE, R_ANKLE, -0.1), (L_HIP, L_KNEE, L_ANKLE, 0.1)):
        pose[hip] = [x, 0.0, 0.0]
        pose[knee] = [x, 0.45, 0.0]
        pose[ankle] = [x, 0.88, 0.0]
    for joint, y in ((SPINE, -0.23), (THORAX, -0.48), (NECK, -0.60), (HEAD, -0.72)):
        pose[joint] = [0.0, y, 0.0]
    arm = np.array([[0.15, 0.0, 0.0], [0.4, 0.0, 0.0], [0.6, 0.0, 0.0]])
    pose[11:14], pose[14:17] = pose[THORAX] + arm, pose[THORAX] - arm
    return pose * scale


def moving_poses(seed=0, frames=FRAMES, scale=0.3):
    """(T, 17, 3) the upright pose turned, bent and jittered frame to frame, in arbitrary units."""
    rng = np.random.default_rng(seed)
    poses = np.repeat(upright_pose(scale)[None], frames, axis=0)
    return (poses + rng.normal(scale=0.02 * scale, size=poses.shape)).astype(np.float32)


def test_upright_person_stands_the_given_height_from_ankles_to_head():
    (scaled,) = units.scale_to_height(upright_pose(0.37)[None], HEIGHT)
    assert scaled[HEAD, 1] - scaled[R_ANKLE, 1] == pytest.approx(-HEIGHT)
    assert scaled[HEAD, 1] - scaled[L_ANKLE, 1] == pytest.approx(-HEIGHT)


def test_scaled_poses_measure_the_height_independently():
    poses = moving_poses()
    scaled = units.scale_to_height(poses, HEIGHT)
    assert scaled.dtype == np.float32 and scaled.shape == poses.shape
    assert ankle_to_head(scaled) == pytest.approx(HEIGHT, rel=1e-5)
    assert units.standing_height(poses) == pytest.approx(ankle_to_head(poses), rel=1e-6)
    # One factor for the whole sequence: the shape of every frame is kept.
    np.testing.assert_allclose(
        scaled / poses, np.full(poses.shape, scaled[0, 1, 0] / poses[0, 1, 0]), rtol=1e-5
    )


def test_scale_invariance():
    poses = moving_poses(seed=1)
    np.testing.assert_allclose(
        units.scale_to_height(2 * poses, HEIGHT), units.scale_to_height(poses, HEIGHT), rtol=1e-6, atol=1e-7
    )


def test_absent_frames_are_ignored_and_stay_nan():
    poses = moving_poses(seed=2)
    with_gaps = poses.copy()
    with_gaps[:5] = np.nan  # the person absent
    with_gaps[9, HEAD] = np.nan  # one joint of the chain missing: not a complete frame
    with_gaps[12, 13] = np.nan  # a wrist: the frame still counts
    scaled = units.scale_to_height(with_gaps, HEIGHT)
    assert np.isnan(scaled[:5]).all() and np.isnan(scaled[9, HEAD]).all() and not np.isnan(scaled[10]).any()
    assert ankle_to_head(scaled) == pytest.approx(HEIGHT, rel=1e-5)
    assert units.standing_height(with_gaps) == pytest.approx(ankle_to_head(with_gaps), rel=1e-6)
    with pytest.raises(ValueError, match="no frame has every joint from the ankles to the head"):
        units.scale_to_height(np.full((4, 17, 3), np.nan), HEIGHT)


def test_several_people_each_stand_the_given_height():
    people = np.stack([moving_poses(seed=3, scale=0.2), moving_poses(seed=4, scale=0.5)])
    people[1, :7] = np.nan
    scaled = units.scale_to_height(people, HEIGHT)
    assert units.standing_height(people).shape == (2,)
    for person in scaled:
        assert ankle_to_head(person) == pytest.approx(HEIGHT, rel=1e-5)


@pytest.mark.parametrize("height", BAD_HEIGHTS)
def test_bad_heights_are_refused(height):
    with pytest.raises(ValueError, match=r"^subject_height must be a positive finite number of metres, got "):
        units.scale_to_height(moving_poses(), height)


@pytest.fixture(scope="module")
def model():
    return random_model()


def pixel_keypoints(seed=0, frames=30, width=1000):
    """(T, 17, 2) pixel keypoints of an upright person near the middle of a square image."""
    rng = np.random.default_rng(seed)
    pose = upright_pose(width / 4)[:, :2] + width / 2
    return pose + rng.normal(scale=width / 200, size=(frames, 17, 2))


def test_lift_in_metres(model):
    keypoints = pixel_keypoints()
    options = dict(keypoint_format="h36m", flip_tta=False)
    normalised = sequences.lift(model, keypoints, image_size=(1000, 1000), **options)
    metres = sequences.lift(model, keypoints, image_size=(1000, 1000), subject_height=HEIGHT, **options)
    assert metres.dtype == np.float32
    assert ankle_to_head(metres) == pytest.approx(HEIGHT, rel=1e-5)
    np.testing.assert_allclose(
        metres, normalised * (HEIGHT / ankle_to_head(normalised)), rtol=1e-5, atol=1e-6
    )
    # The same person filmed at twice the resolution comes out the same size.
    doubled = sequences.lift(model, 2 * keypoints, image_size=(2000, 2000), subject_height=HEIGHT, **options)
    np.testing.assert_allclose(doubled, metres, rtol=1e-4, atol=1e-5)
    # Without a height nothing changes.
    np.testing.assert_array_equal(
        sequences.lift(model, keypoints, image_size=(1000, 1000), **options), normalised
    )


def test_lift_people_scales_each_person_by_their_own_height(model):
    near, far = pixel_keypoints(seed=1), 0.5 * pixel_keypoints(seed=2) + 250
    people = np.stack([near, far])
    people[1, :6] = np.nan
    options = dict(keypoint_format="h36m", image_size=(1000, 1000), flip_tta=False)
    normalised = sequences.lift_people(model, people, [3, 7], **options).poses_3d
    lifted = sequences.lift_people(model, people, [3, 7], subject_height=HEIGHT, **options)
    assert np.isnan(lifted.poses_3d[1, :6]).all() and not np.isnan(lifted.poses_3d[1, 6:]).any()
    for person, before in zip(lifted.poses_3d, normalised):
        assert ankle_to_head(person) == pytest.approx(HEIGHT, rel=1e-5)
        np.testing.assert_allclose(person, before * (HEIGHT / ankle_to_head(before)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("height", BAD_HEIGHTS)
def test_lift_refuses_bad_heights_in_one_line(model, height):
    with pytest.raises(ValueError, match=r"^subject_height must be a positive finite number of metres") as e:
        sequences.lift(model, pixel_keypoints(), image_size=(1000, 1000), subject_height=height)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^subject_height must be a positive finite number of metres"):
        sequences.lift_people(
            model, pixel_keypoints()[None], [0], image_size=(1000, 1000), subject_height=height
        )


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    model_dirs.save_model(model, directory)
    return directory


def _infer(model_dir, tmp_path, extra=""):
    np.save(tmp_path / "kp.npy", pixel_keypoints(seed=5))
    arguments = (
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.npy'} --format h36m --image-size 1000 1000 "
        f"--no-flip-tta --output {tmp_path / 'o.npz'} --bvh {tmp_path / 'p.bvh'} --csv {tmp_path / 'p.csv'} "
    )
    return infer.main((arguments + extra).split())


def _csv_poses(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[float(v) for v in row[3:]] for row in rows]).reshape(-1, 17, 3)


def test_cli_subject_height_writes_metres(model_dir, tmp_path, capsys):
    assert _infer(model_dir, tmp_path, f"--subject-height {HEIGHT}") == 0
    out = capsys.readouterr().out
    assert (
        f"wrote {tmp_path / 'p.bvh'} (in metres)" in out and f"wrote {tmp_path / 'p.csv'} (in metres)" in out
    )
    result = np.load(tmp_path / "o.npz")
    metres = result["poses_3d_m"]
    assert ankle_to_head(metres) == pytest.approx(HEIGHT, rel=1e-5)
    np.testing.assert_allclose(_csv_poses(tmp_path / "p.csv"), metres, atol=1e-6)
    joints, motion, _ = parse_bvh((tmp_path / "p.bvh").read_text())
    offset = {j["name"]: np.linalg.norm(j["offset"]) for j in joints if j["name"] is not None}
    legs = (offset["right_knee"] + offset["right_ankle"] + offset["left_knee"] + offset["left_ankle"]) / 2
    trunk = offset["spine"] + offset["thorax"] + offset["neck"] + offset["head"]
    # Median bone lengths summed, against the median of the summed chains: close, not equal.
    assert legs + trunk == pytest.approx(HEIGHT, rel=0.02)
    # The root's positions are the lifted pelvis, in metres too.
    np.testing.assert_allclose(motion[:, :3], metres[:, 0] * [1, -1, -1], atol=2e-6)
    # The normalised and pixel arrays are still there, unchanged.
    np.testing.assert_allclose(result["poses_3d_px"], result["poses_3d"] * 500, rtol=1e-6)


def test_cli_without_subject_height_writes_pixels_as_before(model_dir, tmp_path, capsys):
    assert _infer(model_dir, tmp_path) == 0
    assert "(in pixels; --subject-height METRES for metres)" in capsys.readouterr().out
    result = np.load(tmp_path / "o.npz")
    assert "poses_3d_m" not in result
    pixels = result["poses_3d_px"]
    assert (tmp_path / "p.bvh").read_text() == motion_export.bvh_text(pixels, fps=25.0)
    reference = tmp_path / "reference.csv"
    motion_export.write_csv(reference, pixels[None], [0])
    assert (tmp_path / "p.csv").read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("height, shown", [("0", "0.0"), ("-1.75", "-1.75"), ("nan", "nan"), ("inf", "inf")])
def test_cli_refuses_bad_heights_in_one_line(tmp_path, capsys, height, shown):
    np.save(tmp_path / "kp.npy", np.ones((5, 17, 2)))
    arguments = (
        f"--checkpoint {tmp_path}/nope --input {tmp_path}/kp.npy --format h36m --output {tmp_path}/o.npz "
        f"--subject-height {height}"
    )
    # Refused before the (missing) checkpoint is looked at.
    assert infer.main(arguments.split()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        f"sasmamba_jax.infer: error: --subject-height must be a positive finite number of metres, got {shown}"
    ), err
