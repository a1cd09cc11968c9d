"""The offset convolution's gradients: lax's own against ``ops.conv``'s, side by side in one run.

(a) The convolution alone, its input and kernel gradients inside a two-layer
``lax.scan`` (the model's layer scan), at the demo model's shape:
(8, 27, 17, 64) -> 18 channels, 3x3, "SAME".
(b) The demo config's whole training step (``configs/demo.py``: batch 8,
T=27 when the figures in docs/performance.md were measured, T=9 since),
its models built with each convolution.

The two are timed alternately, ``--repeats`` rounds of ``--iterations``
calls each; the median per call and the ratio are printed and appended as
one JSON line to ``--results``.

    python benchmarks/conv_gradients.py
"""

import argparse
import datetime
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sasmamba_jax.configs import demo

from sasmamba_jax.model.sasmamba import SasMamba
from sasmamba_jax.ops import conv
from sasmamba_jax.train import recipe

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _conv_gradients(conv_fn):
    def loss(x, kernels):
        def layer(h, kernel):
            y = conv_fn(h, kernel, (1, 1), "SAME", dimension_numbers=DIMENSION_NUMBERS)
            return h + y[..., :1], None

        return jnp.sum(jax.lax.scan(layer, x, kernels)[0] ** 2)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 27, 17, 64)), jnp.float32)
    kernels = jnp.asarray(rng.standard_normal((2, 3, 3, 64, 18)), jnp.float32)
    gradients = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(gradients(x, kernels))


def _demo_step(conv_fn):
    """One demo training step, the model's offset convolutions built with ``conv_fn``."""
    config = demo.get_config()
    # Built eagerly: recipe.create_model reuses its first trace's modules for a config.
    original, conv.conv_general_dilated = conv.conv_general_dilated, conv_fn
    try:
        model = SasMamba(recipe.model_config(config), rngs=nnx.Rngs(params=config.seed))
    finally:
        conv.conv_general_dilated = original
    state = recipe.create_train_state(config, model)
    clip = (config.batch_size, config.model.num_frames, 17)
    rng = np.random.default_rng(0)
    batch = {
        "input_2d": rng.standard_normal((*clip, 2)).astype(np.float32),
        "target_3d": rng.standard_normal((*clip, 3)).astype(np.float32),
    }
    holder = {"state": state}

    def step():
        holder["state"], metrics = recipe.train_step(holder["state"], batch)
        jax.block_until_ready(metrics)

    return step


def _time_side_by_side(calls: dict, iterations: int, repeats: int) -> dict:
    for call in calls.values():
        call(), call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(iterations):
                call()
            times[name].append((time.perf_counter() - started) / iterations)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", default="benchmarks/results/conv_gradients.jsonl")
    args = parser.parse_args()
    cases = {
        "conv gradients in a 2-layer scan": _conv_gradients,
        "demo training step": _demo_step,
    }
    for case, build in cases.items():
        calls = {"lax": build(jax.lax.conv_general_dilated), "ops.conv": build(conv.conv_general_dilated)}
        median = _time_side_by_side(calls, args.iterations, args.repeats)
        row = {
            "case": case,
            "lax_ms": 1000 * median["lax"],
            "ops_conv_ms": 1000 * median["ops.conv"],
            "ratio": median["lax"] / median["ops.conv"],
            "device": jax.devices()[0].device_kind,
            "date": datetime.date.today().isoformat(),
        }
        lax_ms, ours_ms = row["lax_ms"], row["ops_conv_ms"]
        print(f"{case}: lax {lax_ms:.1f} ms, ops.conv {ours_ms:.1f} ms, {row['ratio']:.2f}x")
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
