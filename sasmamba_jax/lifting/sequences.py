"""Lifting 2D keypoint sequences of any length: one person (`lift`) or every tracked one (`lift_people`).

Windows of the model's length are gathered in numpy and sent to one jitted
function (``model.forward.predict_batch``) in batches of a fixed shape, so
sequences of any length reuse the same compiled program.

Letters: B batch, T frames, F the model's frames, W frames of a window, J = 17
joints, C input channels, N windows.
"""

import concurrent.futures
import dataclasses
import itertools
import warnings

import numpy as np
import tqdm
from flax import nnx

from sasmamba_jax import skeleton
from sasmamba_jax.lifting import units
from sasmamba_jax.lifting.keypoints import check_image_size, prepare_keypoints
from sasmamba_jax.model.forward import predict_batch
from sasmamba_jax.model.precision import check_matmul_precision
from sasmamba_jax.model.sasmamba import SasMamba, check_input_shape
from sasmamba_jax.parallel import sharding

SHORT_SEQUENCE_MODES = ("resample", "direct")
# On CPU one window per call is fastest: the model's time per window grows with
# the batch there (published model, `predict` on a 2-core CPU: 0.8 s per window
# at batch 1, 1.7 s at 2, 3.5 s at 4). Raise it on accelerators. With several
# devices it is rounded up to a multiple of their count (one batch is split
# over all of them).
DEFAULT_BATCH_SIZE = 1
# XLA:CPU runs the loops of one program one after another on one core (the
# scan is most of the model's time), while programs called from two threads
# run side by side: two threads lift more windows per second on a
# 2-core CPU (benchmarks/lift.py: 1.39-1.43x). Unmeasured on accelerators,
# where batch_size is the lever that matters.
DEFAULT_THREADS = 2


def resample_indices(length: int, target_length: int) -> np.ndarray:
    """Frame indices that stretch (or shrink) `length` frames to `target_length`.

    Position k samples frame ``floor(k * length / target_length)``: the
    release's deterministic resampling (MotionBERT's ``resample`` without
    randomness). Stretching repeats frames; every frame appears at least once.

    Returns:
        (target_length,) int64 non-decreasing indices in [0, length).
    """
    return np.arange(target_length, dtype=np.int64) * length // target_length


def window_indices(
    num_frames: int, window: int, stride: int, short_sequence_mode: str = "resample"
) -> np.ndarray:
    """Frame indices of the windows that cover a sequence.

    Sequences of at least `window` frames get windows starting every `stride`
    frames, plus one ending at the last frame, so every frame is covered.
    Shorter ones get a single window: resampled to `window` frames
    (``"resample"``) or the sequence itself (``"direct"``).

    Args:
        num_frames: T >= 1.
        window: the model's frames F.
        stride: frames between window starts, 1 <= stride <= F.
        short_sequence_mode: ``"resample"`` or ``"direct"``.

    Returns:
        (N, F) int64 indices, or (1, T) for a short sequence in direct mode.
    """
    if num_frames >= window:
        starts = list(range(0, num_frames - window + 1, stride))
        if starts[-1] != num_frames - window:
            starts.append(num_frames - window)
        return np.asarray(starts, np.int64)[:, None] + np.arange(window)
    if short_sequence_mode == "resample":
        return resample_indices(num_frames, window)[None]
    return np.arange(num_frames, dtype=np.int64)[None]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class LiftOptions:
    """How sequences are cut into windows and run through the model; checked when built.

    Every lifting function (`lift`, `lift_sequence`, `lift_sequences`,
    `lift_people`) takes one as ``options=``, and any of its fields as
    keyword overrides: ``lift(model, x, batch_size=8)`` is
    ``lift(model, x, options=LiftOptions(batch_size=8))``.

    Attributes:
        flip_tta: average with the output on the mirrored input, mirrored
            back (the release's test-time augmentation); doubles the work.
        flip_permutation: joint permutation that mirrors a pose; the default
            is Human3.6M's, pass `data.mpi3dhp.FLIP_PERMUTATION` for a model
            trained on MPI-INF-3DHP joints.
        batch_size: windows per forward call; 1 (fastest on CPU) by default,
            raise it on accelerators. Rounded up to a multiple of the devices
            the model's parameters live on: one call splits its windows over them.
        threads: forward calls in flight at once (`DEFAULT_THREADS`); the
            result does not depend on it.
        stride: frames between window starts of long sequences; None for
            F // 2 (every frame is in about two windows). At most the model's
            frames F, which is checked when lifting.
        short_sequence_mode: ``"resample"`` or ``"direct"``, for sequences
            shorter than F (see `lift_sequence`).
        progress: show a tqdm progress bar when there is more than one batch.
        matmul_precision: float32 matmul precision (``precision.MATMUL_PRECISIONS``),
            or None for the caller's (``jax.default_matmul_precision``).

    Raises:
        ValueError: a non-positive batch_size, threads or stride, an unknown
            short_sequence_mode or matmul_precision.
    """

    flip_tta: bool = True
    flip_permutation: tuple[int, ...] = skeleton.FLIP_PERMUTATION
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int = DEFAULT_THREADS
    stride: int | None = None
    short_sequence_mode: str = "resample"
    progress: bool = False
    matmul_precision: str | None = None

    def __post_init__(self):
        # Frozen: the normalised values are set as dataclasses' own __init__ does.
        object.__setattr__(self, "flip_permutation", tuple(int(j) for j in self.flip_permutation))
        object.__setattr__(self, "batch_size", _check_positive_int("batch_size", self.batch_size))
        object.__setattr__(self, "threads", _check_positive_int("threads", self.threads))
        if self.stride is not None:
            object.__setattr__(self, "stride", _check_positive_int("stride", self.stride))
        if self.short_sequence_mode not in SHORT_SEQUENCE_MODES:
            raise ValueError(
                f"unknown short_sequence_mode {self.short_sequence_mode!r}; "
                f"expected one of {SHORT_SEQUENCE_MODES}"
            )
        if self.matmul_precision is not None:
            check_matmul_precision(self.matmul_precision)


def _with_overrides(options: LiftOptions | None, overrides: dict) -> LiftOptions:
    """`options` (None: `LiftOptions()`) with the fields in `overrides` replaced; TypeError on others."""
    return dataclasses.replace(LiftOptions() if options is None else options, **overrides)


def _check_sequence_input(inputs, config) -> np.ndarray:
    """Returns `inputs` as float32 (T, 17, in_chans) after checking it."""
    inputs = np.asarray(inputs, np.float32)
    if inputs.ndim != 3:
        raise ValueError(
            f"inputs must have shape (T, {config.num_joints}, {config.in_chans}), got {inputs.shape}"
        )
    if inputs.shape[0] == 0:
        raise ValueError("empty sequence: inputs have no frames")
    check_input_shape((1, 1) + inputs.shape[1:], config)
    if not np.isfinite(inputs).all():
        raise ValueError(
            "inputs contain NaN or inf; fill missing keypoints first (keypoints.prepare_keypoints)"
        )
    return inputs


def _batches_of_windows(windows: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Groups consecutive windows of equal length into (n <= batch_size, W) index batches."""
    batches = []
    for _, group in itertools.groupby(windows, key=len):
        group = list(group)
        batches.extend(np.stack(group[i : i + batch_size]) for i in range(0, len(group), batch_size))
    return batches


def lift_sequences(
    model: SasMamba, sequences, *, options: LiftOptions | None = None, **overrides
) -> list[np.ndarray]:
    """Lifts several model-ready sequences of any lengths through the same jitted windows.

    Every sequence is cut into windows as `lift_sequence` cuts one; the
    windows of all sequences go through the jitted forward together, in
    batches of ``options.batch_size`` (a batch may hold windows of different
    sequences), so several people cost no more compilations than one.

    Args:
        model: a SasMamba.
        sequences: a list of (T_i, 17, in_chans) normalised keypoints, each
            T_i >= 1, nothing missing.
        options: a `LiftOptions`, or None for the defaults.
        **overrides: `LiftOptions` fields replacing those of `options`.

    Returns:
        A list of (T_i, 17, 3) float32 poses, one per sequence.

    Raises:
        ValueError: no sequences, or any bad sequence or option (see
            `lift_sequence`).
    """
    options = _with_overrides(options, overrides)
    config = model.config
    if len(sequences) == 0:
        raise ValueError("no sequences to lift")
    sequences = [_check_sequence_input(inputs, config) for inputs in sequences]
    stride = max(config.num_frames // 2, 1) if options.stride is None else options.stride
    if stride > config.num_frames:
        raise ValueError(f"stride {stride} is larger than the model's {config.num_frames} frames")

    # All sequences end to end; a window's indices stay inside its own sequence.
    inputs = np.concatenate(sequences)
    starts = np.cumsum([0] + [len(s) for s in sequences])
    windows = [
        window + start
        for start, sequence in zip(starts, sequences)
        for window in window_indices(len(sequence), config.num_frames, stride, options.short_sequence_mode)
    ]
    permutation = options.flip_permutation if options.flip_tta else None
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    mesh = sharding.params_mesh(params)
    batch_size = -(-options.batch_size // mesh.devices.size) * mesh.devices.size
    batches = _batches_of_windows(windows, batch_size)

    def forward(batch: np.ndarray) -> np.ndarray:
        padded = np.zeros((batch_size,) + batch.shape[1:] + inputs.shape[1:], np.float32)
        padded[: len(batch)] = inputs[batch]
        predictions = predict_batch(
            graphdef,
            params,
            padded,
            flip_permutation=permutation,
            mesh=mesh,
            matmul_precision=options.matmul_precision,
        )
        return predictions[: len(batch)]

    total = np.zeros((len(inputs), config.num_joints, 3), np.float64)
    bar = tqdm.tqdm(total=len(batches), disable=not options.progress or len(batches) < 2, unit="batch")
    with bar, concurrent.futures.ThreadPoolExecutor(options.threads) as pool:
        # The first call compiles alone, so that two threads never compile the same program.
        first_result = forward(batches[0])
        # Summed in window order whatever the threads do: the result is reproducible.
        outputs = itertools.chain([first_result], pool.map(forward, batches[1:]))
        for batch, output in zip(batches, outputs):
            np.add.at(total, batch.reshape(-1), output.reshape(-1, config.num_joints, 3))
            bar.update()
    counts = np.bincount(np.concatenate(windows), minlength=len(inputs))
    poses = (total / counts[:, None, None]).astype(np.float32)
    return [poses[start:stop] for start, stop in zip(starts[:-1], starts[1:])]


def lift_sequence(model: SasMamba, inputs, *, options: LiftOptions | None = None, **overrides) -> np.ndarray:
    """Lifts a model-ready sequence of any length (see `lift` for raw keypoints).

    The sequence is cut into windows of the model's frames F (`window_indices`)
    run in batches of ``options.batch_size`` windows, the last batch padded, so the
    jitted forward always sees (batch_size, F, 17, C) and a new sequence
    length never compiles again. Each frame's output is the mean over the
    windows (and, when resampled, the positions) that contain it.

    Short sequences (T < F) are resampled to F frames and back by default, as
    the release does with a video's tail; ``short_sequence_mode="direct"``
    runs them at their own length instead (the model allows T <= F), which
    compiles once per new short length. Resampling is the more accurate of
    the two at every length measured (``benchmarks/short_sequences.py`` on
    the demo model: P1 117.4 mm vs 134.1 mm at 3 frames, 118.2 mm at 20).

    Args:
        model: a SasMamba (its train/eval mode is left untouched; eval is used).
        inputs: (T, 17, in_chans) normalised keypoints (x, y[, confidence]),
            T >= 1, nothing missing.
        options: a `LiftOptions` (flip averaging, batch size, threads,
            stride, short sequence mode, progress bar, matmul precision), or
            None for the defaults.
        **overrides: `LiftOptions` fields replacing those of `options`.

    Returns:
        (T, 17, 3) float32 root-relative 3D poses in the model's normalised
        units (`to_image_units` turns them into pixels). The root joint is
        the model's output, near 0 but not set to 0 (the release zeroes it
        before scoring).

    Raises:
        ValueError: wrong shape, channels that do not match the model, no
            frames, non-finite values or bad options.
        TypeError: an override that is no `LiftOptions` field.
    """
    return lift_sequences(model, [inputs], options=options, **overrides)[0]


def lift(
    model: SasMamba,
    keypoints_2d,
    *,
    keypoint_format: str = "h36m",
    image_size=None,
    confidences=None,
    subject_height: float | None = None,
    options: LiftOptions | None = None,
    **overrides,
) -> np.ndarray:
    """Lifts a 2D keypoint sequence of any length, e.g. a detector's output, to 3D.

    Keypoints are converted to Human3.6M order, missing ones filled (with a
    warning) and pixels normalised by `keypoints.prepare_keypoints`, then
    lifted by `lift_sequence`.

    Args:
        model: a SasMamba, e.g. from `checkpoint.load_model`.
        keypoints_2d: (T, K, 2) x, y or (T, K, 3) x, y, confidence; pixels
            when `image_size` is given, else already normalised
            (``xy / W * 2 - [1, H / W]``). NaN or confidence 0 marks a
            missing point.
        keypoint_format: ``"h36m"`` (`skeleton.JOINT_NAMES` order),
            ``"coco"`` (COCO-17, as most 2D detectors emit), or another key
            of `keypoints.LAYOUTS` (``"halpe26"``, ``"body25"``,
            ``"coco18"``, ``"wholebody133"``); K keypoints per frame.
        image_size: (W, H) of the video in pixels, or None.
        confidences: optional (T, K) confidences for (T, K, 2) keypoints;
            required (one way or the other) by 3-channel models.
        subject_height: the person's height in metres, ankle to head, or
            None: the poses are then scaled to stand that tall
            (`units.scale_to_height`, which defines the height).
        options: a `LiftOptions`, or None for the defaults.
        **overrides: `LiftOptions` fields replacing those of `options`,
            e.g. ``batch_size=8, flip_tta=False``.

    Returns:
        (T, 17, 3) float32 root-relative 3D poses in metres with
        `subject_height`, else in the model's normalised units: x, y, depth
        scaled like x by 2 / W. Multiply those by W / 2 (`to_image_units`)
        for pixels; the release then multiplies by a per-frame "2.5d factor"
        (mm per pixel at the subject's depth) for mm.

    Raises:
        ValueError: bad keypoints (wrong joint or channel count, no frames, a
            joint missing in every frame), a bad image size, a model that
            needs confidences without them, a subject_height that is not a
            positive finite number, or bad options.
        TypeError: an override that is no `LiftOptions` field.
    """
    options = _with_overrides(options, overrides)
    if subject_height is not None:
        units.check_subject_height(subject_height)
    prepared = prepare_keypoints(
        keypoints_2d, keypoint_format=keypoint_format, image_size=image_size, confidences=confidences
    )
    poses = lift_sequence(model, prepared.model_input(model.config.in_chans), options=options)
    return poses if subject_height is None else units.scale_to_height(poses, subject_height)


# Tracks seen in fewer frames are detector noise more often than people.
MIN_TRACK_FRAMES = 5


@dataclasses.dataclass(frozen=True)
class LiftedPeople:
    """Several people lifted from one video; NaN wherever a person is absent.

    Attributes:
        poses_3d: (P, T, 17, 3) float32 root-relative poses (see `lift`),
            in metres when lifted with a subject_height.
        keypoints_2d: (P, T, 17, 2) float32 Human3.6M-order input, missing
            points filled, in the input's units.
        confidences: (P, T, 17) float32, or None when the input had none.
        filled: (P, T, 17) bool, True where a point was missing and filled
            (every point of a frame the person is absent from).
        present: (P, T) bool, True where the person was detected.
        person_ids: the P ids lifted.
        skipped_ids: ids of tracks too short to lift.
    """

    poses_3d: np.ndarray
    keypoints_2d: np.ndarray
    confidences: np.ndarray | None
    filled: np.ndarray
    present: np.ndarray
    person_ids: tuple[int, ...]
    skipped_ids: tuple[int, ...]


def lift_people(
    model: SasMamba,
    keypoints_2d,
    person_ids,
    *,
    keypoint_format: str = "h36m",
    image_size=None,
    min_track_frames: int = MIN_TRACK_FRAMES,
    subject_height: float | None = None,
    options: LiftOptions | None = None,
    **overrides,
) -> LiftedPeople:
    """Lifts every person of a video, each through the same jitted windows.

    A person's track runs from the first to the last frame they are detected
    in; frames in between where they are absent are filled by interpolation
    over time, like any missing point, so the model sees one continuous
    sequence, and are NaN in the output. Tracks detected in fewer than
    `min_track_frames` frames are skipped with a warning naming them.

    Args:
        model: a SasMamba.
        keypoints_2d: (P, T, K, 2|3) keypoints in the order of
            `keypoint_format`, NaN in every frame a person is absent from.
        person_ids: the P ids, used in messages and the result.
        keypoint_format: a key of `keypoints.LAYOUTS`.
        image_size: (W, H) in pixels, or None for normalised keypoints.
        min_track_frames: the fewest detected frames a track needs.
        subject_height: a height in metres, or None: every person is then
            scaled by their own measured height to stand that tall
            (`units.scale_to_height`), whatever their distance from the camera.
        options: a `LiftOptions`, or None for the defaults.
        **overrides: `LiftOptions` fields replacing those of `options`.

    Returns:
        A `LiftedPeople` holding the people lifted, in the order given.

    Raises:
        ValueError: a wrong shape, ids that do not match, every track too
            short, or bad keypoints, subject_height or options (see `lift`).
        TypeError: an override that is no `LiftOptions` field.
    """
    options = _with_overrides(options, overrides)
    keypoints_2d = np.asarray(keypoints_2d, np.float64)
    person_ids = tuple(int(i) for i in person_ids)
    if keypoints_2d.ndim != 4 or len(person_ids) != len(keypoints_2d):
        raise ValueError(
            f"keypoints_2d must have shape (P, T, K, 2|3) with P = {len(person_ids)} person ids, "
            f"got {keypoints_2d.shape}"
        )
    _check_positive_int("min_track_frames", min_track_frames)
    if subject_height is not None:
        units.check_subject_height(subject_height)
    present = ~np.isnan(keypoints_2d).all(axis=(-2, -1))
    counts = present.sum(axis=1)
    skipped = tuple(i for i, n in zip(person_ids, counts) if n < min_track_frames)
    if skipped:
        listed = ", ".join(f"{i} ({n} frames)" for i, n in zip(person_ids, counts) if n < min_track_frames)
        warnings.warn(
            f"skipped track(s) seen in fewer than {min_track_frames} frames: person {listed}",
            UserWarning,
            stacklevel=2,
        )
    kept = [p for p, n in enumerate(counts) if n >= min_track_frames]
    if not kept:
        raise ValueError(f"no track is seen in {min_track_frames} frames or more; nothing to lift")
    spans, prepared = [], []
    for p in kept:
        frames = np.flatnonzero(present[p])
        span = slice(frames[0], frames[-1] + 1)
        spans.append(span)
        prepared.append(
            prepare_keypoints(keypoints_2d[p, span], keypoint_format=keypoint_format, image_size=image_size)
        )
    poses = lift_sequences(
        model, [person.model_input(model.config.in_chans) for person in prepared], options=options
    )

    def gather(parts, fill, dtype):
        """(P, T, ...) array of each person's span values, `fill` outside its span."""
        out = np.full((len(kept), keypoints_2d.shape[1]) + parts[0].shape[1:], fill, dtype)
        for row, (span, part) in enumerate(zip(spans, parts)):
            out[row, span] = part
        return out

    present = present[kept]
    absent = ~present[..., None, None]
    with_confidences = prepared[0].confidences is not None
    poses_3d = np.where(absent, np.nan, gather(poses, np.nan, np.float32))
    if subject_height is not None:
        poses_3d = units.scale_to_height(poses_3d, subject_height)
    return LiftedPeople(
        poses_3d=poses_3d,
        keypoints_2d=np.where(absent, np.nan, gather([q.xy for q in prepared], np.nan, np.float32)),
        confidences=gather([q.confidences for q in prepared], 0.0, np.float32) if with_confidences else None,
        filled=gather([q.filled for q in prepared], True, bool),
        present=present,
        person_ids=tuple(person_ids[p] for p in kept),
        skipped_ids=skipped,
    )


def to_image_units(poses_3d, image_size) -> np.ndarray:
    """Normalised root-relative 3D poses (..., 3) -> pixel units: ``poses * W / 2``.

    x, y become pixels and depth the same pixel scale; `image_size` is the
    (W, H) the keypoints were normalised with.
    """
    width, _ = check_image_size(image_size)
    return np.asarray(poses_3d, np.float32) * np.float32(width / 2)
