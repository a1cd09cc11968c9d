"""The selective scan's GPU kernels: Pallas with the Triton lowering.

The whole op, as ``ops.selective_scan`` defines it (softplus and the D skip
term included), on the model's own arrays: u, delta, y (Bt, L, K, E); A
(K, E, N); B, C (Bt, L, K, N); D, delta_bias (K, E). Dimension letters as
there, plus R = Bt * K rows (row r = b * K + k), S = ``CHUNK`` steps per
chunk, nc = ceil(L / S) chunks, nE = E / ``BLOCK_E`` channel blocks. Per row
and channel

        dt_l = softplus(delta_l + delta_bias),
        h_l = exp(dt_l * A) * h_{l-1} + dt_l * u_l * B_l,   h_0 = 0,
        y_l = <C_l, h_l> + D * u_l.

Why chunks, and a carry between them. One program per (row, channel block)
walking all of L would be 256 programs at the published size (Bt = 16,
K = 4, E = 128) on 108-132 SMs, each running 4131 dependent steps. The
recurrence is affine in h, so the programs of the (R, nE, nc) grid
(64 x 4 x 259 = 66k) each run one chunk from h = 0 (``_local_end_kernel``)
and the carry kernel walks the nc chunk ends of one (row, channel block):
start_{c+1} = exp(A * sum of chunk c's dt) * start_c + local_end_c, in
place. The output kernel then reruns every chunk from its true start and
writes y. The backward pass does the same on the adjoint
g_l = C_l * gy_l + exp(dt_{l+1} A) * g_{l+1}, run backwards, and its
gradient kernel recomputes each chunk's states from its start in segments
of ``SEGMENT`` steps (each segment's states from the chunk start, in a
loop, then held unrolled in registers while the segment's gradients are
formed in reverse). A program's state is a (BLOCK_E, N) tile in registers;
nothing of size (Bt, L, K, E, N) reaches HBM: the only state-sized arrays
there are the (R, nc, E, N) chunk states, 1 / S of one.

The model's layout is read in place (no transposed or padded copy): a
program's (S, BLOCK_E) block of a (Bt, L, K, E) array is S rows of BLOCK_E
contiguous floats. A last chunk that runs past L loads zeros there (dt = 0:
the state is unchanged) and drops its stores. E must be a multiple of
BLOCK_E (``pallas_scan`` pads it otherwise, which no published config
needs).

Reductions are deterministic: grad_A is one (BLOCK_E, N) partial per
program, written over the adjoint tile that program read (the adjoints are
dead after it); grad_B and grad_C one (S, N) partial per channel block,
(nE, Bt, L, K, N); grad_D and grad_delta_bias one (BLOCK_E,) partial per
program. XLA sums the extra axes: 8 reduction kernels at the published size
(some sums in two passes), the only XLA work around the 6 Triton kernels.

Compiled for an H100 (sm_90a) and an A100 (sm_80) at the published size
(``benchmarks/gpu_kernels.py``: ptxas -v on the PTX XLA emits, 128 threads
a program), registers a thread: local_end 40 and 48, carry_forward 64 and
80, output 40, local_adjoint 32, carry_backward 80, gradient 128; none
spills. An SM holds 16 warps of the gradient kernel (a quarter of 64; 8 at
its earlier 254 registers), 24-32 of the carries, 40-64 of the others.
Segments of 8 steps take the gradient kernel to 168 registers, the whole
chunk at once to 238. Temporaries of forward + backward: 0.356 GB (every
state would be 2.17 GB).

HBM traffic of forward + backward, float32, at the published size: one
(Bt, L, K, E) array is 135.4 MB, one (Bt, L, K, N) array 16.9 MB, the
chunk states 135.8 MB, one (R, nc, E) array of chunk sums 8.5 MB.
    Floor, every input read once and every output written once per pass:
        forward reads u, delta, B, C, writes y; backward reads u, delta,
        grad_y, B, C, writes grad_u, grad_delta, grad_B, grad_C (A, D,
        delta_bias and their gradients are 0.1 MB): 8 (Bt, L, K, E) + 6
        (Bt, L, K, N) arrays = 1.19 GB.
    These kernels: local_end, output, local_adjoint and gradient read their
        (Bt, L, K, E) inputs 9 times in all and write 3 (the segments'
        rereads hit the cache); B and C are read 6 times and grad_B,
        grad_C written as nE = 4 partials each, then summed (24 arrays);
        chunk states are written by local_end and local_adjoint, read and
        rewritten by the two carries, read by the output kernel and twice by
        the gradient kernel, and grad_A's partials written and summed (11
        arrays); the chunk sums 7 times. 12 x 135.4 + 24 x 16.9 + 11 x 135.8
        + 7 x 8.5 MB = 3.58 GB, 3.0x the floor. The largest share left is
        the chunk states' (1.49 GB); the transposes, pads and cross-chunk
        associative scans of the earlier time-major version are gone.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

CHUNK = 16
BLOCK_E = 32
SEGMENT = 4
CARRY_UNROLL = 8
_COMPILER_PARAMS = pltriton.CompilerParams(num_warps=4, num_stages=1)
# CUDA's limit on the second and third grid dimensions (channel blocks, chunks).
_MAX_GRID_YZ = 65535


def forward(u, delta, A, B, C, D, delta_bias, *, interpret: bool):
    """Outputs of the scan, and what the backward pass needs besides the inputs.

    Args:
        u, delta: (Bt, L, K, E), any float dtype.
        A: (K, E, N) float32.
        B, C: (Bt, L, K, N), any float dtype.
        D, delta_bias: (K, E) float32.
        interpret: run the kernels in Pallas interpret mode (CPU tests).

    Returns:
        y (Bt, L, K, E) in the dtype of u; chunk_starts (Bt * K, nc, E, N),
        the state entering each chunk; dt_sums (Bt * K, nc, E), each chunk's
        sum of dt.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    grid = _Grid(u.shape, A.shape[-1])
    specs = grid.specs
    local_end, dt_sums = grid.call(
        _local_end_kernel,
        in_specs=[specs.sequence, specs.sequence, specs.channel, specs.diagonal, specs.projection],
        out_specs=[specs.state, specs.chunk_sum],
        out_shape=[grid.chunk_states, grid.chunk_sums],
        interpret=interpret,
    )(u, delta, delta_bias, A, B)
    chunk_starts = grid.carry(_carry_forward_kernel, dt_sums, A, local_end, interpret=interpret)
    (y,) = grid.call(
        _output_kernel,
        in_specs=[
            specs.sequence,
            specs.sequence,
            specs.channel,
            specs.diagonal,
            specs.channel,
            specs.projection,
            specs.projection,
            specs.state,
        ],
        out_specs=[specs.sequence],
        out_shape=[jax.ShapeDtypeStruct(u.shape, u.dtype)],
        interpret=interpret,
    )(u, delta, delta_bias, A, D, B, C, chunk_starts)
    return y, chunk_starts, dt_sums


def backward(u, delta, A, B, C, D, delta_bias, chunk_starts, dt_sums, grad_y, *, interpret: bool):
    """Gradients of <grad_y, y> for every input of ``forward``.

    Args:
        u, delta, A, B, C, D, delta_bias: as for ``forward``.
        chunk_starts, dt_sums: from ``forward``.
        grad_y: (Bt, L, K, E) cotangent of y, any float dtype.
        interpret: run the kernels in Pallas interpret mode (CPU tests).

    Returns:
        grad_u, grad_delta in the dtypes of u and delta; grad_A (K, E, N),
        grad_B, grad_C (Bt, L, K, N), grad_D, grad_delta_bias (K, E), all
        float32.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    grid = _Grid(u.shape, A.shape[-1])
    _check_shape("chunk_starts", chunk_starts, grid.chunk_states.shape, jnp.float32)
    _check_shape("dt_sums", dt_sums, grid.chunk_sums.shape, jnp.float32)
    _check_shape("grad_y", grad_y, u.shape)
    specs = grid.specs
    (local_adjoint,) = grid.call(
        _local_adjoint_kernel,
        in_specs=[specs.sequence, specs.channel, specs.diagonal, specs.projection, specs.sequence],
        out_specs=[specs.state],
        out_shape=[grid.chunk_states],
        interpret=interpret,
    )(delta, delta_bias, A, C, grad_y)
    adjoint_after = grid.carry(_carry_backward_kernel, dt_sums, A, local_adjoint, interpret=interpret)
    # grad_A's partials overwrite the adjoints they are computed from: each
    # program reads its adjoint tile once, before writing its partial there.
    grad_u, grad_delta, grad_A_partial, grad_B_partial, grad_C_partial, grad_D_partial, grad_bias_partial = (
        grid.call(
            _gradient_kernel,
            in_specs=[
                specs.sequence,
                specs.sequence,
                specs.channel,
                specs.diagonal,
                specs.channel,
                specs.projection,
                specs.projection,
                specs.state,
                specs.sequence,
                specs.state,
            ],
            out_specs=[
                specs.sequence,
                specs.sequence,
                specs.state,
                specs.projection_partial,
                specs.projection_partial,
                specs.chunk_sum,
                specs.chunk_sum,
            ],
            out_shape=[
                jax.ShapeDtypeStruct(u.shape, u.dtype),
                jax.ShapeDtypeStruct(delta.shape, delta.dtype),
                grid.chunk_states,
                grid.projection_partials,
                grid.projection_partials,
                grid.chunk_sums,
                grid.chunk_sums,
            ],
            input_output_aliases={9: 2},
            interpret=interpret,
        )(u, delta, delta_bias, A, D, B, C, chunk_starts, grad_y, adjoint_after)
    )
    per_direction = grid.per_direction
    return (
        grad_u,
        grad_delta,
        per_direction(grad_A_partial).sum((0, 2)),
        grad_B_partial.sum(0),
        grad_C_partial.sum(0),
        per_direction(grad_D_partial).sum((0, 2)),
        per_direction(grad_bias_partial).sum((0, 2)),
    )


class _Grid:
    """The (Bt * K, E / BLOCK_E, nc) grid of one scan and what each program sees.

    Program (r, e, c) owns batch element r // K, direction r % K, channels
    e * BLOCK_E ..., and steps c * CHUNK ...; it reads the model's (Bt, L, K, X)
    arrays in place. The last chunk may run past L: its loads past the end
    are masked to 0 (dt = 0 there, so the state is unchanged) and its stores
    there are dropped.
    """

    def __init__(self, sequence_shape, n):
        self.batch, self.length, self.directions, self.channels = sequence_shape
        self.n = n
        self.rows = self.batch * self.directions
        self.num_chunks = -(-self.length // CHUNK)
        self.num_blocks = self.channels // BLOCK_E
        f32 = jnp.float32
        self.chunk_states = jax.ShapeDtypeStruct((self.rows, self.num_chunks, self.channels, n), f32)
        self.chunk_sums = jax.ShapeDtypeStruct((self.rows, self.num_chunks, self.channels), f32)
        self.projection_partials = jax.ShapeDtypeStruct((self.num_blocks, *sequence_shape[:3], n), f32)
        self.specs = _BlockSpecs(self.directions, n)

    def call(self, kernel, *, in_specs, out_specs, out_shape, interpret, input_output_aliases=None):
        """``kernel`` on every program, the sequence's length bound as ``length``."""
        return pl.pallas_call(
            _bind_length(kernel, self.length),
            grid=(self.rows, self.num_blocks, self.num_chunks),
            in_specs=in_specs,
            out_specs=out_specs,
            out_shape=out_shape,
            input_output_aliases=input_output_aliases or {},
            compiler_params=_COMPILER_PARAMS,
            interpret=interpret,
            name=f"selective_scan{kernel.__name__}",
        )

    def carry(self, kernel, dt_sums, A, local_states, *, interpret):
        """The cross-chunk correction: one program per (row, channel block) walks the chunks.

        It overwrites ``local_states`` (Bt * K, nc, E, N) in place.
        """
        k, n, nc = self.directions, self.n, self.num_chunks
        return pl.pallas_call(
            _bind_length(kernel, self.num_chunks),
            grid=(self.rows, self.num_blocks),
            in_specs=[
                pl.BlockSpec((None, nc, BLOCK_E), lambda r, e: (r, 0, e)),
                pl.BlockSpec((None, BLOCK_E, n), lambda r, e: (r % k, e, 0)),
                pl.BlockSpec((None, nc, BLOCK_E, n), lambda r, e: (r, 0, e, 0)),
            ],
            out_specs=pl.BlockSpec((None, nc, BLOCK_E, n), lambda r, e: (r, 0, e, 0)),
            out_shape=self.chunk_states,
            input_output_aliases={2: 0},
            compiler_params=_COMPILER_PARAMS,
            interpret=interpret,
            name=f"selective_scan{kernel.__name__}",
        )(dt_sums, A, local_states)

    def per_direction(self, partial):
        """(Bt * K, nc, E, ...) -> (Bt, K, nc, E, ...)."""
        return partial.reshape(self.batch, self.directions, *partial.shape[1:])


class _BlockSpecs:
    """What program (r, e, c) sees of each array; the squeezed axes drop out of its refs."""

    def __init__(self, k, n):
        # (Bt, L, K, E) -> (CHUNK, BLOCK_E)
        self.sequence = pl.BlockSpec((None, CHUNK, None, BLOCK_E), lambda r, e, c: (r // k, c, r % k, e))
        # (Bt, L, K, N) -> (CHUNK, N)
        self.projection = pl.BlockSpec((None, CHUNK, None, n), lambda r, e, c: (r // k, c, r % k, 0))
        # (K, E, N) -> (BLOCK_E, N)
        self.diagonal = pl.BlockSpec((None, BLOCK_E, n), lambda r, e, c: (r % k, e, 0))
        # (K, E) -> (BLOCK_E,)
        self.channel = pl.BlockSpec((None, BLOCK_E), lambda r, e, c: (r % k, e))
        # (Bt * K, nc, E, N) -> (BLOCK_E, N)
        self.state = pl.BlockSpec((None, None, BLOCK_E, n), lambda r, e, c: (r, c, e, 0))
        # (Bt * K, nc, E) -> (BLOCK_E,)
        self.chunk_sum = pl.BlockSpec((None, None, BLOCK_E), lambda r, e, c: (r, c, e))
        # (E / BLOCK_E, Bt, L, K, N) -> (CHUNK, N)
        self.projection_partial = pl.BlockSpec(
            (None, None, CHUNK, None, n), lambda r, e, c: (e, r // k, c, r % k, 0)
        )


def _bind_length(kernel, length):
    def bound(*refs):
        return kernel(*refs, length=length)

    bound.__name__ = kernel.__name__
    return bound


class _Chunk:
    """Step t of the program's chunk: float32 loads, zero past the sequence's end, and stores."""

    def __init__(self, length):
        self.ragged = length % CHUNK != 0
        self.steps_left = length - pl.program_id(2) * CHUNK

    def valid(self, t):
        return t < self.steps_left

    def load(self, ref, t):
        if not self.ragged:
            return ref[t].astype(jnp.float32)
        # A traced index: interpret mode's masked load takes no Python int.
        return pltriton.load(ref.at[jnp.int32(t)], mask=self.valid(t), other=0.0).astype(jnp.float32)

    def store(self, ref, t, value):
        value = value.astype(ref.dtype)
        if not self.ragged:
            ref[t] = value
        else:
            pltriton.store(ref.at[jnp.int32(t)], value, mask=self.valid(t))

    def step_size(self, delta_ref, bias, t):
        """(delta + delta_bias, dt = softplus of it), (BLOCK_E,) each; dt = 0 past the end."""
        x = self.load(delta_ref, t) + bias
        dt = _softplus(x)
        if self.ragged:
            dt = jnp.where(self.valid(t), dt, 0.0)
        return x, dt


def _softplus(x):
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _decay(dt, A):
    """exp(dt * A): (BLOCK_E,) step sizes, (BLOCK_E, N) diagonals -> (BLOCK_E, N)."""
    return jnp.exp(dt[:, None] * A)


def _step(h, A, u, dt, b):
    """One step of the recurrence: (BLOCK_E, N) state, (BLOCK_E,) u and dt, (N,) B."""
    return _decay(dt, A) * h + (dt * u)[:, None] * b[None, :]


def _local_end_kernel(u_ref, delta_ref, bias_ref, a_ref, b_ref, end_ref, dt_sum_ref, *, length):
    """The chunk run from h = 0: its end state, and the sum of its dt for its total decay."""
    chunk = _Chunk(length)
    A, bias = a_ref[...], bias_ref[...]

    def step(t, carry):
        h, dt_sum = carry
        _, dt = chunk.step_size(delta_ref, bias, t)
        return _step(h, A, chunk.load(u_ref, t), dt, chunk.load(b_ref, t)), dt_sum + dt

    zeros = jnp.zeros(A.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32)
    end_ref[...], dt_sum_ref[...] = jax.lax.fori_loop(0, CHUNK, step, zeros)


def _carry_forward_kernel(dt_sum_ref, a_ref, _, state_ref, *, length):
    """start_{c+1} = exp(A * dt_sum_c) * start_c + local_end_c, start_0 = 0.

    ``state_ref`` holds the local ends on entry (it aliases them) and the
    chunk starts on exit.
    """
    _carry(dt_sum_ref, a_ref[...], state_ref, range(length))


def _carry_backward_kernel(dt_sum_ref, a_ref, _, adjoint_ref, *, length):
    """after_{c-1} = exp(A * dt_sum_c) * after_c + local_adjoint_c, after_{nc-1} = 0.

    The forward correction with time reversed, in place like it.
    """
    _carry(dt_sum_ref, a_ref[...], adjoint_ref, range(length - 1, -1, -1))


def _carry(dt_sum_ref, A, state_ref, order):
    """Walks the chunks in ``order``: each slot of ``state_ref`` gets the value carried into it.

    Runs of CARRY_UNROLL chunks load all their local values and decays
    before the first dependent update, so that many loads are in flight
    rather than one per step of a 259-step chain; every slot is read before
    it is overwritten.
    """

    def run(chunks, carried):
        local = [state_ref[c] for c in chunks]
        decays = [_decay(dt_sum_ref[c], A) for c in chunks]
        for c, value, decay in zip(chunks, local, decays):
            state_ref[c] = carried
            carried = decay * carried + value
        return carried

    def unrolled_run(i, carried):
        return run([order.start + order.step * (i * CARRY_UNROLL + j) for j in range(CARRY_UNROLL)], carried)

    runs = len(order) // CARRY_UNROLL
    carried = jax.lax.fori_loop(0, runs, unrolled_run, jnp.zeros(A.shape, jnp.float32))
    run(list(order[runs * CARRY_UNROLL :]), carried)


def _output_kernel(u_ref, delta_ref, bias_ref, a_ref, d_ref, b_ref, c_ref, start_ref, y_ref, *, length):
    """The chunk rerun from its true entering state, writing y = <C, h> + D u."""
    chunk = _Chunk(length)
    A, bias, D = a_ref[...], bias_ref[...], d_ref[...]

    def step(t, h):
        u = chunk.load(u_ref, t)
        _, dt = chunk.step_size(delta_ref, bias, t)
        h = _step(h, A, u, dt, chunk.load(b_ref, t))
        chunk.store(y_ref, t, jnp.sum(h * chunk.load(c_ref, t)[None, :], axis=1) + D * u)
        return h

    jax.lax.fori_loop(0, CHUNK, step, start_ref[...])


def _local_adjoint_kernel(delta_ref, bias_ref, a_ref, c_ref, grad_y_ref, adjoint_ref, *, length):
    """The adjoint run backwards through the chunk from g = 0 after it.

    Writes exp(dt_first A) * g_first, what the chunk passes to the step before it.
    """
    chunk = _Chunk(length)
    A, bias = a_ref[...], bias_ref[...]

    def step(i, passed_back):
        t = CHUNK - 1 - i
        _, dt = chunk.step_size(delta_ref, bias, t)
        g = chunk.load(grad_y_ref, t)[:, None] * chunk.load(c_ref, t)[None, :] + passed_back
        return _decay(dt, A) * g

    adjoint_ref[...] = jax.lax.fori_loop(0, CHUNK, step, jnp.zeros(A.shape, jnp.float32))


def _gradient_kernel(
    u_ref,
    delta_ref,
    bias_ref,
    a_ref,
    d_ref,
    b_ref,
    c_ref,
    start_ref,
    grad_y_ref,
    _,
    grad_u_ref,
    grad_delta_ref,
    adjoint_ref,
    grad_b_ref,
    grad_c_ref,
    grad_d_ref,
    grad_bias_ref,
    *,
    length,
):
    """Every gradient of one chunk, from its entering state and the adjoint passed back into it.

    ``adjoint_ref`` holds the adjoint after the chunk on entry (it aliases
    it) and the chunk's share of grad_A on exit. The chunk is walked back in
    segments of SEGMENT steps; each segment's SEGMENT + 1 states are
    recomputed from the chunk's entering state into registers (an unrolled
    list), the steps before it in a loop that keeps only the state.
    """
    chunk = _Chunk(length)
    A, bias, D = a_ref[...], bias_ref[...], d_ref[...]

    def forward_step(t, h):
        _, dt = chunk.step_size(delta_ref, bias, t)
        return _step(h, A, chunk.load(u_ref, t), dt, chunk.load(b_ref, t))

    def segment(i, carry):
        passed_back, grad_A, grad_D, grad_bias = carry
        first = (CHUNK // SEGMENT - 1 - i) * SEGMENT
        # states[j] is h before step first + j.
        states = [jax.lax.fori_loop(0, first, forward_step, start_ref[...])]
        for j in range(SEGMENT):
            states.append(forward_step(first + j, states[-1]))
        for j in reversed(range(SEGMENT)):
            t = first + j
            x, dt = chunk.step_size(delta_ref, bias, t)
            u, b, grad_y = chunk.load(u_ref, t), chunk.load(b_ref, t), chunk.load(grad_y_ref, t)
            decay = _decay(dt, A)
            g = grad_y[:, None] * chunk.load(c_ref, t)[None, :] + passed_back
            grad_x = jnp.sum(g * b[None, :], axis=1)
            # d h_t / d(dt * A) = decay * h_{t-1}.
            grad_log_decay = g * decay * states[j]
            grad_dt = grad_x * u + jnp.sum(grad_log_decay * A, axis=1)
            # softplus' = sigmoid; past the end dt = 0, and grad_delta is dropped.
            grad_delta = grad_dt * jax.nn.sigmoid(x)
            if chunk.ragged:
                grad_delta = jnp.where(chunk.valid(t), grad_delta, 0.0)
            chunk.store(grad_u_ref, t, grad_x * dt + grad_y * D)
            chunk.store(grad_delta_ref, t, grad_delta)
            chunk.store(grad_b_ref, t, jnp.sum(g * (dt * u)[:, None], axis=0))
            chunk.store(grad_c_ref, t, jnp.sum(states[j + 1] * grad_y[:, None], axis=0))
            grad_A = grad_A + grad_log_decay * dt[:, None]
            grad_D = grad_D + grad_y * u
            grad_bias = grad_bias + grad_delta
            passed_back = decay * g
        return passed_back, grad_A, grad_D, grad_bias

    zeros = jnp.zeros(A.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32)
    carry = (adjoint_ref[...], zeros[0], zeros[1], zeros[1])
    _, grad_A, grad_D, grad_bias = jax.lax.fori_loop(0, CHUNK // SEGMENT, segment, carry)
    adjoint_ref[...] = grad_A
    grad_d_ref[...] = grad_D
    grad_bias_ref[...] = grad_bias


def _check_shape(name, array, shape, dtype=None):
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
    if dtype is not None and array.dtype != dtype:
        raise ValueError(f"{name} must be {jnp.dtype(dtype).name}, got {array.dtype}")


def _check_inputs(u, delta, A, B, C, D, delta_bias):
    if u.ndim != 4:
        raise ValueError(f"u must be (B, L, K, E), got shape {u.shape}")
    batch, length, k, channels = u.shape
    n = A.shape[-1] if A.ndim == 3 else None
    if channels % BLOCK_E:
        raise ValueError(f"u's E must be a multiple of {BLOCK_E} (pad it first), got {u.shape}")
    if -(-length // CHUNK) > _MAX_GRID_YZ:
        raise ValueError(f"u's L = {length} gives more than {_MAX_GRID_YZ} chunks of {CHUNK} steps")
    # Triton tensors have power-of-two sizes; the state tile is (BLOCK_E, N).
    if n is None or n & (n - 1):
        raise ValueError(f"A must be (K, E, N) with N a power of two, got shape {A.shape}")
    _check_shape("delta", delta, u.shape)
    _check_shape("A", A, (k, channels, n), jnp.float32)
    _check_shape("B", B, (batch, length, k, n))
    _check_shape("C", C, (batch, length, k, n))
    _check_shape("D", D, (k, channels), jnp.float32)
    _check_shape("delta_bias", delta_bias, (k, channels), jnp.float32)
