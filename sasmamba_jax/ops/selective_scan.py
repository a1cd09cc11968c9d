"""The selective scan (Mamba's S6 recurrence) with three interchangeable back ends.

Dimension letters: B batch, L sequence length, K scan directions, E channels,
N state size.

For every (b, k, e) the scan runs the diagonal linear recurrence

        dt_l = softplus(delta_l + delta_bias)
        h_l  = exp(dt_l * A) * h_{l-1} + dt_l * B_l * u_l       h: (N,), h_0 = 0
        y_l  = <C_l, h_l> + D * u_l

Back ends (one argument, same function):

* ``"sequential"``: ``lax.scan`` over L, carrying the (B, K, E, N) state. The
    reference, and the lightest in memory.
* ``"associative"``: ``lax.associative_scan`` over the whole sequence. Fully
    parallel, but it materialises every (B, L, K, E, N) state (and more in the
    backward pass).
* ``"chunked"``: ``lax.scan`` over chunks of ``chunk_size`` steps, an
    associative scan inside each chunk, the chunk body under ``jax.checkpoint``
    so only one chunk's states ever live at once; the backward pass recomputes
    them.

Whatever the input dtype, the state, the discretisation (exp, softplus) and the
accumulation run in float32; the output is cast back to the dtype of ``u``.
"""

from typing import Literal

import jax
import jax.numpy as jnp

Backend = Literal["auto", "associative", "chunked", "sequential"]
BACKENDS = ("auto", "associative", "chunked", "sequential")
# What "auto" runs on each platform: the back end measured fastest there for
# the published model (benchmarks/scan.py and benchmarks/model.py; README,
# "Performance"). TPU is unmeasured and keeps the associative scan.
AUTO_BACKENDS = {"cpu": "sequential", "gpu": "associative", "tpu": "associative"}


def resolve_backend(backend: Backend) -> str:
    """The concrete back end ``backend`` stands for on the default platform."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return AUTO_BACKENDS.get(jax.default_backend(), "associative")
    return backend


def selective_scan(
    u: jax.Array,
    delta: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array,
    delta_bias: jax.Array,
    *,
    backend: Backend = "associative",
    chunk_size: int = 64,
) -> jax.Array:
    """Runs the selective scan over axis 1 of its inputs.

    Args:
        u: (B, L, K, E) input sequence.
        delta: (B, L, K, E) step sizes before ``softplus(delta + delta_bias)``.
        A: (K, E, N) state matrix diagonals (negative for a stable scan).
        B: (B, L, K, N) input projections.
        C: (B, L, K, N) output projections.
        D: (K, E) skip connection.
        delta_bias: (K, E) step-size bias.
        backend: "associative", "chunked", "sequential", or "auto" (the
            fastest measured on the default platform; ``AUTO_BACKENDS``).
        chunk_size: steps per chunk of the "chunked" back end.

    Returns:
        (B, L, K, E) outputs in the dtype of ``u``.
    """
    backend = resolve_backend(backend)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    u32, B32, C32, A32, D32 = (t.astype(jnp.float32) for t in (u, B, C, A, D))
    dt = jax.nn.softplus(delta.astype(jnp.float32) + delta_bias.astype(jnp.float32))
    if backend == "sequential":
        y = _sequential_scan(u32, dt, A32, B32, C32)
    elif backend == "associative":
        y = _associative_scan(u32, dt, A32, B32, C32)
    else:
        y = _chunked_scan(u32, dt, A32, B32, C32, chunk_size)
    return (y + u32 * D32).astype(u.dtype)


def _discretise(u, dt, A, B):
    """Per-step decay and input of the recurrence, each (..., L, K, E, N)."""
    decay = jnp.exp(dt[..., None] * A)
    drive = (dt * u)[..., None] * B[..., None, :]
    return decay, drive


def _combine(earlier, later):
    """Composes two affine maps h -> a * h + b, earlier one first."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _read_out(states, C):
    """y_l = <C_l, h_l>: (B, L, K, E, N) states, (B, L, K, N) C -> (B, L, K, E)."""
    return jnp.einsum("blken,blkn->blke", states, C)


def _associative_scan(u, dt, A, B, C):
    decay, drive = _discretise(u, dt, A, B)
    _, states = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
    return _read_out(states, C)


def _sequential_scan(u, dt, A, B, C):
    # One loop per direction: the loops are independent, so XLA's CPU runtime
    # can run them side by side. The state is laid out (N, B, E): the channel
    # axis, which every broadcast in the step shares, is the contiguous one.
    # Both choices measured about twice as fast as one (B, K, E, N) loop on CPU.
    outputs = [
        _sequential_scan_one_direction(u[:, :, i], dt[:, :, i], A[i], B[:, :, i], C[:, :, i])
        for i in range(u.shape[2])
    ]
    return jnp.stack(outputs, axis=2)


def _sequential_scan_one_direction(u, dt, A, B, C):
    """u, dt: (B, L, E); A: (E, N); B, C: (B, L, N) -> (B, L, E)."""
    batch, _, e = u.shape
    A_t = A.T[:, None, :]

    def step(h, inputs):
        u_l, dt_l, B_l, C_l = inputs
        h = jnp.exp(dt_l * A_t) * h + (dt_l * u_l) * B_l[..., None]
        return h, jnp.einsum("nbe,nb->be", h, C_l)

    h0 = jnp.zeros((A.shape[-1], batch, e), jnp.float32)
    inputs = (jnp.moveaxis(u, 1, 0), jnp.moveaxis(dt, 1, 0), B.transpose(1, 2, 0), C.transpose(1, 2, 0))
    _, ys = jax.lax.scan(step, h0, inputs)
    return jnp.moveaxis(ys, 0, 1)


def _chunked_scan(u, dt, A, B, C, chunk_size):
    batch, length, k, e = u.shape
    chunk_size = min(chunk_size, length)
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length
    # Padding steps have dt = 0: decay 1 and no input, so they leave the state
    # untouched and their outputs are dropped below.
    padded = [jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (u, dt, B, C)]
    chunked = [jnp.moveaxis(t.reshape(batch, num_chunks, chunk_size, *t.shape[2:]), 1, 0) for t in padded]

    @jax.checkpoint
    def chunk_step(h, inputs):
        u_c, dt_c, B_c, C_c = inputs
        decay, drive = _discretise(u_c, dt_c, A, B_c)
        cum_decay, local_states = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
        states = cum_decay * h[:, None] + local_states
        return states[:, -1], _read_out(states, C_c)

    h0 = jnp.zeros((batch, k, e, A.shape[-1]), jnp.float32)
    _, ys = jax.lax.scan(chunk_step, h0, chunked)
    ys = jnp.moveaxis(ys, 0, 1).reshape(batch, num_chunks * chunk_size, k, e)
    return ys[:, :length]
