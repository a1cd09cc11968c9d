"""Writes example AlphaPose, OpenPose and MMPose files of two people from the demo data.

Two test clips of the bundled CMU demo (data/cmu_demo) play two people side
by side in a 1000 x 1002 image: person 1 in every frame, person 2 entering
late and leaving early. Each person's Human3.6M-17 2D keypoints are written
in each detector's layout (Halpe-26 for AlphaPose, BODY_25 for OpenPose,
COCO-17 for MMPose), tracked, so `python -m sasmamba_jax.infer` can be tried
on every format without running a detector:

  python tools/make_detector_examples.py --output examples/
  python -m sasmamba_jax.infer --checkpoint CKPT --input examples/alphapose-results.json \\
      --image-size 1000 1002 --output two.npz --plot two.png

A layout keypoint that is a Human3.6M joint's only source gets that joint;
the two sources of a derived joint (the eyes of the head) straddle it;
keypoints the conversion does not use are written as not found (0, 0, 0).
"""

import argparse
import json
import os
import pickle

import numpy as np

from sasmamba_jax.lifting import keypoints

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "cmu_demo", "h36m_cmu_s01.pkl")
IMAGE_SIZE = (1000, 1002)
PERSON_IDS = (1, 2)
# Pixels between the two sources of a derived joint.
_SPREAD = np.array([6.0, 0.0])


def demo_people(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(2, frames, 17, 2) pixel keypoints of two demo clips, and (2, frames) presence."""
    with open(DEMO, "rb") as f:
        split = pickle.load(f)["test"]
    sources = np.asarray(split["source"])
    first = np.flatnonzero(sources == sources[0])[:frames]
    second = np.flatnonzero(sources == sources[-1])[:frames]
    if len(first) < frames or len(second) < frames:
        raise ValueError(f"the demo clips have fewer than {frames} frames")
    # Half the image apart, the second clip shrunk a little as if further away.
    one = split["joint_2d"][first] - [180.0, 0.0]
    two = (split["joint_2d"][second] - [500.0, 700.0]) * 0.8 + [820.0, 700.0]
    present = np.ones((2, frames), bool)
    present[1, : frames // 5] = present[1, -frames // 5 :] = False
    return np.stack([one, two]).astype(np.float64), present


def to_layout(pose: np.ndarray, keypoint_format: str) -> tuple[np.ndarray, np.ndarray]:
    """One (17, 2) Human3.6M pose as (K, 2) keypoints of a layout and (K,) confidences."""
    layout = keypoints.LAYOUTS[keypoint_format]
    points = np.zeros((layout.num_keypoints, 2))
    found = np.zeros(layout.num_keypoints, bool)
    for joint, sources in enumerate(layout.h36m_sources):
        if len(sources) == 1:
            points[sources[0]], found[sources[0]] = pose[joint], True
    for joint, sources in enumerate(layout.h36m_sources):
        if len(sources) == 2 and not found[list(sources)].any():
            points[sources[0]], points[sources[1]] = pose[joint] + _SPREAD, pose[joint] - _SPREAD
            found[list(sources)] = True
    return points, np.where(found, 0.9, 0.0)


def _detections(people, present, keypoint_format):
    """(frame, person id, keypoints (K, 2), confidences (K,)) for every detection."""
    for frame in range(people.shape[1]):
        for person_id, poses, seen in zip(PERSON_IDS, people, present):
            if seen[frame]:
                yield (frame, person_id, *to_layout(poses[frame], keypoint_format))


def _flat(points, confidences):
    return np.concatenate([points, confidences[:, None]], axis=1).round(3).reshape(-1).tolist()


def write_alphapose(path, people, present):
    results = [
        {"image_id": f"{frame}.jpg", "category_id": 1, "keypoints": _flat(xy, c), "score": 2.0, "idx": pid}
        for frame, pid, xy, c in _detections(people, present, "halpe26")
    ]
    with open(path, "w") as f:
        json.dump(results, f)


def write_openpose(folder, people, present):
    os.makedirs(folder, exist_ok=True)
    frames = [[] for _ in range(people.shape[1])]
    for frame, pid, xy, c in _detections(people, present, "body25"):
        frames[frame].append({"person_id": [pid], "pose_keypoints_2d": _flat(xy, c)})
    for frame, people_in_frame in enumerate(frames):
        with open(os.path.join(folder, f"video_{frame:012d}_keypoints.json"), "w") as f:
            json.dump({"version": 1.3, "people": people_in_frame}, f)


def write_mmpose(path, people, present):
    frames = [{"frame_id": frame, "instances": []} for frame in range(people.shape[1])]
    for frame, pid, xy, c in _detections(people, present, "coco"):
        instance = {"keypoints": xy.round(3).tolist(), "keypoint_scores": c.tolist(), "track_id": pid}
        frames[frame]["instances"].append(instance)
    with open(path, "w") as f:
        json.dump(frames, f)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="folder to write the examples into")
    parser.add_argument("--frames", type=int, default=100, help="frames per clip")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    people, present = demo_people(args.frames)
    write_alphapose(os.path.join(args.output, "alphapose-results.json"), people, present)
    write_openpose(os.path.join(args.output, "openpose"), people, present)
    write_mmpose(os.path.join(args.output, "mmpose-predictions.json"), people, present)
    print(f"wrote alphapose-results.json, openpose/ and mmpose-predictions.json to {args.output}")


if __name__ == "__main__":
    main()
