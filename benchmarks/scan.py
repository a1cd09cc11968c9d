"""Selective-scan back ends side by side, and the whole model's forward time.

    python benchmarks/scan.py            # the published size: B=2, K=4, E=128, L=243*17, N=16
    python benchmarks/scan.py --quick    # a smaller problem, for a smoke run

Prints, for each back end, forward and forward+backward wall time (best of
--repeats, after one compiling call), the compiled temporary memory of each
(XLA's memory_analysis), and ratios against the sequential back end measured
in the same run; then SasMamba's forward time at B=1, T=243 per back end.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sasmamba_jax.model.forward import predict
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig
from sasmamba_jax.ops import selective_scan

BACKENDS = ("sequential", "associative", "chunked", "pallas")


def label(backend):
    """The back end's name, marked where Pallas runs interpreted (not on TPU or GPU)."""
    interpreted = backend == "pallas" and jax.default_backend() not in ("tpu", "gpu")
    return f"{backend} (interpret)" if interpreted else backend


def best_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def scan_inputs(batch, length, directions, channels, state, seed=0):
    rng = np.random.default_rng(seed)

    def normal(*shape, shift=0.0):
        return jnp.asarray(rng.normal(size=shape) + shift, jnp.float32)

    return dict(
        u=normal(batch, length, directions, channels),
        delta=normal(batch, length, directions, channels, shift=-2.0),
        A=-jnp.broadcast_to(jnp.arange(1.0, state + 1), (directions, channels, state)),
        B=normal(batch, length, directions, state),
        C=normal(batch, length, directions, state),
        D=jnp.ones((directions, channels)),
        delta_bias=jnp.zeros((directions, channels)),
    )


def chunk_size(args, backend):
    """Steps per chunk (chunked) or per kept state (sequential's backward)."""
    return args.sequential_chunk_size if backend == "sequential" else args.chunk_size


def bench_scan(args):
    inputs = scan_inputs(args.batch, args.length, 4, args.channels, 16)
    print(
        f"selective scan, B={args.batch} K=4 E={args.channels} L={args.length} N=16 "
        f"on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
        f"chunk size: chunked {args.chunk_size}, sequential {args.sequential_chunk_size}"
    )
    header = f"{'back end':<20}{'fwd s':>9}{'fwd+bwd s':>11}{'fwd temp MB':>13}{'fwd+bwd temp MB':>17}"
    print(header)
    rows = {}
    for backend in BACKENDS:

        def forward(u, delta, B, C, backend=backend):
            return selective_scan(
                u,
                delta,
                inputs["A"],
                B,
                C,
                inputs["D"],
                inputs["delta_bias"],
                backend=backend,
                chunk_size=chunk_size(args, backend),
            )

        def loss(u, delta, B, C, forward=forward):
            return forward(u, delta, B, C).sum()

        fwd = jax.jit(forward)
        fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        operands = (inputs["u"], inputs["delta"], inputs["B"], inputs["C"])
        fwd_mem = fwd.lower(*operands).compile().memory_analysis().temp_size_in_bytes / 2**20
        bwd_mem = fwd_bwd.lower(*operands).compile().memory_analysis().temp_size_in_bytes / 2**20
        row = (
            best_time(fwd, *operands, repeats=args.repeats),
            best_time(fwd_bwd, *operands, repeats=args.repeats),
            fwd_mem,
            bwd_mem,
        )
        rows[backend] = row
        print(f"{label(backend):<20}{row[0]:>9.3f}{row[1]:>11.3f}{row[2]:>13.0f}{row[3]:>17.0f}", flush=True)
    base = rows["sequential"]
    print("ratios to sequential (time: >1 is slower; memory: >1 is more)")
    for backend, row in rows.items():
        ratios = [r / b for r, b in zip(row, base)]
        print(f"{label(backend):<20}" + "".join(f"{r:>{w}.2f}" for r, w in zip(ratios, (9, 11, 13, 17))))
    chunked, assoc = rows["chunked"][3], rows["associative"][3]
    print(f"chunked fwd+bwd temp memory / associative: {chunked / assoc:.3f}")


def bench_model(args):
    print(f"\nSasMamba forward (published small config), B=1, T={args.frames}, jitted, eval mode")
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, args.frames, 17, 2)), jnp.float32)
    times = {}
    for backend in BACKENDS:
        config = SasMambaConfig(num_frames=args.frames, scan=backend, chunk_size=chunk_size(args, backend))
        model = nnx.jit(lambda config=config: SasMamba(config, rngs=nnx.Rngs(0)))()
        model.eval()
        times[backend] = best_time(predict, model, x, repeats=args.repeats)
        ratio = times[backend] / times["sequential"]
        print(f"{label(backend):<20}{times[backend]:>8.3f} s  ({ratio:.2f}x sequential)")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small problem (B=1, T=27, E=64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=64, help="the chunked back end's chunk size")
    parser.add_argument(
        "--sequential-chunk-size", type=int, default=64, help="sequential: steps per kept state"
    )
    args = parser.parse_args()
    args.batch, args.frames, args.channels = (1, 27, 64) if args.quick else (2, 243, 128)
    args.length = args.frames * 17
    bench_scan(args)
    bench_model(args)


if __name__ == "__main__":
    main()
