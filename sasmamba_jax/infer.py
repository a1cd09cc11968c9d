"""Command line: lift a video's 2D keypoints to 3D, save them, optionally animate them.

    python -m sasmamba_jax.infer --checkpoint CKPT --input KP.npy --format coco \\
        --image-size 1920 1080 --output out.npz --plot out.gif

Errors are reported on one line with exit status 2.
"""

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from matplotlib import animation

from sasmamba_jax import keypoints, plotting
from sasmamba_jax.checkpoint import load_model
from sasmamba_jax.inference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THREADS,
    SHORT_SEQUENCE_MODES,
    lift_sequence,
    to_image_units,
)

_DESCRIPTION = """\
Lift a sequence of 2D keypoints (e.g. a detector's output on a video) to
root-relative 3D poses with SasMamba.

Input (--input):
  .npy   float array (T, 17, 2) x, y or (T, 17, 3) x, y, confidence.
  .json  a list of T frames, each a list of 17 keypoints [x, y] or
         [x, y, confidence], e.g. [[[412.0, 230.5, 0.93], ...], ...].
         null stands for a missing coordinate.
  Keypoints are in the joint order of --format: h36m (pelvis, right hip,
  right knee, right ankle, left hip, left knee, left ankle, spine, thorax,
  neck, head, left shoulder, left elbow, left wrist, right shoulder, right
  elbow, right wrist) or coco (nose, left/right eye, left/right ear,
  left/right shoulder, elbow, wrist, hip, knee, ankle). Coordinates are
  pixels when --image-size is given, else already normalised
  (xy / W * 2 - [1, H / W]). A point with NaN/null coordinates or confidence
  0 is missing and filled by interpolation over time (with a warning).

Output (--output, .npz):
  poses_3d      (T, 17, 3) root-relative 3D poses in normalised units
                (x, y, depth; multiply by W / 2 for pixels).
  poses_3d_px   (T, 17, 3) the same in pixels (only with --image-size).
  keypoints_2d  (T, 17, 2) the input in Human3.6M order, missing points
                filled, in the input's units.
  confidences   (T, 17) (only when the input had confidences).
  filled        (T, 17) bool, True where a point was missing and filled.
"""


def read_keypoints(path: str | os.PathLike) -> np.ndarray:
    """Reads a (T, 17, 2|3) keypoint array from a .npy or .json file (schema in --help).

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
                f"{path} must hold a list of frames, each a list of 17 [x, y] or [x, y, confidence]"
            ) from None
    raise ValueError(f"unknown input type {suffix!r} for {path}: expected .npy or .json")


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m sasmamba_jax.infer",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a model directory (Orbax) or a release .pth checkpoint"
    )
    parser.add_argument("--input", required=True, help="keypoints, .npy or .json (schema above)")
    parser.add_argument(
        "--format", choices=keypoints.FORMATS, default="h36m", help="joint order of the input"
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
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time averaging (2x faster)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward call")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="forward calls in flight")
    parser.add_argument("--stride", type=int, default=None, help="frames between windows (default F / 2)")
    parser.add_argument(
        "--short-sequence-mode",
        choices=SHORT_SEQUENCE_MODES,
        default="resample",
        help="sequences shorter than the model: resample to its length and back, or run directly",
    )
    return parser.parse_args(argv)


def _check_plot_path(path: str) -> None:
    """Fails before any work on a --plot file that `plotting.save_animation` would refuse."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".gif", ".mp4", ".png"):
        raise ValueError(f"--plot must end in .gif, .mp4 or .png, got {path}")
    if suffix == ".mp4" and not animation.writers.is_available("ffmpeg"):
        raise ValueError(f"--plot {path}: MP4 needs ffmpeg, which is not installed; ask for a .gif")


def run(args: argparse.Namespace) -> None:
    """Lifts, saves and plots as `args` say; raises ValueError/OSError/RuntimeError on failure."""
    if not args.output.endswith(".npz"):
        raise ValueError(f"--output must end in .npz, got {args.output}")
    if args.plot:
        _check_plot_path(args.plot)
    raw = read_keypoints(args.input)
    prepared = keypoints.prepare_keypoints(raw, keypoint_format=args.format, image_size=args.image_size)
    model = load_model(args.checkpoint)
    poses_3d = lift_sequence(
        model,
        prepared.model_input(model.config.in_chans),
        flip_tta=not args.no_flip,
        batch_size=args.batch_size,
        threads=args.threads,
        stride=args.stride,
        short_sequence_mode=args.short_sequence_mode,
        progress=True,
    )
    results = {"poses_3d": poses_3d, "keypoints_2d": prepared.xy, "filled": prepared.filled}
    if prepared.confidences is not None:
        results["confidences"] = prepared.confidences
    if prepared.image_size is not None:
        results["poses_3d_px"] = to_image_units(poses_3d, prepared.image_size)
    np.savez(args.output, **results)
    print(f"wrote {args.output}: {len(poses_3d)} frames")
    if args.plot:
        plotted = results.get("poses_3d_px", poses_3d)
        unit = "px" if prepared.image_size is not None else "normalised units"
        if args.plot.lower().endswith(".png"):
            frame = len(poses_3d) // 2 if args.plot_frame is None else args.plot_frame
            plotting.save_frame(
                args.plot, prepared.xy, plotted, frame, image_size=prepared.image_size, length_unit=unit
            )
        else:
            plotting.save_animation(
                args.plot,
                prepared.xy,
                plotted,
                image_size=prepared.image_size,
                max_frames=args.plot_max_frames,
                length_unit=unit,
            )
        print(f"wrote {args.plot}")


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"sasmamba_jax.infer: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            run(args)
    except (ValueError, OSError, RuntimeError) as e:
        message = " ".join(str(e).split())
        print(f"sasmamba_jax.infer: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
