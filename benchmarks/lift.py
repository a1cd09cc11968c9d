"""Lifting throughput of `sequences.lift_sequence` on a long sequence.

The model is the published Human3.6M configuration (T = 243, dim 64, depth 5)
with RANDOM weights: the run time does not depend on the weights, so no
trained checkpoint is needed. The input is a random 10,000-frame sequence.

For every (scan backend, batch size, flip, threads) combination the first
call, which compiles, is timed separately from `--repeats` steady-state
calls; the table gives the compile time (first call minus one steady batch),
the best and median steady times, the frames per second of the best, and its
speed-up over the first `--threads` value measured in the same run.

    python benchmarks/lift.py --frames 10000 --repeats 3 --threads 1 2
"""

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from sasmamba_jax.lifting import sequences
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig
from sasmamba_jax.ops import BACKENDS


def _timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


_WIDTHS = (11, 5, 5, 7, 9, 8, 8, 9, 9)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=10_000, help="length of the lifted sequence")
    parser.add_argument("--scans", nargs="+", choices=BACKENDS, default=["auto"], help="scan backends")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[sequences.DEFAULT_BATCH_SIZE])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[sequences.DEFAULT_THREADS], help="forward calls in flight"
    )
    parser.add_argument("--stride", type=int, default=None, help="window stride (default F / 2)")
    parser.add_argument("--repeats", type=int, default=3, help="steady-state runs per row")
    args = parser.parse_args()

    config = SasMambaConfig()  # the published Human3.6M model: T = 243, dim 64, depth 5
    stride = args.stride or config.num_frames // 2
    num_windows = len(sequences.window_indices(args.frames, config.num_frames, stride))
    inputs = (0.3 * np.random.default_rng(0).standard_normal((args.frames, 17, 2))).astype(np.float32)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; random weights, T=243, dim 64, depth 5")
    print(
        f"{args.frames} frames = {num_windows} windows (stride {stride}); {args.repeats} steady runs per row"
    )
    columns = ("scan", "batch", "flip", "threads", "compile s", "best s", "median s", "frames/s", "speed-up")
    print(" ".join(f"{name:>{width}}" for name, width in zip(columns, _WIDTHS)))
    for scan in args.scans:
        model = SasMamba(config.with_options(scan=scan), rngs=nnx.Rngs(0))
        model.eval()
        for batch_size in args.batch_sizes:
            num_batches = -(-num_windows // batch_size)
            for flip in (False, True):
                baseline = None
                for threads in args.threads:
                    options = sequences.LiftOptions(
                        flip_tta=flip, batch_size=batch_size, threads=threads, stride=stride
                    )
                    first = _timed(
                        sequences.lift_sequence, model, inputs[: config.num_frames], options=options
                    )
                    steady = [
                        _timed(sequences.lift_sequence, model, inputs, options=options)
                        for _ in range(args.repeats)
                    ]
                    best = min(steady)
                    baseline = baseline or best
                    compile_s = first - best / num_batches
                    print(
                        f"{scan:>11} {batch_size:>5} {'on' if flip else 'off':>5} {threads:>7} "
                        f"{compile_s:9.1f} {best:8.1f} {statistics.median(steady):8.1f} "
                        f"{args.frames / best:9.1f} {baseline / best:9.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
