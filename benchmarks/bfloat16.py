"""What computing in bfloat16 changes in a trained model's output.

Runs one checkpoint twice, with float32 and with bfloat16 compute (parameters
and the scan's state stay float32 either way), on the test split of a
Human3.6M-format pickle, and prints both P1/P2 and the distance between the
two predictions in millimetres, scored as the release scores Human3.6M.
With ``--fixture`` it also prints the difference on the release's tiny
fixture, in the model's normalised units, beside the float32 error against
the release's own output.

    python benchmarks/bfloat16.py --checkpoint /tmp/demo \\
        --fixture tests/data/official_tiny.pth tests/data/official_tiny.npz

Convergence in bfloat16 is a training run: ``python train.py
--workdir=/tmp/demo_bf16 --config.dtype=bfloat16`` (README, "Performance").
"""

import argparse

import numpy as np
from flax import nnx
from sasmamba_jax.configs import demo

from sasmamba_jax.evaluate import protocols, tasks
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.model.forward import predict
from sasmamba_jax.parallel import sharding

DTYPES = ("float32", "bfloat16")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a model trained on --data (e.g. the demo's workdir)"
    )
    parser.add_argument("--data", default=str(demo.DEMO_PICKLE), help="Human3.6M-format pickle")
    parser.add_argument(
        "--fixture", nargs=2, metavar=("PTH", "NPZ"), help="a release checkpoint and its recorded x, y"
    )
    return parser.parse_args()


def _test_predictions(checkpoint: str, data_path: str, dtype: str):
    """(task, (M, T, 17, 3) flip-averaged predictions of every test clip)."""
    model = load_model(checkpoint, dtype=dtype)
    config = demo.get_config()
    with config.unlocked():
        config.data.pkl_path = data_path
    task = tasks.load_task(config.data, model.config.num_frames, config.seed)
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    mesh = sharding.make_mesh(config.mesh)
    predictions = tasks.predict_test_clips(graphdef, params, task, config.eval, mesh, model.config.in_chans)
    return task, predictions


def compare_on_test_split(checkpoint: str, data_path: str) -> None:
    runs = {dtype: _test_predictions(checkpoint, data_path, dtype) for dtype in DTYPES}
    task = runs["float32"][0]
    root = task.root_joint
    relative = {
        dtype: predictions - predictions[:, :, root : root + 1] for dtype, (_, predictions) in runs.items()
    }
    difference = np.linalg.norm(relative["bfloat16"] - relative["float32"], axis=-1)
    distance_mm = difference * protocols.millimetres_per_unit(task.data)[..., None]
    print(f"{checkpoint} on the test split of {data_path}")
    for dtype, (_, predictions) in runs.items():
        results = task.evaluate(predictions)
        print(f"  {dtype:9s} P1 {results['p1']:7.2f} mm   P2 {results['p2']:7.2f} mm")
    print(
        f"  bfloat16 vs float32 prediction, per joint: mean {distance_mm.mean():.2f} mm, "
        f"99th percentile {np.percentile(distance_mm, 99):.2f} mm, max {distance_mm.max():.2f} mm"
    )


def compare_on_fixture(pth: str, npz: str) -> None:
    with np.load(npz) as f:
        x, y = f["x"], f["y"]
    outputs = {dtype: np.asarray(predict(load_model(pth, dtype=dtype), x), np.float64) for dtype in DTYPES}
    bf16_error = np.abs(outputs["bfloat16"] - outputs["float32"])
    f32_error = np.abs(outputs["float32"] - y)
    print(f"release fixture {pth} (normalised units; |y| max {np.abs(y).max():.3f})")
    print(f"  float32 vs the release:  max {f32_error.max():.2e}, mean {f32_error.mean():.2e}")
    print(f"  bfloat16 vs float32:     max {bf16_error.max():.2e}, mean {bf16_error.mean():.2e}")


def main():
    args = parse_args()
    if args.fixture:
        compare_on_fixture(*args.fixture)
    compare_on_test_split(args.checkpoint, args.data)


if __name__ == "__main__":
    main()
