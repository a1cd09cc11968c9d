"""Human3.6M in MotionBERT's preprocessed format, read the way the release does.

The release trains on MotionBERT's `h36m_sh_conf_cam_source_final.pkl`: a dict
with a 'train' and a 'test' split, each a dict of per-frame fields (N frames
of all videos, one after the other):

  joint_2d           (N, 17, >=2) detected 2D joints in pixels
  confidence         (N, 17) or (N, 17, 1) detector confidence (optional; 1)
  joint3d_image      (N, 17, >=3) 3D joints in image space: pixels, depth
  camera_name        (N,) camera id as a string, e.g. '54138969'
  source             (N,) video id, '<sequence>_ca_<camera>'
  action             (N,) action name or id (test split only)
  2.5d_factor        (N,) mm per image-space unit of the frame (test only)
  joints_2.5d_image  (N, 17, 3) 3D joints in mm (test only)

Coordinates are mapped to about [-1, 1] by the camera's resolution, videos
are cut into clips of T consecutive frames, and the test split keeps what the
evaluation needs to map clip predictions back to millimetres per frame.

Letters: N frames, M clips, T frames per clip, J = 17 joints.
"""

import dataclasses
import os

import numpy as np

from sasmamba_jax import skeleton
from sasmamba_jax.data import safe_pickle

# Width and height in pixels of the four Human3.6M cameras.
CAMERA_RESOLUTIONS = {
    "54138969": (1000, 1002),
    "60457274": (1000, 1002),
    "55011271": (1000, 1000),
    "58860488": (1000, 1000),
}

_REQUIRED_KEYS = {
    "train": ("joint_2d", "joint3d_image", "camera_name", "source"),
    "test": (
        "joint_2d",
        "joint3d_image",
        "camera_name",
        "source",
        "action",
        "2.5d_factor",
        "joints_2.5d_image",
    ),
}


def camera_resolutions(camera_names):
    """Looks up the resolution of each frame's camera.

    Args:
      camera_names: (N,) camera ids (str, or anything whose `str` is the id).

    Returns:
      widths, heights: two (N,) float32 arrays, in pixels.
    """
    camera_names = np.asarray(camera_names).reshape(-1).astype(str)
    unique_names, inverse = np.unique(camera_names, return_inverse=True)
    unknown = [name for name in unique_names if name not in CAMERA_RESOLUTIONS]
    if unknown:
        raise ValueError(f"unknown Human3.6M camera(s) {unknown}; known: {sorted(CAMERA_RESOLUTIONS)}")
    sizes = np.array([CAMERA_RESOLUTIONS[name] for name in unique_names], np.float32)
    sizes = sizes.reshape(-1, 2)[inverse]
    return sizes[:, 0], sizes[:, 1]


def _per_pose(value):
    """Adds the joint and channel axes to a per-pose scalar or array."""
    return np.asarray(value, np.float32)[..., None, None]


def normalize_screen_coordinates(points, width, height):
    """Maps pixel coordinates to about [-1, 1] (x) as the release does.

    x, y -> (x, y) / width * 2 - (1, height / width); depth (channel 2, when
    present) -> depth / width * 2. Depth and x share a scale so 3D proportions
    are kept.

    Args:
      points: (..., J, C) with C = 2 (x, y) or 3 (x, y, depth).
      width: image width, a scalar or an array broadcastable to
        `points.shape[:-2]` (one value per pose).
      height: image height, same shape rules as `width`.

    Returns:
      (..., J, C) float32 normalised points.
    """
    points = np.asarray(points, np.float32)
    if points.shape[-1] not in (2, 3):
        raise ValueError(f"points must have 2 or 3 channels, got shape {points.shape}")
    width, height = _per_pose(width), _per_pose(height)
    out = points / width * 2
    out[..., 0:1] -= 1
    out[..., 1:2] -= height / width
    return out


def denormalize_screen_coordinates(points, width, height):
    """Inverse of `normalize_screen_coordinates`.

    Args:
      points: (..., J, C) normalised, C = 2 or 3.
      width: image width, a scalar or an array broadcastable to
        `points.shape[:-2]`.
      height: image height, same shape rules as `width`.

    Returns:
      (..., J, C) float32 points in pixels (and depth in pixel units).
    """
    points = np.asarray(points, np.float32)
    if points.shape[-1] not in (2, 3):
        raise ValueError(f"points must have 2 or 3 channels, got shape {points.shape}")
    width, height = _per_pose(width), _per_pose(height)
    out = points.copy()
    out[..., 0:1] += 1
    out[..., 1:2] += height / width
    return out * width / 2


def resample_short_video(length, n_frames, rng):
    """Frame indices that stretch a video shorter than a clip to `n_frames`.

    MotionBERT's `resample` (random mode), which the release calls from
    `split_clips`: position k of the clip samples the video at
    k * length / n_frames, rounded down or up at random (one fair coin per
    position); the indices are then sorted and clipped to the video.

    Args:
      length: number of frames of the video, 1 <= length < n_frames.
      n_frames: clip length T.
      rng: `np.random.Generator` for the rounding coins. The release uses
        numpy's global random state, so its choices are not reproducible.

    Returns:
      (T,) int64 non-decreasing indices in [0, length).
    """
    if not 1 <= length < n_frames:
        raise ValueError(f"expected 1 <= length < n_frames, got length={length}, n_frames={n_frames}")
    positions = np.linspace(0, length, num=n_frames, endpoint=False)
    round_up = rng.integers(0, 2, size=n_frames).astype(bool)
    indices = np.sort(np.where(round_up, np.ceil(positions), np.floor(positions)))
    return np.clip(indices, 0, length - 1).astype(np.int64)


def split_clips(sources, n_frames, stride, rng):
    """Cuts frames into clips of consecutive frames of one video.

    Same clips as the release's (MotionBERT's) `split_clips`:

    - A video is a maximal run of consecutive frames with equal `source`.
    - A video of at least `n_frames` frames gives clips starting at its first
      frame and every `stride` frames after, as long as the clip fits. Frames
      after the last full clip (the tail) are NOT covered: the release drops
      them, and they are not evaluated either.
    - A video shorter than `n_frames` gives one clip, resampled to `n_frames`
      by `resample_short_video` (the only random step), unless an earlier video
      has the same source name, or it is the last video of the list: the
      release's loop ends before handling the last video's boundary, so a
      short final video is dropped.

    Args:
      sources: (N,) per-frame video ids.
      n_frames: clip length T.
      stride: frames between the starts of consecutive clips of a video (the
        release uses T // 3 for training and T for testing).
      rng: `np.random.Generator` for resampling short videos.

    Returns:
      (M, T) int64 frame indices, clips in the order of the frames.
    """
    if n_frames < 1 or stride < 1:
        raise ValueError(f"n_frames and stride must be positive, got {n_frames} and {stride}")
    sources = np.asarray(sources)
    if sources.ndim != 1:
        raise ValueError(f"sources must be 1-D, got shape {sources.shape}")
    num_frames = sources.shape[0]
    if num_frames == 0:
        return np.zeros((0, n_frames), np.int64)
    video_starts = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
    video_ends = np.r_[video_starts[1:], num_frames]

    clips = []
    seen_sources = set()
    for video, (start, end) in enumerate(zip(video_starts, video_ends)):
        source = sources[start]
        length = end - start
        is_last_video = video == len(video_starts) - 1
        if length >= n_frames:
            for clip_start in range(start, end - n_frames + 1, stride):
                clips.append(np.arange(clip_start, clip_start + n_frames))
        elif source not in seen_sources and not is_last_video:
            clips.append(start + resample_short_video(length, n_frames, rng))
        seen_sources.add(source)
    if not clips:
        return np.zeros((0, n_frames), np.int64)
    return np.stack(clips).astype(np.int64)


def read_h36m_pickle(path):
    """Reads and checks MotionBERT's Human3.6M pickle.

    Args:
      path: path of `h36m_sh_conf_cam_source_final.pkl` (or a file of the same
        format). It is unpickled with `safe_pickle.load`, which refuses
        anything but numpy arrays and plain containers.

    Returns:
      {'train': {...}, 'test': {...}}: the per-frame fields of each split as
      numpy arrays (camera names and sources as str arrays, actions as
      stored), with `confidence` (N, 17, 1), filled with 1 when the file has
      none, as the release does.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Human3.6M pickle not found: {path}")
    content = safe_pickle.load_file(path)
    if not isinstance(content, dict) or not {"train", "test"} <= content.keys():
        raise ValueError(
            f"{path}: expected a dict with 'train' and 'test', got "
            f"{type(content).__name__}"
            + (f" with keys {sorted(content)}" if isinstance(content, dict) else "")
        )
    return {split: _check_split(content[split], split, path) for split in ("train", "test")}


def _check_split(fields, split, path):
    """Converts one split's fields to arrays and checks their shapes."""
    where = f"{path} [{split}]"
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: expected a dict of fields, got {type(fields).__name__}")
    missing = [key for key in _REQUIRED_KEYS[split] if key not in fields]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    out = {key: np.asarray(fields[key]) for key in _REQUIRED_KEYS[split]}
    if "confidence" in fields:
        confidence = np.asarray(fields["confidence"])
        out["confidence"] = confidence[..., None] if confidence.ndim == 2 else confidence

    expected_channels = {  # Smallest and largest number of channels.
        "joint_2d": (2, None, "(N, 17, >=2)"),
        "joint3d_image": (3, None, "(N, 17, >=3)"),
        "confidence": (1, 1, "(N, 17) or (N, 17, 1)"),
        "joints_2.5d_image": (3, 3, "(N, 17, 3)"),
    }
    for key, (min_channels, max_channels, description) in expected_channels.items():
        if key not in out:
            continue
        shape = out[key].shape
        if (
            len(shape) != 3
            or shape[1] != skeleton.NUM_JOINTS
            or shape[2] < min_channels
            or (max_channels is not None and shape[2] > max_channels)
        ):
            raise ValueError(f"{where}: '{key}' must have shape {description}, got {shape}")
    for key in ("camera_name", "source", "action", "2.5d_factor"):
        if key in out and out[key].ndim != 1:
            raise ValueError(f"{where}: '{key}' must have shape (N,), got {out[key].shape}")
    lengths = {key: value.shape[0] for key, value in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: fields have different numbers of frames {lengths}")
    # Actions stay as stored (names, or ids in some versions of the file).
    for key in ("camera_name", "source"):
        out[key] = out[key].astype(str)
    if "confidence" not in out:
        out["confidence"] = np.ones((lengths["joint_2d"], skeleton.NUM_JOINTS, 1), np.float32)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class H36MData:
    """Human3.6M clips and the test bookkeeping of the release's evaluation.

    Attributes:
      train_inputs: (M_train, T, 17, 3) float32 normalised x, y and confidence.
      train_targets: (M_train, T, 17, 3) float32 normalised image-space 3D
        (not root-relative; the pipeline subtracts the root).
      test_inputs: (M_test, T, 17, 3) float32, as `train_inputs`.
      test_targets: (M_test, T, 17, 3) float32, as `train_targets`.
      test_clip_frames: (M_test, T) int64 indices of each clip's frames into the
        (sample-strided) test split; repeated indices in resampled clips.
      test_clip_widths: (M_test,) float32 camera width (res_w) of each clip's
        first frame, which de-normalises its predictions.
      test_factors: (N_test,) float32 per-frame `2.5d_factor`.
      test_joints_mm: (N_test, 17, 3) float32 per-frame `joints_2.5d_image`.
      test_sources: (N_test,) str per-frame video ids.
      test_actions: (N_test,) per-frame actions as stored (names or ids).
    """

    train_inputs: np.ndarray
    train_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets: np.ndarray
    test_clip_frames: np.ndarray
    test_clip_widths: np.ndarray
    test_factors: np.ndarray
    test_joints_mm: np.ndarray
    test_sources: np.ndarray
    test_actions: np.ndarray

    @property
    def n_frames(self):
        """Clip length T."""
        return self.test_clip_frames.shape[1]


def _normalised_frames(fields, sample_stride):
    """Per-frame normalised 2D input (N, 17, 3) and 3D target (N, 17, 3)."""
    widths, heights = camera_resolutions(fields["camera_name"][::sample_stride])
    joint_2d = fields["joint_2d"][::sample_stride, :, :2]
    confidence = fields["confidence"][::sample_stride].astype(np.float32)
    inputs = np.concatenate([normalize_screen_coordinates(joint_2d, widths, heights), confidence], axis=-1)
    joint_3d = fields["joint3d_image"][::sample_stride, :, :3]
    targets = normalize_screen_coordinates(joint_3d, widths, heights)
    return inputs, targets


def load_h36m(pkl_path, n_frames, *, seed=0, sample_stride=1, train_stride=None, test_stride=None):
    """Loads MotionBERT's Human3.6M pickle as clips, as the release does.

    Per frame: 2D joints normalised by the camera's resolution with the
    confidence as third channel (the release's `DataReaderH36M` with
    `read_confidence=True`; the training script keeps only x, y) and 3D
    `joint3d_image` normalised the same way. Frames are then cut into clips by
    `split_clips`, training clips every `train_stride` frames, test clips every
    `test_stride` frames.

    `sample_stride` keeps every k-th frame of each split before clipping. The
    release only works with 1: with more it indexes its per-frame camera list
    and evaluation arrays at full rate. Here every per-frame field is strided
    alike, so the test bookkeeping refers to the strided frames.

    Args:
      pkl_path: path of the pickle (see `read_h36m_pickle`).
      n_frames: clip length T (243 for the published model).
      seed: seeds the only random step, the resampling of videos shorter than
        T. One generator cuts the training split then the test split, in the
        release's order.
      sample_stride: frame subsampling factor.
      train_stride: clip stride of the training split; T // 3 by default.
      test_stride: clip stride of the test split; T by default.

    Returns:
      An `H36MData`.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if sample_stride < 1:
        raise ValueError(f"sample_stride must be positive, got {sample_stride}")
    train_stride = max(n_frames // 3, 1) if train_stride is None else train_stride
    test_stride = n_frames if test_stride is None else test_stride
    dataset = read_h36m_pickle(pkl_path)
    train, test = dataset["train"], dataset["test"]
    rng = np.random.default_rng(seed)
    train_clips = split_clips(train["source"][::sample_stride], n_frames, train_stride, rng)
    test_clips = split_clips(test["source"][::sample_stride], n_frames, test_stride, rng)

    train_inputs, train_targets = _normalised_frames(train, sample_stride)
    test_inputs, test_targets = _normalised_frames(test, sample_stride)
    test_widths, _ = camera_resolutions(test["camera_name"][::sample_stride])
    return H36MData(
        train_inputs=train_inputs[train_clips],
        train_targets=train_targets[train_clips],
        test_inputs=test_inputs[test_clips],
        test_targets=test_targets[test_clips],
        test_clip_frames=test_clips,
        test_clip_widths=test_widths[test_clips[:, 0]],
        test_factors=test["2.5d_factor"][::sample_stride].astype(np.float32),
        test_joints_mm=test["joints_2.5d_image"][::sample_stride].astype(np.float32),
        test_sources=test["source"][::sample_stride],
        test_actions=test["action"][::sample_stride],
    )


def load_clip_folder(root, split):
    """Reads the per-clip pickles the release's preprocessing writes.

    `data/preprocess/h36m.py` of the release saves each clip of
    `DataReaderH36M.get_sliced_data()` as `<root>/<split>/%08d.pkl`, a dict with
    'data_input' (T, 17, 3: normalised x, y, confidence) and 'data_label'
    (T, 17, 3: normalised image-space 3D). These are the same arrays as
    `H36MData.{train,test}_{inputs,targets}`. They hold no evaluation
    bookkeeping (frame indices, camera widths, 2.5d factors, millimetre joints,
    actions), so evaluating needs the big pickle and `load_h36m`.

    Args:
      root: folder holding `train/` and `test/`, e.g. `data/motion3d/H36M-243`.
      split: 'train' or 'test'.

    Returns:
      inputs, targets: two (M, T, 17, 3) float32 arrays, clips in file-name
      order (the release's order).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"clip folder not found: {folder}")
    names = sorted(name for name in os.listdir(folder) if name.endswith(".pkl"))
    if not names:
        raise ValueError(f"no .pkl clips in {folder}")
    inputs, targets = [], []
    for name in names:
        path = os.path.join(folder, name)
        clip = safe_pickle.load_file(path)
        if not isinstance(clip, dict) or not {"data_input", "data_label"} <= clip.keys():
            raise ValueError(f"{path}: expected a dict with 'data_input' and 'data_label'")
        inputs.append(np.asarray(clip["data_input"], np.float32))
        targets.append(np.asarray(clip["data_label"], np.float32))
    shapes = {x.shape for x in inputs} | {y.shape for y in targets}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[1:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"{folder}: clips must all have shape (T, 17, 3), got {sorted(shapes)}")
    return np.stack(inputs), np.stack(targets)
