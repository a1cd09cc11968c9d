"""Where a TPU compile's time goes: the model's parts compiled for one v5e chip, no TPU needed.

    python benchmarks/tpu_compile_parts.py

Compiles (libtpu, deviceless) forward+backward of: a small SasMamba (dim 32,
9 frames, one layer per stack) with the pallas and the sequential scan; one
depthwise deformable convolution and one stride scan at that model's sizes;
the Pallas selective scan at the published training size. Prints each
compile's wall time, side by side in one run.
"""

import os
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from sasmamba_jax.model import SasMamba, SasMambaConfig  # noqa: E402
from sasmamba_jax.ops import deform_conv2d_depthwise, selective_scan, stride_scan  # noqa: E402


def compile_seconds(fn, shapes, sharding):
    args = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in shapes]
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start


def model_gradient(scan, frames=9):
    config = SasMambaConfig(num_frames=frames, depth=1, dim=32, scan=scan)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: SasMamba(config, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree.flatten(state)

    def loss(x, *leaves):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        return jnp.sum(model(x) ** 2)

    shapes = [((4, frames, 17, 2), jnp.float32)] + [(leaf.shape, leaf.dtype) for leaf in leaves]
    return jax.grad(loss, argnums=range(1, len(leaves) + 1)), shapes


def squared_sum_gradient(op, num_args):
    return jax.grad(lambda *args: jnp.sum(op(*args) ** 2), argnums=range(num_args))


def main():
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name="v5e:1x1",
        chip_config_name="default",
        chips_per_host_bounds=(1, 1, 1),
        num_slices=1,
    )
    mesh = jax.sharding.Mesh(np.array(topology.devices), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    f32 = jnp.float32
    batch, frames, joints, channels = 4, 9, 17, 64
    published = [(16, 4131, 4, 128), (16, 4131, 4, 128), (4, 128, 16), (16, 4131, 4, 16), (16, 4131, 4, 16)]
    published += [(4, 128), (4, 128)]
    parts = {
        "model fwd+bwd, scan=pallas": model_gradient("pallas"),
        "model fwd+bwd, scan=sequential": model_gradient("sequential"),
        "deformable conv fwd+bwd": (
            squared_sum_gradient(deform_conv2d_depthwise, 4),
            [
                ((batch, frames, joints, channels), f32),
                ((batch, frames, joints, 18), f32),
                ((3, 3, channels), f32),
                ((channels,), f32),
            ],
        ),
        "stride scan fwd+bwd": (
            squared_sum_gradient(stride_scan, 1),
            [((batch, frames, joints, channels), f32)],
        ),
        "pallas scan fwd+bwd, published size": (
            squared_sum_gradient(lambda *a: selective_scan(*a, backend="pallas"), 7),
            [(shape, f32) for shape in published],
        ),
    }
    print("deviceless compile for v5e:1x1, wall seconds")
    for name, (fn, shapes) in parts.items():
        print(f"{name:<40}{compile_seconds(fn, shapes, replicated):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
