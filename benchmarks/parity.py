"""Max abs error against the release's recorded outputs, per scan back end and matmul precision.

    python benchmarks/parity.py

Loads tests/data/official_tiny.pth (needs torch) and compares our output with
the release's on the recorded input. On GPUs, JAX's "default" float32 matmul
precision may use TF32; "highest" is full float32.
"""

import pathlib

import jax
import numpy as np

from sasmamba_jax.io.loader import load_model
from sasmamba_jax.model.forward import predict

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"


def main():
    with np.load(DATA / "official_tiny.npz") as reference:
        x, y = reference["x"], reference["y"]
    print(f"platform: {jax.devices()[0].platform}")
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(precision):
            for scan in ("associative", "chunked", "sequential"):
                model = load_model(DATA / "official_tiny.pth", scan=scan)
                error = np.max(np.abs(np.asarray(predict(model, x)) - y))
                print(f"precision {precision:<8} scan {scan:<12} max abs error {error:.2e}", flush=True)


if __name__ == "__main__":
    main()
