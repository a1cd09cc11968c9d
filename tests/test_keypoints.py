"""Keypoint preparation: COCO -> Human3.6M, missing points, normalisation, bad input."""

import numpy as np
import pytest

from sasmamba_jax import skeleton
from sasmamba_jax.lifting import keypoints


def _coco_frame():
    """One COCO frame (17, 2) where keypoint k sits at (10 k, 100 + k)."""
    k = np.arange(17, dtype=np.float64)
    return np.stack([10 * k, 100 + k], axis=-1)


def test_coco_to_h36m_hand_built_example():
    # COCO: 0 nose, 1/2 eyes, 5/6 shoulders, 7/8 elbows, 9/10 wrists,
    # 11/12 hips, 13/14 knees, 15/16 ankles (left first).
    expected = np.array(
        [
            [115.0, 111.5],  # pelvis = mid-hip (COCO 11, 12)
            [120.0, 112.0],  # right_hip = COCO 12
            [140.0, 114.0],  # right_knee = 14
            [160.0, 116.0],  # right_ankle = 16
            [110.0, 111.0],  # left_hip = 11
            [130.0, 113.0],  # left_knee = 13
            [150.0, 115.0],  # left_ankle = 15
            [85.0, 108.5],  # spine = (pelvis + thorax) / 2
            [55.0, 105.5],  # thorax = mid-shoulder (5, 6)
            [0.0, 100.0],  # neck = nose (0)
            [15.0, 101.5],  # head = mid-eye (1, 2)
            [50.0, 105.0],  # left_shoulder = 5
            [70.0, 107.0],  # left_elbow = 7
            [90.0, 109.0],  # left_wrist = 9
            [60.0, 106.0],  # right_shoulder = 6
            [80.0, 108.0],  # right_elbow = 8
            [100.0, 110.0],  # right_wrist = 10
        ]
    )
    confidences = np.linspace(0.5, 0.9, 17)[None]
    xy, conf = keypoints.coco_to_h36m(_coco_frame()[None], confidences)
    np.testing.assert_allclose(xy[0], expected)
    c = confidences[0]
    expected_conf = [
        min(c[11], c[12]), c[12], c[14], c[16], c[11], c[13], c[15],
        min(c[5], c[6], c[11], c[12]), min(c[5], c[6]), c[0], min(c[1], c[2]),
        c[5], c[7], c[9], c[6], c[8], c[10],
    ]  # fmt: skip
    np.testing.assert_allclose(conf[0], expected_conf)


def test_coco_missing_source_makes_derived_joint_missing():
    frames = np.repeat(_coco_frame()[None], 3, axis=0)
    confidences = np.ones((3, 17))
    confidences[1, 2] = 0.0  # right eye lost in frame 1
    xy, _ = keypoints.coco_to_h36m(frames, confidences)
    assert np.isnan(xy[1, 10]).all()  # head comes from both eyes
    others = np.ones((3, 17), bool)
    others[1, 10] = False
    assert np.isfinite(xy[others]).all()


def test_fill_missing_interpolates_linearly_and_holds_edges():
    xy = np.zeros((6, 17, 2))
    xy[:, 13, 0] = [np.nan, 2.0, np.nan, np.nan, 8.0, np.nan]
    xy[:, 13, 1] = [np.nan, -1.0, np.nan, np.nan, 5.0, np.nan]
    missing = np.isnan(xy).any(axis=-1)
    with pytest.warns(UserWarning, match=r"filled 4 missing keypoint.*left_wrist: 4"):
        filled = keypoints.fill_missing(xy, missing)
    np.testing.assert_allclose(filled[:, 13, 0], [2.0, 2.0, 4.0, 6.0, 8.0, 8.0])
    np.testing.assert_allclose(filled[:, 13, 1], [-1.0, -1.0, 1.0, 3.0, 5.0, 5.0])
    np.testing.assert_array_equal(np.delete(filled, 13, axis=1), 0.0)


def test_prepare_fills_zero_confidence_points_and_zeroes_their_confidence():
    xy = np.zeros((3, 17, 3))
    xy[..., 2] = 0.8
    xy[:, 4, 0] = [1.0, 99.0, 3.0]
    xy[1, 4, 2] = 0.0  # a detector's "not found" point
    with pytest.warns(UserWarning, match="filled 1 missing"):
        prepared = keypoints.prepare_keypoints(xy, image_size=(100, 100))
    np.testing.assert_allclose(prepared.xy[:, 4, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(prepared.confidences[:, 4], [0.8, 0.0, 0.8])
    assert prepared.filled.sum() == 1 and prepared.filled[1, 4]


def test_no_warning_when_nothing_is_missing(recwarn):
    keypoints.prepare_keypoints(np.ones((4, 17, 2)))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_normalisation_matches_release_formula():
    # xy / W * 2 - [1, H / W] with W = 1000, H = 1002.
    xy = np.zeros((1, 17, 2))
    xy[0, 0] = [500.0, 501.0]  # image centre -> (0, 0)
    xy[0, 1] = [0.0, 0.0]  # top-left -> (-1, -1.002)
    xy[0, 2] = [1000.0, 1002.0]  # bottom-right -> (1, 1.002)
    prepared = keypoints.prepare_keypoints(xy, image_size=(1000, 1002))
    np.testing.assert_allclose(prepared.normalised[0, :3], [[0, 0], [-1, -1.002], [1, 1.002]], atol=1e-6)
    np.testing.assert_array_equal(prepared.xy, xy.astype(np.float32))


def test_model_input_channels():
    prepared = keypoints.prepare_keypoints(np.ones((2, 17, 2)), confidences=np.full((2, 17), 0.5))
    assert prepared.model_input(2).shape == (2, 17, 2)
    three = prepared.model_input(3)
    np.testing.assert_array_equal(three[..., 2], 0.5)
    no_confidence = keypoints.prepare_keypoints(np.ones((2, 17, 2)))
    with pytest.raises(ValueError, match="3 input channels.*no confidences"):
        no_confidence.model_input(3)


@pytest.mark.parametrize(
    "array, kwargs, message",
    [
        (np.ones((5, 16, 2)), {}, "wrong joint count.*got 16"),
        (np.ones((5, 17, 4)), {}, "wrong channel count.*got 4"),
        (np.ones((0, 17, 2)), {}, "empty sequence"),
        (np.ones((17, 2)), {}, r"keypoints\[None\]"),
        (np.full((5, 17, 2), np.inf), {}, "infinite"),
        (np.ones((5, 17, 2)), {"image_size": (np.inf, 1000)}, "finite and positive"),
        (np.ones((5, 17, 2)), {"image_size": (0, 1000)}, "finite and positive"),
        (np.ones((5, 17, 2)), {"image_size": (1000,)}, r"\(W, H\)"),
        (np.ones((5, 17, 2)), {"keypoint_format": "openpose"}, "unknown keypoint format"),
        (np.ones((5, 17, 3)), {"confidences": np.ones((5, 17))}, "confidences given twice"),
        (np.ones((5, 17, 2)), {"confidences": np.ones((4, 17))}, r"confidences must have shape \(5, 17\)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(array, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keypoints.prepare_keypoints(array, **kwargs)


def test_joint_missing_everywhere_is_an_error_naming_it():
    xy = np.ones((5, 17, 2))
    xy[:, skeleton.JOINT_NAMES.index("left_wrist")] = np.nan
    with pytest.raises(ValueError, match="left_wrist missing in every frame"):
        keypoints.prepare_keypoints(xy)


def test_coco_joint_missing_everywhere_names_its_sources():
    coco = np.ones((5, 17, 3))
    coco[:, 1, 2] = 0.0  # left eye never detected
    with pytest.raises(ValueError, match=r"head \(from COCO left_eye, right_eye\) missing in every frame"):
        keypoints.prepare_keypoints(coco, keypoint_format="coco")


def test_unused_coco_ears_may_be_missing():
    coco = np.ones((5, 17, 3))
    coco[:, 3:5, 2] = 0.0  # ears are not used by the conversion
    prepared = keypoints.prepare_keypoints(coco, keypoint_format="coco")
    assert not prepared.filled.any()


def test_pixels_without_an_image_size_are_refused():
    xy = np.full((3, 17, 2), 0.5)
    xy[1, 5] = [-1.9, 3.9]  # off the image of a tall portrait video: still normalised
    keypoints.prepare_keypoints(xy)
    xy[1, 5, 0] = 2.5
    with pytest.raises(ValueError, match=r"look like pixels \(\|x\| up to 2\.5.*give image_size=\(W, H\)"):
        keypoints.prepare_keypoints(xy)
    assert keypoints.prepare_keypoints(xy, image_size=(640, 480)).image_size == (640.0, 480.0)
    coco = np.concatenate([np.full((3, 17, 2), 300.0), np.ones((3, 17, 1))], axis=-1)
    with pytest.raises(ValueError, match="look like pixels"):
        keypoints.prepare_keypoints(coco, keypoint_format="coco")
    coco[..., 2] = 0.0  # missing points are not looked at (and here all missing)
    with pytest.raises(ValueError, match="missing in every frame"):
        keypoints.prepare_keypoints(coco, keypoint_format="coco")
