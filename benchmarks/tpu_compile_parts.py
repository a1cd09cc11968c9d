"""Where a TPU compile's time goes: parts of the published model compiled for one v5e chip, no TPU needed.

    python benchmarks/tpu_compile_parts.py

Compiles (libtpu, deviceless) at the published training size (B=16, T=243,
dim 64, scan=pallas): the model's forward at depth 5 and 1 (its layers are
one loop, so depth should not matter) and forward+backward at depth 1,
one block's forward alone and followed by a LayerNorm, and
forward+backward of one deformable convolution, one stride scan and the
Pallas selective scan. Prints each compile's wall time, side by side in
one run.

To see which fusions take the time, run with
``LIBTPU_INIT_ARGS=--vmodule=lowering_emitter=1``: libtpu then logs each
fusion's emission time ("XLA::TPU emitting for ...") to
/tmp/tpu_logs/tpu_driver.INFO.
"""

import os
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from sasmamba_jax.model.sasmamba import SasMamba, SasMambaBlock, SasMambaConfig  # noqa: E402
from sasmamba_jax.ops import deform_conv2d_depthwise, selective_scan, stride_scan  # noqa: E402
from sasmamba_jax.targets import topology_devices  # noqa: E402

BATCH, FRAMES, JOINTS, DIM = 16, 243, 17, 64
INNER = 2 * DIM
LENGTH = FRAMES * JOINTS
F32 = jnp.float32


def single_v5e_chip():
    """(mesh, replicated sharding) over one compile-only v5e chip."""
    mesh = jax.sharding.Mesh(np.array(topology_devices("v5e:1x1")), ("data",))
    return mesh, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_args(shapes, sharding):
    return [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in shapes]


def compile_seconds(fn, shapes, sharding):
    args = abstract_args(shapes, sharding)
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start


def with_module(make_module, apply, input_shape):
    """(fn of (x, *parameter leaves), their shapes) for ``apply(module, x)``."""
    graphdef, state = nnx.split(nnx.eval_shape(make_module))
    leaves, treedef = jax.tree.flatten(state)

    def fn(x, *leaves):
        return apply(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), x)

    return fn, [(input_shape, F32)] + [(leaf.shape, leaf.dtype) for leaf in leaves]


def config(depth):
    return SasMambaConfig(num_frames=FRAMES, dim=DIM, depth=depth, scan="pallas")


def model_forward(depth):
    return with_module(
        lambda: SasMamba(config(depth), rngs=nnx.Rngs(0)),
        lambda m, x: m(x, rngs=nnx.Rngs(dropout=0)),
        (BATCH, FRAMES, JOINTS, 2),
    )


def block_forward(then_norm):
    def apply(block, x):
        y = block(x)
        return block.norm2(y) if then_norm else y

    return with_module(
        lambda: SasMambaBlock(config(1), rngs=nnx.Rngs(0)), apply, (BATCH, FRAMES, JOINTS, DIM)
    )


def parameter_gradient(fn, shapes):
    """Gradient of sum(fn(x, *leaves)**2) with respect to the leaves, as training takes it."""
    return jax.grad(lambda *args: jnp.sum(fn(*args) ** 2), argnums=range(1, len(shapes))), shapes


def squared_sum_gradient(op, shapes):
    return jax.grad(lambda *args: jnp.sum(op(*args) ** 2), argnums=range(len(shapes))), shapes


def main():
    mesh, replicated = single_v5e_chip()
    grid = (BATCH, FRAMES, JOINTS, INNER)
    scan_shapes = [(BATCH, LENGTH, 4, INNER)] * 2 + [(4, INNER, 16)] + [(BATCH, LENGTH, 4, 16)] * 2
    scan_shapes += [(4, INNER), (4, INNER)]
    parts = {
        "model forward, depth 5 (published)": model_forward(5),
        "model forward, depth 1": model_forward(1),
        "model forward+backward, depth 1": parameter_gradient(*model_forward(1)),
        "one block forward": block_forward(then_norm=False),
        "one block forward, then a LayerNorm": block_forward(then_norm=True),
        "deformable conv fwd+bwd": squared_sum_gradient(
            deform_conv2d_depthwise,
            [(grid, F32), (grid[:3] + (18,), F32), ((3, 3, INNER), F32), ((INNER,), F32)],
        ),
        "stride scan fwd+bwd": squared_sum_gradient(stride_scan, [(grid, F32)]),
        "pallas selective scan fwd+bwd": squared_sum_gradient(
            lambda *a: selective_scan(*a, backend="pallas"), [(shape, F32) for shape in scan_shapes]
        ),
    }
    print("deviceless compile for v5e:1x1 at B=16, T=243, dim 64, wall seconds")
    with jax.set_mesh(mesh):
        for name, (fn, shapes) in parts.items():
            print(f"{name:<40}{compile_seconds(fn, shapes, replicated):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
