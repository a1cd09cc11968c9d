"""How far the accelerators' default float32 matmuls move the model's output, emulated on CPU.

    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/matmul_precision.py [--checkpoint CKPT]

CKPT: a model with 27 frames (the demo's: ``python train.py --workdir=/tmp/demo``);
by default the release's tiny test fixture, tests/data/official_tiny.pth.

A TPU runs a float32 matmul at the default precision as one bfloat16 pass
(both operands rounded to bfloat16's 8 significant bits, products
accumulated in float32), at "high" as three (bf16_3x: the operands split into a bfloat16
high part and a bfloat16 remainder, the three largest cross products
summed); an NVIDIA GPU from Ampere on, at the default, in TF32 (operands
rounded to 11 significant bits). This CPU computes every matmul and convolution in
float32; here their lowering is replaced by one that rounds the operands as
those units do, then multiplies in float32, which is what they compute up to
the order of the float32 sums. It prints, per emulated unit, how far the
predictions of the test split of configs/tiny.py's data (the bundled demo
set) move from float32's, in the model's normalised units, and how far
their P1 moves.
The selective scan runs the XLA sequential back end, whose state read-out is
an einsum, rounded here; the TPU's Pallas kernel computes it elementwise in
float32, so this includes rounding that a TPU does not do.
"""

import argparse
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax._src.interpreters import mlir
from jax._src.lax import convolution
from jax._src.lax import lax as lax_internal
from sasmamba_jax.configs import tiny

from sasmamba_jax.evaluate import tasks
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.parallel import sharding

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
FLOAT32_MANTISSA_BITS = 23
# Explicit mantissa bits kept by each unit's operand rounding.
BFLOAT16_BITS = 7
TF32_BITS = 10


def round_mantissa(x: jax.Array, kept_bits: int) -> jax.Array:
    """float32 ``x`` rounded to ``kept_bits`` mantissa bits, to nearest even (bit arithmetic,
    which XLA cannot fold away as it may a float32 -> bfloat16 -> float32 round trip)."""
    dropped = FLOAT32_MANTISSA_BITS - kept_bits
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    lowest_kept = (bits >> dropped) & 1
    kept_mask = jnp.uint32(0xFFFFFFFF ^ ((1 << dropped) - 1))
    bits = (bits + jnp.uint32((1 << (dropped - 1)) - 1) + lowest_kept) & kept_mask
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def one_pass(kept_bits, bind, lhs, rhs):
    return bind(round_mantissa(lhs, kept_bits), round_mantissa(rhs, kept_bits))


def bf16_3x(bind, lhs, rhs):
    lhs_high, rhs_high = round_mantissa(lhs, BFLOAT16_BITS), round_mantissa(rhs, BFLOAT16_BITS)
    lhs_low = round_mantissa(lhs - lhs_high, BFLOAT16_BITS)
    rhs_low = round_mantissa(rhs - rhs_high, BFLOAT16_BITS)
    return bind(lhs_high, rhs_low) + bind(lhs_low, rhs_high) + bind(lhs_high, rhs_high)


UNITS = {
    "TPU default (1 bfloat16 pass)": functools.partial(one_pass, BFLOAT16_BITS),
    "TPU high (bf16_3x)": bf16_3x,
    "GPU default (TF32)": functools.partial(one_pass, TF32_BITS),
}
PRIMITIVES = (lax_internal.dot_general_p, convolution.conv_general_dilated_p)


def emulate_on_cpu(unit):
    """Lowers every float32 matmul and convolution for CPU as ``unit`` computes it; undoes it on exit."""
    cpu_rules = mlir._platform_specific_lowerings["cpu"]
    saved = {p: cpu_rules.get(p) for p in PRIMITIVES}
    inside = []

    def rule_for(primitive):
        original = (saved[primitive] or mlir._lowerings[primitive]).rule

        def rule(ctx, lhs, rhs, **params):
            if inside or ctx.avals_in[0].dtype != np.float32:
                return original(ctx, lhs, rhs, **params)

            def emulated(lhs, rhs):
                return unit(lambda a, b: primitive.bind(a, b, **params), lhs, rhs)

            inside.append(True)
            try:
                return mlir.lower_fun(emulated, multiple_results=False)(ctx, lhs, rhs)
            finally:
                inside.pop()

        return rule

    class Emulation:
        def __enter__(self):
            jax.clear_caches()
            for primitive in PRIMITIVES:
                mlir.register_lowering(primitive, rule_for(primitive), platform="cpu")

        def __exit__(self, *exc):
            for primitive, entry in saved.items():
                if entry is None:
                    del cpu_rules[primitive]
                else:
                    cpu_rules[primitive] = entry
            jax.clear_caches()

    return Emulation()


def predictions_and_p1(model, task, config, mesh):
    """(M, T, 17, 3) predictions of the test clips (test-time flip on) and their P1 in mm."""
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    in_chans = model.config.in_chans
    predictions = tasks.predict_test_clips(graphdef, params, task, config.eval, mesh, in_chans)
    return predictions, task.evaluate(predictions)["p1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DATA / "official_tiny.pth"))
    args = parser.parse_args()
    config = tiny.get_config()
    mesh = sharding.default_mesh(jax.devices()[:1])
    model = load_model(args.checkpoint, mesh=mesh, scan="sequential")
    task = tasks.load_task(config.data, model.config.num_frames, config.seed)
    exact, exact_p1 = predictions_and_p1(model, task, config, mesh)
    print(
        f"checkpoint {args.checkpoint}: {len(exact)} test clips of configs/tiny.py's data, "
        f"float32 P1 {exact_p1:.4f} mm, mean |output| {np.abs(exact).mean():.4f}"
    )
    print("| unit emulated | max abs output difference | mean abs output difference | P1 difference (mm) |")
    print("| --- | --- | --- | --- |")
    for name, unit in UNITS.items():
        with emulate_on_cpu(unit):
            predictions, p1 = predictions_and_p1(model, task, config, mesh)
        difference = np.abs(predictions - exact)
        row = f"| {name} | {difference.max():.2e} | {difference.mean():.2e} | {p1 - exact_p1:+.4f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
