"""Tests of the release's evaluation protocols on synthetic test splits.

The Human3.6M reference below walks clips, frames and joints one at a time
the way the release's `evaluate` does (pixel offsets included); 3DHP PCK,
AUC and MPJPE are counted joint by joint from their definitions.
"""

import json
import math
import pathlib
import pickle

import numpy as np
import pytest

from sasmamba_jax.data import h36m, mpi3dhp
from sasmamba_jax.evaluate import metrics, protocols

DEMO_PICKLE = pathlib.Path(__file__).parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"
T = 5
# (source, camera, action, frames). The second video is a skipped sequence;
# the third is shorter than T, so its clip repeats frames. With clips every 2
# frames, the last frame of the first and of the last video is in no clip.
VIDEOS = [
    ("s_09_act_02_subact_01_ca_01", "54138969", "Directions", 12),
    ("s_09_act_05_subact_02_ca_02", "55011271", "Eating", 7),
    ("s_11_act_03_subact_01_ca_03", "60457274", "Discussion", 3),
    ("s_11_act_03_subact_02_ca_04", "58860488", "Discussion", 10),
]


def _test_split(seed=0, stride=2):
    """An `H36MData` test split with overlapping clips, built by hand."""
    rng = np.random.default_rng(seed)
    sources = sum(([s] * n for s, _, _, n in VIDEOS), [])
    cameras = sum(([c] * n for _, c, _, n in VIDEOS), [])
    actions = sum(([a] * n for _, _, a, n in VIDEOS), [])
    clips = h36m.split_clips(sources, T, stride, rng)
    widths, _ = h36m.camera_resolutions(cameras)
    num_frames = len(sources)
    empty = np.zeros((0, T, 17, 3), np.float32)
    data = h36m.H36MData(
        train_inputs=empty,
        train_targets=empty,
        test_inputs=np.zeros((len(clips), T, 17, 3), np.float32),
        test_targets=np.zeros((len(clips), T, 17, 3), np.float32),
        test_clip_frames=clips,
        test_clip_widths=widths[clips[:, 0]],
        test_factors=rng.uniform(3, 5, size=num_frames).astype(np.float32),
        test_joints_mm=rng.normal(scale=400, size=(num_frames, 17, 3)).astype(np.float32),
        test_sources=np.array(sources),
        test_actions=np.array(actions),
    )
    return data, cameras


def _reference_h36m(predictions, data, cameras):
    """The release's protocol, one clip, frame and joint at a time."""
    num_frames = len(data.test_factors)
    joint_sum = [[0.0] * 17 for _ in range(num_frames)]
    p2_sum, accel_sum, count = [0.0] * num_frames, [0.0] * num_frames, [0] * num_frames
    for clip, frames in enumerate(data.test_clip_frames):
        sequence = data.test_sources[frames[0]].rsplit("_ca_", 1)[0]
        if sequence in ("s_09_act_05_subact_02", "s_09_act_10_subact_02", "s_09_act_13_subact_01"):
            continue
        width, height = h36m.CAMERA_RESOLUTIONS[cameras[frames[0]]]
        preds, gts = [], []
        for t, frame in enumerate(frames):
            pose = [[0.0, 0.0, 0.0] if j == 0 else list(predictions[clip, t, j]) for j in range(17)]
            factor = float(data.test_factors[frame])
            pixels = [
                [
                    (x + 1) * width / 2 * factor,
                    (y + height / width) * width / 2 * factor,
                    z * width / 2 * factor,
                ]
                for x, y, z in pose
            ]
            preds.append([[p[c] - pixels[0][c] for c in range(3)] for p in pixels])
            gt = data.test_joints_mm[frame].astype(np.float64)
            gts.append([[gt[j, c] - gt[0, c] for c in range(3)] for j in range(17)])
        preds, gts = np.array(preds), np.array(gts)
        joint_errors = [[math.dist(preds[t, j], gts[t, j]) for j in range(17)] for t in range(T)]
        p2 = metrics.p_mpjpe(preds, gts)
        accel = []
        for t in range(T - 2):
            pred_accel = preds[t] - 2 * preds[t + 1] + preds[t + 2]
            gt_accel = gts[t] - 2 * gts[t + 1] + gts[t + 2]
            accel.append(np.mean([math.dist(pred_accel[j], gt_accel[j]) for j in range(17)]))
        # A frame seen twice in a clip keeps its last values (numpy `a[idx] += v`).
        latest = {frame: t for t, frame in enumerate(frames)}
        latest_accel = {frame: t for t, frame in enumerate(frames[:-2])}
        for frame, t in latest.items():
            for j in range(17):
                joint_sum[frame][j] += joint_errors[t][j]
            p2_sum[frame] += p2[t]
            count[frame] += 1
        for frame, t in latest_accel.items():
            accel_sum[frame] += accel[t]

    per_action = {}
    for frame in range(num_frames):
        if count[frame]:
            action = per_action.setdefault(
                data.test_actions[frame], {"p1": [], "p2": [], "accel": [], "joints": []}
            )
            joints = [e / count[frame] for e in joint_sum[frame]]
            action["joints"].append(joints)
            action["p1"].append(sum(joints) / 17)
            action["p2"].append(p2_sum[frame] / count[frame])
            action["accel"].append(accel_sum[frame] / count[frame])
    result = {
        "per_action": {a: {k: np.mean(v[k]) for k in ("p1", "p2", "accel")} for a, v in per_action.items()},
        "per_joint": np.mean([np.mean(v["joints"], axis=0) for v in per_action.values()], axis=0),
        "num_frames": sum(c > 0 for c in count),
    }
    for key in ("p1", "p2", "accel"):
        result[key] = np.mean([a[key] for a in result["per_action"].values()])
    return result


def _normalised_from_mm(pose_mm, data):
    """Normalised predictions whose de-normalised value is `pose_mm` (M, T, 17, 3)."""
    scale = data.test_clip_widths[:, None] / 2 * data.test_factors[data.test_clip_frames]
    return pose_mm / scale[..., None, None]


def test_matches_explicit_loop_with_overlaps_repeats_and_skips():
    data, cameras = _test_split()
    clips = data.test_clip_frames
    assert len(clips) > len(set(clips.ravel())) / T  # Clips overlap...
    assert any(len(set(c)) < T for c in clips)  # ...and one repeats frames.
    predictions = np.random.default_rng(1).normal(scale=0.2, size=clips.shape + (17, 3))
    results = protocols.evaluate_h36m(predictions, data)
    expected = _reference_h36m(predictions, data, cameras)

    assert sorted(results["per_action"]) == ["Directions", "Discussion"]  # Eating is skipped.
    for action, errors in expected["per_action"].items():
        for key in ("p1", "p2", "accel"):
            assert results["per_action"][action][key] == pytest.approx(errors[key], rel=1e-6)
    for key in ("p1", "p2", "accel"):
        assert results[key] == pytest.approx(expected[key], rel=1e-6)
    np.testing.assert_allclose(results["per_joint"], expected["per_joint"], rtol=1e-6)
    # 11 + 9 frames of the long videos, 2 or 3 of the resampled one.
    assert results["num_frames"] == expected["num_frames"]
    assert expected["num_frames"] in (11 + 2 + 9, 11 + 3 + 9)
    assert all(isinstance(v, float) for v in results["per_joint"])


def test_skipped_sequence_predictions_do_not_matter():
    data, _ = _test_split()
    rng = np.random.default_rng(2)
    predictions = rng.normal(scale=0.2, size=data.test_clip_frames.shape + (17, 3))
    skipped_clips = np.array(["act_05_subact_02" in data.test_sources[c[0]] for c in data.test_clip_frames])
    assert skipped_clips.any()
    changed = predictions.copy()
    changed[skipped_clips] += 10.0
    assert protocols.evaluate_h36m(predictions, data) == protocols.evaluate_h36m(changed, data)


def test_perfect_and_similarity_transformed_predictions():
    data, _ = _test_split(seed=3)
    gt = data.test_joints_mm[data.test_clip_frames].astype(np.float64)
    gt -= gt[:, :, :1]
    perfect = protocols.evaluate_h36m(_normalised_from_mm(gt, data), data)
    for key in ("p1", "p2", "accel"):
        assert perfect[key] < 1e-6
    assert max(perfect["per_joint"]) < 1e-6

    # Rotated about the root and scaled: P1 grows, P2 stays 0.
    angle = 0.3
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    transformed = protocols.evaluate_h36m(_normalised_from_mm(1.1 * gt @ rotation.T, data), data)
    assert transformed["p1"] > 50 and transformed["p2"] < 1e-6


def test_wrong_prediction_shape_raises():
    data, _ = _test_split()
    with pytest.raises(ValueError, match="shape"):
        protocols.evaluate_h36m(np.zeros((1, T, 17, 3)), data)


def test_format_results_table():
    data, _ = _test_split()
    predictions = np.random.default_rng(4).normal(scale=0.2, size=data.test_clip_frames.shape + (17, 3))
    results = protocols.evaluate_h36m(predictions, data)
    table = protocols.format_results_table(results)
    lines = table.splitlines()
    assert "P1" in lines[0] and "P2" in lines[0]
    directions = next(line for line in lines if line.startswith("Directions"))
    assert f"{results['per_action']['Directions']['p1']:.2f}" in directions
    assert lines[-1].split() == [
        "Average",
        f"{results['p1']:.2f}",
        f"{results['p2']:.2f}",
        f"{results['accel']:.2f}",
    ]


def _write_h36m_pickle(path, rng):
    """A MotionBERT-format pickle whose 2.5d joints are its image joints times the factor."""

    def split(videos):
        sources = sum(([s] * n for s, _, _, n in videos), [])
        n = len(sources)
        joint3d = rng.uniform(0, 1000, size=(n, 17, 3))
        factors = rng.uniform(3, 5, size=n)
        return {
            "joint_2d": joint3d[..., :2],
            "confidence": np.ones((n, 17)),
            "joint3d_image": joint3d,
            "source": sources,
            "camera_name": sum(([c] * n for _, c, _, n in videos), []),
            "action": sum(([a] * n for _, _, a, n in videos), []),
            "2.5d_factor": factors,
            "joints_2.5d_image": joint3d * factors[:, None, None],
        }

    with open(path, "wb") as f:
        pickle.dump({"train": split(VIDEOS[:2]), "test": split(VIDEOS)}, f)


def test_end_to_end_targets_as_predictions_score_zero(tmp_path):
    path = tmp_path / "h36m.pkl"
    _write_h36m_pickle(path, np.random.default_rng(5))
    data = h36m.load_h36m(str(path), T)
    predictions = data.test_targets - data.test_targets[:, :, :1]
    results = protocols.evaluate_h36m(predictions, data)
    assert results["p1"] < 1e-3 and results["p2"] < 1e-3 and results["accel"] < 1e-3


@pytest.mark.skipif(not DEMO_PICKLE.exists(), reason="demo pickle not generated")
def test_demo_pickle_loads_and_evaluates():
    data = h36m.load_h36m(str(DEMO_PICKLE), 27)
    assert data.test_inputs.shape[1:] == (27, 17, 3) and len(data.test_inputs) > 0
    assert np.isfinite(data.test_inputs).all() and np.isfinite(data.test_targets).all()
    # Its 2.5d joints are its image joints times the factor, so the targets
    # themselves score (about) 0, and a shifted copy does not.
    targets = data.test_targets - data.test_targets[:, :, :1]
    results = protocols.evaluate_h36m(targets, data)
    assert results["num_frames"] > 0 and results["p1"] < 0.05 and results["p2"] < 0.05
    json.dumps(results)
    shifted = protocols.evaluate_h36m(targets + [0.01, 0.0, 0.0], data)
    assert shifted["p1"] > 1


# MPI-INF-3DHP.


def _write_3dhp_test(tmp_path, rng):
    test = {}
    for name, length in (("TS2", 30), ("TS6", 20)):
        valid = rng.uniform(size=length) > 0.25
        data_3d = rng.normal(scale=400, size=(length, 17, 3))
        data_3d[~valid] = np.nan  # Invalid frames must never be scored.
        test[name] = {
            "data_2d": rng.uniform(0, 1080, size=(length, 17, 2)),
            "data_3d": data_3d,
            "valid": valid.astype(np.float64),
        }
    path = tmp_path / "data_test_3dhp.npz"
    np.savez_compressed(path, data=test)
    return str(path), test


def _reference_3dhp(centre_mm, target_mm, joints=tuple(range(14))):  # noqa: B008 (immutable)
    """PCK, AUC (percent) and MPJPE counted joint by joint."""
    thresholds = range(0, 151, 5)
    correct, curve, total_error, num_scores = 0, 0, 0.0, 0
    for pred, gt in zip(centre_mm, target_mm):
        for j in range(17):
            error = math.dist(pred[j], gt[j])
            total_error += error
            if j in joints:
                correct += error < 150
                curve += sum(error < t for t in thresholds)
                num_scores += 1
    return {
        "pck": 100 * correct / num_scores,
        "auc": 100 * curve / (num_scores * len(thresholds)),
        "p1": total_error / (17 * len(centre_mm)),
    }


def test_3dhp_scores_centre_frames_of_valid_windows(tmp_path):
    rng = np.random.default_rng(6)
    path, test = _write_3dhp_test(tmp_path, rng)
    data = mpi3dhp.load_3dhp(None, path, 7)
    num_windows = len(data.test_inputs)
    assert num_windows == sum(int(v["valid"].sum()) for v in test.values())

    centre_mm = data.test_targets_mm + rng.normal(scale=90, size=data.test_targets_mm.shape)
    centre_mm[:, 14] = 0
    half_width = data.test_widths[:, None, None] / 2
    predictions = rng.normal(scale=50, size=(num_windows, 7, 17, 3))  # Off-centre: ignored.
    predictions[:, 3] = centre_mm / half_width
    predictions[:, 3, 14] = 0.7  # The release zeroes the root without shifting the rest.
    results = protocols.evaluate_3dhp(predictions, data)

    expected = _reference_3dhp(centre_mm, data.test_targets_mm)
    for key in ("pck", "auc", "p1"):
        assert results[key] == pytest.approx(expected[key], rel=1e-6)
    assert 20 < results["pck"] < 95  # The noise puts errors on both sides of 150 mm.
    assert results["num_frames"] == num_windows
    for name in ("TS2", "TS6"):
        rows = data.test_sequences == name
        expected = _reference_3dhp(centre_mm[rows], data.test_targets_mm[rows])
        assert results["per_sequence"][name]["pck"] == pytest.approx(expected["pck"], rel=1e-6)
        assert results["per_sequence"][name]["num_frames"] == int(test[name]["valid"].sum())

    perfect = np.zeros_like(predictions)
    perfect[:, 3] = data.test_targets_mm / half_width
    results = protocols.evaluate_3dhp(perfect, data)
    assert results["pck"] == 100 and results["auc"] > 96 and results["p1"] < 1e-3
