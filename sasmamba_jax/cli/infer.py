"""Command line: lift a video's 2D keypoints to 3D, save them, animate or export them.

    python -m sasmamba_jax.infer --checkpoint CKPT --input KP.npy --format coco \\
        --image-size 1920 1080 --output out.npz --plot out.gif
    python -m sasmamba_jax.infer --checkpoint CKPT --input alphapose-results.json \\
        --image-size 1920 1080 --output out.npz --bvh person_{id}.bvh --csv out.csv
    python -m sasmamba_jax.infer --checkpoint CKPT --input KP.npy --format coco \\
        --image-size 1920 1080 --output out.npz --stream --latency 121

Errors are reported on one line with exit status 2 (``cli.program``).
"""

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from matplotlib import animation

from sasmamba_jax.cli import program
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.lifting import detector_files, keypoints, motion_export, pictures, units
from sasmamba_jax.lifting.sequences import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THREADS,
    MIN_TRACK_FRAMES,
    SHORT_SEQUENCE_MODES,
    LiftOptions,
    lift_people,
    lift_sequence,
    to_image_units,
)
from sasmamba_jax.lifting.streaming import StreamingLifter, replay
from sasmamba_jax.model.precision import MATMUL_PRECISIONS

ARRAY_FORMATS = keypoints.FORMATS
INPUT_FORMATS = ("auto",) + detector_files.FILE_FORMATS + ARRAY_FORMATS
# The array layouts a joint count settles without --format; 17 is COCO-17 or Human3.6M-17.
_ARRAY_FORMATS_BY_COUNT = {
    keypoints.LAYOUTS[name].num_keypoints: name for name in ("coco18", "body25", "halpe26", "wholebody133")
}

_DESCRIPTION = """\
Lift a sequence of 2D keypoints (e.g. a detector's output on a video) to
root-relative 3D poses with SasMamba.

Input (--input, its kind given by --format or, by default, found from its
content: a folder is OpenPose, a JSON list of {"image_id", "keypoints"}
AlphaPose, of {"frame_id", "instances"} MMPose, anything else an array whose
joint count says its layout: 18 coco18, 25 body25, 26 halpe26, 133
wholebody133; 17 joints are COCO-17 or Human3.6M-17, so such an array needs
--format coco or --format h36m):
  alphapose  AlphaPose's results JSON (Halpe-26 or COCO-17; idx = track id).
  openpose   a folder of OpenPose *_keypoints.json files, one per frame in
             file-name order (BODY_25 or COCO-18; person_id when tracked).
  mmpose     MMPose inferencer predictions JSON of a video (COCO-17 or
             COCO-WholeBody-133; track_id when tracked).
             These three are pixels and need --image-size; every tracked
             person is lifted (--person ID picks one). Untracked files may
             hold one person per frame.
  arrays, one person (h36m, coco, halpe26, body25, coco18, wholebody133):
  .npy   float array (T, K, 2) x, y or (T, K, 3) x, y, confidence.
  .json  a list of T frames, each a list of K keypoints [x, y] or
         [x, y, confidence], e.g. [[[412.0, 230.5, 0.93], ...], ...].
         null stands for a missing coordinate.
  Keypoints are in the joint order of the layout: h36m (pelvis, right hip,
  right knee, right ankle, left hip, left knee, left ankle, spine, thorax,
  neck, head, left shoulder, left elbow, left wrist, right shoulder, right
  elbow, right wrist), coco (nose, left/right eye, left/right ear,
  left/right shoulder, elbow, wrist, hip, knee, ankle), or the detector's.
  Coordinates are pixels when --image-size is given, else already normalised
  (xy / W * 2 - [1, H / W], x within [-1, 1]); pixels without --image-size
  are refused. A point with NaN/null coordinates or confidence 0 is missing
  and filled by interpolation over time (with a warning).

Output (--output, .npz):
  poses_3d      (T, 17, 3) root-relative 3D poses in normalised units
                (x, y, depth; multiply by W / 2 for pixels).
  poses_3d_px   (T, 17, 3) the same in pixels (only with --image-size).
  poses_3d_m    (T, 17, 3) the same in metres, scaled so that the person
                stands --subject-height tall from ankle to head (only with
                --subject-height; every person to that height).
  keypoints_2d  (T, 17, 2) the input in Human3.6M order, missing points
                filled, in the input's units.
  confidences   (T, 17) (only when the input had confidences).
  filled        (T, 17) bool, True where a point was missing and filled.
  From a detector file every array gets a leading person axis P (unless
  --person picks one), NaN in the frames a person is absent from, and:
  person_ids    (P,) the track ids, in the order of the person axis.
  present       (P, T) bool, True where the person was detected.
  Tracks seen in fewer than --min-track-frames frames are reported and
  skipped.

--bvh FILE writes a BVH animation per person (put {id} in the name when
there are several), --csv FILE one row per (person, frame, joint). Their
unit: metres with --subject-height (Blender's BVH importer, at its scale
1.0, reads one BVH unit as one metre), else pixels with --image-size, else
normalised units; the "wrote" line names it.
"""


def read_keypoints(path: str | os.PathLike) -> np.ndarray:
    """Reads a (T, K, 2|3) keypoint array from a .npy or .json file (schema in --help).

    Raises:
        ValueError: unknown suffix, unreadable file, or a JSON file that is not
            a rectangular list of numbers.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e}") from None
    if suffix == ".json":
        try:
            with open(path) as f:
                frames = json.load(f)
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        try:
            return np.array(frames, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path} must hold a list of frames, each a list of K [x, y] or [x, y, confidence]"
            ) from None
    raise ValueError(f"unknown input type {suffix!r} for {path}: expected .npy or .json")


def _parse_args(argv):
    parser = program.ArgumentParser(
        "infer",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model directory (Orbax), a release .pth checkpoint or a train.py workdir",
    )
    parser.add_argument("--input", required=True, help="keypoints: a file or an OpenPose folder (above)")
    parser.add_argument(
        "--format",
        choices=INPUT_FORMATS,
        default="auto",
        help="what --input is (default: from its content; needed for a 17-joint array)",
    )
    parser.add_argument("--person", type=int, default=None, help="lift only this track id")
    parser.add_argument(
        "--min-track-frames",
        type=int,
        default=MIN_TRACK_FRAMES,
        help="skip tracks seen in fewer frames",
    )
    parser.add_argument("--image-size", nargs=2, type=float, metavar=("W", "H"), help="image size in pixels")
    parser.add_argument("--output", required=True, help="output .npz")
    parser.add_argument(
        "--plot", help="also write a picture: .gif or .mp4 (needs ffmpeg) animation, or .png of one frame"
    )
    parser.add_argument(
        "--plot-frame", type=int, default=None, help="the frame a .png shows (default the middle)"
    )
    parser.add_argument(
        "--plot-max-frames", type=int, default=None, help="animate only the first N frames (default all)"
    )
    parser.add_argument("--bvh", help="also write a BVH animation ({id} in the name for several people)")
    parser.add_argument("--csv", help="also write one CSV row per (person, frame, joint)")
    parser.add_argument("--fps", type=float, default=25.0, help="the video's frame rate (--bvh, --plot)")
    parser.add_argument(
        "--subject-height",
        type=float,
        default=None,
        metavar="METRES",
        help="the person's height, ankle to head: poses_3d_m, --bvh and --csv in metres",
    )
    parser.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time averaging (default: on, off with --stream; --no-flip-tta is 2x faster; "
        "export's default is off)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="lift frame by frame as from a camera (StreamingLifter; one person's array), report the delay",
    )
    parser.add_argument(
        "--latency", type=int, default=None, help="--stream: frames of future context each frame waits for"
    )
    parser.add_argument(
        "--hop",
        type=int,
        default=None,
        help="--stream: frames between windows (default F / 4, <= F - latency)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward call")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="forward calls in flight")
    parser.add_argument("--stride", type=int, default=None, help="frames between windows (default F / 2)")
    parser.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default="default",
        help="float32 matmul precision: the platform's (default; one bfloat16 pass on TPU) or e.g. highest",
    )
    parser.add_argument(
        "--short-sequence-mode",
        choices=SHORT_SEQUENCE_MODES,
        default="resample",
        help="sequences shorter than the model: resample to its length and back, or run directly",
    )
    args = parser.parse_args(argv)
    if args.flip_tta is None:
        # Off for a stream: it doubles a window's time (lifting.streaming.StreamingLifter).
        args.flip_tta = not args.stream
    return args


def _check_plot_path(path: str) -> None:
    """Fails before any work on a --plot file that `pictures.save_animation` would refuse."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".gif", ".mp4", ".png"):
        raise ValueError(f"--plot must end in .gif, .mp4 or .png, got {path}")
    if suffix == ".mp4" and not animation.writers.is_available("ffmpeg"):
        raise ValueError(f"--plot {path}: MP4 needs ffmpeg, which is not installed; ask for a .gif")


def resolve_format(path: str, requested: str) -> str:
    """The input's format: `requested`, or for "auto" the detector file format
    its content shows, else "auto" (an array, its layout settled by
    `array_format` once read).

    Raises:
        ValueError: an array format asked for a detector file (or the reverse
            for a folder).
    """
    found = detector_files.sniff_format(path)
    if requested == "auto":
        return found or "auto"
    if requested in ARRAY_FORMATS and found is not None:
        raise ValueError(f"{path} holds {found} output, not a {requested} array: use --format {found}")
    return requested


def array_format(raw: np.ndarray, path: str, requested: str) -> str:
    """An array's layout: `requested`, or for "auto" the one its joint count settles.

    Raises:
        ValueError: "auto" for an array that is not (T, K, C), has 17 joints
            (COCO-17 or Human3.6M-17) or a count no layout has.
    """
    if requested != "auto":
        return requested
    if raw.ndim != 3:
        raise ValueError(f"{path}: keypoints must have shape (T, K, 2|3), got {raw.shape}")
    joints = raw.shape[1]
    if joints == 17:
        raise ValueError(
            f"{path} has 17 joints per frame, which is COCO-17 or Human3.6M-17: "
            "give --format coco or --format h36m"
        )
    if joints not in _ARRAY_FORMATS_BY_COUNT:
        counts = ", ".join(f"{count} ({name})" for count, name in sorted(_ARRAY_FORMATS_BY_COUNT.items()))
        raise ValueError(
            f"wrong joint count: {path} has {joints} joints per frame; "
            f"expected 17 (with --format coco or h36m), {counts}"
        )
    return _ARRAY_FORMATS_BY_COUNT[joints]


def _lift_options(args: argparse.Namespace) -> LiftOptions:
    """The `LiftOptions` of the command line's flags; ValueError on a bad value."""
    return LiftOptions(
        flip_tta=args.flip_tta,
        batch_size=args.batch_size,
        threads=args.threads,
        stride=args.stride,
        short_sequence_mode=args.short_sequence_mode,
        progress=True,
        matmul_precision=args.matmul_precision,
    )


def _read_array(args: argparse.Namespace, file_format: str):
    """One person's keypoint file, checked and filled as for lifting.

    Returns:
        (raw (T, K, 2|3) as read, its layout, `keypoints.PreparedKeypoints`).
    """
    if args.person is not None:
        raise ValueError("--person picks a track of a detector file; a keypoint array holds one person")
    raw = read_keypoints(args.input)
    file_format = array_format(raw, args.input, file_format)
    if args.image_size is None:
        # prepare_keypoints refuses pixels too; checked here to name the flag that fixes it.
        xy, confidences = keypoints.split_confidences(raw, keypoint_format=file_format)
        keypoints.check_normalised(xy, confidences, fix="--image-size W H")
    prepared = keypoints.prepare_keypoints(raw, keypoint_format=file_format, image_size=args.image_size)
    return raw, file_format, prepared


def _array_results(poses_3d: np.ndarray, prepared) -> tuple[dict, list[int]]:
    """The npz arrays (T, ...) of one person's lifted keypoint array, and the id list [0]."""
    results = {"poses_3d": poses_3d, "keypoints_2d": prepared.xy, "filled": prepared.filled}
    if prepared.confidences is not None:
        results["confidences"] = prepared.confidences
    return results, [0]


def _lift_array(args: argparse.Namespace, file_format: str) -> tuple[dict, list[int]]:
    """One person's keypoint array lifted: the npz arrays (T, ...) and the id list [0]."""
    _, _, prepared = _read_array(args, file_format)
    model = load_model(args.checkpoint)
    poses_3d = lift_sequence(model, prepared.model_input(model.config.in_chans), options=_lift_options(args))
    return _array_results(poses_3d, prepared)


def _check_stream_flags(args: argparse.Namespace, file_format: str) -> None:
    """Refuses --latency/--hop without --stream, and --stream of several people."""
    if not args.stream:
        for flag, value in (("--latency", args.latency), ("--hop", args.hop)):
            if value is not None:
                raise ValueError(f"{flag} is a --stream option")
        return
    if args.latency is None:
        raise ValueError("--stream needs --latency L, the frames of future context each frame waits for")
    if file_format in detector_files.FILE_FORMATS:
        raise ValueError(
            f"--stream lifts one person's keypoint array (.npy or .json); {args.input} is a {file_format} "
            "file of tracked people: lift it without --stream"
        )


def _stream_array(args: argparse.Namespace, file_format: str) -> tuple[dict, list[int]]:
    """One person's keypoint array pushed frame by frame through a `StreamingLifter`, as from a camera.

    Returns the npz arrays of `_lift_array` and [0]; prints the delay and the throughput.
    """
    # The whole file, checked and filled as offline, for the 2D arrays saved beside the poses.
    raw, file_format, prepared = _read_array(args, file_format)
    lifter = StreamingLifter(
        load_model(args.checkpoint),
        latency=args.latency,
        hop=args.hop,
        keypoint_format=file_format,
        image_size=args.image_size,
        flip_tta=args.flip_tta,
        matmul_precision=args.matmul_precision,
    )
    with warnings.catch_warnings():
        # prepare_keypoints above warned about the missing points already.
        warnings.filterwarnings("ignore", "missing keypoints are filled")
        streamed = replay(lifter, raw)
    frame_ms = 1000 / args.fps
    # The frames the flush returned waited for no later frame: the live delay is the others'.
    live = ~streamed.flushed if not streamed.flushed.all() else streamed.flushed
    delays = streamed.delay_frames[live]
    print(
        f"streamed {len(raw)} frames (latency {lifter.latency}, hop {lifter.hop}, "
        f"window {lifter.num_frames}): {streamed.frames_per_second:.1f} frames/s, "
        f"{streamed.steady_frames_per_second:.1f} after the first window (which compiles)"
    )
    print(
        f"delay per frame: {delays.min()}-{delays.max()} frames (mean {delays.mean():.1f}: latency "
        f"{lifter.latency} + 0-{lifter.hop - 1} waiting for the hop) = {delays.min() * frame_ms:.0f}-"
        f"{delays.max() * frame_ms:.0f} ms at {args.fps:g} fps, plus a window's compute "
        f"(pushes: mean {1000 * streamed.push_seconds.mean():.0f} ms, max "
        f"{1000 * streamed.push_seconds.max():.0f} ms)"
    )
    print(
        "measured with the frames pushed back to back: "
        f"{1000 * streamed.delay_seconds[live].mean():.0f} ms from a frame's push to its pose (mean)"
    )
    return _array_results(streamed.poses, prepared)


def _lift_detections(args: argparse.Namespace, file_format: str) -> tuple[dict, list[int]]:
    """Every person (or --person) of a detector file lifted: the npz arrays and the ids."""
    if args.image_size is None:
        raise ValueError(f"--image-size W H is needed: {file_format} keypoints are pixels")
    detections = detector_files.READERS[file_format](args.input)
    people = detections.keypoints
    person_ids = list(detections.person_ids)
    if args.person is not None:
        if args.person not in person_ids:
            raise ValueError(
                f"--person {args.person}: no such track in {args.input} "
                f"(ids: {', '.join(map(str, person_ids))})"
            )
        row = person_ids.index(args.person)
        people, person_ids = people[row : row + 1], [args.person]
    if args.bvh:
        motion_export.bvh_paths(args.bvh, person_ids)
    lifted = lift_people(
        load_model(args.checkpoint),
        people,
        person_ids,
        keypoint_format=detections.keypoint_format,
        image_size=args.image_size,
        min_track_frames=args.min_track_frames,
        options=_lift_options(args),
    )
    results = {
        "poses_3d": lifted.poses_3d,
        "keypoints_2d": lifted.keypoints_2d,
        "filled": lifted.filled,
        "confidences": lifted.confidences,
        "present": lifted.present,
    }
    if args.person is not None:
        results = {name: array[0] for name, array in results.items()}
    results["person_ids"] = np.asarray(lifted.person_ids, np.int64)
    return results, list(lifted.person_ids)


def _plot(args: argparse.Namespace, results: dict, image_size) -> None:
    plotted = results.get("poses_3d_px", results["poses_3d"])
    keypoints_2d = results["keypoints_2d"]
    unit = "px" if image_size is not None else "normalised units"
    options = dict(image_size=image_size, length_unit=unit)
    if "person_ids" in results:
        # People from a detector file, even one picked by --person, may be absent (NaN) in some frames.
        options["person_ids"] = results["person_ids"]
        if plotted.ndim == 3:
            plotted, keypoints_2d = plotted[None], keypoints_2d[None]
    if args.plot.lower().endswith(".png"):
        frame = plotted.shape[-3] // 2 if args.plot_frame is None else args.plot_frame
        pictures.save_frame(args.plot, keypoints_2d, plotted, frame, **options)
    else:
        pictures.save_animation(
            args.plot,
            keypoints_2d,
            plotted,
            max_frames=args.plot_max_frames,
            fps=args.fps,
            **options,
        )
    print(f"wrote {args.plot}")


def _export(args: argparse.Namespace, results: dict, person_ids: list[int]) -> None:
    """Writes --bvh and --csv from the lifted poses: in metres with --subject-height, else in
    pixels when the image size is known, else in normalised units; each "wrote" line names the unit.
    """
    if "poses_3d_m" in results:
        poses, unit = results["poses_3d_m"], "metres"
    elif "poses_3d_px" in results:
        poses, unit = results["poses_3d_px"], "pixels; --subject-height METRES for metres"
    else:
        poses, unit = results["poses_3d"], "normalised units; --subject-height METRES for metres"
    people = poses if poses.ndim == 4 else poses[None]
    if args.bvh:
        for path, person in zip(motion_export.bvh_paths(args.bvh, person_ids), people):
            motion_export.write_bvh(path, person, fps=args.fps)
            print(f"wrote {path} (in {unit})")
    if args.csv:
        motion_export.write_csv(args.csv, people, person_ids)
        print(f"wrote {args.csv} (in {unit})")


def lift_file(args: argparse.Namespace) -> None:
    """Lifts, saves, plots and exports as `args` say; raises ValueError/OSError/ImportError on failure."""
    if not args.output.endswith(".npz"):
        raise ValueError(f"--output must end in .npz, got {args.output}")
    if args.plot:
        _check_plot_path(args.plot)
    if not (args.fps > 0 and np.isfinite(args.fps)):
        raise ValueError(f"--fps must be a positive number, got {args.fps}")
    if args.subject_height is not None:
        units.check_subject_height(args.subject_height, name="--subject-height")
    image_size = None if args.image_size is None else keypoints.check_image_size(args.image_size)
    file_format = resolve_format(args.input, args.format)
    _check_stream_flags(args, file_format)
    if args.stream:
        results, person_ids = _stream_array(args, file_format)
    elif file_format in detector_files.FILE_FORMATS:
        results, person_ids = _lift_detections(args, file_format)
    else:
        results, person_ids = _lift_array(args, file_format)
    if image_size is not None:
        results["poses_3d_px"] = to_image_units(results["poses_3d"], image_size)
    if args.subject_height is not None:
        results["poses_3d_m"] = units.scale_to_height(results["poses_3d"], args.subject_height)
    np.savez(args.output, **{name: array for name, array in results.items() if array is not None})
    frames = results["poses_3d"].shape[-3]
    print(f"wrote {args.output}: {frames} frames, {len(person_ids)} person(s)")
    if args.plot:
        _plot(args, results, image_size)
    _export(args, results, person_ids)


@program.command("infer")
def main(argv: Sequence[str] | None = None) -> int:
    lift_file(_parse_args(argv))
    return 0


def run() -> None:
    """The console script ``sasmamba-infer`` and ``python -m sasmamba_jax.infer``."""
    sys.exit(main())
