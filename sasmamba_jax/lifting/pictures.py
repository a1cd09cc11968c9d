"""Pictures of lifted poses (2D input beside 3D output, one frame or a movie), drawn with matplotlib alone.

Figures are built from ``matplotlib.figure.Figure`` on an Agg canvas and never
through ``pyplot``: nothing here needs a display, selects a backend or leaves
figures in pyplot's global registry.

Coordinate conventions (dimension letters: T frames, J = 17 joints):

* ``keypoints_2d`` (T, J, 2|3) are image coordinates, x to the right and y
  down. With ``image_size=(W, H)`` they are pixels; without it they are the
  release's normalised screen coordinates (x in [-1, 1]). A third channel
  (detector confidence) is accepted and ignored.
* ``poses_3d`` and ``ground_truth_3d`` (T, J, 3) are root-relative poses in the
  Human3.6M camera frame: x right, y DOWN, z away from the camera. They are
  drawn as (x, z, -y), a right-handed frame whose vertical axis points up, so
  a standing person is upright and the default view looks from the camera's
  side.
* Several people: ``keypoints_2d`` (P, T, J, 2|3) and ``poses_3d``
  (P, T, J, 3), NaN in every frame a person is absent from, with
  ``person_ids``. Each person gets a colour; in 3D each root-relative pose
  stands at its 2D root's place in the image (same units: the poses are
  scaled like x), so people appear side by side as in the video.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import animation
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sasmamba_jax import skeleton
from sasmamba_jax.lifting.keypoints import check_image_size

_LEFT_COLOUR = "tab:blue"
_RIGHT_COLOUR = "tab:orange"
_CENTRE_COLOUR = "0.3"
_GROUND_TRUTH_COLOUR = "tab:green"
_GROUND_TRUTH_ALPHA = 0.55
_SIDE_LABELS = {"left": "left side", "right": "right side", "centre": "spine and head"}
_SIDE_COLOURS = {"left": _LEFT_COLOUR, "right": _RIGHT_COLOUR, "centre": _CENTRE_COLOUR}
_PERSON_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:cyan")

# Fraction of the data extent left free around the skeleton.
_MARGIN = 0.1
_FIGURE_SIZE_INCHES = (10.0, 5.0)


def _bone_side(bone: tuple[int, int]) -> str:
    """Returns 'left', 'right' or 'centre' for a (parent, child) bone."""
    child = bone[1]
    if child in skeleton.LEFT_JOINTS:
        return "left"
    if child in skeleton.RIGHT_JOINTS:
        return "right"
    return "centre"


def _camera_to_display(poses: np.ndarray) -> np.ndarray:
    """Maps camera-frame poses (..., 3) with y down to display axes (x, z, -y), up = +third."""
    return np.stack([poses[..., 0], poses[..., 2], -poses[..., 1]], axis=-1)


def _check_pose_array(name: str, array, channels: Sequence[int]) -> np.ndarray:
    """Returns `array` as float (T, J, C) after checking its shape and values."""
    array = np.asarray(array, dtype=np.float64)
    wanted = " or ".join(f"(T, {skeleton.NUM_JOINTS}, {c})" for c in channels)
    if array.ndim != 3 or array.shape[1] != skeleton.NUM_JOINTS or array.shape[2] not in channels:
        raise ValueError(f"{name} must have shape {wanted}, got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_sequences(keypoints_2d, poses_3d, ground_truth_3d):
    """Validates the three sequences; returns them as float arrays with the same T."""
    keypoints_2d = _check_pose_array("keypoints_2d", keypoints_2d, (2, 3))[..., :2]
    poses_3d = _check_pose_array("poses_3d", poses_3d, (3,))
    if len(poses_3d) != len(keypoints_2d):
        raise ValueError(f"poses_3d has {len(poses_3d)} frames but keypoints_2d has {len(keypoints_2d)}")
    if ground_truth_3d is not None:
        ground_truth_3d = _check_pose_array("ground_truth_3d", ground_truth_3d, (3,))
        if len(ground_truth_3d) != len(poses_3d):
            raise ValueError(
                f"ground_truth_3d has {len(ground_truth_3d)} frames but poses_3d has {len(poses_3d)}"
            )
    return keypoints_2d, poses_3d, ground_truth_3d


def _check_people(keypoints_2d, poses_3d, person_ids):
    """Validates several people's (P, T, J, C) sequences, NaN only in whole absent frames."""
    keypoints_2d = np.asarray(keypoints_2d, dtype=np.float64)[..., :2]
    poses_3d = np.asarray(poses_3d, dtype=np.float64)
    joints = skeleton.NUM_JOINTS
    if keypoints_2d.ndim != 4 or keypoints_2d.shape[2] != joints:
        raise ValueError(
            f"keypoints_2d of several people must have shape (P, T, {joints}, 2|3), got {keypoints_2d.shape}"
        )
    if poses_3d.shape != keypoints_2d.shape[:3] + (3,):
        raise ValueError(f"poses_3d must have shape {keypoints_2d.shape[:3] + (3,)}, got {poses_3d.shape}")
    if person_ids is None or len(person_ids) != len(poses_3d):
        raise ValueError(f"several people need person_ids, one per person ({len(poses_3d)})")
    if keypoints_2d.shape[1] == 0:
        raise ValueError("poses_3d has no frames")
    for name, array in (("keypoints_2d", keypoints_2d), ("poses_3d", poses_3d)):
        absent = np.isnan(array).all(axis=(2, 3))
        if not np.isfinite(array[~absent]).all():
            raise ValueError(f"{name} contains NaN or infinite values outside whole absent frames")
    return keypoints_2d, poses_3d, [int(i) for i in person_ids]


def _check_frame(frame, num_frames: int) -> int:
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise ValueError(f"frame must be an integer, got {frame!r}")
    if not 0 <= frame < num_frames:
        raise ValueError(f"frame {frame} is out of range for a sequence of {num_frames} frames")
    return int(frame)


def _padded_range(low: float, high: float, half_size: float) -> tuple[float, float]:
    """An interval of half-width `half_size` centred on [low, high]."""
    centre = 0.5 * (low + high)
    return centre - half_size, centre + half_size


def _equal_limits(points: np.ndarray) -> list[tuple[float, float]]:
    """Equal-length (low, high) limits for each axis enclosing every point, with a margin.

    Args:
      points: (N, D) points.

    Returns:
      D (low, high) pairs of the same length, so a square or cube box keeps aspect.
    """
    low, high = np.nanmin(points, axis=0), np.nanmax(points, axis=0)
    half_size = 0.5 * float(np.max(high - low)) * (1.0 + 2.0 * _MARGIN)
    # A sequence of coincident points (e.g. all zeros) still needs a visible box.
    half_size = half_size if half_size > 0 else 1.0
    return [_padded_range(lo, hi, half_size) for lo, hi in zip(low, high)]


def _image_limits(keypoints_2d: np.ndarray, image_size):
    """(x_limits, y_limits) of the 2D panel, y limits reversed because image y points down.

    Args:
      keypoints_2d: (..., J, 2) keypoints, NaN where absent.
      image_size: (W, H) in pixels, or None for normalised coordinates.
    """
    points = keypoints_2d.reshape(-1, 2)
    if image_size is None:
        x_limits, y_limits = _equal_limits(points)
    else:
        # Show the whole image, widened if detections fall outside it.
        low = np.minimum(np.nanmin(points, axis=0), 0.0)
        high = np.maximum(np.nanmax(points, axis=0), image_size)
        x_limits, y_limits = (low[0], high[0]), (low[1], high[1])
    return x_limits, (y_limits[1], y_limits[0])


def _root_offsets(keypoints_2d: np.ndarray, image_size) -> np.ndarray:
    """(P, T, 3) camera-frame offsets putting each person's 3D root at its 2D root.

    Pixels are measured from the image centre and normalised coordinates are
    already centred; lifted poses are scaled like x in both.
    """
    centre = np.zeros(2) if image_size is None else np.asarray(image_size) / 2
    root = keypoints_2d[:, :, skeleton.ROOT] - centre
    return np.concatenate([root, np.zeros(root.shape[:-1] + (1,))], axis=-1)


class _PoseFigure:
    """The two-panel figure of `plot_frame`, whose artists move from frame to frame.

    Holds P >= 1 people: a single sequence is P = 1 drawn with side colours;
    several people (`person_ids` given) each get a colour and stand at their
    place in the image.
    """

    def __init__(self, keypoints_2d, poses_3d, ground_truth_3d, image_size, title, length_unit, person_ids):
        self.person_ids = person_ids
        if person_ids is None:
            keypoints_2d, poses_3d = keypoints_2d[None], poses_3d[None]
        else:
            poses_3d = poses_3d + _root_offsets(keypoints_2d, image_size)[:, :, None]
        self.keypoints_2d = keypoints_2d
        self.poses_display = _camera_to_display(poses_3d)
        self.ground_truth_display = None if ground_truth_3d is None else _camera_to_display(ground_truth_3d)
        self.num_frames = poses_3d.shape[1]
        self.title = title

        self.figure = Figure(figsize=_FIGURE_SIZE_INCHES, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.axes_2d = self.figure.add_subplot(1, 2, 1)
        self.axes_3d = self.figure.add_subplot(1, 2, 2, projection="3d")
        self._style_2d_axes(image_size)
        self._style_3d_axes(length_unit)

        people = range(len(poses_3d))
        self.bones_2d = [[self._bone_line_2d(bone, p) for bone in skeleton.BONES] for p in people]
        self.joints_2d = [
            self.axes_2d.plot([], [], "o", color=self._joint_colour(p), markersize=3)[0] for p in people
        ]
        self.bones_3d = [[self._bone_line_3d(bone, p) for bone in skeleton.BONES] for p in people]
        self.joints_3d = [self._joint_markers_3d(p) for p in people]
        if self.ground_truth_display is None:
            self.ground_truth_bones_3d, self.ground_truth_joints_3d = [], None
        else:
            self.ground_truth_bones_3d = [self._bone_line_3d(bone, None) for bone in skeleton.BONES]
            self.ground_truth_joints_3d = self._joint_markers_3d(None)
        self._add_legend()

    def _style_2d_axes(self, image_size):
        x_limits, y_limits = _image_limits(self.keypoints_2d, image_size)
        axes = self.axes_2d
        axes.set_xlim(*x_limits)
        axes.set_ylim(*y_limits)
        axes.set_aspect("equal", adjustable="box")
        axes.set_autoscale_on(False)
        unit = "px" if image_size is not None else "normalised"
        axes.set_xlabel(f"x, right ({unit})")
        axes.set_ylabel(f"y, down ({unit})")
        axes.set_title("2D input")
        axes.grid(alpha=0.3)

    def _style_3d_axes(self, length_unit):
        every_pose = self.poses_display.reshape(-1, 3)
        if self.ground_truth_display is not None:
            every_pose = np.concatenate([every_pose, self.ground_truth_display.reshape(-1, 3)])
        axes = self.axes_3d
        x_limits, y_limits, z_limits = _equal_limits(every_pose)
        axes.set_xlim3d(*x_limits)
        axes.set_ylim3d(*y_limits)
        axes.set_zlim3d(*z_limits)
        axes.set_box_aspect((1.0, 1.0, 1.0))
        axes.set_autoscale_on(False)
        # Default 3D ticks overlap at this size.
        for axis in (axes.xaxis, axes.yaxis, axes.zaxis):
            axis.set_major_locator(MaxNLocator(nbins=4))
        axes.set_xlabel(f"x, right ({length_unit})")
        axes.set_ylabel(f"z, depth ({length_unit})")
        axes.set_zlabel(f"\N{MINUS SIGN}y, up ({length_unit})")
        several = self.person_ids is not None
        axes.set_title("3D poses, each at its 2D root" if several else "3D pose (root-relative)")
        # Slightly above and to the side of the camera, which looks along +depth.
        axes.view_init(elev=15.0, azim=-70.0)

    def _person_colour(self, person: int) -> str:
        return _PERSON_COLOURS[person % len(_PERSON_COLOURS)]

    def _joint_colour(self, person: int) -> str:
        return _CENTRE_COLOUR if self.person_ids is None else self._person_colour(person)

    def _bone_style(self, bone, person: int) -> dict:
        """Side colours for one person; for several, the person's colour, right side dashed."""
        if self.person_ids is None:
            return dict(color=_SIDE_COLOURS[_bone_side(bone)], linewidth=2.5)
        linestyle = "--" if _bone_side(bone) == "right" else "-"
        return dict(color=self._person_colour(person), linewidth=2.5, linestyle=linestyle)

    def _bone_line_2d(self, bone, person: int):
        return self.axes_2d.plot([], [], **self._bone_style(bone, person))[0]

    def _bone_line_3d(self, bone, person: int | None):
        """A bone of `person`, or of the ground truth for None."""
        if person is None:
            style = dict(color=_GROUND_TRUTH_COLOUR, alpha=_GROUND_TRUTH_ALPHA, linewidth=1.5, linestyle="--")
        else:
            style = self._bone_style(bone, person)
        return self.axes_3d.plot([], [], [], **style)[0]

    def _joint_markers_3d(self, person: int | None):
        """Joint markers of `person`, or of the ground truth for None."""
        colour = _GROUND_TRUTH_COLOUR if person is None else self._joint_colour(person)
        alpha = _GROUND_TRUTH_ALPHA if person is None else 1.0
        markers = self.axes_3d.plot([], [], [], "o", color=colour, alpha=alpha, markersize=3)[0]
        # Tests and callers find the joints of each pose by this id.
        if person is None:
            markers.set_gid("ground_truth_joints")
        elif self.person_ids is None:
            markers.set_gid("prediction_joints")
        else:
            markers.set_gid(f"prediction_joints_{self.person_ids[person]}")
        return markers

    def _add_legend(self):
        if self.person_ids is None:
            handles = [
                Line2D([], [], color=_SIDE_COLOURS[side], linewidth=2.5, label=label)
                for side, label in _SIDE_LABELS.items()
            ]
        else:
            handles = [
                Line2D([], [], color=self._person_colour(p), linewidth=2.5, label=f"person {person_id}")
                for p, person_id in enumerate(self.person_ids)
            ]
            handles.append(Line2D([], [], color=_CENTRE_COLOUR, linestyle="--", label="right side dashed"))
        if self.ground_truth_display is not None:
            handles.append(
                Line2D(
                    [],
                    [],
                    color=_GROUND_TRUTH_COLOUR,
                    alpha=_GROUND_TRUTH_ALPHA,
                    linewidth=1.5,
                    linestyle="--",
                    label="ground truth (3D)",
                )
            )
        self.figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)

    def show_frame(self, frame: int):
        """Moves every artist to `frame`; the axes limits stay fixed. Absent people are not drawn."""
        for person, (bones, joints) in enumerate(zip(self.bones_2d, self.joints_2d)):
            keypoints = self.keypoints_2d[person, frame]
            for line, (parent, child) in zip(bones, skeleton.BONES):
                line.set_data(keypoints[[parent, child], 0], keypoints[[parent, child], 1])
            joints.set_data(keypoints[:, 0], keypoints[:, 1])
        for person, (bones, joints) in enumerate(zip(self.bones_3d, self.joints_3d)):
            _move_pose_3d(bones, joints, self.poses_display[person, frame])
        if self.ground_truth_display is not None:
            _move_pose_3d(
                self.ground_truth_bones_3d, self.ground_truth_joints_3d, self.ground_truth_display[frame]
            )
        counter = f"frame {frame}/{self.num_frames - 1}"
        self.figure.suptitle(counter if self.title is None else f"{self.title}  ({counter})")


def _move_pose_3d(bone_lines, joint_markers, pose):
    """Puts one (J, 3) display-frame pose into its bone lines and joint markers."""
    for line, (parent, child) in zip(bone_lines, skeleton.BONES):
        segment = pose[[parent, child]]
        line.set_data_3d(segment[:, 0], segment[:, 1], segment[:, 2])
    joint_markers.set_data_3d(pose[:, 0], pose[:, 1], pose[:, 2])


def _build_pose_figure(
    keypoints_2d,
    poses_3d,
    *,
    ground_truth_3d=None,
    image_size=None,
    title: str | None = None,
    length_unit: str = "mm",
    person_ids=None,
) -> _PoseFigure:
    """The checked figure of `plot_frame`, `save_frame` and `save_animation`.

    Its keyword arguments are the drawing arguments the three share,
    documented in `plot_frame`; they pass them on as ``**drawing``.
    """
    image_size = None if image_size is None else np.asarray(check_image_size(image_size))
    if np.ndim(poses_3d) == 4:
        if ground_truth_3d is not None:
            raise ValueError("ground_truth_3d is drawn for a single person only")
        keypoints_2d, poses_3d, person_ids = _check_people(keypoints_2d, poses_3d, person_ids)
    else:
        if person_ids is not None:
            raise ValueError("person_ids go with several people's (P, T, J, C) arrays")
        keypoints_2d, poses_3d, ground_truth_3d = _check_sequences(keypoints_2d, poses_3d, ground_truth_3d)
    return _PoseFigure(keypoints_2d, poses_3d, ground_truth_3d, image_size, title, length_unit, person_ids)


def plot_frame(keypoints_2d, poses_3d, frame: int, **drawing) -> Figure:
    """Draws one frame: the 2D input on the left, the lifted 3D pose on the right.

    The 3D panel is a cube fitted to the whole sequence (prediction and ground
    truth together), so frames of one sequence share the same axes.

    Args:
      keypoints_2d: (T, J, 2) or (T, J, 3) image keypoints; a third channel
        (confidence) is ignored. Pixels if `image_size` is given, else
        normalised coordinates; y points down in both.
      poses_3d: (T, J, 3) root-relative poses in the camera frame (y down).
      frame: index in [0, T) of the frame to draw.
      **drawing: the keyword arguments below, all optional, which `save_frame`
        and `save_animation` take too:
      ground_truth_3d: optional (T, J, 3) poses drawn dashed in a second colour
        on the same 3D axes.
      image_size: optional (W, H) in pixels; the 2D panel then shows the image.
      title: optional text put before the frame counter.
      length_unit: unit of the 3D coordinates, used in the axis labels.
      person_ids: with several people's (P, T, J, C) arrays (NaN where a
        person is absent), the P ids for the legend.

    Returns:
      A matplotlib Figure (not registered with pyplot).

    Raises:
      ValueError: on wrong shapes, mismatched frame counts, non-finite values,
        a bad `image_size` or an out-of-range `frame`.
      TypeError: a keyword argument not listed above.
    """
    pose_figure = _build_pose_figure(keypoints_2d, poses_3d, **drawing)
    pose_figure.show_frame(_check_frame(frame, pose_figure.num_frames))
    return pose_figure.figure


def save_frame(
    path: str | os.PathLike, keypoints_2d, poses_3d, frame: int, *, dpi: int = 100, **drawing
) -> str:
    """Writes `plot_frame(...)` to a PNG file and returns the path written.

    Args:
      path: output file; PNG is written whatever the suffix.
      keypoints_2d, poses_3d, frame: as in `plot_frame`.
      dpi: resolution of the PNG.
      **drawing: ground_truth_3d, image_size, title, length_unit, person_ids,
        as in `plot_frame`.
    """
    figure = plot_frame(keypoints_2d, poses_3d, frame, **drawing)
    figure.savefig(path, format="png", dpi=dpi)
    return os.fspath(path)


def _movie_writer(path: str | os.PathLike, fps: float) -> animation.AbstractMovieWriter:
    """PillowWriter for .gif, FFMpegWriter for .mp4 (and only if ffmpeg is installed)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return animation.PillowWriter(fps=fps)
    if suffix == ".mp4":
        if not animation.writers.is_available("ffmpeg"):
            raise RuntimeError(
                f"cannot write {os.fspath(path)!r}: MP4 needs ffmpeg, which matplotlib does not "
                "find; install ffmpeg or ask for a .gif"
            )
        return animation.FFMpegWriter(fps=fps)
    raise ValueError(f"animation path must end in .gif or .mp4, got {os.fspath(path)!r}")


def save_animation(
    path: str | os.PathLike,
    keypoints_2d,
    poses_3d,
    *,
    fps: float = 25,
    max_frames: int | None = None,
    dpi: int = 80,
    **drawing,
) -> str:
    """Writes the sequence as an animated GIF, or as MP4 when `path` ends in .mp4.

    Each movie frame is the `plot_frame` figure of one sequence frame; the
    figure is built once and its artists moved, so every frame shares its axes.

    Args:
      path: output file ending in .gif (Pillow) or .mp4 (needs ffmpeg).
      keypoints_2d, poses_3d: as in `plot_frame`; the shapes are (T, J, 2|3)
        and (T, J, 3), or (P, T, J, 2|3) and (P, T, J, 3) with `person_ids`.
      fps: frames per second of the movie.
      max_frames: if given, only the first `max_frames` frames are written.
      dpi: resolution of each movie frame.
      **drawing: ground_truth_3d, image_size, title, length_unit, person_ids,
        as in `plot_frame`.

    Returns:
      `path`, as a string.

    Raises:
      ValueError: on bad inputs (as in `plot_frame`), a non-positive `fps` or
        `max_frames`, or a suffix other than .gif/.mp4.
      RuntimeError: if .mp4 is asked for and ffmpeg is not available; there is
        no silent fallback to GIF.
    """
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1
    ):
        raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    writer = _movie_writer(path, fps)
    pose_figure = _build_pose_figure(keypoints_2d, poses_3d, **drawing)
    num_frames = (
        pose_figure.num_frames if max_frames is None else min(pose_figure.num_frames, int(max_frames))
    )
    with writer.saving(pose_figure.figure, os.fspath(path), dpi=dpi):
        for frame in range(num_frames):
            pose_figure.show_frame(frame)
            writer.grab_frame()
    return os.fspath(path)
