"""The streaming lifter: order, delay, the windows each frame is averaged over, missing points, compiles."""

import json
import pathlib
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from compile_counting import count_compilations

import sasmamba_jax
from benchmarks import streaming as benchmark
from sasmamba_jax.cli import infer
from sasmamba_jax.io import model_dirs
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.lifting import keypoints, sequences
from sasmamba_jax.lifting.streaming import StreamingLifter, default_hop
from sasmamba_jax.model import forward
from sasmamba_jax.model.sasmamba import SasMambaConfig

FRAMES = 9
BENCHMARK = pathlib.Path(__file__).parents[1] / "benchmarks" / "streaming.py"


def random_model(frames=FRAMES, in_chans=2, seed=0):
    """A small SasMamba with random weights, built without compiling anything."""
    config = SasMambaConfig(num_frames=frames, dim=16, depth=1, in_chans=in_chans, scan="sequential")
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda leaf: (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32),
        model_dirs.abstract_params(config),
    )
    return model_dirs.build_model(config, params)


@pytest.fixture(scope="module")
def model():
    return random_model()


def random_inputs(num_frames, seed=0, channels=2):
    return (0.4 * np.random.default_rng(seed).standard_normal((num_frames, 17, channels))).astype(np.float32)


def pushed_and_returned(lifter, inputs):
    """[(pushes so far, frame indices returned by that push)] for every push, then the flush's."""
    log = []
    for t, frame in enumerate(inputs):
        log.append((t + 1, [index for index, _ in lifter.push(frame)]))
    log.append((len(inputs), [index for index, _ in lifter.flush()]))
    return log


def final_window_end(t, num_inputs, latency, hop):
    """The end of the window that makes frame t final: its chunk's last frame + latency, or the last frame."""
    chunk_last = (t // hop) * hop + hop - 1
    return min(chunk_last + latency, num_inputs - 1)


def window_output(model, inputs, end):
    """The model's (F, 17, 3) output for the window ending at frame `end`, frame 0 repeated before it."""
    padded = np.concatenate([np.repeat(inputs[:1], FRAMES, axis=0), inputs[: end + 1]])
    return forward.predict(model, padded[-FRAMES:][None])[0]


def reference_poses(model, inputs, latency, hop):
    """Every frame's pose from its definition: the mean over the windows containing it, ending by its return.

    The windows computed are the final windows of every frame (one per chunk
    of `hop`, the last one the flush's); frame t is averaged over those
    ending between t and its own final window's end.
    """
    num_inputs = len(inputs)
    ends = sorted({final_window_end(t, num_inputs, latency, hop) for t in range(num_inputs)})
    outputs = {end: window_output(model, inputs, end) for end in ends}
    poses = []
    for t in range(num_inputs):
        final = final_window_end(t, num_inputs, latency, hop)
        reads = [outputs[end][FRAMES - 1 - (end - t)] for end in ends if t <= end <= final]
        poses.append(np.mean(np.asarray(reads, np.float64), axis=0))
    return np.stack(poses)


@pytest.mark.parametrize("latency, hop", [(0, 1), (3, 1), (3, 4), (FRAMES - 1, 1), (2, FRAMES - 2)])
def test_every_frame_once_in_order_and_never_early(model, latency, hop):
    lifter = StreamingLifter(model, latency=latency, hop=hop)
    log = pushed_and_returned(lifter, random_inputs(23))
    returned = [index for _, indices in log for index in indices]
    assert returned == list(range(23))
    for pushed, indices in log[:-1]:
        # Frame t waits for frame t + latency, and at most hop - 1 frames more.
        assert all(pushed >= index + latency + 1 for index in indices)
        assert all(pushed <= index + latency + hop for index in indices)


@pytest.mark.parametrize("latency, hop", [(0, 1), (3, 1), (FRAMES - 1, 1), (3, 4), (1, FRAMES - 1)])
def test_each_frame_is_the_average_over_the_windows_that_contain_it_up_to_its_own(model, latency, hop):
    inputs = random_inputs(21, seed=1)
    lifter = StreamingLifter(model, latency=latency, hop=hop)
    poses = dict(lifter.stream(inputs))
    expected = reference_poses(model, inputs, latency, hop)
    for t in range(len(inputs)):
        assert poses[t].shape == (17, 3) and poses[t].dtype == np.float32
        np.testing.assert_allclose(poses[t], expected[t], atol=1e-5)


@pytest.mark.parametrize("hop", [1, 3])
def test_at_latency_0_a_frame_is_the_one_window_that_returns_it(model, hop):
    """No window ending before t contains t, so latency 0 reads one window: its chunk's last frame's."""
    inputs = random_inputs(14, seed=12)
    poses = dict(StreamingLifter(model, latency=0, hop=hop).stream(inputs))
    for t in range(len(inputs)):
        end = min((t // hop) * hop + hop - 1, len(inputs) - 1)
        window = np.concatenate([np.repeat(inputs[:1], FRAMES, axis=0), inputs[: end + 1]])[-FRAMES:]
        expected = forward.predict(model, window[None])[0, FRAMES - 1 - (end - t)]
        np.testing.assert_allclose(poses[t], expected, atol=1e-5)


def test_hop_one_averages_the_windows_ending_t_to_t_plus_latency(model):
    latency = 4
    inputs = random_inputs(15, seed=2)
    poses = dict(StreamingLifter(model, latency=latency, hop=1).stream(inputs))
    t = 10
    reads = [
        forward.predict(model, inputs[end - FRAMES + 1 : end + 1][None])[0, FRAMES - 1 - (end - t)]
        for end in range(t, t + latency + 1)
    ]
    np.testing.assert_allclose(poses[t], np.mean(reads, axis=0), atol=1e-5)
    # At the start the past is the first frame repeated, and the first window ends at frame `latency`:
    # frame 2 is in those ending at 4, 5 and 6 only.
    reads = []
    for end in range(latency, 2 + latency + 1):
        padded = np.concatenate([np.repeat(inputs[:1], FRAMES - 1 - end, axis=0), inputs[: end + 1]])
        reads.append(forward.predict(model, padded[None])[0, FRAMES - 1 - (end - 2)])
    np.testing.assert_allclose(poses[2], np.mean(reads, axis=0), atol=1e-5)


def test_a_hop_averages_only_the_windows_computed_one_per_hop(model):
    """Latency 3, hop 2: windows end at 4, 6, 8, ... (each chunk's last frame + 3)."""
    inputs = random_inputs(20, seed=13)
    poses = dict(StreamingLifter(model, latency=3, hop=2).stream(inputs))

    def read(end, t):
        return forward.predict(model, inputs[end - FRAMES + 1 : end + 1][None])[0, FRAMES - 1 - (end - t)]

    # Frames 10 and 11 are returned by the window ending at 14; 10 is also in those ending at 10 and 12.
    np.testing.assert_allclose(poses[10], np.mean([read(10, 10), read(12, 10), read(14, 10)], 0), atol=1e-5)
    np.testing.assert_allclose(poses[11], np.mean([read(12, 11), read(14, 11)], 0), atol=1e-5)


def test_at_the_full_latency_a_frame_is_averaged_over_every_window_that_contains_it(model):
    """Latency F - 1, hop 1: frame t at every position, F - 1 (window ending at t) to 0, as lift averages."""
    inputs = random_inputs(20, seed=3)
    poses = dict(StreamingLifter(model, latency=FRAMES - 1, hop=1).stream(inputs))
    t = 11
    reads = [
        forward.predict(model, inputs[start : start + FRAMES][None])[0, t - start] for start in range(3, 12)
    ]
    np.testing.assert_allclose(poses[t], np.mean(reads, axis=0), atol=1e-5)


def test_flush_gives_the_last_frames_the_future_there_is(model):
    inputs = random_inputs(12, seed=4)
    lifter = StreamingLifter(model, latency=5, hop=1)
    for frame in inputs:
        lifter.push(frame)
    rest = lifter.flush()
    assert [index for index, _ in rest] == list(range(7, 12))
    # The last push's window ends at frame 11, as the flush's would: counted once, not twice.
    expected = reference_poses(model, inputs, 5, 1)
    for index, pose in rest:
        np.testing.assert_allclose(pose, expected[index], atol=1e-5)
    np.testing.assert_allclose(
        rest[-1][1], forward.predict(model, inputs[12 - FRAMES :][None])[0, -1], atol=1e-5
    )
    # The lifter starts a new stream.
    assert lifter.frames_pushed == 0 and lifter.flush() == []


def test_flush_adds_its_window_to_the_frames_still_waiting(model):
    """Latency 2, hop 4, 12 frames: pushes compute the windows ending at 5 and 9; the flush the one at 11."""
    inputs = random_inputs(12, seed=14)
    lifter = StreamingLifter(model, latency=2, hop=4)
    for frame in inputs:
        lifter.push(frame)
    rest = dict(lifter.flush())
    assert list(rest) == [8, 9, 10, 11]
    by_9 = forward.predict(model, inputs[1:10][None])[0]
    by_11 = forward.predict(model, inputs[3:12][None])[0]
    np.testing.assert_allclose(rest[8], (by_9[7] + by_11[5]) / 2, atol=1e-5)
    np.testing.assert_allclose(rest[10], by_11[7], atol=1e-5)


def test_missing_keypoints_are_filled_from_frames_already_pushed(model):
    inputs = random_inputs(16, seed=5).astype(np.float64)
    with_gap = inputs.copy()
    with_gap[6:9, 3] = np.nan  # right ankle missing for three frames
    filled = inputs.copy()
    filled[6:9, 3] = inputs[5, 3] + (inputs[9, 3] - inputs[5, 3]) * np.arange(1, 4)[:, None] / 4
    with pytest.warns(UserWarning, match="missing keypoints are filled"):
        streamed = dict(StreamingLifter(model, latency=4, hop=1).stream(with_gap))
    expected = dict(StreamingLifter(model, latency=4, hop=1).stream(filled))
    # Frames 2-8 are averaged over windows ending inside the gap (see the next test).
    for t in (0, 1, *range(9, 16)):
        np.testing.assert_allclose(streamed[t], expected[t], atol=1e-5)


def test_a_gap_not_closed_yet_holds_the_last_value_seen(model):
    """Frame 6's windows end at 6-8, before the joint is back: its last value is held, as lift would."""
    inputs = random_inputs(14, seed=6).astype(np.float64)
    with_gap = inputs.copy()
    with_gap[5:11, 2] = np.nan
    held = inputs.copy()
    held[5:9, 2] = inputs[4, 2]
    with pytest.warns(UserWarning):
        streamed = dict(StreamingLifter(model, latency=2, hop=1).stream(with_gap))
    np.testing.assert_allclose(streamed[6], reference_poses(model, held[:9], 2, 1)[6], atol=1e-5)


def test_confidence_zero_is_missing_and_a_joint_not_seen_yet_holds_its_frames(model):
    three_channels = np.concatenate([random_inputs(12, seed=7), np.ones((12, 17, 1), np.float32)], -1)
    three_channels[:5, 10, 2] = 0  # the head is not seen until frame 5
    lifter = StreamingLifter(model, latency=1, hop=1)
    with pytest.warns(UserWarning, match="head not seen in any frame yet"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "missing keypoints are filled")
        log = pushed_and_returned(lifter, three_channels)
    assert log[0][1] == [] and log[5][1] == [0, 1, 2, 3, 4]
    assert [index for _, indices in log for index in indices] == list(range(12))


def test_a_joint_never_seen_is_an_error_at_flush(model):
    inputs = random_inputs(5).astype(np.float64)
    inputs[:, 10] = np.nan
    lifter = StreamingLifter(model, latency=1, hop=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [pose for frame in inputs for pose in lifter.push(frame)] == []
    with pytest.raises(ValueError, match="head missing in every frame"):
        lifter.flush()


def test_coco_pixels_match_the_same_frames_given_as_h36m(model):
    rng = np.random.default_rng(8)
    coco = rng.uniform(100, 900, (13, 17, 2))
    prepared = keypoints.prepare_keypoints(coco, keypoint_format="coco", image_size=(1000, 800))
    from_coco = dict(
        StreamingLifter(model, latency=3, keypoint_format="coco", image_size=(1000, 800)).stream(coco)
    )
    from_h36m = dict(StreamingLifter(model, latency=3).stream(prepared.normalised))
    for t in range(13):
        np.testing.assert_allclose(from_coco[t], from_h36m[t], atol=1e-5)


def test_no_compiles_after_the_first_window():
    model = random_model(seed=9)  # its own parameters: nothing compiled by another test is reused
    lifter = StreamingLifter(model, latency=2, hop=2)
    inputs = random_inputs(40, seed=9)
    lifter.push(inputs[0])
    returned = []
    for frame in inputs[1:5]:
        returned += lifter.push(frame)
    assert returned, "the first window has been computed"
    with count_compilations() as compiled:
        for frame in inputs[5:]:
            lifter.push(frame)
        lifter.flush()
        list(lifter.stream(inputs[:7]))
    assert compiled == []


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((16, 2)), "wrong joint count: h36m expects 17 joints per frame, got 16"),
        (np.zeros((17, 4)), "wrong channel count"),
        (np.zeros((1, 17, 2)), r"a frame's keypoints must have shape \(17, 2\|3\)"),
        (np.full((17, 2), np.inf), "infinite"),
        (np.full((17, 2), 500.0), "look like pixels"),
    ],
)
def test_bad_frames_are_refused_and_the_stream_goes_on(model, frame, message):
    lifter = StreamingLifter(model, latency=0, hop=1)
    lifter.push(np.zeros((17, 2)))
    with pytest.raises(ValueError, match=message):
        lifter.push(frame)
    assert lifter.frames_pushed == 1
    assert [index for index, _ in lifter.push(np.zeros((17, 2)))] == [1]


def test_a_frame_with_other_channels_than_the_first_is_refused(model):
    lifter = StreamingLifter(model, latency=2)
    lifter.push(np.zeros((17, 3)) + [0, 0, 1])
    with pytest.raises(ValueError, match="first frame had 3"):
        lifter.push(np.zeros((17, 2)))


def test_a_confidence_model_needs_confidences():
    with pytest.raises(ValueError, match="3 input channels"):
        StreamingLifter(random_model(in_chans=3), latency=1).push(np.zeros((17, 2)))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(latency=FRAMES), r"latency must be an integer in \[0, the model's frames - 1 = 8\]"),
        (dict(latency=-1), "latency"),
        (
            dict(latency=2, hop=FRAMES - 1),
            r"hop must be an integer in \[1, the model's frames - latency = 7\]",
        ),
        (dict(latency=2, hop=0), "hop"),
        (dict(latency=2, keypoint_format="mpii"), "unknown keypoint format"),
        (dict(latency=2, image_size=(0, 10)), "image_size"),
    ],
)
def test_bad_options_are_refused(model, options, message):
    with pytest.raises(ValueError, match=message):
        StreamingLifter(model, **options)


def test_default_hop_is_a_quarter_of_the_window_within_what_the_latency_allows():
    assert default_hop(243, 121) == 60
    assert default_hop(243, 230) == 13
    assert default_hop(9, 8) == 1 and default_hop(3, 0) == 1


def test_the_live_iterator_yields_poses_while_frames_still_come(model):
    inputs = random_inputs(12, seed=10)
    pushed = []

    def camera():
        for t, frame in enumerate(inputs):
            pushed.append(t)
            yield frame

    seen = []
    for index, pose in StreamingLifter(model, latency=2, hop=1).stream(camera()):
        seen.append((index, len(pushed)))
        assert pose.shape == (17, 3)
    assert [index for index, _ in seen] == list(range(12))
    # Frame 0 comes out as soon as frame 2 has gone in, long before the source ends.
    assert seen[0] == (0, 3)


def test_exported_at_the_top_level():
    assert sasmamba_jax.StreamingLifter is StreamingLifter
    assert "StreamingLifter" in dir(sasmamba_jax) and sasmamba_jax.lift is sequences.lift


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    model_dirs.save_model(model, directory)
    return directory


def test_cli_stream_writes_the_streamed_poses_and_reports_the_delay(model, model_dir, tmp_path, capsys):
    pixels = np.random.default_rng(11).uniform(0, 640, size=(30, 17, 3))
    pixels[..., 2] = 0.9
    pixels[7, 5, 2] = 0.0  # one missing point
    np.save(tmp_path / "kp.npy", pixels)
    out = tmp_path / "out.npz"
    status = infer.main(
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.npy'} --format h36m --image-size 640 480 "
        f"--output {out} --stream --latency 3 --hop 2 --fps 30".split()
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "streamed 30 frames (latency 3, hop 2, window 9):" in captured.out
    assert "delay per frame: 3-4 frames (mean 3.5: latency 3 + 0-1 waiting for the hop)" in captured.out
    assert "= 100-133 ms at 30 fps" in captured.out
    result = np.load(out)
    lifter = StreamingLifter(model, latency=3, hop=2, image_size=(640, 480))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.stack([pose for _, pose in lifter.stream(pixels)])
    np.testing.assert_allclose(result["poses_3d"], expected, atol=1e-6)
    np.testing.assert_allclose(result["poses_3d_px"], expected * 320, atol=1e-3)
    assert result["keypoints_2d"].shape == (30, 17, 2) and result["filled"].sum() == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--stream", "--stream needs --latency L"),
        ("--latency 3", "--latency is a --stream option"),
        (
            "--stream --latency 3 --hop 7",
            r"hop must be an integer in \[1, the model's frames - latency = 6\]",
        ),
        ("--stream --latency 3 --person 1", "--person picks a track of a detector file"),
        ("--stream --latency 3 --pixels", "look like pixels .* give --image-size W H"),
    ],
)
def test_cli_stream_errors_are_one_line(model_dir, tmp_path, capsys, extra, message):
    pixels = "--pixels" in extra
    np.save(tmp_path / "kp.npy", np.full((12, 17, 2), 300.0 if pixels else 0.0))
    extra = extra.replace(" --pixels", "")
    arguments = (
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.npy'} --format h36m --output {tmp_path}/o.npz"
    )
    assert infer.main(f"{arguments} {extra}".split()) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err


def test_cli_stream_refuses_a_detector_file_of_people(model_dir, tmp_path, capsys):
    frames = [
        {"image_id": f"{t}.jpg", "idx": person, "keypoints": [100.0 + person, 200.0, 0.9] * 17, "score": 1.0}
        for t in range(6)
        for person in (1, 2)
    ]
    (tmp_path / "results.json").write_text(json.dumps(frames))
    arguments = f"--checkpoint {model_dir} --input {tmp_path / 'results.json'} --image-size 640 480"
    assert infer.main(f"{arguments} --output {tmp_path}/o.npz --stream --latency 2".split()) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--stream lifts one person's keypoint array" in err, err


@pytest.mark.slow  # runs the benchmark script end to end: 14 s, the default run's slowest test
def test_the_benchmark_scores_streaming_and_offline_alike(model_dir, tmp_path):
    results = tmp_path / "streaming.jsonl"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), f"--checkpoint={model_dir}", "--sequences=1", "--skip-speed"]
        + [f"--results={results}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["method"] for row in rows] == ["latency 0", "latency 2", "latency 4", "latency 8", "offline"]
    assert all(np.isfinite(row["p1_mm"]) and row["kind"] == "accuracy" for row in rows)
    assert rows[-1]["p1_over_offline"] == 1.0 and "P1 / offline" in completed.stdout


@pytest.mark.slow
@pytest.mark.alone
def test_half_a_window_of_latency_is_within_2_percent_of_offline_on_the_demo_set(demo_run):
    """On the model `python train.py` trains (conftest.py's ``demo_run``, shared with the demo's own test)."""
    trained_demo_model = load_model(str(demo_run["workdir"]))
    frames = trained_demo_model.config.num_frames
    videos = benchmark.videos_of_test_split(benchmark.DEFAULT_DATA)
    rows = benchmark.accuracy_rows(trained_demo_model, videos, [frames // 2, frames - 1], 1, False)
    offline = rows[-1]["p1_mm"]
    assert offline < 200, rows  # the model has learnt something
    for row in rows[:-1]:
        assert row["p1_mm"] <= 1.02 * offline, rows
