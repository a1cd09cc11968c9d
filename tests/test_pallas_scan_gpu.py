"""Tests of the GPU (Triton) selective-scan kernels in ``sasmamba_jax.ops.pallas_scan_gpu``.

Numerics run the kernels in Pallas interpret mode on CPU and compare them
with the float64 numpy loop of tests/numpy_reference.py (its adjoint is
checked against finite differences in test_selective_scan.py), including
the state each chunk starts from. The kernels take the op's own arguments
and layout, so the reference gets exactly the same inputs.

The GPU lowering is checked without a GPU: ``jax.export`` for CUDA at the
published size. Registers, spills and memory of the compiled kernels are
checked in tests/test_gpu_kernels.py.

Error measure: max |ours - reference| / max |reference| over each array.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from test_selective_scan import INPUT_NAMES, _random_inputs

from sasmamba_jax.ops import pallas_scan_gpu as kernels

CHUNK, BLOCK_E = kernels.CHUNK, kernels.BLOCK_E
TRITON_CALL = "__gpu$xla.gpu.triton"


def _relative_error(ours, reference):
    reference = np.asarray(reference, np.float64)
    return np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference))


@functools.cache
def _interpreted_forward_and_backward():
    def run(args, grad_y):
        y, chunk_starts, dt_sums = kernels.forward(*args, interpret=True)
        grads = kernels.backward(*args, chunk_starts, dt_sums, grad_y, interpret=True)
        return y, chunk_starts, grads

    return jax.jit(run)


# Interpret mode compiles the kernels for XLA:CPU, a minute or more a state
# size; the default run checks the GPU kernels through the op
# (tests/test_pallas_scan.py).
@pytest.mark.slow
@pytest.mark.parametrize("state", [4, 16])
def test_forward_chunk_starts_and_gradients_match_numpy_on_a_ragged_last_chunk(state):
    # L = 3 chunks - 3 steps: the last chunk's loads past L are masked and
    # its stores dropped; E = 2 channel blocks; R = 3 * 2 rows.
    batch, directions, length, channels = 3, 2, 3 * CHUNK - 3, 2 * BLOCK_E
    inputs = _random_inputs(0, batch, length, directions, channels, state)
    grad_y = np.random.default_rng(1).normal(size=inputs["u"].shape).astype(np.float32)

    y, chunk_starts, grads = _interpreted_forward_and_backward()(
        [jnp.asarray(inputs[name]) for name in INPUT_NAMES], jnp.asarray(grad_y)
    )

    expected_y, states = ref._selective_scan_with_states(**inputs)
    # Chunk c starts at step c * CHUNK: the reference's state h_{c * CHUNK},
    # (B, L + 1, K, E, N) -> (B * K, nc, E, N).
    expected_starts = states[:, :length:CHUNK].transpose(0, 2, 1, 3, 4)
    expected_starts = expected_starts.reshape(batch * directions, 3, channels, state)
    expected = ref.selective_scan_vjp(**inputs, grad_y=grad_y)
    assert _relative_error(y, expected_y) < 1e-5
    assert _relative_error(chunk_starts, expected_starts) < 1e-5
    errors = {name: _relative_error(g, expected[name]) for name, g in zip(INPUT_NAMES, grads, strict=True)}
    assert max(errors.values()) < 1e-4, errors


def _published_size_export():
    """jax.export for CUDA of forward + backward at B = 16, L = 4131, K = 4, E = 128, N = 16."""
    batch, length, k, channels, state = 16, 4131, 4, 128, 16

    def forward_and_backward(u, delta, A, B, C, D, delta_bias, grad_y):
        args = (u, delta, A, B, C, D, delta_bias)
        y, chunk_starts, dt_sums = kernels.forward(*args, interpret=False)
        return y, kernels.backward(*args, chunk_starts, dt_sums, grad_y, interpret=False)

    sequence = jax.ShapeDtypeStruct((batch, length, k, channels), jnp.float32)
    projection = jax.ShapeDtypeStruct((batch, length, k, state), jnp.float32)
    channel = jax.ShapeDtypeStruct((k, channels), jnp.float32)
    diagonal = jax.ShapeDtypeStruct((k, channels, state), jnp.float32)
    exported = jax.export.export(
        jax.jit(forward_and_backward),
        platforms=["cuda"],
        # Triton kernels carry no serialisation-compatibility guarantee;
        # this export only inspects the lowering.
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)],
    )(sequence, sequence, diagonal, projection, projection, channel, channel, sequence)
    return exported.mlir_module(), (batch, length, k, channels, state)


def test_cuda_export_lowers_to_triton_kernels_without_full_state_tensors():
    module, (batch, length, k, channels, state) = _published_size_export()
    # Three kernels forward (local chunk ends, the cross-chunk carry,
    # outputs), three backward (local adjoints, the reversed carry,
    # gradients); no Mosaic GPU call.
    assert module.count(f"stablehlo.custom_call @{TRITON_CALL}(") == 6
    assert "mosaic_gpu" not in module
    # The model's layout is read in place: no transpose, no pad.
    assert "stablehlo.transpose" not in module
    assert "stablehlo.pad" not in module
    shapes = re.findall(r"tensor<(\d+(?:x\d+)*)xf32>", module)
    largest = max(int(np.prod([int(d) for d in shape.split("x")])) for shape in shapes)
    # The largest arrays are the (B * K, nc, E, N) chunk states, 1 / CHUNK of every state.
    assert largest == batch * k * -(-length // CHUNK) * channels * state


_MISFIT = f"E must be a multiple of {BLOCK_E}"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=(1, CHUNK, 2, BLOCK_E + 16)), _MISFIT),
        (dict(u=(1, 65536 * CHUNK, 2, BLOCK_E)), "more than 65535 chunks"),
        (dict(A=(2, BLOCK_E, 3)), "N a power of two"),
        (dict(B=(1, CHUNK, 2, 8)), "B must have shape"),
        (dict(A=(2, BLOCK_E, 4, jnp.bfloat16)), "A must be float32"),
        (dict(delta=(1, CHUNK, 2, 8)), "delta must have shape"),
    ],
)
def test_rejects_bad_inputs(change, message):
    sequence, projection = (1, CHUNK, 2, BLOCK_E), (1, CHUNK, 2, 4)
    shapes = dict(
        u=sequence,
        delta=sequence,
        A=(2, BLOCK_E, 4),
        B=projection,
        C=projection,
        D=(2, BLOCK_E),
        delta_bias=(2, BLOCK_E),
    )
    shapes.update(change)
    # Abstract arguments: the checks run at trace time, nothing is allocated.
    # A spec's last entry may be its dtype (float32 otherwise).
    args = {
        name: jax.ShapeDtypeStruct(spec[:-1], spec[-1])
        if spec[-1] is jnp.bfloat16
        else jax.ShapeDtypeStruct(spec, jnp.float32)
        for name, spec in shapes.items()
    }
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(functools.partial(kernels.forward, interpret=True), **args)


def test_backward_rejects_chunk_starts_of_another_shape():
    u = jnp.zeros((1, 2 * CHUNK, 2, BLOCK_E))
    A, B, D = jnp.zeros((2, BLOCK_E, 4)), jnp.zeros((1, 2 * CHUNK, 2, 4)), jnp.zeros((2, BLOCK_E))
    expected = re.escape(f"chunk_starts must have shape (2, 2, {BLOCK_E}, 4)")
    with pytest.raises(ValueError, match=expected):
        kernels.backward(
            u, u, A, B, B, D, D, jnp.zeros((2, 1, BLOCK_E, 4)), jnp.zeros((2, 2, BLOCK_E)), u, interpret=True
        )
