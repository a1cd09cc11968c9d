"""Tests of ``sasmamba_jax.ops.selective_scan`` against a float64 numpy loop.

The numpy reference (tests/numpy_reference.py) runs the recurrence one step at
a time, and its hand-derived reverse-time adjoint is itself checked against
central finite differences here, so the JAX gradients are compared with an
independently trustworthy backward.

Error measure: "relative error" of an array is max |ours - reference| divided
by max |reference| over that array (one number per output or gradient).
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from sasmamba_jax.ops import selective_scan

FIXTURE_FILE = pathlib.Path(__file__).parent / "data" / "official_tiny.npz"
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
# (backend, chunk_size) pairs; L = 36 in the random tests: 12 divides it, 7
# does not, 1 is a chunk per step and 50 is longer than the sequence. For the
# sequential back end chunk_size is the number of steps between the states
# its backward pass keeps.
SCAN_CONFIGS = (
    ("sequential", 64),
    ("sequential", 12),
    ("sequential", 7),
    ("sequential", 1),
    ("associative", 64),
    ("chunked", 12),
    ("chunked", 7),
    ("chunked", 1),
    ("chunked", 50),
    ("pallas", 64),
)
CONFIG_IDS = [f"{backend}-{chunk}" for backend, chunk in SCAN_CONFIGS]


def _relative_error(ours, reference):
    reference = np.asarray(reference, np.float64)
    return np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference))


def _random_inputs(seed, batch=2, length=36, directions=2, channels=3, state=16):
    """Realistic scan inputs: A = -exp(log(1..N)), softplus(delta + bias) about 0.05 to 1.3.

    With those, exp(dt * A) spans roughly 1e-11 .. 0.9, about 60% of it between
    0.01 and 0.99: decays are neither all 0 nor all 1, so the state carries
    information over several steps.
    """
    rng = np.random.default_rng(seed)
    a_log = np.log(np.arange(1, state + 1, dtype=np.float64))
    a_log = np.broadcast_to(a_log, (directions, channels, state)) + rng.normal(
        scale=0.1, size=(directions, channels, state)
    )
    inputs = {
        "u": rng.normal(size=(batch, length, directions, channels)),
        "delta": rng.uniform(-2.0, 1.0, size=(batch, length, directions, channels)),
        "A": -np.exp(a_log),
        "B": rng.normal(size=(batch, length, directions, state)),
        "C": rng.normal(size=(batch, length, directions, state)),
        "D": rng.normal(size=(directions, channels)),
        "delta_bias": rng.uniform(-0.5, 0.5, size=(directions, channels)),
    }
    return {name: value.astype(np.float32) for name, value in inputs.items()}


@functools.cache
def _jitted_scan(backend, chunk_size):
    return jax.jit(functools.partial(selective_scan, backend=backend, chunk_size=chunk_size))


@functools.cache
def _jitted_scan_and_vjp(backend, chunk_size):
    """One compiled function returning the output and the vjp of a cotangent."""
    scan = functools.partial(selective_scan, backend=backend, chunk_size=chunk_size)

    def scan_and_vjp(args, grad_y):
        y, vjp = jax.vjp(scan, *args)
        return y, dict(zip(INPUT_NAMES, vjp(grad_y), strict=True))

    return jax.jit(scan_and_vjp)


@functools.cache
def _random_case(seed):
    """Inputs, a cotangent and the sequential back end's output and gradients for them."""
    inputs = _random_inputs(seed)
    grad_y = np.random.default_rng(seed + 1).normal(size=inputs["u"].shape).astype(np.float32)
    args = [jnp.asarray(inputs[name]) for name in INPUT_NAMES]
    sequential = _jitted_scan_and_vjp("sequential", 64)(args, jnp.asarray(grad_y))
    return inputs, grad_y, sequential


def test_numpy_adjoint_matches_finite_differences():
    inputs = {
        name: value.astype(np.float64)
        for name, value in _random_inputs(0, batch=1, length=6, channels=2, state=3).items()
    }
    grad_y = np.random.default_rng(1).normal(size=inputs["u"].shape)
    grads = ref.selective_scan_vjp(**inputs, grad_y=grad_y)

    def loss(values):
        return np.sum(ref.selective_scan(**values) * grad_y)

    step = 1e-6
    for name in INPUT_NAMES:
        numeric = np.zeros_like(inputs[name])
        for index in np.ndindex(inputs[name].shape):
            shifted = {key: value.copy() for key, value in inputs.items()}
            shifted[name][index] += step
            up = loss(shifted)
            shifted[name][index] -= 2 * step
            numeric[index] = (up - loss(shifted)) / (2 * step)
        assert _relative_error(grads[name], numeric) < 1e-7, name


def test_numpy_forward_matches_closed_form_unrolled_sum():
    """y_l = sum_{s <= l} <C_l, exp(A * sum_{s < r <= l} dt_r) * dt_s * B_s> u_s + D u_l."""
    inputs = {
        name: value.astype(np.float64)
        for name, value in _random_inputs(2, batch=1, length=5, channels=2, state=4).items()
    }
    dt = ref.softplus(inputs["delta"] + inputs["delta_bias"])[0]
    u, A, B, C, D = (inputs[name] for name in ("u", "A", "B", "C", "D"))
    expected = np.zeros_like(u[0])
    for out_step in range(u.shape[1]):
        for in_step in range(out_step + 1):
            elapsed = dt[in_step + 1 : out_step + 1].sum(axis=0)
            kernel = np.exp(elapsed[..., None] * A) * dt[in_step][..., None] * B[0, in_step, :, None]
            expected[out_step] += np.sum(kernel * C[0, out_step, :, None], -1) * u[0, in_step]
        expected[out_step] += D * u[0, out_step]
    np.testing.assert_allclose(ref.selective_scan(**inputs)[0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("backend", "chunk_size"), SCAN_CONFIGS, ids=CONFIG_IDS)
def test_forward_and_gradients_match_numpy_and_sequential(backend, chunk_size):
    inputs, grad_y, (sequential_y, sequential_grads) = _random_case(3)
    expected_y = ref.selective_scan(**inputs)
    expected_grads = ref.selective_scan_vjp(**inputs, grad_y=grad_y)

    args = [jnp.asarray(inputs[name]) for name in INPUT_NAMES]
    y, grads = _jitted_scan_and_vjp(backend, chunk_size)(args, jnp.asarray(grad_y))

    assert y.dtype == jnp.float32 and y.shape == inputs["u"].shape
    assert _relative_error(y, expected_y) < 1e-5
    assert _relative_error(y, sequential_y) < 1e-5
    for name in INPUT_NAMES:
        assert grads[name].shape == inputs[name].shape, name
        assert _relative_error(grads[name], expected_grads[name]) < 1e-5, name
        assert _relative_error(grads[name], sequential_grads[name]) < 1e-5, name


def _release_scan_in_our_layout():
    """The release's recorded first-block scan, moved into the (B, L, K, E) layout."""
    data = np.load(FIXTURE_FILE)
    prefix = "scan.STEblocks.0."
    assert bool(data[prefix + "delta_softplus"])
    directions = data[prefix + "Bs"].shape[1]
    batch, channels_total, length = data[prefix + "u"].shape
    channels = channels_total // directions

    def sequence(name):  # (B, K*E, L) -> (B, L, K, E)
        return data[prefix + name].reshape(batch, directions, channels, length).transpose(0, 3, 1, 2)

    def projection(name):  # (B, K, N, L) -> (B, L, K, N)
        return data[prefix + name].transpose(0, 3, 1, 2)

    inputs = {
        "u": sequence("u"),
        "delta": sequence("delta"),
        "A": data[prefix + "A"].reshape(directions, channels, -1),
        "B": projection("Bs"),
        "C": projection("Cs"),
        "D": data[prefix + "Ds"].reshape(directions, channels),
        "delta_bias": data[prefix + "delta_bias"].reshape(directions, channels),
    }
    return inputs, sequence("y")


def test_numpy_reference_reproduces_release_scan():
    inputs, expected = _release_scan_in_our_layout()
    np.testing.assert_allclose(ref.selective_scan(**inputs), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("backend", "chunk_size"),
    [("sequential", 64), ("associative", 64), ("chunked", 64), ("pallas", 64), ("auto", 64)],
)
def test_back_ends_reproduce_release_scan(backend, chunk_size):
    inputs, expected = _release_scan_in_our_layout()
    y = _jitted_scan(backend, chunk_size)(*(jnp.asarray(inputs[name]) for name in INPUT_NAMES))
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("backend", "chunk_size"), [("sequential", 64), ("associative", 64), ("chunked", 7)])
def test_bfloat16_inputs_give_bfloat16_output_of_float32_math(backend, chunk_size):
    inputs = _random_inputs(7)
    bf16_args = [jnp.asarray(inputs[name], jnp.bfloat16) for name in INPUT_NAMES]
    y = _jitted_scan(backend, chunk_size)(*bf16_args)
    # The same bf16-rounded numbers, scanned in float32 (the compiled function
    # of the float32 tests) and in float64.
    f32_args = [arg.astype(jnp.float32) for arg in bf16_args]
    y_f32, _ = _jitted_scan_and_vjp(backend, chunk_size)(f32_args, jnp.zeros_like(f32_args[0]))
    y_f64 = ref.selective_scan(*(np.asarray(arg, np.float64) for arg in f32_args))

    assert y.dtype == jnp.bfloat16
    assert _relative_error(y_f32, y_f64) < 1e-5
    # Only the final rounding to bf16 (8 significant bits) separates y from
    # the float32 result: at most one bf16 step either way of each value.
    bf16_step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(y_f64), 1e-30))) - 7)
    assert np.all(np.abs(np.asarray(y, np.float64) - np.asarray(y_f32)) <= bf16_step + 1e-6)


def test_rejects_unknown_backend_and_bad_chunk_size():
    args = [jnp.asarray(value) for value in _random_inputs(8, length=4).values()]
    with pytest.raises(ValueError, match="backend"):
        selective_scan(*args, backend="parallel")
    for chunk_size in (0, -3):
        with pytest.raises(ValueError, match="chunk_size"):
            selective_scan(*args, backend="chunked", chunk_size=chunk_size)


def test_chunked_and_sequential_gradients_never_store_every_state():
    # The chunked and sequential back ends keep one state per chunk (segment)
    # and recompute a chunk's states in the backward pass, so their compiled
    # temporaries stay below one (B, L, K, E, N) array of states; the
    # associative back end needs about 13 of them here.
    batch, length, k, e, n = 1, 512, 4, 32, 16
    args = [
        jnp.zeros((batch, length, k, e)),
        jnp.zeros((batch, length, k, e)),
        -jnp.ones((k, e, n)),
        jnp.zeros((batch, length, k, n)),
        jnp.zeros((batch, length, k, n)),
        jnp.ones((k, e)),
        jnp.zeros((k, e)),
    ]
    states_bytes = batch * length * k * e * n * 4

    def temp_bytes(backend):
        def loss(*scan_args):
            return selective_scan(*scan_args, backend=backend, chunk_size=16).sum()

        grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
        return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("chunked") < states_bytes < temp_bytes("associative")
    assert temp_bytes("sequential") < states_bytes
