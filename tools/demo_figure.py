"""Draws a demo-set test sequence lifted by a checkpoint: the picture in docs/.

    python tools/demo_figure.py --checkpoint /tmp/demo --output docs/demo_frame.png

Takes one test sequence of the bundled CMU demo set (MotionBERT's Human3.6M
format), lifts its noisy 2D keypoints with ``sasmamba_jax.lifting.sequences.lift``
(pixels in, the camera's image size for normalisation), converts the result
to millimetres with the data set's per-frame 2.5D factor, and saves the 2D
input beside the predicted and ground-truth 3D skeletons for one frame (PNG)
or the whole sequence (GIF/MP4, by the output's suffix).
"""

import argparse
import pathlib

import numpy as np

from sasmamba_jax.data import h36m
from sasmamba_jax.io import loader
from sasmamba_jax.lifting import pictures
from sasmamba_jax.lifting.sequences import lift

DEMO_PICKLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a train.py workdir, model directory or .pth")
    parser.add_argument("--output", required=True, help=".png (one frame), .gif or .mp4 (the sequence)")
    parser.add_argument("--pickle", default=str(DEMO_PICKLE))
    parser.add_argument("--source", help="test sequence (default: the first)")
    parser.add_argument("--frame", type=int, default=100, help="frame drawn in a PNG")
    args = parser.parse_args(argv)

    test = h36m.read_h36m_pickle(args.pickle)["test"]
    sources = np.asarray(test["source"])
    source = args.source or sources[0]
    frames = np.flatnonzero(sources == source)
    if frames.size == 0:
        raise SystemExit(f"error: no test sequence {source!r} in {args.pickle}")
    (width,), (height,) = h36m.camera_resolutions([test["camera_name"][frames[0]]])
    keypoints = np.concatenate([test["joint_2d"][frames], test["confidence"][frames]], axis=-1)

    model = loader.load_model(args.checkpoint)
    poses = lift(model, keypoints, image_size=(width, height))
    factors = np.asarray(test["2.5d_factor"])[frames, None, None]
    predicted = (poses - poses[:, :1]) * width / 2 * factors
    truth = test["joints_2.5d_image"][frames]
    truth = truth - truth[:, :1]
    p1 = np.linalg.norm(predicted - truth, axis=-1).mean()
    title = f"{source}: P1 {p1:.1f} mm"

    common = dict(ground_truth_3d=truth, image_size=(width, height), title=title, length_unit="mm")
    if args.output.endswith(".png"):
        pictures.save_frame(
            args.output, keypoints[..., :2], predicted, min(args.frame, len(frames) - 1), **common
        )
    else:
        pictures.save_animation(args.output, keypoints[..., :2], predicted, **common)
    print(f"{title}; wrote {args.output}")


if __name__ == "__main__":
    main()
