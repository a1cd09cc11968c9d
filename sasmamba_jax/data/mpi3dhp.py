"""MPI-INF-3DHP in P-STMO's npz format, read the way the release does.

`data_train_3dhp.npz` and `data_test_3dhp.npz` (written by P-STMO's and the
release's `data/preprocess/data_to_npz_3dhp*.py`) each hold one pickled dict
under the key 'data':

  train: {'S1 Seq1': [{'0': {'data_2d': (F, 17, 2), 'data_3d': (F, 17, 3)},
                       '1': {...}, ...},  # one entry per camera
                      fps], ...}
  test:  {'TS1': {'data_2d': (F, 17, 2), 'data_3d': (F, 17, 3), 'valid': (F,)},
          ...}

`data_2d` is in pixels (`annot2`), `data_3d` in millimetres (`univ_annot3`),
both in the 17-joint order of MPI-INF-3DHP (root = pelvis = 14, see
`JOINT_NAMES`), which differs from Human3.6M's.

Training (the release's `MPI3DHP` dataset): every (sequence, camera) video is
cut into clips of T frames every `stride` frames; 2D is normalised by
2048 x 2048 with a constant confidence 1 as third channel; the 3D target is
normalised the same way and made relative to the root joint.

Testing (the release's `Fusion` dataset with P-STMO's `ChunkedGenerator`):
one window of T frames centred on each valid frame, padded at the video's
ends by repeating its first or last frame; 2D normalised by 2048 x 2048, or
1920 x 1080 for TS5 and TS6; the prediction of the centre frame is scored
against the root-relative millimetre ground truth.

Letters: F frames of a video, M clips, K test windows, T frames per clip.
"""

import dataclasses
import os

import numpy as np

from sasmamba_jax.data import h36m, safe_pickle

NUM_JOINTS = 17
ROOT_JOINT = 14
JOINT_NAMES = (
    "head_top",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "pelvis",
    "spine",
    "head",
)
LEFT_JOINTS = (5, 6, 7, 11, 12, 13)
RIGHT_JOINTS = (2, 3, 4, 8, 9, 10)
FLIP_PERMUTATION = tuple(
    {**dict(zip(LEFT_JOINTS, RIGHT_JOINTS)), **dict(zip(RIGHT_JOINTS, LEFT_JOINTS))}.get(j, j)
    for j in range(NUM_JOINTS)
)

TRAIN_RESOLUTION = (2048, 2048)
# TS5 and TS6 were filmed outdoors with a different camera.
TEST_RESOLUTIONS = {"TS5": (1920, 1080), "TS6": (1920, 1080)}


def sequence_resolution(sequence):
    """(width, height) in pixels of a test sequence's camera."""
    return TEST_RESOLUTIONS.get(sequence, TRAIN_RESOLUTION)


def partition_indices(length, n_frames, stride):
    """Frame indices of the release's training clips of one video.

    The release's `MPI3DHP.partition`: a clip starts at every multiple of
    `stride` below `length`. A clip that runs past the end keeps the frames
    that exist, stretched to `n_frames` by taking, for position k, frame
    floor(k * L / n_frames) of its L frames (no randomness). So each video
    ends with up to ceil(n_frames / stride) stretched clips.

    Args:
      length: number of frames F of the video.
      n_frames: clip length T.
      stride: frames between clip starts.

    Returns:
      (M, T) int64 indices into the video, M = ceil(F / stride).
    """
    if n_frames < 1 or stride < 1:
        raise ValueError(f"n_frames and stride must be positive, got {n_frames} and {stride}")
    clips = []
    for start in range(0, length, stride):
        available = min(n_frames, length - start)
        stretch = np.floor(np.linspace(0, available, num=n_frames, endpoint=False))
        clips.append(start + np.clip(stretch, 0, available - 1).astype(np.int64))
    if not clips:
        return np.zeros((0, n_frames), np.int64)
    return np.stack(clips)


def centred_window_indices(length, centres, n_frames):
    """Indices of windows of `n_frames` frames centred on given frames.

    P-STMO's test generator: the window of frame f covers f - (T-1)/2 to
    f + (T-1)/2, and positions outside the video repeat its first or last
    frame ('edge' padding).

    Args:
      length: number of frames F of the video.
      centres: (K,) centre frames.
      n_frames: window length T, odd.

    Returns:
      (K, T) int64 indices into the video.
    """
    if n_frames < 1 or n_frames % 2 == 0:
        raise ValueError(f"test windows need an odd number of frames, got {n_frames}")
    half = (n_frames - 1) // 2
    offsets = np.arange(-half, half + 1)
    return np.clip(np.asarray(centres, np.int64)[:, None] + offsets, 0, length - 1)


def read_3dhp_npz(path, split):
    """Reads and checks one of P-STMO's MPI-INF-3DHP npz files.

    Args:
      path: path of `data_train_3dhp.npz` or `data_test_3dhp.npz`. Its 'data'
        entry is unpickled with `safe_pickle.load`, which refuses anything but
        numpy arrays and plain containers.
      split: 'train' or 'test', the layout to expect.

    Returns:
      For 'train', {(sequence, camera): {'data_2d', 'data_3d'}}; for 'test',
      {sequence: {'data_2d', 'data_3d', 'valid' (bool)}}; both in file order,
      float arrays as float32.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MPI-INF-3DHP npz not found: {path}")
    archive = safe_pickle.load_npz(path)
    if "data" not in archive:
        raise ValueError(f"{path}: no 'data' entry (has {sorted(archive)})")
    data = archive["data"]
    if data.shape != ():
        raise ValueError(f"{path}: 'data' must hold one pickled dict, got shape {data.shape}")
    data = data.item()
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: 'data' must hold a non-empty dict of sequences")

    videos = {}
    for sequence, entry in data.items():
        if split == "train":
            if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], dict):
                raise ValueError(f"{path}: train sequence {sequence!r} must be [{{camera: arrays}}, fps]")
            for camera, arrays in entry[0].items():
                videos[(sequence, camera)] = _check_video(
                    arrays, ("data_2d", "data_3d"), f"{path} [{sequence} camera {camera}]"
                )
        else:
            videos[sequence] = _check_video(entry, ("data_2d", "data_3d", "valid"), f"{path} [{sequence}]")
    return videos


def _check_video(arrays, keys, where):
    """Checks one video's arrays and converts them."""
    if not isinstance(arrays, dict):
        raise ValueError(f"{where}: expected a dict, got {type(arrays).__name__}")
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    out = {key: np.asarray(arrays[key]) for key in keys}
    for key, channels in (("data_2d", 2), ("data_3d", 3)):
        if out[key].ndim != 3 or out[key].shape[1:] != (NUM_JOINTS, channels):
            raise ValueError(
                f"{where}: '{key}' must have shape (F, {NUM_JOINTS}, {channels}), got {out[key].shape}"
            )
        out[key] = out[key].astype(np.float32)
    lengths = {key: out[key].shape[0] for key in keys}
    if "valid" in out:
        if out["valid"].ndim != 1:
            raise ValueError(f"{where}: 'valid' must have shape (F,), got {out['valid'].shape}")
        out["valid"] = out["valid"].astype(bool)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: fields have different numbers of frames {lengths}")
    return out


def _normalised_input(data_2d, resolution):
    """(F, 17, 3) float32: normalised x, y and a constant confidence 1."""
    xy = h36m.normalize_screen_coordinates(data_2d, *resolution)
    return np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class MPI3DHPData:
    """MPI-INF-3DHP training clips and test windows.

    Attributes:
      train_inputs: (M, T, 17, 3) float32 normalised x, y and confidence 1.
      train_targets: (M, T, 17, 3) float32 normalised 3D, root-relative
        (joint 14 is 0).
      test_inputs: (K, T, 17, 3) float32 windows centred on the valid test
        frames, as `train_inputs`.
      test_targets_mm: (K, 17, 3) float32 ground truth of the centre frames in
        millimetres, root-relative.
      test_sequences: (K,) str test sequence of each window ('TS1'...).
      test_frames: (K,) int64 centre frame of each window in its sequence.
      test_widths: (K,) float32 camera width that de-normalises predictions.
      test_valid: {sequence: (F,) bool} the valid-frame masks of the test set.
    """

    train_inputs: np.ndarray
    train_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets_mm: np.ndarray
    test_sequences: np.ndarray
    test_frames: np.ndarray
    test_widths: np.ndarray
    test_valid: dict

    @property
    def n_frames(self):
        """Clip length T."""
        return self.test_inputs.shape[1]


def _training_clips(train_npz, n_frames, stride):
    """(M, T, 17, 3) inputs and targets of all training videos, in file order."""
    inputs, targets = [], []
    for video in read_3dhp_npz(train_npz, "train").values():
        clips = partition_indices(video["data_2d"].shape[0], n_frames, stride)
        inputs.append(_normalised_input(video["data_2d"], TRAIN_RESOLUTION)[clips])
        target = h36m.normalize_screen_coordinates(video["data_3d"], *TRAIN_RESOLUTION)
        target -= target[:, ROOT_JOINT : ROOT_JOINT + 1]
        targets.append(target[clips])
    return np.concatenate(inputs), np.concatenate(targets)


def load_3dhp(train_npz, test_npz, n_frames, *, train_stride=None):
    """Loads MPI-INF-3DHP as the release trains and evaluates on it.

    Args:
      train_npz: path of `data_train_3dhp.npz`, or None to skip the training
        split (its arrays are then empty), e.g. to only evaluate.
      test_npz: path of `data_test_3dhp.npz`.
      n_frames: clip length T, odd (27 for the published model).
      train_stride: frames between training clip starts; T // 3 by default
        (the release's config sets 9 for T = 27).

    Returns:
      An `MPI3DHPData`.
    """
    if n_frames < 1 or n_frames % 2 == 0:
        raise ValueError(f"n_frames must be odd (test windows are centred), got {n_frames}")
    train_stride = max(n_frames // 3, 1) if train_stride is None else train_stride
    if train_npz is None:
        train_inputs = np.zeros((0, n_frames, NUM_JOINTS, 3), np.float32)
        train_targets = np.zeros((0, n_frames, NUM_JOINTS, 3), np.float32)
    else:
        train_inputs, train_targets = _training_clips(train_npz, n_frames, train_stride)

    inputs, targets, sequences, frames, widths, valid_masks = [], [], [], [], [], {}
    for sequence, video in read_3dhp_npz(test_npz, "test").items():
        num_frames = video["data_2d"].shape[0]
        resolution = sequence_resolution(sequence)
        centres = np.flatnonzero(video["valid"])
        windows = centred_window_indices(num_frames, centres, n_frames)
        inputs.append(_normalised_input(video["data_2d"], resolution)[windows])
        joints = video["data_3d"][centres]
        targets.append(joints - joints[:, ROOT_JOINT : ROOT_JOINT + 1])
        sequences.append(np.full(len(centres), sequence))
        frames.append(centres)
        widths.append(np.full(len(centres), resolution[0], np.float32))
        valid_masks[sequence] = video["valid"]
    return MPI3DHPData(
        train_inputs=train_inputs,
        train_targets=train_targets,
        test_inputs=np.concatenate(inputs),
        test_targets_mm=np.concatenate(targets),
        test_sequences=np.concatenate(sequences).astype(str),
        test_frames=np.concatenate(frames).astype(np.int64),
        test_widths=np.concatenate(widths),
        test_valid=valid_masks,
    )
