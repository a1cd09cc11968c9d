"""What pose detectors write: AlphaPose, OpenPose and MMPose files, read into arrays.

Each reader returns `Detections`: every person's keypoints in the
detector's own layout (a key of `keypoints.LAYOUTS`) over all frames of the
video, NaN where the person is absent. `keypoints.to_h36m` then maps them to
Human3.6M-17.

Schemas, as the tools document and write them:

* AlphaPose (``--format alphapose``): one JSON list of detections, each
  ``{"image_id": "12.jpg", "keypoints": [x1, y1, c1, ..., xK, yK, cK],
  "score": s, "idx": track_id, ...}`` with K = 26 (Halpe-26) or 17 (COCO)
  (MVIG-SJTU/AlphaPose docs/output.md; ``idx`` is the pose tracker's person
  id, an integer, which MotionBERT's ``infer_wild.py --focus`` selects on).
  Without ``--pose_track`` AlphaPose still writes ``idx``, but as the list
  of the detector boxes pose NMS merged into the pose, e.g. ``[[0.0],
  [0.0]]`` or ``[0.0]`` (alphapose/utils/pPose_nms.py ``pose_nms_body``:
  ``ori_bbox_ids[merge_id].tolist()``): a list-valued ``idx`` is no track
  id. In video mode AlphaPose names frame i ``"i.jpg"``; frames nobody was
  found in do not appear.
* OpenPose (``--format openpose``): a folder of per-frame
  ``<video>_<frame>_keypoints.json`` files from ``--write_json``, each
  ``{"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d":
  [x0, y0, c0, ...], ...}]}`` with BODY_25 (75 numbers) or COCO-18 (54)
  (CMU-Perceptual-Computing-Lab/openpose doc/02_output.md, "JSON Output
  Format"); ``person_id`` is -1 unless OpenPose tracked the people. A point
  not found is written as 0, 0, 0.
* MMPose (``--format mmpose``): the inferencer's predictions file for a
  video (``MMPoseInferencer(...)(video, pred_out_dir=...)``), a JSON list
  ``[{"frame_id": i, "instances": [{"keypoints": [[x, y], ...],
  "keypoint_scores": [s, ...], "bbox": ..., "track_id": id}, ...]}, ...]``
  with K = 17 (COCO) or 133 (COCO-WholeBody) (open-mmlab/mmpose
  mmpose/apis/inferencers/base_mmpose_inferencer.py
  ``_finalize_video_processing``; instances from
  mmpose/structures/utils.py ``split_instances``; ``track_id`` is present
  only when the predictions were tracked, e.g. by the 3D inferencer).

Untracked files (no ids) are read as one person, id `UNTRACKED_ID`. A
frame with several detections keeps the one that continues the person:
the smallest distance of its keypoints to the kept pose of the nearest
earlier frame and to the next frame with a single detection, in units of
that pose's size; candidates within `UNTRACKED_TIE_DISTANCE` of the
closest are a tie, won by the detection score. A warning gives the number
of such frames. When several people really are there, nothing says who is
who across frames, so the file is refused, asking for tracked output, once
more than `UNTRACKED_MAX_SEVERAL_FRACTION` of the frames with detections,
or more than `UNTRACKED_MAX_SEVERAL_RUN` frames in a row, hold several.

Letters: P people, T frames, K keypoints.
"""

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Iterable

import numpy as np

from sasmamba_jax.lifting import keypoints

FILE_FORMATS = ("alphapose", "openpose", "mmpose")
# Keypoint count -> layout, per file format.
_LAYOUTS_BY_COUNT = {
    "alphapose": {26: "halpe26", 17: "coco"},
    "openpose": {25: "body25", 18: "coco18"},
    "mmpose": {17: "coco", 133: "wholebody133"},
}
UNTRACKED_ID = 0
# Untracked files are one person unless more than this fraction of the frames
# with detections hold several (a spurious detection now and then is dropped)...
UNTRACKED_MAX_SEVERAL_FRACTION = 0.1
# ... or more than this many frames in a row do (about a second of video).
UNTRACKED_MAX_SEVERAL_RUN = 25
# Candidates whose distance to the person's neighbouring poses is within this
# many person sizes of the closest one's are a tie, broken by detection score.
UNTRACKED_TIE_DISTANCE = 0.1
_TRACKING_HINTS = {
    "alphapose": "AlphaPose with --pose_track or --pose_flow writes idx",
    "openpose": "OpenPose with --tracking writes person_id",
    "mmpose": "predictions with track_id, e.g. from MMPose's tracking inferencers",
}


@dataclasses.dataclass(frozen=True)
class Detections:
    """Every person a detector found in a video, in the detector's layout.

    Attributes:
        keypoints: (P, T, K, 3) x, y, confidence; NaN in every frame a person
            is absent from.
        person_ids: the P track ids, ascending.
        keypoint_format: the layout, a key of `keypoints.LAYOUTS`.
        frame_names: the T frames' names (image names, file names or ids).
    """

    keypoints: np.ndarray
    person_ids: tuple[int, ...]
    keypoint_format: str
    frame_names: tuple[str, ...]

    @property
    def present(self) -> np.ndarray:
        """(P, T) bool, True where the person was detected."""
        return ~np.isnan(self.keypoints).all(axis=(-2, -1))


@dataclasses.dataclass(frozen=True)
class _Detection:
    """One person in one frame, as read: flat [x, y, c] * K numbers."""

    frame: int
    person_id: int | None
    values: np.ndarray
    where: str
    score: float | None = None  # the detector's, if it writes one

    @property
    def confidence(self) -> float:
        """The detection score, else the mean keypoint confidence (for choosing among untracked ones)."""
        if self.score is not None:
            return self.score
        confidences = self.values[2::3]
        confidences = confidences[np.isfinite(confidences)]
        return float(confidences.mean()) if len(confidences) else 0.0


def _natural_key(name: str) -> list:
    """Sort key that orders "frame_2" before "frame_10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _number_array(values, where: str, what: str) -> np.ndarray:
    """`values` as a 1-D float64 array; null stands for a missing number."""
    try:
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be a list of numbers") from None
    return array


def _track_id(value, where: str) -> int:
    """A track id written as a number or a one-element list (OpenPose)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{where}: the track id must be an integer, got {value!r}")
    return int(value)


def _layout_of(detections: list[_Detection], file_format: str) -> tuple[str, int]:
    """The layout every detection shares; each must have 3 numbers per keypoint of it."""
    layouts = _LAYOUTS_BY_COUNT[file_format]
    expected = " or ".join(f"{count} ({keypoints.LAYOUTS[name].title})" for count, name in layouts.items())
    first = detections[0]
    count, remainder = divmod(len(first.values), 3)
    if remainder or count not in layouts:
        raise ValueError(
            f"{first.where}: {len(first.values)} numbers, expected 3 per keypoint for {expected} keypoints"
        )
    for detection in detections[1:]:
        if len(detection.values) != len(first.values):
            raise ValueError(
                f"{detection.where}: {len(detection.values)} numbers, expected {len(first.values)} "
                f"({count} keypoints x 3, as in {first.where})"
            )
    return layouts[count], count


def _longest_run(frames: np.ndarray) -> tuple[int, int]:
    """Length and first frame of the longest run of consecutive numbers in sorted `frames`."""
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    runs = np.split(frames, breaks)
    longest = max(runs, key=len)
    return len(longest), int(longest[0])


def _pose(detection: _Detection, count: int) -> np.ndarray:
    """(K, 2) keypoints, NaN where the detector did not find the point (confidence 0 or missing)."""
    points = detection.values.reshape(count, 3)
    xy = points[:, :2].copy()
    xy[~(points[:, 2] > 0) | ~np.isfinite(xy).all(axis=1)] = np.nan
    return xy


def _distance(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Mean keypoint distance from `reference`, in units of its size (the larger side of its box)."""
    shared = ~np.isnan(candidate).any(axis=1) & ~np.isnan(reference).any(axis=1)
    if not shared.any():
        return np.nan
    found = reference[~np.isnan(reference).any(axis=1)]
    size = max(float((found.max(axis=0) - found.min(axis=0)).max()), 1.0)
    return float(np.linalg.norm(candidate[shared] - reference[shared], axis=1).mean()) / size


def _mean_distance(candidate: np.ndarray, references: list[np.ndarray]) -> float:
    """`_distance` to each reference pose, averaged over those sharing a keypoint; NaN if none does."""
    distances = [d for d in (_distance(candidate, r) for r in references) if not np.isnan(d)]
    return float(np.mean(distances)) if distances else np.nan


def _one_person(
    detections: list[_Detection], count: int, frame_names: list[str], file_format: str, source: str
) -> list[_Detection]:
    """Untracked detections as one person: one detection per frame, the one continuing the person.

    Raises:
        ValueError: several people in too many frames, or too many in a row
            (see the module docstring), asking for tracked output.
    """
    by_frame: dict[int, list[_Detection]] = {}
    for detection in detections:
        by_frame.setdefault(detection.frame, []).append(detection)
    frames = np.array(sorted(by_frame))
    several = np.array([frame for frame in frames if len(by_frame[frame]) > 1])
    if len(several):
        most = max(several, key=lambda frame: len(by_frame[frame]))
        run, run_start = _longest_run(several)
        reason = None
        if len(several) > UNTRACKED_MAX_SEVERAL_FRACTION * len(frames):
            reason = (
                f"{len(several)} of the {len(frames)} frames with detections have several "
                f"(at most {UNTRACKED_MAX_SEVERAL_FRACTION:.0%} are read as one person)"
            )
        elif run > UNTRACKED_MAX_SEVERAL_RUN:
            reason = (
                f"{run} frames in a row from frame {frame_names[run_start]} have several "
                f"(at most {UNTRACKED_MAX_SEVERAL_RUN} are read as one person)"
            )
        if reason:
            raise ValueError(
                f"{source}: frame {frame_names[most]} has {len(by_frame[most])} people and no track ids, "
                f"and {reason}; several people need tracked output ({_TRACKING_HINTS[file_format]})"
            )
    kept: dict[int, _Detection] = {}
    last_pose = None
    single = [frame for frame in frames if len(by_frame[frame]) == 1]
    dropped = 0
    for frame in frames:
        candidates = by_frame[frame]
        if len(candidates) > 1:
            references = []
            if last_pose is not None:
                references.append(last_pose)  # the nearest earlier frame's kept pose
            after = np.searchsorted(single, frame)
            if after < len(single):
                references.append(_pose(by_frame[single[after]][0], count))
            candidate_poses = [_pose(c, count) for c in candidates]
            distances = np.array([_mean_distance(p, references) for p in candidate_poses])
            if np.isnan(distances).all():
                ties = list(range(len(candidates)))
            else:
                distances[np.isnan(distances)] = np.inf
                ties = np.flatnonzero(distances <= distances.min() + UNTRACKED_TIE_DISTANCE).tolist()
            candidates = [max((candidates[i] for i in ties), key=lambda c: c.confidence)]
            dropped += len(by_frame[frame]) - 1
        kept[frame] = candidates[0]
        last_pose = _pose(candidates[0], count)
    if len(several):
        warnings.warn(
            f"{source}: no track ids and {len(several)} frame(s) with several detections; "
            f"kept the one continuing the person in each, dropped {dropped} detection(s)",
            stacklevel=4,
        )
    return [dataclasses.replace(kept[frame], person_id=UNTRACKED_ID) for frame in frames]


def _assemble(
    detections: list[_Detection],
    frame_names: list[str],
    file_format: str,
    source: str,
) -> Detections:
    """Places each detection at its (person, frame); ids from the tracker, or 0 if untracked."""
    if not detections:
        raise ValueError(f"{source}: no people detected in any frame")
    keypoint_format, count = _layout_of(detections, file_format)
    tracked = [d.person_id is not None for d in detections]
    if any(tracked) and not all(tracked):
        untracked = detections[tracked.index(False)]
        raise ValueError(f"{untracked.where}: no track id, while other detections have one")
    if not all(tracked):
        detections = _one_person(detections, count, frame_names, file_format, source)
    person_ids = tuple(sorted({d.person_id for d in detections}))
    row = {person_id: p for p, person_id in enumerate(person_ids)}
    array = np.full((len(person_ids), len(frame_names), count, 3), np.nan)
    seen = {}
    for detection in detections:
        key = (detection.person_id, detection.frame)
        if key in seen:
            raise ValueError(
                f"{detection.where}: person {detection.person_id} appears twice in frame "
                f"{frame_names[detection.frame]} (also {seen[key]})"
            )
        seen[key] = detection.where
        array[row[detection.person_id], detection.frame] = detection.values.reshape(count, 3)
    if np.isinf(array).any():
        raise ValueError(f"{source}: keypoints contain infinite values")
    return Detections(array, person_ids, keypoint_format, tuple(frame_names))


def _alphapose_frames(image_ids: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Frame index of each image id: its number when every id is "<number>.<ext>", else name order."""
    names = sorted(set(image_ids), key=_natural_key)
    stems = [os.path.splitext(name)[0] for name in names]
    if all(stem.isdigit() for stem in stems):
        # Video frames nobody was found in are not written; keep them as absent frames.
        numbers = [int(stem) for stem in stems]
        index = dict(zip(names, numbers))
        frame_names = [str(i) for i in range(max(numbers) + 1)]
        for name, number in index.items():
            frame_names[number] = name
        return index, frame_names
    return {name: i for i, name in enumerate(names)}, names


def _alphapose_track_id(idx, where: str) -> int | None:
    """The tracker's id; None without one: no ``idx``, or pose NMS's list of merged box ids."""
    if idx is None or isinstance(idx, list):
        return None
    return _track_id(idx, where)


def read_alphapose(path: str | os.PathLike) -> Detections:
    """Reads AlphaPose's results JSON (schema in the module docstring).

    Raises:
        ValueError: unreadable or empty file, a schema that is not
            AlphaPose's, a detection with the wrong number of values, bad
            ids, or untracked detections of several people (see the module
            docstring).
    """
    path = os.fspath(path)
    results = _load_json(path)
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and "image_id" in r and "keypoints" in r for r in results
    ):
        raise ValueError(
            f"{path} is not AlphaPose results: expected a JSON list of detections, "
            'each with "image_id" and "keypoints"'
        )
    if not results:
        raise ValueError(f"{path}: empty file, no detections")
    frame_of, frame_names = _alphapose_frames(str(r["image_id"]) for r in results)
    detections = []
    for i, result in enumerate(results):
        where = f"{path}: detection {i} (image {result['image_id']})"
        person_id = _alphapose_track_id(result.get("idx"), where)
        values = _number_array(result["keypoints"], where, '"keypoints"')
        score = result.get("score")
        score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
        detections.append(_Detection(frame_of[str(result["image_id"])], person_id, values, where, score))
    return _assemble(detections, frame_names, "alphapose", path)


def read_openpose(path: str | os.PathLike) -> Detections:
    """Reads a folder of OpenPose ``*_keypoints.json`` files, frames in file-name order.

    Raises:
        ValueError: not a folder, no keypoint files, a file that is not
            OpenPose's schema, a person with the wrong number of values, or
            several untracked people in one frame.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: OpenPose output is a folder of *_keypoints.json files, not a file")
    names = sorted((n for n in os.listdir(path) if n.endswith("_keypoints.json")), key=_natural_key)
    if not names:
        raise ValueError(f"{path}: no *_keypoints.json files (OpenPose's --write_json output)")
    detections = []
    for frame, name in enumerate(names):
        file_path = os.path.join(path, name)
        content = _load_json(file_path)
        if not isinstance(content, dict) or not isinstance(content.get("people"), list):
            raise ValueError(f'{file_path} is not OpenPose output: expected an object with a "people" list')
        for i, person in enumerate(content["people"]):
            where = f"{file_path}: person {i}"
            if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
                raise ValueError(f'{where}: no "pose_keypoints_2d"')
            person_id = _track_id(person["person_id"], where) if "person_id" in person else -1
            values = _number_array(person["pose_keypoints_2d"], where, '"pose_keypoints_2d"')
            detections.append(_Detection(frame, None if person_id == -1 else person_id, values, where))
    return _assemble(detections, names, "openpose", path)


def _mmpose_instance_values(instance, where: str) -> np.ndarray:
    """An MMPose instance's keypoints (K, 2) and scores (K,) as flat [x, y, score] * K."""
    if not isinstance(instance, dict) or "keypoints" not in instance or "keypoint_scores" not in instance:
        raise ValueError(f'{where}: expected an object with "keypoints" and "keypoint_scores"')
    try:
        xy = np.array(instance["keypoints"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'{where}: "keypoints" must be a list of [x, y]') from None
    scores = _number_array(instance["keypoint_scores"], where, '"keypoint_scores"')
    if xy.ndim != 2 or xy.shape[1] != 2 or len(scores) != len(xy):
        raise ValueError(
            f'{where}: "keypoints" must be K [x, y] pairs and "keypoint_scores" K numbers, '
            f"got shapes {xy.shape} and {scores.shape}"
        )
    return np.concatenate([xy, scores[:, None]], axis=1).reshape(-1)


def read_mmpose(path: str | os.PathLike) -> Detections:
    """Reads an MMPose inferencer's predictions JSON for a video (schema in the module docstring).

    Raises:
        ValueError: unreadable or empty file, a schema that is not MMPose's
            video predictions, an instance with the wrong number of
            keypoints, bad ids, or several untracked people in one frame.
    """
    path = os.fspath(path)
    frames = _load_json(path)
    if not isinstance(frames, list) or not all(
        isinstance(f, dict) and "frame_id" in f and "instances" in f for f in frames
    ):
        raise ValueError(
            f"{path} is not MMPose video predictions: expected a JSON list of frames, "
            'each with "frame_id" and "instances"'
        )
    if not frames:
        raise ValueError(f"{path}: empty file, no frames")
    frame_ids = [_track_id(f["frame_id"], f"{path}: frame {i}") for i, f in enumerate(frames)]
    if len(set(frame_ids)) != len(frame_ids) or min(frame_ids) < 0:
        raise ValueError(f"{path}: frame ids must be distinct and non-negative")
    frame_names = [str(i) for i in range(max(frame_ids) + 1)]
    detections = []
    for frame_id, frame in zip(frame_ids, frames):
        if not isinstance(frame["instances"], list):
            raise ValueError(f'{path}: frame {frame_id}: "instances" must be a list')
        for i, instance in enumerate(frame["instances"]):
            where = f"{path}: frame {frame_id}, instance {i}"
            values = _mmpose_instance_values(instance, where)
            person_id = _track_id(instance["track_id"], where) if "track_id" in instance else None
            detections.append(_Detection(frame_id, person_id, values, where))
    return _assemble(detections, frame_names, "mmpose", path)


READERS = {"alphapose": read_alphapose, "openpose": read_openpose, "mmpose": read_mmpose}


def sniff_format(path: str | os.PathLike) -> str | None:
    """The detector file format a path's content shows, or None for a plain keypoint array.

    A folder is OpenPose output; a JSON list whose first item has
    ``image_id`` is AlphaPose's, one with ``frame_id`` and ``instances``
    MMPose's. Anything else (.npy, a JSON list of numbers) is None.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return "openpose"
    if not path.lower().endswith(".json") or not os.path.isfile(path):
        return None
    content = _load_json(path)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        if "image_id" in content[0]:
            return "alphapose"
        if "frame_id" in content[0] and "instances" in content[0]:
            return "mmpose"
    return None
