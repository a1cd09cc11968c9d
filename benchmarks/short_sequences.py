"""Which way of lifting sequences shorter than the model is more accurate?

`lifting.sequences.lift_sequence` lifts a sequence of T < F frames (F = the model's
frames) either by resampling it to F frames and back (``"resample"``, the
release's treatment of a video's tail) or by running the model on the T
frames directly (``"direct"``; the model allows T <= F). This script cuts the
test videos of a Human3.6M-format pickle into consecutive segments of T
frames, lifts every segment both ways and prints the errors in millimetres,
scored as the release scores Human3.6M (root set to 0, scaled by the camera
width / 2 and the frame's 2.5d factor, compared with root-relative
``joints_2.5d_image``). A row for whole videos (windows of F) is the baseline.

The comparison needs a model trained on that kind of data; random weights
make it meaningless.

    python benchmarks/short_sequences.py --checkpoint CKPT \\
        --data data/cmu_demo/h36m_cmu_s01.pkl --lengths 9 27 81 162
"""

import argparse
import time

import numpy as np

from sasmamba_jax import skeleton
from sasmamba_jax.data.h36m import camera_resolutions, normalize_screen_coordinates, read_h36m_pickle
from sasmamba_jax.evaluate import metrics
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.lifting.sequences import SHORT_SEQUENCE_MODES, LiftOptions, lift_sequence
from sasmamba_jax.ops import BACKENDS


def _videos(test):
    """Yields (model input (N, 17, 3) x, y, confidence, width (N,), factor (N,), target mm (N, 17, 3))."""
    sources = test["source"]
    starts = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
    ends = np.r_[starts[1:], len(sources)]
    widths, heights = camera_resolutions(test["camera_name"])
    xy = normalize_screen_coordinates(test["joint_2d"][..., :2], widths, heights)
    inputs = np.concatenate([xy, test["confidence"].astype(np.float32)], axis=-1)
    target = test["joints_2.5d_image"].astype(np.float64)
    target = target - target[:, skeleton.ROOT : skeleton.ROOT + 1]
    for start, end in zip(starts, ends):
        frames = slice(start, end)
        yield inputs[frames], widths[frames], test["2.5d_factor"][frames], target[frames]


def _errors_mm(poses, width, factor, target):
    """(MPJPE, P-MPJPE) arrays (N,) in mm of normalised predictions (N, 17, 3)."""
    poses = np.array(poses, np.float64)
    poses[:, skeleton.ROOT] = 0
    poses *= (width / 2 * factor)[:, None, None]
    return metrics.mpjpe(poses, target), metrics.p_mpjpe(poses, target)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a trained model (directory or release .pth)")
    parser.add_argument("--data", default="data/cmu_demo/h36m_cmu_s01.pkl", help="Human3.6M-format pickle")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=None, help="segment lengths T < F (default F/27 .. 2F/3)"
    )
    parser.add_argument("--no-flip", action="store_true", help="without flip test-time averaging")
    parser.add_argument("--scan", choices=BACKENDS, default="auto", help="scan back end (speed only)")
    args = parser.parse_args()

    model = load_model(args.checkpoint, scan=args.scan)
    num_frames = model.config.num_frames
    lengths = args.lengths or sorted({max(1, num_frames * k // 27) for k in (1, 3, 9, 18)} - {num_frames})
    if any(not 1 <= length < num_frames for length in lengths):
        parser.error(f"--lengths must be in [1, {num_frames - 1}] for this model")
    videos = list(_videos(read_h36m_pickle(args.data)["test"]))
    options = LiftOptions(flip_tta=not args.no_flip, batch_size=1)

    def lift(inputs, mode):
        return lift_sequence(
            model, inputs[..., : model.config.in_chans], options=options, short_sequence_mode=mode
        )

    print(
        f"model: {args.checkpoint} (F = {num_frames}), data: {args.data} test split, flip {not args.no_flip}"
    )
    print(
        f"{'T':>6} {'segments':>8} "
        + " ".join(f"{m + ' P1':>14} {m + ' P2':>14}" for m in SHORT_SEQUENCE_MODES)
    )
    for length in lengths:
        errors = {mode: ([], []) for mode in SHORT_SEQUENCE_MODES}
        segments = 0
        started = time.perf_counter()
        for inputs, width, factor, target in videos:
            for start in range(0, len(inputs) - length + 1, length):
                frames = slice(start, start + length)
                segments += 1
                for mode in SHORT_SEQUENCE_MODES:
                    p1, p2 = _errors_mm(
                        lift(inputs[frames], mode), width[frames], factor[frames], target[frames]
                    )
                    errors[mode][0].append(p1)
                    errors[mode][1].append(p2)
        cells = " ".join(
            f"{np.concatenate(p1).mean():14.2f} {np.concatenate(p2).mean():14.2f}"
            for p1, p2 in errors.values()
        )
        print(f"{length:>6} {segments:>8} {cells}   ({time.perf_counter() - started:.0f} s)", flush=True)
    whole = [_errors_mm(lift(inputs, "resample"), *rest) for inputs, *rest in videos]
    p1 = np.concatenate([e[0] for e in whole]).mean()
    p2 = np.concatenate([e[1] for e in whole]).mean()
    print(f"whole videos ({len(videos)}, windows of {num_frames}): P1 {p1:.2f} mm, P2 {p2:.2f} mm")


if __name__ == "__main__":
    main()
