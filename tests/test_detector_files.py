"""Detector files (AlphaPose, OpenPose, MMPose) built from known Human3.6M poses, read and lifted.

Two people walk through 30 frames: person 3 in all of them, person 7 only in
frames 5-24. Each file is written here from the Human3.6M-17 poses by joint
name, independently of `keypoints.LAYOUTS`: a joint the layout has is
written as it is, an estimated one is made so that the documented formula
gives it back (e.g. the two eyes straddle the head). Reading a file must
give back the poses exactly, and lifting it must equal lifting each person's
Human3.6M keypoints directly.
"""

import json
import pickle
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from sasmamba_jax import skeleton
from sasmamba_jax.cli import infer
from sasmamba_jax.io import loader, model_dirs
from sasmamba_jax.lifting import detector_files, keypoints, sequences
from sasmamba_jax.model.sasmamba import SasMambaConfig

FRAMES = 30
IMAGE_SIZE = (1000, 1002)
PERSON_IDS = (3, 7)
SECOND_PRESENT = slice(5, 25)
_DEMO = Path(__file__).resolve().parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"
J = {name: index for index, name in enumerate(skeleton.JOINT_NAMES)}

# Keypoint names in each detector's order, written out from the tools' documents.
COCO = (
    "nose l_eye r_eye l_ear r_ear l_shoulder r_shoulder l_elbow r_elbow l_wrist r_wrist "
    "l_hip r_hip l_knee r_knee l_ankle r_ankle"
).split()
HALPE = COCO + "head neck hip l_big_toe r_big_toe l_small_toe r_small_toe l_heel r_heel".split()
BODY25 = (
    "nose neck r_shoulder r_elbow r_wrist l_shoulder l_elbow l_wrist mid_hip r_hip r_knee r_ankle "
    "l_hip l_knee l_ankle r_eye l_eye r_ear l_ear l_big_toe l_small_toe l_heel r_big_toe r_small_toe r_heel"
).split()
COCO18 = [name for name in BODY25[:19] if name != "mid_hip"]
WHOLEBODY = COCO + [f"extra_{k}" for k in range(116)]
LAYOUT_NAMES = {"coco": COCO, "halpe26": HALPE, "body25": BODY25, "coco18": COCO18, "wholebody133": WHOLEBODY}
CASES = [
    ("alphapose", "halpe26"),
    ("alphapose", "coco"),
    ("openpose", "body25"),
    ("openpose", "coco18"),
    ("mmpose", "coco"),
    ("mmpose", "wholebody133"),
]


def _consistent(poses):
    """Real poses with pelvis, thorax and spine set to what every layout's formula gives."""
    poses = poses.copy()
    poses[:, J["pelvis"]] = (poses[:, J["left_hip"]] + poses[:, J["right_hip"]]) / 2
    poses[:, J["thorax"]] = (poses[:, J["left_shoulder"]] + poses[:, J["right_shoulder"]]) / 2
    poses[:, J["spine"]] = (poses[:, J["pelvis"]] + poses[:, J["thorax"]]) / 2
    return poses


@pytest.fixture(scope="module")
def people():
    """(2, FRAMES, 17, 2) pixel poses of two different demo clips, the second moved right."""
    with open(_DEMO, "rb") as f:
        split = pickle.load(f)["test"]
    sources = np.asarray(split["source"])
    first = np.flatnonzero(sources == sources[0])[:FRAMES]
    second = np.flatnonzero(sources == sources[-1])[:FRAMES]
    poses = np.stack([split["joint_2d"][first], split["joint_2d"][second] + [250.0, 0.0]])
    return np.stack([_consistent(p.astype(np.float64)) for p in poses])


def _named_points(pose):
    """Every keypoint name any layout uses -> (x, y) for one (17, 2) Human3.6M pose."""
    head, neck = pose[J["head"]], pose[J["neck"]]
    points = {
        "nose": neck,
        "neck": pose[J["thorax"]],
        "head": head,
        "hip": pose[J["pelvis"]],
        "mid_hip": pose[J["pelvis"]],
        # The eyes straddle the head, off-centre in y so that an estimate from
        # them would differ from a layout's own head keypoint.
        "l_eye": head + [6.0, 5.0],
        "r_eye": head - [6.0, 5.0],
        "l_ear": head + [11.0, 9.0],
        "r_ear": head + [-11.0, 2.0],
    }
    for side, prefix in (("left", "l"), ("right", "r")):
        for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            points[f"{prefix}_{part}"] = pose[J[f"{side}_{part}"]]
        for k, part in enumerate(("big_toe", "small_toe", "heel")):
            points[f"{prefix}_{part}"] = pose[J[f"{side}_ankle"]] + [3.0 * k, 12.0]
    return points


def _layout_points(pose, layout):
    """(K, 2) keypoints of `layout` for one Human3.6M pose."""
    points = _named_points(pose)
    if layout == "halpe26":
        # Halpe's own head keypoint must be the one used: move the eyes off it.
        points = {**points, "l_eye": points["head"] + [6.0, 20.0], "r_eye": points["head"] + [-6.0, 14.0]}
    return np.array([points.get(name, pose[J["pelvis"]] + [1.0, -1.0]) for name in LAYOUT_NAMES[layout]])


def _tracks(people):
    """(person_id, frame, pose) for every detection, in frame order."""
    rows = []
    for frame in range(FRAMES):
        for person_id, poses in zip(PERSON_IDS, people):
            if person_id == PERSON_IDS[1] and not SECOND_PRESENT.start <= frame < SECOND_PRESENT.stop:
                continue
            rows.append((person_id, frame, poses[frame]))
    return rows


def _flat(points, score=0.9):
    return np.concatenate([points, np.full((len(points), 1), score)], axis=1).reshape(-1).tolist()


def write_alphapose(path, people, layout, tracked=True):
    results = []
    for person_id, frame, pose in _tracks(people):
        points = _flat(_layout_points(pose, layout))
        entry = {"image_id": f"{frame}.jpg", "category_id": 1, "keypoints": points, "score": 2.5}
        if tracked:
            entry["idx"] = person_id
        results.append(entry)
    path.write_text(json.dumps(results))
    return path


def write_openpose(folder, people, layout, tracked=True):
    folder.mkdir()
    frames = {frame: [] for frame in range(FRAMES)}
    for person_id, frame, pose in _tracks(people):
        person = {"person_id": [person_id if tracked else -1]}
        person["pose_keypoints_2d"] = _flat(_layout_points(pose, layout))
        person["face_keypoints_2d"] = []
        frames[frame].append(person)
    for frame, people_in_frame in frames.items():
        name = f"clip_{frame:012d}_keypoints.json"
        (folder / name).write_text(json.dumps({"version": 1.3, "people": people_in_frame}))
    return folder


def write_mmpose(path, people, layout, tracked=True):
    frames = [{"frame_id": frame, "instances": []} for frame in range(FRAMES)]
    for person_id, frame, pose in _tracks(people):
        points = _layout_points(pose, layout)
        instance = {"keypoints": points.tolist(), "keypoint_scores": [0.9] * len(points)}
        instance["bbox"] = [[*points.min(axis=0), *points.max(axis=0)]]
        instance["bbox_score"] = 0.95
        if tracked:
            instance["track_id"] = person_id
        frames[frame]["instances"].append(instance)
    path.write_text(json.dumps(frames))
    return path


WRITERS = {"alphapose": write_alphapose, "openpose": write_openpose, "mmpose": write_mmpose}
SUFFIX = {"alphapose": "results.json", "openpose": "json_folder", "mmpose": "predictions.json"}


def write(file_format, tmp_path, people, layout, **options):
    return WRITERS[file_format](tmp_path / SUFFIX[file_format], people, layout, **options)


@pytest.mark.parametrize("file_format, layout", CASES)
def test_reading_gives_back_each_person_exactly(file_format, layout, tmp_path, people):
    path = write(file_format, tmp_path, people, layout)
    assert detector_files.sniff_format(path) == file_format
    detections = detector_files.READERS[file_format](path)
    assert detections.keypoint_format == layout
    assert detections.person_ids == PERSON_IDS
    assert detections.keypoints.shape == (2, FRAMES, keypoints.LAYOUTS[layout].num_keypoints, 3)
    xy, confidences = keypoints.to_h36m(
        detections.keypoints[..., :2], detections.keypoints[..., 2], detections.keypoint_format
    )
    np.testing.assert_allclose(xy[0], people[0], atol=1e-9)
    np.testing.assert_allclose(xy[1, SECOND_PRESENT], people[1, SECOND_PRESENT], atol=1e-9)
    np.testing.assert_allclose(confidences[0], 0.9)
    absent = np.ones(FRAMES, bool)
    absent[SECOND_PRESENT] = False
    assert np.isnan(detections.keypoints[1, absent]).all()
    np.testing.assert_array_equal(detections.present[1], ~absent)


def test_halpe_and_body25_use_their_own_head_neck_and_hip():
    rng = np.random.default_rng(0)
    halpe = rng.uniform(0, 100, size=(1, 26, 2))
    h36m, _ = keypoints.to_h36m(halpe, None, "halpe26")
    for joint, source in (("head", 17), ("thorax", 18), ("pelvis", 19), ("neck", 0)):
        np.testing.assert_array_equal(h36m[0, J[joint]], halpe[0, source])
    np.testing.assert_allclose(h36m[0, J["spine"]], (halpe[0, 18] + halpe[0, 19]) / 2)
    body25 = rng.uniform(0, 100, size=(1, 25, 2))
    h36m, _ = keypoints.to_h36m(body25, None, "body25")
    for joint, source in (("thorax", 1), ("pelvis", 8), ("right_hip", 9), ("left_wrist", 7)):
        np.testing.assert_array_equal(h36m[0, J[joint]], body25[0, source])
    np.testing.assert_allclose(h36m[0, J["head"]], (body25[0, 15] + body25[0, 16]) / 2)


def _model():
    config = SasMambaConfig(num_frames=27, dim=16, depth=1, scan="sequential")
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda leaf: (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32),
        model_dirs.abstract_params(config),
    )
    return model_dirs.build_model(config, params)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    model_dirs.save_model(_model(), directory)
    return directory


@pytest.fixture(scope="module")
def direct_lifts(model_dir, people):
    """Each person's Human3.6M keypoints lifted directly, over the frames they are present in."""
    model = loader.load_model(model_dir)
    options = dict(keypoint_format="h36m", image_size=IMAGE_SIZE, flip_tta=False)
    return (
        sequences.lift(model, people[0], **options),
        sequences.lift(model, people[1, SECOND_PRESENT], **options),
    )


@pytest.mark.parametrize("file_format, layout", [CASES[0], CASES[2], CASES[5]])
def test_cli_lifts_every_person_as_lifting_them_directly(
    file_format, layout, tmp_path, people, model_dir, direct_lifts, capsys
):
    path = write(file_format, tmp_path, people, layout)
    out = tmp_path / "out.npz"
    status = infer.main(
        f"--checkpoint {model_dir} --input {path} --image-size {IMAGE_SIZE[0]} {IMAGE_SIZE[1]} "
        f"--no-flip-tta --output {out}".split()
    )
    assert status == 0, capsys.readouterr().err
    result = np.load(out)
    np.testing.assert_array_equal(result["person_ids"], PERSON_IDS)
    poses = result["poses_3d"]
    assert poses.shape == (2, FRAMES, 17, 3)
    first, second = direct_lifts
    np.testing.assert_allclose(poses[0], first, atol=1e-5)
    np.testing.assert_allclose(poses[1, SECOND_PRESENT], second, atol=1e-5)
    absent = np.ones(FRAMES, bool)
    absent[SECOND_PRESENT] = False
    assert np.isnan(poses[1, absent]).all() and np.isfinite(poses[1, ~absent]).all()
    # Not mixed up: person 7's lift is far from person 3's over the same frames.
    assert np.abs(poses[1, SECOND_PRESENT] - first[SECOND_PRESENT]).max() > 10 * 1e-5
    np.testing.assert_array_equal(result["present"][1], ~absent)
    assert result["poses_3d_px"].shape == (2, FRAMES, 17, 3)


def test_cli_person_picks_one_track(tmp_path, people, model_dir, direct_lifts):
    path = write_mmpose(tmp_path / "p.json", people, "coco")
    out = tmp_path / "out.npz"
    status = infer.main(
        f"--checkpoint {model_dir} --input {path} --format mmpose --image-size 1000 1002 --no-flip-tta "
        f"--person 7 --output {out} --plot {tmp_path / 'p7.png'} --plot-frame 2".split()
    )
    assert status == 0
    result = np.load(out)
    assert result["poses_3d"].shape == (FRAMES, 17, 3)
    np.testing.assert_allclose(result["poses_3d"][SECOND_PRESENT], direct_lifts[1], atol=1e-5)
    assert np.isnan(result["poses_3d"][: SECOND_PRESENT.start]).all()
    np.testing.assert_array_equal(result["person_ids"], [7])
    assert (tmp_path / "p7.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_short_tracks_are_reported_and_skipped(people, model_dir):
    model = loader.load_model(model_dir)
    detections = np.full((2, FRAMES, 17, 3), np.nan)
    detections[0, :, :, :2], detections[0, :, :, 2] = people[0], 0.9
    detections[1, 10:13, :, :2], detections[1, 10:13, :, 2] = people[1, 10:13], 0.9
    with pytest.warns(UserWarning, match=r"fewer than 5 frames: person 7 \(3 frames\)"):
        lifted = sequences.lift_people(model, detections, PERSON_IDS, image_size=IMAGE_SIZE, flip_tta=False)
    assert lifted.person_ids == (3,) and lifted.skipped_ids == (7,)
    assert lifted.poses_3d.shape == (1, FRAMES, 17, 3)


@pytest.mark.slow
def test_people_share_batches_with_the_result_of_lifting_alone(model_dir, people):
    """Windows of two people in one batch give each person's own lift (batch 3: a new compile)."""
    model = loader.load_model(model_dir)
    inputs = [keypoints.normalize_by_image_size(p, IMAGE_SIZE) for p in (people[0], people[1, :12])]
    together = sequences.lift_sequences(model, inputs, flip_tta=False, batch_size=3)
    for sequence, lifted in zip(inputs, together):
        alone = sequences.lift_sequence(model, sequence, flip_tta=False)
        np.testing.assert_allclose(lifted, alone, atol=1e-5)


def _one_line_error(capsys, arguments):
    assert infer.main(arguments.split()) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


@pytest.mark.parametrize("file_format", ["alphapose", "openpose", "mmpose"])
def test_untracked_file_with_several_people_asks_for_tracking(file_format, tmp_path, people, capsys):
    layout = "coco18" if file_format == "openpose" else "coco"
    path = write(file_format, tmp_path, people, layout, tracked=False)
    err = _one_line_error(
        capsys, f"--checkpoint x --input {path} --image-size 1000 1002 --output {tmp_path / 'o.npz'}"
    )
    assert "frame" in err and "2 people and no track ids" in err and "tracked output" in err


def test_untracked_single_person_is_read_as_person_0(tmp_path, people):
    path = write_openpose(tmp_path / "op", people[:1], "body25", tracked=False)
    detections = detector_files.read_openpose(path)
    assert detections.person_ids == (detector_files.UNTRACKED_ID,)
    assert detections.present.all()
    xy, _ = keypoints.to_h36m(detections.keypoints[0, :, :, :2], None, "body25")
    np.testing.assert_allclose(xy, people[0])


@pytest.mark.parametrize(
    "name, content, file_format, message",
    [
        ("e.json", "[]", "alphapose", "e.json: empty file"),
        ("e.json", "[]", "mmpose", "e.json: empty file"),
        ("folder", None, "openpose", r"no \*_keypoints.json files"),
        ("n.json", "[{", "alphapose", "n.json is not valid JSON"),
        (
            "c.json",
            json.dumps([{"image_id": "0.jpg", "keypoints": [1.0] * 75}]),
            "alphapose",
            r"detection 0 \(image 0.jpg\): 75 numbers, expected 3 per keypoint for 26 \(Halpe-26\) or 17",
        ),
        ("m.json", json.dumps({"frame_id": 0}), "mmpose", "is not MMPose video predictions"),
        ("a.json", json.dumps([[1, 2]]), "alphapose", "is not AlphaPose results"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(name, content, file_format, message, tmp_path, capsys):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    err = _one_line_error(
        capsys,
        f"--checkpoint x --input {path} --format {file_format} --image-size 10 10 "
        f"--output {tmp_path / 'o.npz'}",
    )
    assert re.search(message, err), err


def test_a_frame_with_a_wrong_keypoint_count_is_named(tmp_path, people, capsys):
    path = write_openpose(tmp_path / "op", people, "body25")
    broken = sorted(path.iterdir())[12]
    content = json.loads(broken.read_text())
    content["people"][1]["pose_keypoints_2d"] = content["people"][1]["pose_keypoints_2d"][:54]
    broken.write_text(json.dumps(content))
    arguments = f"--checkpoint x --input {path} --image-size 10 10 --output {tmp_path / 'o.npz'}"
    err = _one_line_error(capsys, arguments)
    assert f"{broken.name}: person 1: 54 numbers, expected 75 (25 keypoints x 3" in err


def test_26_keypoints_declared_as_coco_is_an_error(tmp_path, capsys):
    np.save(tmp_path / "kp.npy", np.ones((5, 26, 3)))
    err = _one_line_error(
        capsys, f"--checkpoint x --input {tmp_path / 'kp.npy'} --format coco --output {tmp_path / 'o.npz'}"
    )
    assert "coco expects 17 joints per frame, got 26" in err and "Halpe-26" in err


def test_detector_file_declared_as_an_array_format_is_an_error(tmp_path, people, capsys):
    path = write_alphapose(tmp_path / "a.json", people, "halpe26")
    arguments = f"--checkpoint x --input {path} --format coco --output {tmp_path / 'o.npz'}"
    err = _one_line_error(capsys, arguments)
    assert "holds alphapose output, not a coco array: use --format alphapose" in err


def test_detector_files_need_the_image_size(tmp_path, people, capsys):
    path = write_mmpose(tmp_path / "m.json", people, "coco")
    err = _one_line_error(capsys, f"--checkpoint x --input {path} --output {tmp_path / 'o.npz'}")
    assert "--image-size W H is needed: mmpose keypoints are pixels" in err


def test_unknown_person_is_an_error_listing_the_ids(tmp_path, people, capsys):
    path = write_alphapose(tmp_path / "a.json", people, "coco")
    err = _one_line_error(
        capsys, f"--checkpoint x --input {path} --image-size 9 9 --person 5 --output {tmp_path / 'o.npz'}"
    )
    assert "--person 5: no such track" in err and "(ids: 3, 7)" in err


def test_cli_exports_a_bvh_per_person_and_one_csv(tmp_path, people, model_dir, capsys):
    path = write_alphapose(tmp_path / "a.json", people, "halpe26")
    out = tmp_path / "out.npz"
    common = f"--checkpoint {model_dir} --input {path} --image-size 1000 1002 --no-flip-tta --output {out}"
    err = _one_line_error(capsys, f"{common} --bvh {tmp_path / 'one.bvh'}")
    assert "2 people need one file each" in err and not out.exists()
    assert infer.main(f"{common} --bvh {tmp_path}/person_{{id}}.bvh --csv {tmp_path / 'p.csv'}".split()) == 0
    for person_id in PERSON_IDS:
        text = (tmp_path / f"person_{person_id}.bvh").read_text()
        assert text.startswith("HIERARCHY\nROOT pelvis") and f"Frames: {FRAMES}" in text
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * FRAMES * 17
    poses_px = np.load(out)["poses_3d_px"]
    person, frame, joint, *xyz = rows[1 + FRAMES * 17 + 5 * 17 + 16].split(",")
    assert (person, frame, joint) == ("7", "5", "right_wrist")
    np.testing.assert_allclose([float(v) for v in xyz], poses_px[1, 5, 16], rtol=1e-5, atol=1e-4)


# AlphaPose without --pose_track: ``idx`` is pose NMS's list of merged box ids.
UNTRACKED_IDX = ([[0.0], [0.0]], [0.0], [[0.0]])
SPURIOUS_FRAME = 12


def write_alphapose_untracked(path, poses, extra=()):
    """AlphaPose's own untracked form: one person `poses` (T, 17, 2), plus (frame, pose, score) extras."""
    rows = [(frame, pose, 2.5) for frame, pose in enumerate(poses)] + list(extra)
    results = []
    for k, (frame, pose, score) in enumerate(sorted(rows, key=lambda row: row[0])):
        points = _layout_points(pose, "halpe26")
        results.append(
            {
                "image_id": f"{frame}.jpg",
                "category_id": 1,
                "keypoints": _flat(points),
                "score": score,
                "box": [*points.min(axis=0), *(points.max(axis=0) - points.min(axis=0))],
                "idx": UNTRACKED_IDX[k % len(UNTRACKED_IDX)],
            }
        )
    path.write_text(json.dumps(results))
    return path


def _read_h36m(detections):
    assert detections.person_ids == (detector_files.UNTRACKED_ID,)
    xy, _ = keypoints.to_h36m(detections.keypoints[0, :, :, :2], None, detections.keypoint_format)
    return xy


def test_untracked_alphapose_drops_a_spurious_detection(tmp_path, people):
    # The spurious detection (another person, elsewhere) has the higher score: it must lose on distance.
    spurious = [(SPURIOUS_FRAME, people[1, SPURIOUS_FRAME], 3.5)]
    path = write_alphapose_untracked(tmp_path / "alphapose-results.json", people[0], spurious)
    with pytest.warns(
        UserWarning, match=r"1 frame\(s\) with several detections.*dropped 1 detection"
    ) as caught:
        detections = detector_files.read_alphapose(path)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert detections.present.all()
    np.testing.assert_allclose(_read_h36m(detections), people[0], atol=1e-9)


@pytest.mark.parametrize("frame", [0, FRAMES - 1])
def test_untracked_extra_detection_in_the_first_or_last_frame(frame, tmp_path, people):
    path = write_alphapose_untracked(tmp_path / "a.json", people[0], [(frame, people[1, frame], 3.5)])
    with pytest.warns(UserWarning, match=r"1 frame\(s\)"):
        detections = detector_files.read_alphapose(path)
    np.testing.assert_allclose(_read_h36m(detections), people[0], atol=1e-9)


def test_untracked_duplicates_of_the_person_are_a_tie_won_by_the_score(tmp_path, people):
    # Two detections of the same person, a few pixels apart: the better-scored one is kept.
    duplicate = people[0, SPURIOUS_FRAME] + [4.0, -3.0]
    path = write_alphapose_untracked(tmp_path / "a.json", people[0], [(SPURIOUS_FRAME, duplicate, 3.5)])
    with pytest.warns(UserWarning):
        xy = _read_h36m(detector_files.read_alphapose(path))
    np.testing.assert_allclose(xy[SPURIOUS_FRAME], duplicate, atol=1e-9)
    np.testing.assert_allclose(
        np.delete(xy, SPURIOUS_FRAME, 0), np.delete(people[0], SPURIOUS_FRAME, 0), atol=1e-9
    )


def test_untracked_alphapose_with_one_detection_a_frame_is_one_person(tmp_path, people, recwarn):
    path = write_alphapose_untracked(tmp_path / "a.json", people[0])
    np.testing.assert_allclose(_read_h36m(detector_files.read_alphapose(path)), people[0], atol=1e-9)
    assert not recwarn.list


def test_untracked_alphapose_lifts_as_the_person_alone(tmp_path, people, model_dir, direct_lifts, capsys):
    spurious = [(SPURIOUS_FRAME, people[1, SPURIOUS_FRAME], 3.5)]
    path = write_alphapose_untracked(tmp_path / "alphapose-results.json", people[0], spurious)
    out = tmp_path / "out.npz"
    arguments = (
        f"--checkpoint {model_dir} --input {path} --format alphapose --image-size {IMAGE_SIZE[0]} "
        f"{IMAGE_SIZE[1]} --no-flip-tta --output {out}"
    )
    assert infer.main(arguments.split()) == 0
    # The CLI shows the reader's warning as one line.
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "1 frame(s) with several detections" in warning[0]
    result = np.load(out)
    np.testing.assert_array_equal(result["person_ids"], [detector_files.UNTRACKED_ID])
    np.testing.assert_allclose(result["poses_3d"][0], direct_lifts[0], atol=1e-5)


def test_untracked_people_overlapping_throughout_ask_for_pose_track(tmp_path, people, capsys):
    extra = [(frame, pose, 2.0) for frame, pose in enumerate(people[1])]
    path = write_alphapose_untracked(tmp_path / "a.json", people[0], extra)
    err = _one_line_error(
        capsys, f"--checkpoint x --input {path} --image-size 1000 1002 --output {tmp_path / 'o.npz'}"
    )
    assert "2 people and no track ids" in err and f"{FRAMES} of the {FRAMES} frames" in err
    assert "tracked output" in err and "--pose_track" in err


def test_a_long_run_of_several_untracked_people_asks_for_tracking(tmp_path, people, monkeypatch):
    monkeypatch.setattr(detector_files, "UNTRACKED_MAX_SEVERAL_RUN", 3)
    monkeypatch.setattr(detector_files, "UNTRACKED_MAX_SEVERAL_FRACTION", 0.5)
    run = [(frame, people[1, frame], 2.0) for frame in range(10, 14)]
    path = write_alphapose_untracked(tmp_path / "a.json", people[0], run)
    with pytest.raises(ValueError, match=r"4 frames in a row from frame 10.jpg have several.*--pose_track"):
        detector_files.read_alphapose(path)
    write_alphapose_untracked(path, people[0], run[:3])
    with pytest.warns(UserWarning, match=r"3 frame\(s\)"):
        np.testing.assert_allclose(_read_h36m(detector_files.read_alphapose(path)), people[0], atol=1e-9)


def test_tracked_alphapose_is_read_by_its_integer_ids_without_warnings(tmp_path, people, recwarn):
    path = write_alphapose(tmp_path / "a.json", people, "halpe26")
    detections = detector_files.read_alphapose(path)
    assert detections.person_ids == PERSON_IDS and not recwarn.list
    content = json.loads(path.read_text())
    content[3]["idx"] = 2.5
    path.write_text(json.dumps(content))
    with pytest.raises(
        ValueError, match=r"detection 3 \(image 3.jpg\): the track id must be an integer, got 2.5"
    ):
        detector_files.read_alphapose(path)
