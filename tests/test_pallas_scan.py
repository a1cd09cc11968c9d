"""The fused Pallas scan: numerics in interpret mode, and its TPU and GPU lowerings.

Numerics: forward and every gradient against the float64 numpy loop
(tests/numpy_reference.py) on sizes no tile divides. Lowerings, without the
hardware: a deviceless compile for one TPU v5e chip through libtpu (the
kernels must lower to Mosaic and fit in memory), and ``jax.export`` for CUDA.
"""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from test_selective_scan import INPUT_NAMES, _random_inputs, _relative_error

from sasmamba_jax import targets
from sasmamba_jax.ops import pallas_scan, pallas_scan_tpu, selective_scan

# (batch, L, K, E, N): L = 150 and 131 end in a ragged tile of 128 steps and
# 40 is shorter than one; E = 20 and 36 are not multiples of 128, E = 256 is
# two channel blocks.
ODD_SIZES = [(2, 150, 2, 20, 4), (1, 131, 4, 256, 16), (1, 40, 4, 36, 16)]
# The published training scan: B = 16 clips of 243 frames x 17 joints, K = 4
# directions, E = 128 channels, N = 16.
PUBLISHED = dict(batch=16, length=243 * 17, directions=4, channels=128, state=16)


def _case(seed, batch, length, directions, channels, state):
    inputs = _random_inputs(seed, batch, length, directions, channels, state)
    grad_y = np.random.default_rng(seed + 1).normal(size=inputs["u"].shape).astype(np.float32)
    return inputs, grad_y


@functools.cache
def _scan_and_vjp(kernel):
    scan = functools.partial(pallas_scan.selective_scan, kernel=kernel)

    def scan_and_vjp(args, grad_y):
        y, vjp = jax.vjp(scan, *args)
        return y, dict(zip(INPUT_NAMES, vjp(grad_y), strict=True))

    return jax.jit(scan_and_vjp)


@pytest.mark.parametrize("sizes", ODD_SIZES, ids=["x".join(map(str, s)) for s in ODD_SIZES])
def test_tpu_kernel_forward_and_gradients_match_numpy(sizes):
    inputs, grad_y = _case(11, *sizes)
    args = [jnp.asarray(inputs[name]) for name in INPUT_NAMES]
    y, grads = _scan_and_vjp("tpu")(args, jnp.asarray(grad_y))

    assert y.dtype == jnp.float32 and y.shape == inputs["u"].shape
    assert _relative_error(y, ref.selective_scan(**inputs)) < 1e-5
    expected = ref.selective_scan_vjp(**inputs, grad_y=grad_y)
    for name in INPUT_NAMES:
        assert grads[name].shape == inputs[name].shape, name
        assert _relative_error(grads[name], expected[name]) < 1e-4, name


def test_gpu_kernel_forward_and_gradients_match_numpy():
    inputs, grad_y = _case(12, 2, 37, 4, 40, 16)
    args = [jnp.asarray(inputs[name]) for name in INPUT_NAMES]
    y, grads = _scan_and_vjp("gpu")(args, jnp.asarray(grad_y))

    assert _relative_error(y, ref.selective_scan(**inputs)) < 1e-5
    expected = ref.selective_scan_vjp(**inputs, grad_y=grad_y)
    for name in INPUT_NAMES:
        assert _relative_error(grads[name], expected[name]) < 1e-4, name


def test_bfloat16_inputs_run_in_float32():
    inputs = _random_inputs(13, 1, 150, 4, 20, 16)
    bf16_args = [jnp.asarray(inputs[name], jnp.bfloat16) for name in INPUT_NAMES]
    y = jax.jit(functools.partial(selective_scan, backend="pallas"))(*bf16_args)
    expected = ref.selective_scan(*(np.asarray(arg, np.float64) for arg in bf16_args))

    assert y.dtype == jnp.bfloat16
    # Only the final rounding to bf16 (8 significant bits) separates y from
    # the float64 scan of the same bf16 numbers.
    bf16_step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(expected), 1e-30))) - 7)
    assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= bf16_step + 1e-5 * np.abs(expected).max())
    grads = jax.eval_shape(
        jax.grad(lambda *a: selective_scan(*a, backend="pallas").astype(jnp.float32).sum(), range(7)),
        *bf16_args,
    )
    assert [g.dtype for g in grads] == [jnp.bfloat16] * len(INPUT_NAMES)


def test_rejects_an_unknown_kernel():
    args = [jnp.asarray(v) for v in _random_inputs(14, 1, 4, 1, 2, 4).values()]
    with pytest.raises(ValueError, match="unknown Pallas scan kernel 'cuda'"):
        pallas_scan.selective_scan(*args, kernel="cuda")


def _abstract_inputs(sharding=None):
    b, length, k, e, n = PUBLISHED.values()
    shapes = [
        (b, length, k, e),
        (b, length, k, e),
        (k, e, n),
        (b, length, k, n),
        (b, length, k, n),
        (k, e),
        (k, e),
    ]
    return [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding) for shape in shapes]


def _loss_gradients(*args):
    return jax.grad(lambda *a: jnp.sum(selective_scan(*a, backend="pallas") ** 2), range(7))(*args)


def test_published_size_compiles_for_tpu_v5e_to_mosaic_without_storing_states():
    pytest.importorskip("libtpu", reason="libtpu is not installed: pip install 'jax[tpu]'")
    devices = targets.topology_devices("v5e:1x1")
    replicated = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), ("data",)), jax.sharding.PartitionSpec()
    )
    with targets.persistent_cache_for(devices):
        lowered = jax.jit(_loss_gradients).lower(*_abstract_inputs(replicated))
        assert lowered.as_text().count("tpu_custom_call") == 2  # the forward and backward kernels
        memory = lowered.compile().memory_analysis()

    b, length, k, e, n = PUBLISHED.values()
    every_state_bytes = b * length * k * e * n * 4  # 2.17 GB
    assert memory.temp_size_in_bytes < every_state_bytes / 4


def test_published_size_lowers_for_cuda_to_a_triton_kernel():
    # Triton calls carry no serialisation-compatibility guarantee; lowering
    # is what is checked here, the export is never stored.
    triton = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    exported = jax.export.export(jax.jit(_loss_gradients), platforms=["cuda"], disabled_checks=[triton])(
        *_abstract_inputs()
    )
    module = exported.mlir_module()
    assert len(re.findall(r"custom_call @__gpu\$xla\.gpu\.triton", module)) >= 2
    assert "tpu_custom_call" not in module
    # No array in the program holds every state: the largest are the chunk
    # states, 1 / CHUNK of them.
    b, length, k, e, n = PUBLISHED.values()
    sizes = [
        np.prod([int(d) for d in dims.split("x")]) for dims in re.findall(r"tensor<([\dx]+)xf32>", module)
    ]
    assert max(sizes) < b * length * k * e * n / 8


def test_ragged_tiles_never_reach_the_state():
    """A ragged last tile runs only its real steps: the same prefix, whatever follows."""
    inputs = _random_inputs(15, 1, 2 * pallas_scan_tpu.TILE_LEN, 2, 8, 4)
    args = [jnp.asarray(inputs[name]) for name in INPUT_NAMES]
    full = jax.jit(functools.partial(selective_scan, backend="pallas"))(*args)
    cut = pallas_scan_tpu.TILE_LEN + 5
    prefix_args = [a[:, :cut] if a.ndim == 4 and a.shape[1] == full.shape[1] else a for a in args]
    prefix = jax.jit(functools.partial(selective_scan, backend="pallas"))(*prefix_args)
    np.testing.assert_allclose(np.asarray(prefix), np.asarray(full[:, :cut]), rtol=0, atol=1e-6)


SHARDED_CHILD = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from test_selective_scan import INPUT_NAMES, _random_inputs
from sasmamba_jax.ops import selective_scan

inputs = _random_inputs(16, 4, 40, 2, 8, 4)
args = [jnp.asarray(inputs[name]) for name in INPUT_NAMES]
loss = lambda *a: jnp.sum(selective_scan(*a, backend="pallas") ** 2)
grads = jax.jit(jax.grad(loss, range(7)))
one_device = grads(*args)
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "fsdp"))
batch, whole = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())
placed = [jax.device_put(a, batch if a.shape[0] == 4 and a.ndim == 4 else whole) for a in args]
with jax.set_mesh(mesh):
    text = grads.lower(*placed).as_text()
    on_mesh = grads(*placed)
print(json.dumps({
    "errors": {n: float(jnp.max(jnp.abs(a - b))) for n, a, b in zip(INPUT_NAMES, one_device, on_mesh)},
    "specs": {n: str(g.sharding.spec) for n, g in zip(INPUT_NAMES, on_mesh)},
    "shard_map": "shard_map" in text or "sdy.manual_computation" in text,
}))
"""


@pytest.mark.slow
def test_on_a_mesh_each_device_scans_its_batch_slice():
    """Under jax.set_mesh the kernels run per batch shard and the gradients equal one device's."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([os.path.dirname(tests_dir), tests_dir]),
    }
    child = subprocess.run(
        [sys.executable, "-c", SHARDED_CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["shard_map"]
    for name in ("u", "delta", "B", "C"):
        assert result["specs"][name] == "P(('data', 'fsdp'),)", name
    for name, error in result["errors"].items():
        assert error < 1e-5, (name, error)
