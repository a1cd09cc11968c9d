"""Lifting sequences of any length, compilation counts, and the infer CLI."""

import contextlib
import dataclasses
import json

import jax
import numpy as np
import pytest

from sasmamba_jax.cli import infer
from sasmamba_jax.io import model_dirs
from sasmamba_jax.lifting import sequences
from sasmamba_jax.model import forward
from sasmamba_jax.model.sasmamba import SasMambaConfig

FRAMES = 27
# Mirror pairs of the Human3.6M skeleton, written out here (not taken from
# skeleton.py) so the flip of the reference is independent.
MIRROR_PAIRS = ((1, 4), (2, 5), (3, 6), (14, 11), (15, 12), (16, 13))
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def random_model(in_chans=2, seed=0):
    """A small SasMamba with random weights, built without compiling anything."""
    config = SasMambaConfig(num_frames=FRAMES, dim=16, depth=1, in_chans=in_chans, scan="sequential")
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda leaf: (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32),
        model_dirs.abstract_params(config),
    )
    return model_dirs.build_model(config, params)


@pytest.fixture(scope="module")
def model():
    return random_model()


def mirror(poses):
    """Reference flip: negate x, swap each left/right pair."""
    out = np.array(poses, np.float64)
    out[..., 0] *= -1
    for a, b in MIRROR_PAIRS:
        out[..., [a, b], :] = out[..., [b, a], :]
    return out


def model_on_window(model, window, flip):
    """The model called directly on one (W, 17, C) window, with optional flip averaging."""
    direct = np.asarray(forward.predict(model, window[None]))[0]
    if not flip:
        return direct
    flipped = np.asarray(forward.predict(model, mirror(window)[None]))[0]
    return (direct + mirror(flipped)) / 2


def reference_lift(model, inputs, *, stride, flip, short_mode="resample"):
    """Windows, resampling and averaging written from their definitions, one window at a time."""
    num_frames = len(inputs)
    total = np.zeros((num_frames, 17, 3))
    count = np.zeros(num_frames)
    if num_frames >= FRAMES:
        starts = []
        start = 0
        while start + FRAMES <= num_frames:
            starts.append(start)
            start += stride
        if starts[-1] + FRAMES < num_frames:
            starts.append(num_frames - FRAMES)
        for start in starts:
            total[start : start + FRAMES] += model_on_window(model, inputs[start : start + FRAMES], flip)
            count[start : start + FRAMES] += 1
    elif short_mode == "resample":
        frame_of = [int(np.floor(k * num_frames / FRAMES)) for k in range(FRAMES)]
        outputs = model_on_window(model, inputs[frame_of], flip)
        for position, frame in enumerate(frame_of):
            total[frame] += outputs[position]
            count[frame] += 1
    else:
        total += model_on_window(model, inputs, flip)
        count += 1
    return total / count[:, None, None]


@contextlib.contextmanager
def count_compilations():
    """Counts XLA compilations (any function) inside the block."""
    events = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def random_inputs(num_frames, seed=0):
    return (0.4 * np.random.default_rng(seed).standard_normal((num_frames, 17, 2))).astype(np.float32)


@pytest.mark.parametrize(
    "num_frames, stride, flip",
    [(FRAMES, 13, True), (60, 13, True), (60, 20, False), (100, FRAMES, False)],
)
def test_long_sequences_match_direct_window_calls(model, num_frames, stride, flip):
    inputs = random_inputs(num_frames)
    lifted = sequences.lift_sequence(model, inputs, stride=stride, flip_tta=flip, batch_size=3)
    expected = reference_lift(model, inputs, stride=stride, flip=flip)
    assert lifted.shape == (num_frames, 17, 3) and lifted.dtype == np.float32
    np.testing.assert_allclose(lifted, expected, atol=2e-5)


def test_threads_do_not_change_the_result(model):
    inputs = random_inputs(100, seed=3)
    options = sequences.LiftOptions(stride=7, batch_size=1, threads=1)
    one_thread = sequences.lift_sequence(model, inputs, options=options)
    for threads in (2, 5):
        lifted = sequences.lift_sequence(model, inputs, options=dataclasses.replace(options, threads=threads))
        np.testing.assert_array_equal(lifted, one_thread)


@pytest.mark.parametrize("num_frames, short_mode", [(1, "resample"), (10, "resample"), (10, "direct")])
def test_short_sequences_match_direct_window_calls(model, num_frames, short_mode):
    inputs = random_inputs(num_frames, seed=1)
    lifted = sequences.lift_sequence(model, inputs, short_sequence_mode=short_mode, batch_size=3)
    expected = reference_lift(model, inputs, stride=13, flip=True, short_mode=short_mode)
    np.testing.assert_allclose(lifted, expected, atol=2e-5)


def test_new_sequence_lengths_do_not_compile_again(model):
    sequences.lift_sequence(model, random_inputs(40), batch_size=3)
    with count_compilations() as compilations:
        for num_frames in (5, 27, 100, 333):
            out = sequences.lift_sequence(model, random_inputs(num_frames), batch_size=3)
            assert out.shape == (num_frames, 17, 3)
    assert compilations == []


def test_compile_counter_sees_compilations(model):
    # The counter of the test above would miss nothing: a new batch size compiles.
    with count_compilations() as compilations:
        sequences.lift_sequence(model, random_inputs(5), batch_size=2, flip_tta=False)
    assert len(compilations) >= 1


def test_lift_normalises_pixels_and_converts_coco(model):
    width, height = 1000.0, 800.0
    pixels = np.random.default_rng(2).uniform(100, 700, size=(30, 17, 2))
    coco = np.zeros_like(pixels)
    # Scatter the Human3.6M limb joints into COCO slots, and make the derived
    # joints' sources consistent with the H36M values we check against.
    h36m_from_coco_slot = {
        12: 1,
        14: 2,
        16: 3,
        11: 4,
        13: 5,
        15: 6,
        0: 9,
        5: 11,
        7: 12,
        9: 13,
        6: 14,
        8: 15,
        10: 16,
    }
    for coco_slot, h36m_joint in h36m_from_coco_slot.items():
        coco[:, coco_slot] = pixels[:, h36m_joint]
    coco[:, 1] = coco[:, 2] = pixels[:, 10]  # both eyes at the head
    coco[:, 3] = coco[:, 4] = pixels[:, 10]  # ears unused
    h36m = pixels.copy()
    h36m[:, 0] = (pixels[:, 1] + pixels[:, 4]) / 2
    h36m[:, 8] = (pixels[:, 11] + pixels[:, 14]) / 2
    h36m[:, 7] = (h36m[:, 0] + h36m[:, 8]) / 2
    normalised = h36m / width * 2 - np.array([1.0, height / width])

    expected = reference_lift(model, normalised.astype(np.float32), stride=13, flip=True)
    lifted = sequences.lift(model, coco, keypoint_format="coco", image_size=(width, height))
    np.testing.assert_allclose(lifted, expected, atol=2e-5)


def test_to_image_units_scales_by_half_width():
    poses = np.arange(2 * 17 * 3, dtype=np.float32).reshape(2, 17, 3)
    np.testing.assert_allclose(sequences.to_image_units(poses, (1000, 1002)), poses * 500)


def test_window_indices_cover_every_frame_with_full_windows():
    for num_frames in (27, 28, 40, 53, 54, 55, 333):
        for stride in (1, 5, 13, 27):
            indices = sequences.window_indices(num_frames, FRAMES, stride)
            assert indices.shape[1] == FRAMES
            assert indices.min() == 0 and indices.max() == num_frames - 1
            assert set(indices.ravel()) == set(range(num_frames))
            np.testing.assert_array_equal(np.diff(indices, axis=1), 1)


@pytest.mark.parametrize(
    "inputs, kwargs, message",
    [
        (np.ones((5, 16, 2)), {}, "joints"),
        (np.ones((5, 17, 3)), {}, "input channels"),
        (np.ones((0, 17, 2)), {}, "empty sequence"),
        (np.full((5, 17, 2), np.nan), {}, "NaN"),
        (np.ones((5, 17, 2)), {"batch_size": 0}, "batch_size"),
        (np.ones((5, 17, 2)), {"threads": 0}, "threads"),
        (np.ones((5, 17, 2)), {"stride": FRAMES + 1}, "stride"),
        (np.ones((5, 17, 2)), {"short_sequence_mode": "pad"}, "short_sequence_mode"),
    ],
)
def test_lift_sequence_bad_input(model, inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sequences.lift_sequence(model, inputs, **kwargs)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 1.5}, "threads"),
        ({"stride": 0}, "stride"),
        ({"short_sequence_mode": "pad"}, "short_sequence_mode"),
        ({"matmul_precision": "fast"}, "matmul precision"),
    ],
)
def test_lift_options_are_checked_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        sequences.LiftOptions(**fields)


def test_lift_options_and_overrides_are_one_set_of_options(model):
    inputs = random_inputs(40, seed=4)
    options = sequences.LiftOptions(stride=7, flip_tta=False, batch_size=3)
    lifted = sequences.lift_sequence(model, inputs, options=options)
    np.testing.assert_array_equal(
        lifted, sequences.lift_sequence(model, inputs, stride=7, flip_tta=False, batch_size=3)
    )
    overridden = sequences.lift_sequence(model, inputs, options=options, flip_tta=True)
    np.testing.assert_array_equal(
        overridden,
        sequences.lift_sequence(model, inputs, options=dataclasses.replace(options, flip_tta=True)),
    )
    assert np.abs(overridden - lifted).max() > 0
    with pytest.raises(TypeError, match="flip"):
        sequences.lift(model, inputs, flip=False)


@pytest.mark.parametrize(
    "keypoints, message",
    [
        (np.ones((5, 16, 2)), "wrong joint count"),
        (np.ones((5, 17, 5)), "wrong channel count"),
        (np.ones((0, 17, 2)), "empty sequence"),
        (np.concatenate([np.full((5, 1, 2), np.nan), np.ones((5, 16, 2))], axis=1), "pelvis missing"),
    ],
)
def test_lift_bad_keypoints(model, keypoints, message):
    with pytest.raises(ValueError, match=message):
        sequences.lift(model, keypoints)


def test_lift_refuses_pixels_without_an_image_size(model):
    pixels = np.random.default_rng(6).uniform(0, 640, size=(5, 17, 2))
    with pytest.raises(ValueError, match=r"look like pixels.*give image_size=\(W, H\)"):
        sequences.lift(model, pixels)
    # Points beyond the bounds but missing (confidence 0) do not count.
    normalised = np.concatenate([np.full((5, 17, 2), 0.5), np.ones((5, 17, 1))], axis=-1)
    normalised[2, 3] = [640.0, 480.0, 0.0]
    with pytest.warns(UserWarning, match="filled 1 missing"):
        assert sequences.lift(model, normalised).shape == (5, 17, 3)


def test_three_channel_model_needs_confidences():
    with pytest.raises(ValueError, match="3 input channels.*no confidences"):
        sequences.lift(random_model(in_chans=3), np.ones((5, 17, 2)))


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    model_dirs.save_model(model, directory)
    return directory


def test_cli_npy_input(model, model_dir, tmp_path, capsys):
    pixels = np.random.default_rng(3).uniform(0, 640, size=(40, 17, 3))
    pixels[..., 2] = 0.9
    pixels[7, 5, 2] = 0.0  # one missing point
    np.save(tmp_path / "kp.npy", pixels)
    out = tmp_path / "out.npz"
    status = infer.main(
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.npy'} --format h36m --image-size 640 480 "
        f"--output {out} --batch-size 3".split()
    )
    assert status == 0
    assert (
        "warning: filled 1 missing keypoint(s) by interpolation over time (left_knee: 1)"
        in capsys.readouterr().err
    )
    result = np.load(out)
    normalised = pixels[..., :2] / 640 * 2 - [1, 0.75]
    normalised[7, 5] = (normalised[6, 5] + normalised[8, 5]) / 2
    expected = reference_lift(model, normalised.astype(np.float32), stride=13, flip=True)
    np.testing.assert_allclose(result["poses_3d"], expected, atol=2e-5)
    np.testing.assert_allclose(result["poses_3d_px"], expected * 320, atol=1e-2)
    assert result["keypoints_2d"].shape == (40, 17, 2) and result["filled"].sum() == 1


def test_cli_json_input_and_plot(model_dir, tmp_path):
    frames = np.random.default_rng(4).uniform(-0.5, 0.5, size=(6, 17, 2)).tolist()
    (tmp_path / "kp.json").write_text(json.dumps(frames))
    status = infer.main(
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.json'} --format coco --no-flip-tta --batch-size 3 "
        f"--output {tmp_path / 'out.npz'} --plot {tmp_path / 'out.gif'}".split()
    )
    assert status == 0
    assert np.load(tmp_path / "out.npz")["poses_3d"].shape == (6, 17, 3)
    assert (tmp_path / "out.gif").read_bytes()[:6] == b"GIF89a"


def test_cli_png_plot_shows_one_frame(model_dir, tmp_path, capsys):
    np.save(tmp_path / "kp.npy", np.random.default_rng(5).uniform(-0.5, 0.5, size=(6, 17, 2)))
    arguments = (
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.npy'} --format h36m --no-flip-tta "
        f"--output {tmp_path / 'o.npz'}"
    )
    assert infer.main(f"{arguments} --plot {tmp_path / 'o.png'} --plot-frame 5".split()) == 0
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert infer.main(f"{arguments} --plot {tmp_path / 'p.png'} --plot-frame 6".split()) == 2
    assert "frame" in capsys.readouterr().err and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[[[1, 2]]]", "wrong joint count"),
        ("[[[1, 2]], [[1, 2], [3, 4]]]", "list of frames"),
        ("not json", "not valid JSON"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(model_dir, tmp_path, capsys, content, message):
    (tmp_path / "kp.json").write_text(content)
    status = infer.main(
        f"--checkpoint {model_dir} --input {tmp_path / 'kp.json'} --output {tmp_path / 'o.npz'}".split()
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    "extra, message",
    [
        # Refused before the (missing) checkpoint is even looked at.
        ("--plot {tmp}/o.jpg", "--plot must end in .gif, .mp4 or .png"),
        ("", "checkpoint not found"),
    ],
)
def test_cli_errors_before_lifting(tmp_path, capsys, extra, message):
    np.save(tmp_path / "kp.npy", np.ones((5, 17, 2)))
    arguments = (
        f"--checkpoint {tmp_path}/nope --input {tmp_path}/kp.npy --format h36m --output {tmp_path}/o.npz "
    )
    status = infer.main((arguments + extra.format(tmp=tmp_path)).split())
    assert status == 2 and message in capsys.readouterr().err


def _cli_error(capsys, arguments: str) -> str:
    """infer's exit status 2 and its one line on stderr."""
    assert infer.main(arguments.split()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sasmamba_jax.infer: error: "), err
    return err


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_cli_17_joint_array_needs_the_format(tmp_path, capsys, suffix):
    # A COCO-17 array (RTMPose's) read as Human3.6M would be lifted with its joints mixed up.
    coco = np.random.default_rng(7).uniform(-0.5, 0.5, size=(5, 17, 3))
    path = tmp_path / f"kp{suffix}"
    if suffix == ".npy":
        np.save(path, coco)
    else:
        path.write_text(json.dumps(coco.tolist()))
    err = _cli_error(capsys, f"--checkpoint {tmp_path}/nope --input {path} --output {tmp_path}/o.npz")
    assert (
        "has 17 joints per frame, which is COCO-17 or Human3.6M-17: give --format coco or --format h36m"
        in err
    )


def test_cli_unknown_joint_count_names_the_layouts(tmp_path, capsys):
    np.save(tmp_path / "kp.npy", np.zeros((5, 20, 2)))
    err = _cli_error(
        capsys, f"--checkpoint {tmp_path}/nope --input {tmp_path}/kp.npy --output {tmp_path}/o.npz"
    )
    assert "has 20 joints per frame" in err and "26 (halpe26)" in err and "133 (wholebody133)" in err


def test_cli_26_joint_array_is_lifted_as_halpe26(model, model_dir, tmp_path):
    halpe = np.random.default_rng(8).uniform(-0.5, 0.5, size=(30, 26, 3))
    halpe[..., 2] = 0.9
    np.save(tmp_path / "kp.npy", halpe)
    status = infer.main(
        f"--checkpoint {model_dir} --input {tmp_path}/kp.npy --no-flip-tta --output {tmp_path}/o.npz".split()
    )
    assert status == 0
    expected = sequences.lift(model, halpe, keypoint_format="halpe26", flip_tta=False)
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["poses_3d"], expected, atol=1e-6)


def test_cli_pixels_without_the_image_size_are_refused(tmp_path, capsys):
    np.save(tmp_path / "kp.npy", np.random.default_rng(9).uniform(0, 640, size=(5, 17, 2)))
    arguments = (
        f"--checkpoint {tmp_path}/nope --input {tmp_path}/kp.npy --format coco --output {tmp_path}/o.npz"
    )
    err = _cli_error(capsys, arguments)
    assert "the keypoints look like pixels" in err and "give --image-size W H" in err
