"""Lifting a live keypoint stream frame by frame, with a bounded delay (`StreamingLifter`).

A frame's pose is final once the frames after it that the model should see
have arrived: with latency L, frame t waits for frame t + L. Windows of the
model's F frames end at the newest frame they need and are computed every
`hop` frames, each returning the `hop` oldest frames still waiting, so the
model runs once per `hop` frames rather than once per frame; the price is up
to hop - 1 frames of extra delay. A frame's pose is the average of the
model's outputs for it over every window computed so far that contains it,
up to the one that returns it (as offline `lift` averages overlapping
windows): no extra delay and no extra windows, only a running sum per frame
still waiting. Every window has the same (1, F, 17, C) shape, so one
compiled program serves the whole stream.

Letters: F the model's frames, L the latency in frames, h the hop, K
keypoints per frame of the input layout, C input channels, J = 17 joints.
"""

import dataclasses
import time
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
from flax import nnx

from sasmamba_jax import skeleton
from sasmamba_jax.lifting import keypoints
from sasmamba_jax.model.forward import predict_batch
from sasmamba_jax.model.precision import check_matmul_precision
from sasmamba_jax.model.sasmamba import SasMamba
from sasmamba_jax.parallel import sharding

# One window per F // 4 frames. The published model's shape (F = 243, dim 64,
# depth 5, no flip) takes 0.59 s per window on an idle 2-core CPU
# (benchmarks/results/lift_cpu.txt) and 1.7 s with three times more work than
# cores on it (benchmarks/streaming.py): a hop of 60 frames lifts 100 frames/s
# idle and 35 busy, more than a 30 fps camera sends either way. The hop adds
# up to 59 frames (2 s at 30 fps) to the delay: lower it on a faster machine.
DEFAULT_HOP_DIVISOR = 4


def default_hop(num_frames: int, latency: int) -> int:
    """The hop `StreamingLifter` uses unless told: F // 4, at least 1, at most F - L."""
    return max(1, min(num_frames // DEFAULT_HOP_DIVISOR, num_frames - latency))


def _check_int(name: str, value, low: int, high: int, high_name: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high_name}{high}], got {value!r}")
    return int(value)


def _last_present(start: np.ndarray, frames: list[np.ndarray], missing: list[np.ndarray]) -> np.ndarray:
    """Each keypoint's last present value in `frames` (N of (K, C)), else its value in `start` (K, C)."""
    result = start.copy()
    for row, row_missing in zip(frames, missing):
        result[~row_missing] = row[~row_missing]
    return result


class StreamingLifter:
    """Lifts one person's keypoints as they arrive, returning each frame's pose once it is final.

    Frame t is returned by the push of frame t + L + k for some 0 <= k < h
    (never before frame t + L is pushed): the frames are returned in chunks
    of h, made final by one window ending at the chunk's last frame + L. So
    a frame sees L to L + h - 1 frames of future context (the oldest frame
    of a chunk L + h - 1, its newest L). Its pose is the average of the
    model's outputs for it over every window computed that contains it and
    ends by then: those ending between t and t + L + k, one per hop, frame
    t at window position F - 1 - (the window's end - t). At latency 0 that
    is the one window that returns it; at latency F - 1 and hop 1 it is
    every window that contains it, from position F - 1 to 0 (offline `lift`
    averages its windows too); the first window ends at frame L + h - 1,
    so the first frames have fewer. `flush` returns the frames still waiting,
    with one more window ending at the last frame (the future that exists:
    the stream has ended). Poses depend only on the frames pushed, never on
    when windows happen to be computed.

    Before F frames have arrived, a window's past is padded by repeating the
    stream's first frame: offline `lift` stretches a short sequence to F
    frames instead (``short_sequence_mode="resample"``), which needs the
    whole sequence and moves every frame's position as it grows. Padding
    keeps each frame's place in the window fixed and shows the model a
    person standing still, a pose it knows, rather than zeros.

    Missing keypoints (NaN, or confidence 0) are filled as `lift` fills
    them (`keypoints.prepare_keypoints`, linear interpolation over time),
    but only from frames already pushed: over each window, with a gap that
    began before the window filled from the last value seen before it. A
    joint not seen yet holds its frames back until it appears (then its
    first value fills the frames before), with one warning; `flush` raises
    ValueError if it never appeared, as `lift` does for a joint missing in
    every frame.

    Args:
        model: a SasMamba, e.g. from `load_model`.
        latency: L, frames of future context each frame waits for,
            0 <= L <= F - 1.
        keypoint_format: the layout of the pushed keypoints, a key of
            `keypoints.LAYOUTS` (``"h36m"``, ``"coco"``, ...).
        image_size: (W, H) in pixels when the keypoints are pixels, None
            when they are normalised already (see `lift`).
        hop: h, frames between windows, 1 <= h <= F - L; None for
            `default_hop` (F // 4, at most F - L).
        flip_tta: average with the mirrored input's output. Off by default
            here (on in `lift`): it doubles each window's time, which a live
            stream pays in frames per second or in a longer hop.
        flip_permutation: joint permutation that mirrors a pose (flip_tta).
        matmul_precision: float32 matmul precision, or None for the caller's.

    Raises:
        ValueError: a latency, hop, keypoint format, image size or matmul
            precision out of range.
    """

    def __init__(
        self,
        model: SasMamba,
        *,
        latency: int,
        keypoint_format: str = "h36m",
        image_size=None,
        hop: int | None = None,
        flip_tta: bool = False,
        flip_permutation: tuple[int, ...] = skeleton.FLIP_PERMUTATION,
        matmul_precision: str | None = None,
    ):
        config = model.config
        self.num_frames = config.num_frames
        self.in_chans = config.in_chans
        self.latency = _check_int("latency", latency, 0, self.num_frames - 1, "the model's frames - 1 = ")
        hop = default_hop(self.num_frames, self.latency) if hop is None else hop
        self.hop = _check_int(
            "hop", hop, 1, self.num_frames - self.latency, "the model's frames - latency = "
        )
        self.keypoint_format = keypoint_format
        self.num_keypoints = keypoints.get_layout(keypoint_format).num_keypoints
        self.image_size = None if image_size is None else keypoints.check_image_size(image_size)
        if matmul_precision is not None:
            check_matmul_precision(matmul_precision)
        self._matmul_precision = matmul_precision
        self._flip_permutation = tuple(int(j) for j in flip_permutation) if flip_tta else None
        self._graphdef, self._params = nnx.split(nnx.view(model, deterministic=True))
        self._mesh = sharding.params_mesh(self._params)
        self.reset()

    def reset(self) -> None:
        """Drops the stream (frames not returned yet are lost); the next frame pushed is frame 0."""
        # Raw frames [self._base, pushed), as given (K, C) float64, NaN or confidence 0 where missing.
        self._frames: list[np.ndarray] = []
        self._missing: list[np.ndarray] = []
        self._base = 0
        self._next_out = 0
        self._channels: int | None = None
        # (K, C): each keypoint's last present value before frame `_base`; its first in the stream.
        self._before_base: np.ndarray | None = None
        self._first_seen: np.ndarray | None = None
        self._warned_missing = False
        self._warned_held = False
        # A ring over frames, slot t % F: the sum of the model's outputs for
        # frame t over the windows computed so far (float64), and their count,
        # for the frames not returned yet (at most F of them have any).
        self._pose_sums = np.zeros((self.num_frames, skeleton.NUM_JOINTS, 3))
        self._pose_counts = np.zeros(self.num_frames, np.int64)
        self._last_window_end = -1

    @property
    def frames_pushed(self) -> int:
        """Frames pushed since the stream began (the next frame's index)."""
        return self._base + len(self._frames)

    def _checked_frame(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """`frame` as (K, C) float64 and its (K,) missing points, after checking it; no state changes."""
        frame = np.asarray(frame, np.float64)
        if frame.ndim != 2:
            raise ValueError(
                f"a frame's keypoints must have shape ({self.num_keypoints}, 2|3) "
                f"({self.keypoint_format}), got {frame.shape}"
            )
        xy, confidences = keypoints.split_confidences(frame[None], keypoint_format=self.keypoint_format)
        channels = frame.shape[-1]
        if self._channels is not None and channels != self._channels:
            raise ValueError(
                f"a frame has {channels} channels, the stream's first frame had {self._channels}"
            )
        if self.in_chans == 3 and channels != 3:
            raise ValueError(
                "the model takes 3 input channels (x, y, confidence): push (K, 3) keypoints with confidences"
            )
        if self.image_size is None:
            keypoints.check_normalised(xy, confidences, fix="image_size=(W, H) to StreamingLifter")
        return frame, keypoints.missing_mask(xy, confidences)[0]

    def push(self, frame) -> list[tuple[int, np.ndarray]]:
        """Adds the next frame; returns the frames whose poses are now final.

        Args:
            frame: (K, 2) x, y or (K, 3) x, y, confidence of one frame, K
                the keypoint count of the lifter's keypoint format; NaN or
                confidence 0 marks a missing point. Every frame of a stream
                has the same channel count.

        Returns:
            A list of (frame_index, pose) in frame order, pose a (17, 3)
            float32 root-relative 3D pose in the model's normalised units
            (as `lift` returns): empty for most pushes, h frames every h-th
            push (more after frames were held for a joint not seen yet).

        Raises:
            ValueError: a frame of the wrong shape, joint or channel count,
                with infinite values, or pixels without an image size; the
                frame is refused and the stream goes on without it.
        """
        frame, missing = self._checked_frame(frame)
        if missing.any() and not self._warned_missing:
            self._warned_missing = True
            warnings.warn(
                "missing keypoints are filled by interpolation over time from the frames pushed so far",
                UserWarning,
                stacklevel=2,
            )
        if self._first_seen is None:
            self._channels = frame.shape[-1]
            self._first_seen = np.full_like(frame, np.nan)
            self._before_base = np.full_like(frame, np.nan)
        first_time = ~missing & np.isnan(self._first_seen[:, 0])
        self._first_seen[first_time] = frame[first_time]
        self._frames.append(frame)
        self._missing.append(missing)
        return self._emit(final=False)

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """Returns every frame not returned yet, each with the future context there is; ends the stream.

        The lifter then starts a new stream (frame indices from 0 again).

        Raises:
            ValueError: a joint never seen in the stream (nothing can fill it).
        """
        try:
            return self._emit(final=True)
        finally:
            self.reset()

    def stream(self, frames: Iterable) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (frame_index, pose) as each frame of `frames` becomes final, then the flushed rest.

        `frames` may be endless (a camera loop's detections, a queue's
        iterator): poses come out L to L + h - 1 frames after their frame
        went in; the rest come when `frames` ends.
        """
        for frame in frames:
            yield from self.push(frame)
        yield from self.flush()

    def _emit(self, final: bool) -> list[tuple[int, np.ndarray]]:
        """Computes the windows of every chunk that is due; returns its frames' poses."""
        pushed = self.frames_pushed
        results = []
        while self._next_out < pushed:
            last = self._next_out + self.hop - 1
            if not final and last + self.latency >= pushed:
                break
            window_end = min(last + self.latency, pushed - 1)
            # At the end every chunk left reads the same last window: it holds them all (fewer than F).
            last = pushed - 1 if final and window_end == pushed - 1 else last
            # The flush's window may be the last push's (the stream ended on a window): added once.
            if window_end != self._last_window_end:
                try:
                    window = self._model_window(window_end)
                except _JointNotSeen as error:
                    if final:
                        raise ValueError(error.message) from None
                    self._warn_held(error.joints)
                    break
                poses = predict_batch(
                    self._graphdef,
                    self._params,
                    window[None],
                    flip_permutation=self._flip_permutation,
                    mesh=self._mesh,
                    matmul_precision=self._matmul_precision,
                )[0]
                self._add_window(window_end, poses)
            for index in range(self._next_out, last + 1):
                slot = index % self.num_frames
                pose = self._pose_sums[slot] / self._pose_counts[slot]
                results.append((index, pose.astype(np.float32)))
                self._pose_sums[slot] = 0
                self._pose_counts[slot] = 0
            self._next_out = last + 1
        self._forget_old_frames()
        return results

    def _add_window(self, window_end: int, poses) -> None:
        """Adds the model's outputs (F, 17, 3) of the window ending at `window_end` to its waiting frames.

        Frame t sits at window position F - 1 - (window_end - t). A frame
        waits for at most F - 1 frames after it (L + h - 1), so its slot is
        free again before frame t + F, the next to use it, enters a window.
        """
        indices = np.arange(max(window_end - self.num_frames + 1, self._next_out), window_end + 1)
        slots = indices % self.num_frames
        self._pose_sums[slots] += np.asarray(poses, np.float64)[self.num_frames - 1 - (window_end - indices)]
        self._pose_counts[slots] += 1
        self._last_window_end = window_end

    def _warn_held(self, joints: str) -> None:
        if not self._warned_held:
            self._warned_held = True
            warnings.warn(
                f"{joints} not seen in any frame yet: frames are held until it appears",
                UserWarning,
                stacklevel=4,
            )

    def _model_window(self, window_end: int) -> np.ndarray:
        """The model input (F, 17, C) of the window ending at frame `window_end`.

        Raises:
            _JointNotSeen: a joint seen in no frame up to `window_end` nor later.
        """
        start = max(window_end - self.num_frames + 1, 0)
        rows = slice(start - self._base, window_end - self._base + 1)
        frames = np.stack(self._frames[rows])
        missing = np.stack(self._missing[rows])
        # The last values seen before the window, as a row just before it, so
        # a gap that began earlier is filled from them (as `lift` would) and
        # not from the window's first present value.
        skipped = slice(0, start - self._base)
        before = _last_present(self._before_base, self._frames[skipped], self._missing[skipped])
        # A keypoint not seen up to the window's end takes its first value,
        # as `lift` fills the frames before a joint's first appearance.
        unseen = missing.all(axis=0) & np.isnan(before[:, 0])
        after = np.where(unseen[:, None], self._first_seen, np.nan)
        raw = np.concatenate([before[None], frames, after[None]])
        try:
            with warnings.catch_warnings():
                # `push` warned once; every window would warn again.
                warnings.simplefilter("ignore", UserWarning)
                prepared = keypoints.prepare_keypoints(
                    raw, keypoint_format=self.keypoint_format, image_size=self.image_size
                )
        except ValueError as error:
            joints, found, _ = str(error).partition(" missing in every frame")
            if found:
                raise _JointNotSeen(joints, str(error)) from None
            raise
        window = prepared.model_input(self.in_chans)[1:-1]
        # The stream's first frames: the past is the first frame, repeated (see the class docstring).
        padding = np.repeat(window[:1], self.num_frames - len(window), axis=0)
        return np.concatenate([padding, window]).astype(np.float32)

    def _forget_old_frames(self) -> None:
        """Drops the frames no window will need again: those more than F - 1 before the next frame out."""
        drop = min(self._next_out - self.num_frames + 1 - self._base, len(self._frames))
        if drop <= 0:
            return
        self._before_base = _last_present(self._before_base, self._frames[:drop], self._missing[:drop])
        del self._frames[:drop], self._missing[:drop]
        self._base += drop


class _JointNotSeen(Exception):
    """A window's joint has not been seen in any frame pushed: its frames wait."""

    def __init__(self, joints: str, message: str):
        super().__init__(message)
        self.joints = joints
        self.message = message


@dataclasses.dataclass(frozen=True)
class ReplayedStream:
    """A recorded sequence fed through a `StreamingLifter` frame by frame, as fast as it goes.

    Attributes:
        poses: (T, 17, 3) float32, frame t's pose at row t.
        delay_frames: (T,) int64, frames pushed after frame t when its pose
            came back: latency to latency + hop - 1, fewer for the flushed ones.
        delay_seconds: (T,) float64 wall time from frame t's push to the
            return of its pose (the pushes in between ran back to back).
        push_seconds: (T,) float64 time each push took (the last one's
            includes the flush).
        flushed: (T,) bool, True for the frames the flush returned.
        seconds: the whole stream's wall time.
    """

    poses: np.ndarray
    delay_frames: np.ndarray
    delay_seconds: np.ndarray
    push_seconds: np.ndarray
    flushed: np.ndarray
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return len(self.poses) / self.seconds

    @property
    def steady_frames_per_second(self) -> float:
        """Frames per second after the push that returned the first poses (it compiles), or NaN."""
        returned_by_pushes = np.flatnonzero(~self.flushed)
        if not returned_by_pushes.size:
            return float("nan")
        first = int((returned_by_pushes + self.delay_frames[returned_by_pushes]).min())
        later = self.push_seconds[first + 1 :]
        return len(later) / later.sum() if later.sum() > 0 else float("nan")


def replay(lifter: StreamingLifter, frames) -> ReplayedStream:
    """Pushes every frame of `frames` (T, K, 2|3) into `lifter`, then flushes it, timing each step.

    Raises:
        ValueError: no frames, or one the lifter refuses (the lifter is reset then).
    """
    frames = np.asarray(frames)
    if frames.ndim < 1 or len(frames) == 0:
        raise ValueError("empty sequence: keypoints have no frames")
    num_frames = len(frames)
    poses = np.zeros((num_frames, skeleton.NUM_JOINTS, 3), np.float32)
    pushed_at = np.zeros(num_frames)
    delay_frames = np.zeros(num_frames, np.int64)
    delay_seconds = np.zeros(num_frames)
    push_seconds = np.zeros(num_frames)
    started = time.perf_counter()

    def record(returned, pushed):
        now = time.perf_counter()
        for index, pose in returned:
            poses[index] = pose
            delay_frames[index] = pushed - 1 - index
            delay_seconds[index] = now - pushed_at[index]
        return now

    try:
        for t, frame in enumerate(frames):
            pushed_at[t] = time.perf_counter()
            push_seconds[t] = record(lifter.push(frame), t + 1) - pushed_at[t]
        flushed = lifter.flush()
        push_seconds[-1] = record(flushed, num_frames) - pushed_at[-1]
    except BaseException:
        lifter.reset()
        raise
    was_flushed = np.zeros(num_frames, bool)
    was_flushed[[index for index, _ in flushed]] = True
    seconds = time.perf_counter() - started
    return ReplayedStream(poses, delay_frames, delay_seconds, push_seconds, was_flushed, seconds)
