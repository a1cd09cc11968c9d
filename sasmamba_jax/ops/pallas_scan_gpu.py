"""The selective scan's GPU kernels: Pallas with the Triton lowering.

Dimension letters: L sequence length, R rows (batch x directions, row
r = b * K + k), E channels, N state size, S = ``CHUNK`` steps per chunk,
nc = L / S chunks, nE = E / ``BLOCK_E`` channel blocks.

Per row and channel the kernels run (softplus and the D skip term are the
wrapper's, in ``pallas_scan.py``)

        h_l = exp(dt_l * A) * h_{l-1} + dt_l * u_l * B_l,   h_0 = 0,   y_l = <C_l, h_l>

on time-major float32 arrays: u, dt, y (L, R, E); B, C (L, R, N); A broadcast
to every row, (N, R, E).

Why chunks with a cross-chunk correction. One program per (row, channel
block) walking all of L would give 64 x 4 = 256 programs at the published
size (B=16, K=4, E=128) on an H200's 132 SMs, each running 4131 dependent
steps: latency-bound, with most warp slots idle. The recurrence is affine in
h, so L splits into chunks of S steps that run independently: a chunk run
from h = 0 ends in its local state, and the true state entering chunk c + 1
is decay_c * start_c + local_end_c, with decay_c = exp(A * sum of the chunk's
dt). That correction is a scan over only nc = L / S chunk states (XLA,
``lax.associative_scan``); a second kernel then reruns every chunk from its
true entering state and writes y. The grid (R, nE, nc) is 64 x 4 x 259 = 66k
programs at the published size, each keeping its (N, BLOCK_E) state in
registers. The backward pass is the same two passes on the adjoint
g_l = C_l * gy_l + exp(dt_{l+1} A) * g_{l+1}, run backwards: each chunk from
g = 0 at its end, a reversed correction across chunks, then a kernel that
recomputes the chunk's S + 1 states from ``chunk_starts`` (statically
unrolled, in registers) and forms every gradient. Nothing of size
(L, R, E, N) ever reaches HBM; the only state-sized arrays there are the
(nc, N, R, E) chunk states, 1 / S of one.

Reductions are deterministic: grad_A is written as one (N, BLOCK_E) partial
per program, (nc, N, R, E), and grad_B, grad_C as one (S, N) partial per
channel block, (nE, L, R, N); XLA sums the extra axis (on GPU its
tree-reduction rewriter keeps every reduction free of atomics).

The correction uses ``lax.associative_scan`` rather than ``lax.scan``: a scan
would run nc = 259 dependent loop iterations, at least one kernel launch each
on GPU, where the associative scan is 2 log2(nc) levels of elementwise
fusions. Neither has been timed on a GPU yet.

Memory traffic of forward + backward, float32, at the published size after
padding (L = 4144, R = 64, E = 128, N = 16, S = 16, nc = 259): one (L, R, E)
array is 135.8 MB, one (L, R, N) array 17.0 MB, one (nc, N, R, E) chunk-state
array 135.8 MB (every state, (L, R, E, N), would be 2.17 GB).
    Floor, every input read once and every output written once per pass:
        forward reads u, dt, B, C, writes y; backward reads u, dt, grad_y, B,
        C, writes grad_u, grad_dt, grad_B, grad_C (grad_A is 0.5 MB):
        8 (L, R, E) + 6 (L, R, N) arrays = 1.19 GB; 1.46 GB counting
        chunk_starts, written forward and read backward.
    These kernels: pass 1 reads its inputs once more in each direction;
        grad_B and grad_C are written as nE = 4 partials each; and the
        kernels write the local ends, the local adjoints and grad_A's
        partials and read chunk_starts twice and the adjoints after each
        chunk once: 12 (L, R, E) + 14 (L, R, N) + 6 chunk-state arrays read or
        written = 2.70 GB, 2.3x the floor. On top of that come XLA's two
        cross-chunk scans over (nc, N, R, E) arrays and the partial sums.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

CHUNK = 16
BLOCK_E = 32
PAD = dict(length=CHUNK, rows=1, channels=BLOCK_E)
# 4 warps give every thread 4 of a (16, 32) state tile's elements, so the
# backward's 17 recomputed states take about 68 registers a thread.
_COMPILER_PARAMS = pltriton.CompilerParams(num_warps=4, num_stages=1)
# CUDA's limit on the second and third grid dimensions (channel blocks, chunks).
_MAX_GRID_YZ = 65535


def forward(u, dt, A_rows, B, C, *, interpret: bool):
    """Outputs of the scan and the state entering each chunk.

    Args:
        u, dt: (L, R, E) inputs and (post-softplus) step sizes.
        A_rows: (N, R, E) each row's state diagonals.
        B, C: (L, R, N) input and output projections.
        interpret: run the kernels in Pallas interpret mode (CPU tests).

    Returns:
        y (L, R, E) and chunk_starts (L / CHUNK, N, R, E).
    """
    _check_inputs(u, dt, A_rows, B, C)
    length, rows, channels = u.shape
    n = A_rows.shape[0]
    specs = _BlockSpecs(n)
    local_end, dt_sum = _pallas_call(
        _local_end_kernel,
        u.shape,
        in_specs=[specs.sequence, specs.sequence, specs.diagonal, specs.projection],
        out_specs=[specs.state, specs.chunk_sum],
        out_shape=[_chunk_state_shape(u.shape, n), (length // CHUNK, rows, channels)],
        interpret=interpret,
    )(u, dt, A_rows, B)
    chunk_starts = _states_entering_chunks(local_end, _chunk_decay(dt_sum, A_rows))
    (y,) = _pallas_call(
        _output_kernel,
        u.shape,
        in_specs=[
            specs.sequence,
            specs.sequence,
            specs.diagonal,
            specs.projection,
            specs.projection,
            specs.state,
        ],
        out_specs=[specs.sequence],
        out_shape=[u.shape],
        interpret=interpret,
    )(u, dt, A_rows, B, C, chunk_starts)
    return y, chunk_starts


def backward(u, dt, A_rows, B, C, chunk_starts, grad_y, *, interpret: bool):
    """Gradients of <grad_y, y> for every input of ``forward``.

    Args:
        u, dt, A_rows, B, C: as for ``forward``.
        chunk_starts: (L / CHUNK, N, R, E), from ``forward``.
        grad_y: (L, R, E) cotangent of y.
        interpret: run the kernels in Pallas interpret mode (CPU tests).

    Returns:
        grad_u, grad_dt (L, R, E); grad_A_rows (N, R, E), summed over L;
        grad_B, grad_C (L, R, N).
    """
    _check_inputs(u, dt, A_rows, B, C)
    n = A_rows.shape[0]
    _check_shape("chunk_starts", chunk_starts, _chunk_state_shape(u.shape, n))
    _check_shape("grad_y", grad_y, u.shape)
    length, rows, channels = u.shape
    specs = _BlockSpecs(n)
    local_adjoint, dt_sum = _pallas_call(
        _local_adjoint_kernel,
        u.shape,
        in_specs=[specs.sequence, specs.diagonal, specs.projection, specs.sequence],
        out_specs=[specs.state, specs.chunk_sum],
        out_shape=[chunk_starts.shape, (length // CHUNK, rows, channels)],
        interpret=interpret,
    )(dt, A_rows, C, grad_y)
    adjoint_after = _adjoints_after_chunks(local_adjoint, _chunk_decay(dt_sum, A_rows))
    projection_partial_shape = (channels // BLOCK_E, length, rows, n)
    grad_u, grad_dt, grad_A_partial, grad_B_partial, grad_C_partial = _pallas_call(
        _gradient_kernel,
        u.shape,
        in_specs=[
            specs.sequence,
            specs.sequence,
            specs.diagonal,
            specs.projection,
            specs.projection,
            specs.state,
            specs.state,
            specs.sequence,
        ],
        out_specs=[
            specs.sequence,
            specs.sequence,
            specs.state,
            specs.projection_partial,
            specs.projection_partial,
        ],
        out_shape=[u.shape, u.shape, chunk_starts.shape, projection_partial_shape, projection_partial_shape],
        interpret=interpret,
    )(u, dt, A_rows, B, C, chunk_starts, adjoint_after, grad_y)
    return grad_u, grad_dt, grad_A_partial.sum(0), grad_B_partial.sum(0), grad_C_partial.sum(0)


class _BlockSpecs:
    """What one program of the (R, E / BLOCK_E, L / CHUNK) grid sees of each array.

    Program (r, e, c) owns row r, channels e * BLOCK_E ..., steps c * CHUNK ...;
    the row axis (and the chunk and channel-block axes of the per-chunk and
    per-block arrays) are squeezed out of its refs.
    """

    def __init__(self, n):
        # (L, R, E) -> (CHUNK, BLOCK_E)
        self.sequence = pl.BlockSpec((CHUNK, None, BLOCK_E), lambda r, e, c: (c, r, e))
        # (L, R, N) -> (CHUNK, N)
        self.projection = pl.BlockSpec((CHUNK, None, n), lambda r, e, c: (c, r, 0))
        # (N, R, E) -> (N, BLOCK_E)
        self.diagonal = pl.BlockSpec((n, None, BLOCK_E), lambda r, e, c: (0, r, e))
        # (nc, N, R, E) -> (N, BLOCK_E)
        self.state = pl.BlockSpec((None, n, None, BLOCK_E), lambda r, e, c: (c, 0, r, e))
        # (nc, R, E) -> (BLOCK_E,)
        self.chunk_sum = pl.BlockSpec((None, None, BLOCK_E), lambda r, e, c: (c, r, e))
        # (nE, L, R, N) -> (CHUNK, N)
        self.projection_partial = pl.BlockSpec((None, CHUNK, None, n), lambda r, e, c: (e, c, r, 0))


def _pallas_call(kernel, sequence_shape, *, in_specs, out_specs, out_shape, interpret):
    """``kernel`` over the (R, E / BLOCK_E, L / CHUNK) grid of an (L, R, E) sequence, float32 outputs."""
    length, rows, channels = sequence_shape
    return pl.pallas_call(
        kernel,
        grid=(rows, channels // BLOCK_E, length // CHUNK),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=[jax.ShapeDtypeStruct(shape, jnp.float32) for shape in out_shape],
        compiler_params=_COMPILER_PARAMS,
        interpret=interpret,
        name=f"selective_scan{kernel.__name__}",
    )


def _chunk_state_shape(sequence_shape, n):
    length, rows, channels = sequence_shape
    return (length // CHUNK, n, rows, channels)


def _decay(dt, A):
    """exp(dt * A): (BLOCK_E,) step sizes, (N, BLOCK_E) diagonals -> (N, BLOCK_E)."""
    return jnp.exp(dt[None, :] * A)


def _step(h, A, u, dt, b):
    """One step of the recurrence: (N, BLOCK_E) state, (BLOCK_E,) u and dt, (N,) B."""
    return _decay(dt, A) * h + (dt * u)[None, :] * b[:, None]


def _local_end_kernel(u_ref, dt_ref, a_ref, b_ref, end_ref, dt_sum_ref):
    """The chunk run from h = 0: its end state, and the sum of its dt for its total decay."""
    A = a_ref[...]
    h = jnp.zeros(A.shape, jnp.float32)
    dt_sum = jnp.zeros((BLOCK_E,), jnp.float32)
    for t in range(CHUNK):
        dt = dt_ref[t]
        h = _step(h, A, u_ref[t], dt, b_ref[t])
        dt_sum = dt_sum + dt
    end_ref[...] = h
    dt_sum_ref[...] = dt_sum


def _output_kernel(u_ref, dt_ref, a_ref, b_ref, c_ref, start_ref, y_ref):
    """The chunk rerun from its true entering state, writing y."""
    A = a_ref[...]
    h = start_ref[...]
    for t in range(CHUNK):
        h = _step(h, A, u_ref[t], dt_ref[t], b_ref[t])
        y_ref[t] = jnp.sum(c_ref[t][:, None] * h, axis=0)


def _local_adjoint_kernel(dt_ref, a_ref, c_ref, grad_y_ref, adjoint_ref, dt_sum_ref):
    """The adjoint run backwards through the chunk from g = 0 after it.

    Writes exp(dt_first A) * g_first, what the chunk passes to the step before
    it, and the sum of the chunk's dt.
    """
    A = a_ref[...]
    passed_back = jnp.zeros(A.shape, jnp.float32)
    dt_sum = jnp.zeros((BLOCK_E,), jnp.float32)
    for t in reversed(range(CHUNK)):
        dt = dt_ref[t]
        g = c_ref[t][:, None] * grad_y_ref[t][None, :] + passed_back
        passed_back = _decay(dt, A) * g
        dt_sum = dt_sum + dt
    adjoint_ref[...] = passed_back
    dt_sum_ref[...] = dt_sum


def _gradient_kernel(
    u_ref,
    dt_ref,
    a_ref,
    b_ref,
    c_ref,
    start_ref,
    adjoint_after_ref,
    grad_y_ref,
    grad_u_ref,
    grad_dt_ref,
    grad_a_ref,
    grad_b_ref,
    grad_c_ref,
):
    """Every gradient of one chunk, from its entering state and the adjoint passed back into it."""
    A = a_ref[...]
    # states[t] is h before step t. The loop is unrolled, so the list lives in
    # registers (17 (N, BLOCK_E) tiles); the steps' inputs are loaded again
    # in the reverse loop (cache hits) rather than held beside it.
    states = [start_ref[...]]
    for t in range(CHUNK):
        states.append(_step(states[-1], A, u_ref[t], dt_ref[t], b_ref[t]))
    passed_back = adjoint_after_ref[...]
    grad_A = jnp.zeros(A.shape, jnp.float32)
    for t in reversed(range(CHUNK)):
        u, dt, b, grad_y = u_ref[t], dt_ref[t], b_ref[t], grad_y_ref[t]
        decay = _decay(dt, A)
        g = c_ref[t][:, None] * grad_y[None, :] + passed_back
        grad_x = jnp.sum(g * b[:, None], axis=0)
        # d h_t / d(dt * A) = decay * h_{t-1}.
        grad_log_decay = g * decay * states[t]
        grad_u_ref[t] = grad_x * dt
        grad_dt_ref[t] = grad_x * u + jnp.sum(grad_log_decay * A, axis=0)
        grad_A = grad_A + grad_log_decay * dt[None, :]
        grad_b_ref[t] = jnp.sum(g * (dt * u)[None, :], axis=1)
        grad_c_ref[t] = jnp.sum(states[t + 1] * grad_y[None, :], axis=1)
        passed_back = decay * g
    grad_a_ref[...] = grad_A


def _chunk_decay(dt_sum, A_rows):
    """exp(A * sum of dt): (nc, R, E) sums, (N, R, E) diagonals -> (nc, N, R, E)."""
    return jnp.exp(dt_sum[:, None] * A_rows)


def _compose(earlier, later):
    """Composes two affine maps x -> a * x + b, the earlier one applied first."""
    a_earlier, b_earlier = earlier
    a_later, b_later = later
    return a_earlier * a_later, a_later * b_earlier + b_later


def _states_entering_chunks(local_end, decay):
    """start_{c+1} = decay_c * start_c + local_end_c, start_0 = 0; all (nc, N, R, E)."""
    _, after = jax.lax.associative_scan(_compose, (decay, local_end), axis=0)
    return jnp.concatenate([jnp.zeros_like(after[:1]), after[:-1]])


def _adjoints_after_chunks(local_adjoint, decay):
    """The adjoint passed back into each chunk from the steps after it, (nc, N, R, E).

    after_{c-1} = decay_c * after_c + local_adjoint_c, after_{nc-1} = 0: the
    forward correction with time reversed.
    """
    _, before = jax.lax.associative_scan(_compose, (decay, local_adjoint), axis=0, reverse=True)
    return jnp.concatenate([before[1:], jnp.zeros_like(before[:1])])


def _check_shape(name, array, shape):
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
    if array.dtype != jnp.float32:
        raise ValueError(f"{name} must be float32, got {array.dtype}")


def _check_inputs(u, dt, A_rows, B, C):
    if u.ndim != 3:
        raise ValueError(f"u must be (L, R, E), got shape {u.shape}")
    length, rows, channels = u.shape
    n = A_rows.shape[0] if A_rows.ndim == 3 else None
    if length % CHUNK or channels % BLOCK_E:
        raise ValueError(
            f"u's L and E must be multiples of {CHUNK} and {BLOCK_E} (pad them first), got {u.shape}"
        )
    if length // CHUNK > _MAX_GRID_YZ:
        raise ValueError(f"u's L = {length} gives more than {_MAX_GRID_YZ} chunks of {CHUNK} steps")
    # Triton tensors have power-of-two sizes; the state tile is (N, BLOCK_E).
    if n is None or n & (n - 1):
        raise ValueError(f"A_rows must be (N, R, E) with N a power of two, got shape {A_rows.shape}")
    _check_shape("u", u, u.shape)
    _check_shape("dt", dt, u.shape)
    _check_shape("A_rows", A_rows, (n, rows, channels))
    _check_shape("B", B, (length, rows, n))
    _check_shape("C", C, (length, rows, n))
