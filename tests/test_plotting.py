"""Tests of lifting.pictures and train.curves: files written, fixed 3D box, input checks, curves."""

import json

import numpy as np
import pytest
from matplotlib import animation
from PIL import Image

from sasmamba_jax import skeleton
from sasmamba_jax.lifting import pictures
from sasmamba_jax.train import curves

_IMAGE_SIZE = (1000, 1000)
_DPI = 40

# Offset of each joint from its parent in mm, camera frame (x right, y DOWN, z away from the
# camera), for a person standing with arms down and facing the camera: their right side is
# on the image's left (-x).
_BONE_OFFSETS_MM = {
    1: (-130.0, 0.0, 0.0),
    2: (0.0, 450.0, 0.0),
    3: (0.0, 440.0, 0.0),  # right leg
    4: (130.0, 0.0, 0.0),
    5: (0.0, 450.0, 0.0),
    6: (0.0, 440.0, 0.0),  # left leg
    7: (0.0, -230.0, 0.0),
    8: (0.0, -250.0, 0.0),
    9: (0.0, -90.0, -20.0),  # spine, thorax, neck
    10: (0.0, -110.0, 0.0),  # head
    11: (160.0, 20.0, 0.0),
    12: (0.0, 280.0, 0.0),
    13: (0.0, 250.0, 0.0),  # left arm
    14: (-160.0, 20.0, 0.0),
    15: (0.0, 280.0, 0.0),
    16: (0.0, 250.0, 0.0),  # right arm
}
_SWINGING_JOINTS = {12: 1.0, 13: 1.0, 15: -1.0, 16: -1.0, 5: -0.5, 6: -0.5, 2: 0.5, 3: 0.5}


def _pitch(offset, angle):
    """Rotates a camera-frame offset about the x axis (a swing forward/back)."""
    x, y, z = offset
    return (x, y * np.cos(angle) - z * np.sin(angle), y * np.sin(angle) + z * np.cos(angle))


def walking_sequence(num_frames, root_depth_mm=4500.0, focal_px=1150.0):
    """A standing skeleton swinging arms and legs, and its pinhole projection.

    Returns:
      keypoints_2d: (T, 17, 2) pixels in a 1000 x 1000 image.
      poses_3d: (T, 17, 3) root-relative camera-frame poses in mm.
    """
    poses = np.zeros((num_frames, skeleton.NUM_JOINTS, 3))
    for t in range(num_frames):
        angle = 0.6 * np.sin(2.0 * np.pi * t / max(num_frames, 2))
        for joint in range(1, skeleton.NUM_JOINTS):
            offset = _pitch(_BONE_OFFSETS_MM[joint], _SWINGING_JOINTS.get(joint, 0.0) * angle)
            poses[t, joint] = poses[t, skeleton.PARENTS[joint]] + offset
    camera_points = poses + np.array([0.0, 0.0, root_depth_mm])
    keypoints_2d = focal_px * camera_points[..., :2] / camera_points[..., 2:] + 500.0
    return keypoints_2d, poses


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int32)


def _has_colour(pixels, rgb, tolerance=40):
    return np.any(np.all(np.abs(pixels - np.array(rgb)) <= tolerance, axis=-1))


def _axes_3d(figure):
    return figure.axes[1]


def _gid_points(axes, gid):
    (markers,) = [line for line in axes.get_lines() if line.get_gid() == gid]
    return np.stack(markers.get_data_3d(), axis=-1)


def test_save_frame_writes_png_with_both_sides_and_ground_truth(tmp_path):
    keypoints_2d, poses_3d = walking_sequence(4)
    path = pictures.save_frame(
        tmp_path / "frame.png",
        keypoints_2d,
        poses_3d,
        1,
        ground_truth_3d=poses_3d + 15.0,
        image_size=_IMAGE_SIZE,
        dpi=_DPI,
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (400, 200)
    pixels = _pixels(path)
    assert (pixels.std(axis=(0, 1)) > 10).all()
    # matplotlib's tab:blue (left), tab:orange (right) and tab:green (ground truth).
    for rgb in [(31, 119, 180), (255, 127, 14), (44, 160, 44)]:
        assert _has_colour(pixels, rgb), rgb


def test_3d_box_is_fixed_over_the_sequence_and_holds_every_point():
    keypoints_2d, poses_3d = walking_sequence(6)
    ground_truth = poses_3d * 1.3 + np.array([200.0, 0.0, 0.0])
    limits, every_point = [], []
    for frame in range(len(poses_3d)):
        axes = _axes_3d(pictures.plot_frame(keypoints_2d, poses_3d, frame, ground_truth_3d=ground_truth))
        limits.append([axes.get_xlim3d(), axes.get_ylim3d(), axes.get_zlim3d()])
        every_point.append(_gid_points(axes, "prediction_joints"))
        every_point.append(_gid_points(axes, "ground_truth_joints"))
    limits = np.array(limits)  # (T, 3 axes, low/high)
    np.testing.assert_array_equal(limits, np.broadcast_to(limits[0], limits.shape))
    widths = limits[0, :, 1] - limits[0, :, 0]
    np.testing.assert_allclose(widths, widths[0])  # equal aspect: a cube
    every_point = np.concatenate(every_point)
    assert np.all(every_point >= limits[0, :, 0]) and np.all(every_point <= limits[0, :, 1])


def test_3d_panel_shows_camera_y_down_as_up():
    keypoints_2d, poses_3d = walking_sequence(3)
    axes = _axes_3d(pictures.plot_frame(keypoints_2d, poses_3d, 0))
    shown = _gid_points(axes, "prediction_joints")
    # Written from the convention, not the module: display = (x, z, -y).
    expected = np.stack([poses_3d[0, :, 0], poses_3d[0, :, 2], -poses_3d[0, :, 1]], axis=-1)
    np.testing.assert_allclose(shown, expected)
    head, left_ankle = skeleton.JOINT_NAMES.index("head"), skeleton.JOINT_NAMES.index("left_ankle")
    assert shown[head, 2] > 0 > shown[left_ankle, 2]


def test_2d_panel_shows_the_image_with_y_down():
    keypoints_2d, poses_3d = walking_sequence(3)
    axes = pictures.plot_frame(keypoints_2d, poses_3d, 2, image_size=(1200, 900)).axes[0]
    assert axes.get_xlim() == (0.0, 1200.0)
    assert axes.get_ylim() == (900.0, 0.0)
    # Ankles below the bottom of a 480-pixel image widen the panel to keep them in view.
    axes = pictures.plot_frame(keypoints_2d, poses_3d, 2, image_size=(640, 480)).axes[0]
    assert axes.get_xlim() == (0.0, 640.0)
    assert axes.get_ylim() == (keypoints_2d[..., 1].max(), 0.0)
    normalised = pictures.plot_frame(keypoints_2d / 500.0 - 1.0, poses_3d, 2).axes[0]
    low, high = normalised.get_ylim()
    assert low > high


def test_gif_has_one_frame_per_pose_and_max_frames_caps_it(tmp_path):
    keypoints_2d, poses_3d = walking_sequence(5)
    path = pictures.save_animation(
        tmp_path / "all.gif", keypoints_2d, poses_3d, image_size=_IMAGE_SIZE, fps=10, dpi=_DPI
    )
    assert path == str(tmp_path / "all.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 5
        gif.seek(3)
        frame = np.asarray(gif.convert("RGB"), dtype=np.int32)
    assert (frame.std(axis=(0, 1)) > 10).all()
    capped = pictures.save_animation(
        tmp_path / "capped.gif", keypoints_2d, poses_3d, ground_truth_3d=poses_3d, max_frames=3, dpi=_DPI
    )
    with Image.open(capped) as gif:
        assert gif.n_frames == 3


def test_mp4_without_ffmpeg_raises_instead_of_falling_back(tmp_path, monkeypatch):
    keypoints_2d, poses_3d = walking_sequence(2)
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(RuntimeError, match="ffmpeg"):
        pictures.save_animation(tmp_path / "clip.mp4", keypoints_2d, poses_3d)
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.skipif(not animation.writers.is_available("ffmpeg"), reason="ffmpeg not installed")
def test_mp4_with_ffmpeg(tmp_path):
    keypoints_2d, poses_3d = walking_sequence(3)
    path = pictures.save_animation(tmp_path / "clip.mp4", keypoints_2d, poses_3d, dpi=_DPI)
    with open(path, "rb") as movie:
        assert movie.read(12)[4:8] == b"ftyp"


_GOOD_2D, _GOOD_3D = walking_sequence(4)


@pytest.mark.parametrize(
    "keypoints_2d, poses_3d, extra, message",
    [
        (_GOOD_2D[:, :16], _GOOD_3D, {}, "keypoints_2d must have shape"),
        (_GOOD_2D[..., :1], _GOOD_3D, {}, "keypoints_2d must have shape"),
        (_GOOD_2D[0], _GOOD_3D, {}, "keypoints_2d must have shape"),
        (_GOOD_2D, _GOOD_3D[..., :2], {}, "poses_3d must have shape"),
        (_GOOD_2D, _GOOD_3D[:3], {}, "poses_3d has 3 frames but keypoints_2d has 4"),
        (_GOOD_2D, _GOOD_3D, {"ground_truth_3d": _GOOD_3D[:2]}, "ground_truth_3d has 2 frames"),
        (_GOOD_2D, _GOOD_3D, {"ground_truth_3d": _GOOD_3D[:, :15]}, "ground_truth_3d must have"),
        (_GOOD_2D, np.full_like(_GOOD_3D, np.nan), {}, "poses_3d contains NaN"),
        (_GOOD_2D, _GOOD_3D, {"image_size": (640,)}, "image_size"),
        (_GOOD_2D, _GOOD_3D, {"image_size": (640, 0)}, "image_size"),
        (_GOOD_2D, _GOOD_3D, {"image_size": 640}, "image_size"),
        (_GOOD_2D, _GOOD_3D, {"image_size": ("wide", "tall")}, "image_size"),
    ],
)
def test_bad_inputs_raise(keypoints_2d, poses_3d, extra, message):
    with pytest.raises(ValueError, match=message):
        pictures.plot_frame(keypoints_2d, poses_3d, 0, **extra)


def test_unknown_drawing_argument_raises(tmp_path):
    with pytest.raises(TypeError, match="colour"):
        pictures.plot_frame(_GOOD_2D, _GOOD_3D, 0, colour="red")
    with pytest.raises(TypeError, match="colour"):
        pictures.save_animation(tmp_path / "clip.gif", _GOOD_2D, _GOOD_3D, colour="red")


@pytest.mark.parametrize("frame", [-1, 4, 1.0])
def test_bad_frame_raises(frame):
    with pytest.raises(ValueError, match="frame"):
        pictures.plot_frame(_GOOD_2D, _GOOD_3D, frame)


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("clip.avi", {}, "must end in .gif or .mp4"),
        ("clip.gif", {"fps": 0}, "fps"),
        ("clip.gif", {"max_frames": 0}, "max_frames"),
    ],
)
def test_bad_animation_arguments_raise(tmp_path, name, extra, message):
    with pytest.raises(ValueError, match=message):
        pictures.save_animation(tmp_path / name, _GOOD_2D, _GOOD_3D, **extra)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_training_curves_plot_present_keys(tmp_path):
    rows = [{"step": step, "train/loss": 1.0 / (step + 1), "lr": 5e-4} for step in range(0, 50, 5)]
    rows += [{"step": 25, "eval/p1": 60.0, "eval/p2": 45.0}, {"step": 50, "eval/p1": 50.0, "eval/p2": 40.0}]
    metrics = _write_jsonl(tmp_path / "metrics.jsonl", rows)
    out = curves.plot_training_curves(metrics, tmp_path / "curves.png", dpi=_DPI)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (280, 240)  # two panels of 7 x 3 inches at 40 dpi
    assert _pixels(out).std() > 10


def test_training_curves_without_eval_rows_draw_one_panel(tmp_path):
    metrics = _write_jsonl(
        tmp_path / "metrics.jsonl", [{"step": 1, "train/loss": 0.5}, {"step": 2, "train/loss": -0.1}]
    )
    out = curves.plot_training_curves(metrics, tmp_path / "curves.png", dpi=_DPI)
    with Image.open(out) as image:
        assert image.size == (280, 120)


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["\n"],
        [json.dumps({"step": 1, "lr": 0.1}) + "\n", json.dumps({"train/loss": 0.3}) + "\n"],
        [json.dumps({"step": "one", "eval/p1": 40.0}) + "\n"],
    ],
)
def test_training_curves_without_usable_rows_raise(tmp_path, lines):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(lines))
    with pytest.raises(ValueError, match="no row"):
        curves.plot_training_curves(metrics, tmp_path / "curves.png")


def test_training_curves_reject_broken_json(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "train/loss": 0.5}\n{"step": 2,\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not valid JSON"):
        curves.plot_training_curves(metrics, tmp_path / "curves.png")


def _two_people(num_frames=5):
    """Two walkers, the second 300 px to the right and 100 mm scaled, absent in frames 0 and 1."""
    keypoints_2d, poses_3d = walking_sequence(num_frames)
    people_2d = np.stack([keypoints_2d, keypoints_2d + [300.0, 0.0]])
    people_3d = np.stack([poses_3d, poses_3d * 0.9])
    people_2d[1, :2] = np.nan
    people_3d[1, :2] = np.nan
    return people_2d, people_3d


def test_several_people_stand_at_their_2d_roots():
    people_2d, people_3d = _two_people()
    axes = _axes_3d(pictures.plot_frame(people_2d, people_3d, 3, image_size=_IMAGE_SIZE, person_ids=[3, 7]))
    for row, person_id in enumerate((3, 7)):
        shown = _gid_points(axes, f"prediction_joints_{person_id}")
        # Written from the convention: the root-relative pose moved to the 2D root measured from the
        # image centre (x, y), depth unchanged, then shown as (x, z, -y).
        root = people_2d[row, 3, skeleton.ROOT] - np.array(_IMAGE_SIZE) / 2
        placed = people_3d[row, 3] + np.array([root[0], root[1], 0.0])
        np.testing.assert_allclose(shown, np.stack([placed[:, 0], placed[:, 2], -placed[:, 1]], axis=-1))
    legend = [text.get_text() for text in axes.figure.legends[0].get_texts()]
    assert legend[:2] == ["person 3", "person 7"]


def test_an_absent_person_is_not_drawn():
    people_2d, people_3d = _two_people()
    axes = _axes_3d(pictures.plot_frame(people_2d, people_3d, 1, image_size=_IMAGE_SIZE, person_ids=[3, 7]))
    assert np.isnan(_gid_points(axes, "prediction_joints_7")).all()
    assert np.isfinite(_gid_points(axes, "prediction_joints_3")).all()


def test_several_people_animation_and_input_checks(tmp_path):
    people_2d, people_3d = _two_people()
    path = pictures.save_animation(
        tmp_path / "two.gif", people_2d, people_3d, image_size=_IMAGE_SIZE, person_ids=[3, 7], dpi=_DPI
    )
    with Image.open(path) as image:
        assert image.n_frames == 5
    with pytest.raises(ValueError, match="several people need person_ids"):
        pictures.plot_frame(people_2d, people_3d, 0)
    broken = people_3d.copy()
    broken[0, 3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values outside whole absent frames"):
        pictures.plot_frame(people_2d, broken, 0, person_ids=[3, 7])
    with pytest.raises(ValueError, match="person_ids go with several people"):
        pictures.plot_frame(people_2d[0], people_3d[0], 0, person_ids=[3])
