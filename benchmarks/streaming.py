"""The streaming lifter: what a shorter latency costs in accuracy, and whether one stream runs in real time.

(a) Accuracy against latency (``--checkpoint``, a trained model): every test
video of a Human3.6M-format pickle (the demo set by default) is streamed
frame by frame through a `StreamingLifter` at latency 0, F/4, F/2 and F - 1
(F the model's frames), and lifted offline by `lift` (windows of F every F/2
frames, averaged); both fill missing points (confidence 0) the same way.
Both are scored alike, per frame, as the release scores Human3.6M: root set
to 0, scaled by the camera width / 2 and the frame's 2.5d factor, compared
with the root-relative ``joints_2.5d_image``; P1 (MPJPE) and P2 (P-MPJPE) in
mm are pooled over the frames of all videos (not averaged per action).
Streaming uses hop 1 by default, so every frame sees exactly its latency of
future frames (and is averaged over the latency + 1 windows ending from it
to its last future frame); flip averaging is off for both unless ``--flip-tta``. A
random model makes these numbers meaningless (it only runs the code, as
the tests do with ``--sequences 2``).

(b) Speed (skipped with ``--skip-speed``): one stream of the published
model's shape (F = 243, dim 64, depth 5, RANDOM weights: the time does not
depend on them) at latency 121 with the lifter's defaults, fed a random
sequence as fast as it goes: frames per second after the first window
(which compiles), the time of the pushes that compute a window, and the
delay in frames and in ms at 30 fps.

Each row is printed and appended as one JSON line to ``--results``.

    python benchmarks/streaming.py --checkpoint /tmp/demo
    python benchmarks/streaming.py --skip-accuracy --speed-frames 1000
"""

import argparse
import datetime
import json
import os
import time
import warnings

import jax
import numpy as np
from flax import nnx

from sasmamba_jax import skeleton
from sasmamba_jax.data.h36m import camera_resolutions, normalize_screen_coordinates, read_h36m_pickle
from sasmamba_jax.evaluate import metrics
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.lifting.sequences import LiftOptions, lift
from sasmamba_jax.lifting.streaming import StreamingLifter, replay
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig

DEFAULT_DATA = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "data", "cmu_demo", "h36m_cmu_s01.pkl")
)
DEFAULT_RESULTS = os.path.join(os.path.dirname(__file__), "results", "streaming.jsonl")
SPEED_LATENCY = 121
CAMERA_FPS = 30


def videos_of_test_split(pickle_path: str):
    """[(name, inputs (N, 17, 3) x, y, confidence, mm per unit (N,), target mm (N, 17, 3))], one per video."""
    test = read_h36m_pickle(pickle_path)["test"]
    sources = test["source"]
    starts = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
    ends = np.r_[starts[1:], len(sources)]
    widths, heights = camera_resolutions(test["camera_name"])
    xy = normalize_screen_coordinates(test["joint_2d"][..., :2], widths, heights)
    inputs = np.concatenate([xy, test["confidence"].astype(np.float32)[..., :1]], axis=-1)
    # The release's de-normalisation of root-relative predictions: res_w / 2 * 2.5d factor.
    mm_per_unit = widths / 2 * test["2.5d_factor"]
    target = test["joints_2.5d_image"].astype(np.float64)
    target = target - target[:, skeleton.ROOT : skeleton.ROOT + 1]
    return [
        (str(sources[start]), inputs[start:end], mm_per_unit[start:end], target[start:end])
        for start, end in zip(starts, ends)
    ]


def errors_mm(poses, mm_per_unit, target):
    """(MPJPE, P-MPJPE) (N,) arrays in mm of normalised root-relative poses (N, 17, 3)."""
    poses = np.array(poses, np.float64)
    poses[:, skeleton.ROOT] = 0
    poses *= mm_per_unit[:, None, None]
    return metrics.mpjpe(poses, target), metrics.p_mpjpe(poses, target)


def streamed(model, inputs, latency, hop, flip_tta):
    """(N, 17, 3) poses of `inputs` pushed frame by frame, then flushed."""
    lifter = StreamingLifter(model, latency=latency, hop=hop, flip_tta=flip_tta)
    return np.stack([pose for _, pose in lifter.stream(inputs)])


def accuracy_rows(model, videos, latencies, hop, flip_tta):
    """One row per latency and one for offline lifting: P1 and P2 in mm over every frame of `videos`."""
    in_chans = model.config.in_chans
    methods = [(f"latency {latency}", latency) for latency in latencies] + [("offline", None)]
    rows = []
    for name, latency in methods:
        started = time.perf_counter()
        p1, p2 = [], []
        for _, inputs, mm_per_unit, target in videos:
            inputs = inputs[..., :in_chans]
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "(filled|missing keypoints are filled)")
                if latency is None:
                    poses = lift(model, inputs, options=LiftOptions(flip_tta=flip_tta))
                else:
                    poses = streamed(model, inputs, latency, hop, flip_tta)
            errors = errors_mm(poses, mm_per_unit, target)
            p1.append(errors[0])
            p2.append(errors[1])
        rows.append(
            dict(
                method=name,
                latency=latency,
                hop=None if latency is None else hop,
                p1_mm=float(np.concatenate(p1).mean()),
                p2_mm=float(np.concatenate(p2).mean()),
                seconds=round(time.perf_counter() - started, 1),
            )
        )
    offline = rows[-1]["p1_mm"]
    for row in rows:
        row["p1_over_offline"] = row["p1_mm"] / offline
    return rows


def speed_row(num_frames, latency):
    """One stream of the published model's shape with the lifter's defaults, timed."""
    config = SasMambaConfig()  # the published Human3.6M model: F = 243, dim 64, depth 5
    model = SasMamba(config, rngs=nnx.Rngs(0))
    lifter = StreamingLifter(model, latency=latency)
    inputs = (0.3 * np.random.default_rng(0).standard_normal((num_frames, 17, 2))).astype(np.float32)
    result = replay(lifter, inputs)
    returned_by_pushes = ~result.flushed
    window_pushes = np.unique(np.flatnonzero(returned_by_pushes) + result.delay_frames[returned_by_pushes])
    window_seconds = result.push_seconds[window_pushes[1:]]  # the first compiles
    other_pushes = np.setdiff1d(np.arange(num_frames - 1), window_pushes)
    delays = result.delay_frames[returned_by_pushes]
    fps = result.steady_frames_per_second
    return dict(
        model=f"F={config.num_frames}, dim {config.dim}, depth {config.depth}, random weights",
        latency=lifter.latency,
        hop=lifter.hop,
        flip_tta=False,
        frames=num_frames,
        frames_per_second=round(fps, 1),
        real_time_at_30fps=round(fps / CAMERA_FPS, 2),
        window_push_ms_median=round(1000 * float(np.median(window_seconds)), 1),
        window_push_ms_max=round(1000 * float(window_seconds.max()), 1),
        other_push_ms_mean=round(1000 * float(result.push_seconds[other_pushes].mean()), 3),
        first_window_s=round(float(result.push_seconds[window_pushes[0]]), 1),
        delay_frames=[int(delays.min()), int(delays.max())],
        delay_ms_at_30fps=[round(1000 * int(d) / CAMERA_FPS) for d in (delays.min(), delays.max())],
    )


def _write(path, row, meta):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({**meta, **row}) + "\n")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a trained model (model directory, train.py workdir or .pth)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="Human3.6M-format pickle (its test split)")
    parser.add_argument("--sequences", type=int, default=None, help="only the first N test videos")
    parser.add_argument("--hop", type=int, default=1, help="the streaming hop of the accuracy rows")
    parser.add_argument("--flip-tta", action="store_true", help="flip averaging for streaming and offline")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-frames", type=int, default=600, help="frames of the timed stream")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="JSON lines appended here")
    args = parser.parse_args()
    if not args.skip_accuracy and not args.checkpoint:
        parser.error("--checkpoint is needed for the accuracy rows (or --skip-accuracy)")

    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        jax=jax.__version__,
        platform=jax.devices()[0].platform,
        cpus=os.cpu_count(),
    )
    print(f"jax {jax.__version__} on {meta['platform']}, {meta['cpus']} cores")
    if not args.skip_accuracy:
        model = load_model(args.checkpoint)
        frames = model.config.num_frames
        videos = videos_of_test_split(args.data)[: args.sequences]
        latencies = sorted({0, frames // 4, frames // 2, frames - 1})
        print(
            f"(a) {args.checkpoint} (F = {frames}) on {len(videos)} test videos of {args.data} "
            f"({sum(len(v[1]) for v in videos)} frames), hop {args.hop}, flip {args.flip_tta}"
        )
        print(f"{'method':>12} {'P1 mm':>8} {'P2 mm':>8} {'P1 / offline':>12} {'s':>6}")
        for row in accuracy_rows(model, videos, latencies, args.hop, args.flip_tta):
            print(
                f"{row['method']:>12} {row['p1_mm']:8.2f} {row['p2_mm']:8.2f} "
                f"{row['p1_over_offline']:12.3f} {row['seconds']:6.1f}",
                flush=True,
            )
            _write(
                args.results,
                dict(
                    kind="accuracy", checkpoint=args.checkpoint, frames=frames, flip_tta=args.flip_tta, **row
                ),
                dict(meta, data=os.path.basename(args.data), videos=len(videos)),
            )
    if not args.skip_speed:
        load = os.getloadavg()
        row = speed_row(args.speed_frames, SPEED_LATENCY)
        row["load_average"] = [round(value, 2) for value in (*load, *os.getloadavg())]
        print(
            f"(b) one stream, {row['model']}, latency {row['latency']}, hop {row['hop']} (defaults), "
            f"{row['frames']} frames: {row['frames_per_second']} frames/s after the first window "
            f"= {row['real_time_at_30fps']}x a {CAMERA_FPS} fps camera"
        )
        print(
            f"    a push that computes a window: median {row['window_push_ms_median']} ms, max "
            f"{row['window_push_ms_max']} ms; other pushes {row['other_push_ms_mean']} ms; "
            f"first window (compiles) {row['first_window_s']} s"
        )
        print(
            f"    delay {row['delay_frames'][0]}-{row['delay_frames'][1]} frames = "
            f"{row['delay_ms_at_30fps'][0]}-{row['delay_ms_at_30fps'][1]} ms at {CAMERA_FPS} fps, plus a "
            f"window's compute; load average before/after {row['load_average']}"
        )
        _write(args.results, dict(kind="speed", **row), meta)


if __name__ == "__main__":
    main()
