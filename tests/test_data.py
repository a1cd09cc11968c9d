"""Tests of the dataset readers: flip, screen normalisation, clip splitting,
Human3.6M and MPI-INF-3DHP loading and their errors on bad files.

Expected values are worked out by hand or by plain loops that follow the
release's procedures step by step; the data are small synthetic files in the
formats of MotionBERT (pickle) and P-STMO (npz) written to tmp_path.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sasmamba_jax.configs import common

from sasmamba_jax import skeleton
from sasmamba_jax.data import augment, h36m, mpi3dhp
from sasmamba_jax.evaluate import tasks

CAMERAS = ("54138969", "55011271", "58860488", "60457274")


def _h36m_split(videos, rng, with_eval_fields):
    """Per-frame fields of a split of MotionBERT's pickle.

    Args:
      videos: list of (source, camera, action, num_frames).
    """
    sources, cameras, actions = [], [], []
    for source, camera, action, length in videos:
        sources += [source] * length
        cameras += [camera] * length
        actions += [action] * length
    n = len(sources)
    joint3d = rng.uniform(0, 1000, size=(n, 17, 3))
    fields = {
        "joint_2d": joint3d[..., :2] + rng.normal(scale=5.0, size=(n, 17, 2)),
        "confidence": rng.uniform(size=(n, 17)),
        "joint3d_image": joint3d,
        "camera_name": np.array(cameras),
        "source": sources,
    }
    if with_eval_fields:
        factors = rng.uniform(3.0, 5.0, size=n)
        fields.update(
            {
                "action": actions,
                "2.5d_factor": factors,
                "joints_2.5d_image": joint3d * factors[:, None, None],
            }
        )
    return fields


def _write_h36m(path, train_videos, test_videos, seed=0, mutate=None):
    rng = np.random.default_rng(seed)
    content = {"train": _h36m_split(train_videos, rng, False), "test": _h36m_split(test_videos, rng, True)}
    if mutate is not None:
        mutate(content)
    with open(path, "wb") as f:
        pickle.dump(content, f)
    return content


TRAIN_VIDEOS = [
    ("s_01_act_02_subact_01_ca_01", "54138969", "Directions", 30),
    ("s_01_act_02_subact_01_ca_02", "55011271", "Directions", 25),
    ("s_01_act_03_subact_01_ca_03", "58860488", "Discussion", 7),
    ("s_01_act_03_subact_01_ca_04", "60457274", "Discussion", 21),
]
TEST_VIDEOS = [
    ("s_09_act_02_subact_01_ca_01", "54138969", "Directions", 24),
    ("s_09_act_03_subact_01_ca_02", "55011271", "Discussion", 5),
    ("s_09_act_03_subact_02_ca_03", "60457274", "Discussion", 19),
]


# Flip.


def _loop_flip(pose, left, right):
    """Flips one (J, C) pose joint by joint."""
    out = np.array(pose, copy=True)
    for l, r in zip(left, right):
        out[l], out[r] = pose[r].copy(), pose[l].copy()
    out[:, 0] *= -1
    return out


@pytest.mark.parametrize("channels", [2, 3])
def test_flip_pose_matches_joint_by_joint_swap(channels):
    poses = np.random.default_rng(0).normal(size=(2, 5, 17, channels)).astype(np.float32)
    flipped = augment.flip_pose(poses)
    assert flipped.dtype == np.float32 and flipped.shape == poses.shape
    for b in range(2):
        for t in range(5):
            np.testing.assert_array_equal(
                flipped[b, t], _loop_flip(poses[b, t], skeleton.LEFT_JOINTS, skeleton.RIGHT_JOINTS)
            )
    np.testing.assert_array_equal(augment.flip_pose(flipped), poses)


def test_flip_pose_release_pairs_and_jax():
    # The release swaps [1, 2, 3, 14, 15, 16] with [4, 5, 6, 11, 12, 13].
    pose = np.arange(17 * 3, dtype=np.float32).reshape(17, 3)
    flipped = augment.flip_pose(pose)
    for a, b in zip([1, 2, 3, 14, 15, 16], [4, 5, 6, 11, 12, 13]):
        np.testing.assert_array_equal(flipped[a], pose[b] * [-1, 1, 1])
        np.testing.assert_array_equal(flipped[b], pose[a] * [-1, 1, 1])
    for j in (0, 7, 8, 9, 10):
        np.testing.assert_array_equal(flipped[j], pose[j] * [-1, 1, 1])

    jitted = jax.jit(augment.flip_pose)(jnp.asarray(pose))
    assert isinstance(jitted, jax.Array)
    np.testing.assert_array_equal(np.asarray(jitted), flipped)
    assert augment.flip_pose(jnp.asarray(pose, jnp.bfloat16)).dtype == jnp.bfloat16


def test_flip_pose_3dhp_permutation():
    pose = np.random.default_rng(1).normal(size=(17, 3))
    flipped = augment.flip_pose(pose, mpi3dhp.FLIP_PERMUTATION)
    # The release's 3DHP pairs: [8, 9, 10, 2, 3, 4] <-> [11, 12, 13, 5, 6, 7].
    np.testing.assert_array_equal(flipped, _loop_flip(pose, [8, 9, 10, 2, 3, 4], [11, 12, 13, 5, 6, 7]))
    with pytest.raises(ValueError, match="17"):
        augment.flip_pose(np.zeros((16, 3)))


# Screen normalisation.


def test_normalisation_hand_values_and_round_trip():
    widths, heights = h36m.camera_resolutions(["54138969", "55011271"])
    np.testing.assert_array_equal(widths, [1000, 1000])
    np.testing.assert_array_equal(heights, [1002, 1000])
    points = np.array(
        [[[500.0, 501.0, 250.0], [0.0, 0.0, -100.0]], [[1000.0, 250.0, 50.0], [250.0, 1000.0, 0.0]]]
    )
    normalised = h36m.normalize_screen_coordinates(points, widths, heights)
    # x / 500 - 1, y / 500 - h / 1000, z / 500.
    expected = np.array([[[0.0, 0.0, 0.5], [-1.0, -1.002, -0.2]], [[1.0, -0.5, 0.1], [-0.5, 1.0, 0.0]]])
    np.testing.assert_allclose(normalised, expected, atol=1e-6)
    np.testing.assert_allclose(
        h36m.denormalize_screen_coordinates(normalised, widths, heights), points, atol=1e-4
    )
    # 2D points take the same x, y map.
    np.testing.assert_allclose(
        h36m.normalize_screen_coordinates(points[..., :2], widths, heights), expected[..., :2], atol=1e-6
    )
    # One scalar resolution for a whole clip (T, J, C).
    clip = np.random.default_rng(0).uniform(0, 2048, size=(4, 17, 3))
    np.testing.assert_allclose(
        h36m.denormalize_screen_coordinates(h36m.normalize_screen_coordinates(clip, 1920, 1080), 1920, 1080),
        clip,
        rtol=1e-5,
    )


def test_unknown_camera_raises():
    with pytest.raises(ValueError, match="12345"):
        h36m.camera_resolutions(["54138969", "12345"])


# split_clips.


def _release_split(sources, n_frames, stride, rng):
    """The release's clip loop, step by step: a frame pointer i and a clip
    start, a set of sources already clipped, short videos resampled at the
    source change that ends them."""
    clips, saved, start, i = [], set(), 0, 0
    while i < len(sources):
        i += 1
        if i - start == n_frames:
            clips.append(list(range(start, i)))
            saved.add(sources[i - 1])
            start += stride
        if i == len(sources):
            break
        if sources[i] != sources[i - 1]:
            if sources[i - 1] not in saved:
                clips.append(list(start + h36m.resample_short_video(i - start, n_frames, rng)))
                saved.add(sources[i - 1])
            start = i
    return clips


def test_split_clips_stride_and_dropped_tail():
    sources = ["a"] * 10 + ["b"] * 7
    clips = h36m.split_clips(sources, 4, 2, np.random.default_rng(0))
    expected = [
        range(0, 4),
        range(2, 6),
        range(4, 8),
        range(6, 10),
        range(10, 14),
        range(12, 16),
    ]  # Frame 16 (b's tail) is in no clip.
    np.testing.assert_array_equal(clips, [list(r) for r in expected])
    assert clips.dtype == np.int64


def test_split_clips_resamples_short_videos_but_not_the_last():
    sources = ["a"] * 5 + ["b"] * 2 + ["c"] * 5 + ["d"] * 3
    clips = h36m.split_clips(sources, 4, 4, np.random.default_rng(0))
    assert clips.shape == (3, 4)
    np.testing.assert_array_equal(clips[0], [0, 1, 2, 3])
    # b = frames 5, 6 sampled at 0, 0.5, 1, 1.5: position 1 rounds to 0 or 1,
    # position 3 rounds to 1 or 2, which is clipped to 1.
    assert clips[1][0] == 5 and clips[1][2] == 6 and clips[1][3] == 6
    assert clips[1][1] in (5, 6)
    np.testing.assert_array_equal(clips[2], [7, 8, 9, 10])
    # The short final video d is dropped, as is c's tail (frame 11).


def test_split_clips_short_video_with_an_earlier_name_is_dropped():
    sources = ["a"] * 2 + ["b"] * 5 + ["a"] * 2 + ["c"]
    clips = h36m.split_clips(sources, 4, 1, np.random.default_rng(0))
    assert clips.shape == (3, 4)
    assert set(clips[0]) <= {0, 1}
    np.testing.assert_array_equal(clips[1:], [[2, 3, 4, 5], [3, 4, 5, 6]])


@pytest.mark.parametrize("n_frames,stride", [(4, 1), (5, 2), (6, 6), (3, 7)])
def test_split_clips_matches_release_loop_on_random_sources(n_frames, stride):
    rng = np.random.default_rng(n_frames * 10 + stride)
    lengths = rng.integers(1, 15, size=30)
    names = rng.integers(0, 20, size=30)  # Some names repeat, as the release allows.
    sources = []
    for name, length in zip(names, lengths):
        if sources and sources[-1] == f"v{name}":
            continue
        sources += [f"v{name}"] * int(length)
    ours = h36m.split_clips(sources, n_frames, stride, np.random.default_rng(7))
    reference = _release_split(sources, n_frames, stride, np.random.default_rng(7))
    np.testing.assert_array_equal(ours, np.array(reference).reshape(-1, n_frames))


def test_split_clips_deterministic_given_rng():
    sources = sum(([f"v{k}"] * (3 + k % 4) for k in range(12)), [])
    first = h36m.split_clips(sources, 8, 8, np.random.default_rng(3))
    again = h36m.split_clips(sources, 8, 8, np.random.default_rng(3))
    np.testing.assert_array_equal(first, again)
    draws = {tuple(h36m.resample_short_video(5, 12, np.random.default_rng(seed))) for seed in range(20)}
    assert len(draws) > 1  # The rounding really is random...
    for draw in draws:  # ...but always sorted, within the video, from 0 to 4.
        assert list(draw) == sorted(draw) and draw[0] == 0 and draw[-1] == 4
        even = np.arange(12) * 5 / 12
        assert all(np.floor(e) <= d <= min(np.ceil(e), 4) for e, d in zip(even, draw))


# Human3.6M loading.


def test_load_h36m_clips_and_bookkeeping(tmp_path):
    path = tmp_path / "h36m.pkl"
    content = _write_h36m(path, TRAIN_VIDEOS, TEST_VIDEOS)
    data = h36m.load_h36m(str(path), 6, seed=0)
    # Train: stride 2; 30 -> 13 clips, 25 -> 10, 7 -> 1, 21 -> 8. Test: stride 6;
    # 24 -> 4, 5 -> 1 resampled, 19 -> 3.
    assert data.train_inputs.shape == (32, 6, 17, 3)
    assert data.train_targets.shape == (32, 6, 17, 3)
    assert data.test_inputs.shape == (8, 6, 17, 3) and data.n_frames == 6
    for array in (
        data.train_inputs,
        data.train_targets,
        data.test_inputs,
        data.test_targets,
        data.test_factors,
        data.test_joints_mm,
        data.test_clip_widths,
    ):
        assert array.dtype == np.float32

    test = content["test"]
    assert data.test_clip_frames[4, 0] == 24 and data.test_clip_frames[4, -1] == 28
    np.testing.assert_array_equal(data.test_clip_frames[5], np.arange(29, 35))
    np.testing.assert_array_equal(data.test_clip_widths, [1000.0] * 8)
    np.testing.assert_allclose(data.test_factors, test["2.5d_factor"], rtol=1e-6)
    np.testing.assert_allclose(data.test_joints_mm, test["joints_2.5d_image"], rtol=1e-6)
    assert list(data.test_sources) == test["source"]
    assert list(data.test_actions) == test["action"]

    # One frame recomputed from the definition: clip 5 starts at test frame 29
    # (camera 60457274, 1000 x 1002).
    frame = 29
    for j in range(17):
        x, y = test["joint_2d"][frame, j]
        expected_input = [x / 500 - 1, y / 500 - 1.002, test["confidence"][frame, j]]
        np.testing.assert_allclose(data.test_inputs[5, 0, j], expected_input, rtol=1e-5, atol=1e-6)
        x, y, z = test["joint3d_image"][frame, j]
        np.testing.assert_allclose(
            data.test_targets[5, 0, j], [x / 500 - 1, y / 500 - 1.002, z / 500], rtol=1e-5, atol=1e-6
        )


def test_load_h36m_strides(tmp_path):
    path = tmp_path / "h36m.pkl"
    content = _write_h36m(path, TRAIN_VIDEOS, TEST_VIDEOS)
    data = h36m.load_h36m(str(path), 4, sample_stride=2, train_stride=4, test_stride=2)
    # Every second frame: train videos of 15, 13, 3 and 11 frames, test videos
    # of 12, 3 and 9 frames.
    assert data.train_inputs.shape[0] == 3 + 3 + 1 + 2
    assert data.test_inputs.shape[0] == 5 + 1 + 3
    assert data.test_factors.shape == (24,)
    np.testing.assert_allclose(data.test_factors, content["test"]["2.5d_factor"][::2], rtol=1e-6)
    # Test clip 1 covers strided frames 2..5, i.e. original frames 4, 6, 8, 10.
    np.testing.assert_array_equal(data.test_clip_frames[1], [2, 3, 4, 5])
    np.testing.assert_allclose(data.test_inputs[1, :, :, 2], content["test"]["confidence"][4:12:2], rtol=1e-6)


def test_load_h36m_without_confidence_fills_ones(tmp_path):
    path = tmp_path / "h36m.pkl"

    def drop_confidence(content):
        for split in content.values():
            del split["confidence"]

    _write_h36m(path, TRAIN_VIDEOS, TEST_VIDEOS, mutate=drop_confidence)
    data = h36m.load_h36m(str(path), 6)
    np.testing.assert_array_equal(data.train_inputs[..., 2], 1.0)


def _set(split, key, value):
    def mutate(content):
        content[split][key] = value(content[split])

    return mutate


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.pop("test"), "'train' and 'test'"),
        (lambda c: c["train"].pop("source"), "source"),
        (lambda c: c["test"].pop("2.5d_factor"), "2.5d_factor"),
        (_set("train", "joint_2d", lambda s: s["joint_2d"][:, :16]), "joint_2d"),
        (_set("test", "joints_2.5d_image", lambda s: s["joints_2.5d_image"][:-1]), "numbers of frames"),
        (_set("test", "confidence", lambda s: np.ones((len(s["source"]), 17, 2))), "confidence"),
        (_set("train", "camera_name", lambda s: np.full(len(s["source"]), "999")), "999"),
    ],
)
def test_load_h36m_rejects_bad_content(tmp_path, mutate, message):
    path = tmp_path / "h36m.pkl"
    _write_h36m(path, TRAIN_VIDEOS, TEST_VIDEOS, mutate=mutate)
    with pytest.raises(ValueError, match=message):
        h36m.load_h36m(str(path), 6)


def test_load_h36m_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        h36m.load_h36m(str(tmp_path / "absent.pkl"), 6)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        h36m.load_h36m(str(garbage), 6)
    truncated = tmp_path / "truncated.pkl"
    _write_h36m(truncated, TRAIN_VIDEOS, TEST_VIDEOS)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable pickle"):
        h36m.load_h36m(str(truncated), 6)
    a_list = tmp_path / "list.pkl"
    a_list.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="'train' and 'test'"):
        h36m.load_h36m(str(a_list), 6)


def test_load_clip_folder_reads_release_layout(tmp_path):
    path = tmp_path / "h36m.pkl"
    _write_h36m(path, TRAIN_VIDEOS, TEST_VIDEOS)
    data = h36m.load_h36m(str(path), 6)
    root = tmp_path / "H36M-6"
    # The release's preprocessing: one '%08d.pkl' per clip.
    for split, inputs, targets in (
        ("train", data.train_inputs, data.train_targets),
        ("test", data.test_inputs, data.test_targets),
    ):
        (root / split).mkdir(parents=True)
        for i in range(len(inputs)):
            with open(root / split / f"{i:08d}.pkl", "wb") as f:
                pickle.dump({"data_input": inputs[i], "data_label": targets[i]}, f)
    inputs, targets = h36m.load_clip_folder(str(root), "train")
    np.testing.assert_array_equal(inputs, data.train_inputs)
    np.testing.assert_array_equal(targets, data.train_targets)
    inputs, targets = h36m.load_clip_folder(str(root), "test")
    np.testing.assert_array_equal(inputs, data.test_inputs)

    with pytest.raises(FileNotFoundError):
        h36m.load_clip_folder(str(tmp_path / "nowhere"), "train")
    (root / "test" / "00000003.pkl").write_bytes(b"\x80\x04broken")
    with pytest.raises(ValueError, match="00000003.pkl"):
        h36m.load_clip_folder(str(root), "test")
    with pytest.raises(ValueError, match="split"):
        h36m.load_clip_folder(str(root), "val")


def test_training_reads_the_clip_folder_when_configured(tmp_path):
    """config.data.train_clip_dir: training clips from the folder, test data from the pickle."""
    path = tmp_path / "h36m.pkl"
    _write_h36m(path, TRAIN_VIDEOS, TEST_VIDEOS)
    data = h36m.load_h36m(str(path), 6)
    root = tmp_path / "H36M-6"
    (root / "train").mkdir(parents=True)
    # Clips that differ from the pickle's, so the test sees where they came from.
    for i in range(2):
        with open(root / "train" / f"{i:08d}.pkl", "wb") as f:
            pickle.dump({"data_input": data.train_inputs[i] + 1, "data_label": data.train_targets[i] - 1}, f)
    data_config = common.base_config().data
    data_config.pkl_path, data_config.train_clip_dir = str(path), str(root)
    task = tasks.load_task(data_config, 6, seed=0)
    np.testing.assert_array_equal(task.data.train_inputs, data.train_inputs[:2] + 1)
    np.testing.assert_array_equal(task.data.train_targets, data.train_targets[:2] - 1)
    np.testing.assert_array_equal(task.data.test_inputs, data.test_inputs)
    with pytest.raises(ValueError, match="clips of 6 frames; the model takes 9"):
        tasks.load_task(data_config, 9, seed=0)


# MPI-INF-3DHP.


def _write_3dhp(tmp_path, seed=0):
    rng = np.random.default_rng(seed)

    def video(length):
        return {
            "data_2d": rng.uniform(0, 2048, size=(length, 17, 2)),
            "data_3d": rng.normal(scale=500.0, size=(length, 17, 3)) + [0, 0, 4000],
        }

    train = {"S1 Seq1": [{"0": video(12), "4": video(5)}, 25], "S2 Seq2": [{"8": video(9)}, 50]}
    test = {}
    for name, length in (("TS1", 10), ("TS5", 8)):
        test[name] = video(length)
        test[name]["valid"] = (rng.uniform(size=length) > 0.3).astype(np.float64)
        test[name]["valid"][0] = 1.0
    train_path, test_path = tmp_path / "data_train_3dhp.npz", tmp_path / "data_test_3dhp.npz"
    np.savez_compressed(train_path, data=train)
    np.savez_compressed(test_path, data=test)
    return str(train_path), str(test_path), train, test


def test_partition_and_window_indices_by_hand():
    np.testing.assert_array_equal(
        mpi3dhp.partition_indices(7, 4, 2),
        # Starts 0, 2, 4, 6; from 4 only 3 frames remain: floor(0, .75, 1.5,
        # 2.25) = 0, 0, 1, 2; from 6 one frame, repeated.
        [[0, 1, 2, 3], [2, 3, 4, 5], [4, 4, 5, 6], [6, 6, 6, 6]],
    )
    np.testing.assert_array_equal(
        mpi3dhp.centred_window_indices(5, [0, 2, 4], 5), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [2, 3, 4, 4, 4]]
    )
    with pytest.raises(ValueError, match="odd"):
        mpi3dhp.centred_window_indices(5, [0], 4)


def test_load_3dhp_train_clips(tmp_path):
    train_path, test_path, train, _ = _write_3dhp(tmp_path)
    data = mpi3dhp.load_3dhp(train_path, test_path, 5, train_stride=3)
    # Clips start every 3 frames: 12 -> 4, 5 -> 2, 9 -> 3, in file order.
    assert data.train_inputs.shape == (9, 5, 17, 3)
    assert data.train_targets.shape == (9, 5, 17, 3)
    np.testing.assert_array_equal(data.train_inputs[..., 2], 1.0)
    np.testing.assert_array_equal(data.train_targets[:, :, 14], 0.0)

    # Clip 5 = camera '4' of S1 from frame 3: frames 3, 4 stretched to
    # floor(0, .4, .8, 1.2, 1.6) = 3, 3, 3, 4, 4.
    source = train["S1 Seq1"][0]["4"]
    for t, frame in enumerate([3, 3, 3, 4, 4]):
        for j in range(17):
            x, y = source["data_2d"][frame, j]
            np.testing.assert_allclose(
                data.train_inputs[5, t, j, :2], [x / 1024 - 1, y / 1024 - 1], rtol=1e-5, atol=1e-6
            )
            expected = (source["data_3d"][frame, j] - source["data_3d"][frame, 14]) / 1024
            np.testing.assert_allclose(data.train_targets[5, t, j], expected, rtol=1e-4, atol=1e-5)


def test_load_3dhp_test_windows_on_valid_frames(tmp_path):
    train_path, test_path, _, test = _write_3dhp(tmp_path)
    data = mpi3dhp.load_3dhp(None, test_path, 5)
    assert data.train_inputs.shape == (0, 5, 17, 3)
    valid = {name: np.flatnonzero(test[name]["valid"]) for name in test}
    num_windows = sum(len(v) for v in valid.values())
    assert data.test_inputs.shape == (num_windows, 5, 17, 3)
    assert data.test_targets_mm.shape == (num_windows, 17, 3)
    assert list(data.test_sequences) == ["TS1"] * len(valid["TS1"]) + ["TS5"] * len(valid["TS5"])
    np.testing.assert_array_equal(data.test_frames, np.concatenate([valid["TS1"], valid["TS5"]]))
    np.testing.assert_array_equal(data.test_widths[data.test_sequences == "TS5"], 1920.0)
    np.testing.assert_array_equal(data.test_valid["TS5"], test["TS5"]["valid"] > 0)

    # The last TS5 window, by hand: 1920 x 1080 and edge padding at the end.
    k, frame, length = num_windows - 1, valid["TS5"][-1], 8
    source = test["TS5"]
    for t in range(5):
        f = min(max(frame - 2 + t, 0), length - 1)
        x, y = source["data_2d"][f, 0]
        np.testing.assert_allclose(
            data.test_inputs[k, t, 0], [x / 960 - 1, y / 960 - 1080 / 1920, 1], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(
        data.test_targets_mm[k], source["data_3d"][frame] - source["data_3d"][frame, 14], rtol=1e-5, atol=1e-3
    )


def test_load_3dhp_rejects_bad_files(tmp_path):
    _, test_path, _, test = _write_3dhp(tmp_path)
    with pytest.raises(FileNotFoundError):
        mpi3dhp.load_3dhp(None, str(tmp_path / "absent.npz"), 5)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz at all")
    with pytest.raises(ValueError, match="not a readable npz"):
        mpi3dhp.load_3dhp(None, str(garbage), 5)
    no_valid = tmp_path / "no_valid.npz"
    np.savez(no_valid, data={"TS1": {k: v for k, v in test["TS1"].items() if k != "valid"}})
    with pytest.raises(ValueError, match="valid"):
        mpi3dhp.load_3dhp(None, str(no_valid), 5)
    wrong_key = tmp_path / "wrong_key.npz"
    np.savez(wrong_key, poses=np.zeros(3))
    with pytest.raises(ValueError, match="'data'"):
        mpi3dhp.load_3dhp(None, str(wrong_key), 5)
    with pytest.raises(ValueError, match="odd"):
        mpi3dhp.load_3dhp(None, test_path, 4)
    # A test file read as a training file has the wrong layout.
    with pytest.raises(ValueError, match="train sequence"):
        mpi3dhp.load_3dhp(test_path, test_path, 5)
