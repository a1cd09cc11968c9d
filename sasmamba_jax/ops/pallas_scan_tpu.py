"""The selective scan as Pallas TPU (Mosaic) kernels: the state stays in VMEM.

The kernels read the model's own layout and compute the whole op, softplus
and the D skip term included, so nothing but their outputs is written to HBM:
no transposed copy of an input, no dt array, no (B, L, K, E, N) state.

One grid step owns one batch element, one block of up to 128 channels and a
tile of TILE_LEN steps. Its state is K arrays of (N, 128): whole (8, 128)
vector tiles for N = 16, the state axis on sublanes and the channels on
lanes, so a step's decay, input and update are full-vreg operations and the
read-out is a sublane reduction. B and C enter as (B, K, N, L), time on
lanes (the one small transposed copy; their natural (B, L, K, N) layout
would pad N = 16 lanes to 128 in HBM): step t's (N, 1) column is lane t of
the tile, rotated to lane 0 (a lane rotation on the XLU). The grid's
last axis walks the tiles of L in order ("arbitrary": sequential on a core)
and the state lives in a VMEM scratch buffer across it; the forward writes y
and the state entering each tile, all the backward needs. The backward
walks the tiles in reverse (reversed index maps), recomputes one tile's
states into VMEM from its entering state, and carries the adjoint in VMEM
across tiles. L need not be a multiple of TILE_LEN: the last tile runs only
its real steps, so padding never reaches the state.

Cross-block reductions are deterministic: grad_A, grad_D and grad_delta_bias
accumulate in output blocks that stay resident across the sequential tile
axis, one per (batch element, channel block), summed over the batch by the
caller; grad_B and grad_C get one slot per channel block, summed likewise.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

LANES = 128
# Steps per tile: one lane tile of B and C. The backward keeps a tile's
# TILE_LEN + 1 states in VMEM (4.2 MB at K = 4, N = 16) beside
# double-buffered blocks of its operands: inside the 16 MB of scoped VMEM
# Mosaic grants by default.
TILE_LEN = LANES
_SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _channel_block(channels):
    """Channels per grid step: whole lane tiles, or all of them if fewer or ragged."""
    return LANES if channels % LANES == 0 else channels


def _softplus(x):
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


class _Specs:
    """BlockSpecs over the grid (batch, channel blocks, tiles of L)."""

    def __init__(self, shape, n, *, reverse):
        batch, length, k, channels = shape
        e = _channel_block(channels)
        self.num_tiles = -(-length // TILE_LEN)
        self.grid = (batch, channels // e, self.num_tiles)
        tile = (lambda l: self.num_tiles - 1 - l) if reverse else (lambda l: l)
        self.tile = tile
        self.sequence = pl.BlockSpec((1, TILE_LEN, k, e), lambda b, c, l: (b, tile(l), 0, c))
        self.projection = pl.BlockSpec((1, k, n, TILE_LEN), lambda b, c, l: (b, 0, 0, tile(l)))
        self.state_matrix = pl.BlockSpec((k, n, e), lambda b, c, l: (0, 0, c))
        self.per_channel = pl.BlockSpec((k, e), lambda b, c, l: (0, c))
        self.tile_start = pl.BlockSpec((1, 1, k, n, e), lambda b, c, l: (tile(l), b, 0, 0, c))
        self.per_batch_state_matrix = pl.BlockSpec((1, k, n, e), lambda b, c, l: (b, 0, 0, c))
        self.per_batch_channel = pl.BlockSpec((1, k, e), lambda b, c, l: (b, 0, c))
        self.per_block_projection = pl.BlockSpec(
            (1, 1, k, n, TILE_LEN), lambda b, c, l: (c, b, 0, 0, tile(l))
        )
        self.length = length
        # forward's operands (u, delta, A_t, B_t, C_t, D, delta_bias), which
        # the backward reads too.
        self.operands = [
            self.sequence,
            self.sequence,
            self.state_matrix,
            self.projection,
            self.projection,
            self.per_channel,
            self.per_channel,
        ]

    def steps(self):
        """Real steps in the current tile: TILE_LEN but in a ragged last tile."""
        return jnp.minimum(TILE_LEN, self.length - self.tile(pl.program_id(2)) * TILE_LEN)


def forward(u, delta, A_t, B_t, C_t, D, delta_bias, *, interpret):
    """The selective scan and the state entering each tile.

    Args:
        u, delta: (B, L, K, E), any float dtype.
        A_t: (K, N, E) float32, A with the state axis before the channels.
        B_t, C_t: (B, K, N, L) float32.
        D, delta_bias: (K, E) float32.

    Returns:
        y (B, L, K, E) in the dtype of u, and the (num_tiles, B, K, N, E)
        float32 states entering each tile.
    """
    batch, _, k, channels = u.shape
    n = A_t.shape[1]
    specs = _Specs(u.shape, n, reverse=False)
    return pl.pallas_call(
        functools.partial(_forward_kernel, specs),
        grid=specs.grid,
        in_specs=specs.operands,
        out_specs=[specs.sequence, specs.tile_start],
        out_shape=[
            jax.ShapeDtypeStruct(u.shape, u.dtype),
            jax.ShapeDtypeStruct((specs.num_tiles, batch, k, n, channels), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((k, n, _channel_block(channels)), jnp.float32)],
        compiler_params=_SEMANTICS,
        interpret=interpret,
        name="selective_scan_forward",
    )(u, delta, A_t, B_t, C_t, D, delta_bias)


def _step_inputs(t, k, u_ref, delta_ref, bias_ref):
    """u and dt of direction k at step t of the tile, each (1, E) float32."""
    u = u_ref[0, t, pl.ds(k, 1), :].astype(jnp.float32)
    dt = _softplus(delta_ref[0, t, pl.ds(k, 1), :].astype(jnp.float32) + bias_ref[pl.ds(k, 1), :])
    return u, dt


def _column(ref, k, t):
    """Step t of direction k from a (1, K, N, TILE_LEN) block: an (N, 1) column."""
    return pltpu.roll(ref[0, k], (TILE_LEN - t) % TILE_LEN, 1)[:, :1]


def _forward_kernel(specs, u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, y_ref, start_ref, h_ref):
    @pl.when(pl.program_id(2) == 0)
    def _():
        h_ref[...] = jnp.zeros_like(h_ref)

    start_ref[0, 0] = h_ref[...]
    num_directions = h_ref.shape[0]

    def step(t, h):
        h_next = []
        for k in range(num_directions):
            u, dt = _step_inputs(t, k, u_ref, delta_ref, bias_ref)
            h_k = jnp.exp(dt * a_ref[k]) * h[k] + (dt * u) * _column(b_ref, k, t)
            y = jnp.sum(_column(c_ref, k, t) * h_k, axis=0, keepdims=True) + d_ref[pl.ds(k, 1), :] * u
            y_ref[0, t, pl.ds(k, 1), :] = y.astype(y_ref.dtype)
            h_next.append(h_k)
        return tuple(h_next)

    h = jax.lax.fori_loop(0, specs.steps(), step, tuple(h_ref[k] for k in range(num_directions)))
    for k in range(num_directions):
        h_ref[k] = h[k]


def backward(u, delta, A_t, B_t, C_t, D, delta_bias, tile_starts, grad_y, *, interpret):
    """Gradients of sum(y * grad_y) for every input of ``forward``.

    Returns:
        grad_u, grad_delta (B, L, K, E) in the dtypes of u and delta;
        per batch element, float32: grad_A_t (B, K, N, E), grad_D and
        grad_delta_bias (B, K, E); per channel block, float32: grad_B_t and
        grad_C_t (E / block, B, K, N, L).
    """
    batch, length, k, channels = u.shape
    n = A_t.shape[1]
    specs = _Specs(u.shape, n, reverse=True)
    e = _channel_block(channels)
    per_block_projection = jax.ShapeDtypeStruct((specs.grid[1], batch, k, n, length), jnp.float32)
    per_batch_channel = jax.ShapeDtypeStruct((batch, k, channels), jnp.float32)
    return pl.pallas_call(
        functools.partial(_backward_kernel, specs),
        grid=specs.grid,
        in_specs=[*specs.operands, specs.tile_start, specs.sequence],
        out_specs=[
            specs.sequence,
            specs.sequence,
            specs.per_batch_state_matrix,
            specs.per_block_projection,
            specs.per_block_projection,
            specs.per_batch_channel,
            specs.per_batch_channel,
        ],
        out_shape=[
            jax.ShapeDtypeStruct(u.shape, u.dtype),
            jax.ShapeDtypeStruct(delta.shape, delta.dtype),
            jax.ShapeDtypeStruct((batch, k, n, channels), jnp.float32),
            per_block_projection,
            per_block_projection,
            per_batch_channel,
            per_batch_channel,
        ],
        scratch_shapes=[
            pltpu.VMEM((k, n, e), jnp.float32),
            pltpu.VMEM((TILE_LEN + 1, k, n, e), jnp.float32),
        ],
        compiler_params=_SEMANTICS,
        interpret=interpret,
        name="selective_scan_backward",
    )(u, delta, A_t, B_t, C_t, D, delta_bias, tile_starts, grad_y)


def _backward_kernel(
    specs, u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, start_ref, gy_ref,
    gu_ref, gdelta_ref, ga_ref, gb_ref, gc_ref, gd_ref, gbias_ref, q_ref, states_ref,
):  # fmt: skip
    # q carries exp(dt_{l+1} A) * g_{l+1}, the later steps' share of the
    # adjoint g_l = C_l * gy_l + exp(dt_{l+1} A) * g_{l+1} (g = dloss/dh_l),
    # across tiles.
    @pl.when(pl.program_id(2) == 0)
    def _():
        q_ref[...] = jnp.zeros_like(q_ref)
        ga_ref[...] = jnp.zeros_like(ga_ref)
        gd_ref[...] = jnp.zeros_like(gd_ref)
        gbias_ref[...] = jnp.zeros_like(gbias_ref)

    num_directions = q_ref.shape[0]
    steps = specs.steps()
    # states_ref[t + 1] is the state after step t of the tile, states_ref[0]
    # the state entering it.
    states_ref[0] = start_ref[0, 0]

    def recompute(t, h):
        h_next = []
        for k in range(num_directions):
            u, dt = _step_inputs(t, k, u_ref, delta_ref, bias_ref)
            h_next.append(jnp.exp(dt * a_ref[k]) * h[k] + (dt * u) * _column(b_ref, k, t))
            states_ref[t + 1, k] = h_next[k]
        return tuple(h_next)

    jax.lax.fori_loop(0, steps, recompute, tuple(start_ref[0, 0, k] for k in range(num_directions)))

    gb_ref[...] = jnp.zeros_like(gb_ref)
    gc_ref[...] = jnp.zeros_like(gc_ref)
    lane = jax.lax.broadcasted_iota(jnp.int32, (start_ref.shape[3], TILE_LEN), 1)

    def step(s, q):
        t = steps - 1 - s
        q_next = []
        for k in range(num_directions):
            b, c = _column(b_ref, k, t), _column(c_ref, k, t)
            u, dt = _step_inputs(t, k, u_ref, delta_ref, bias_ref)
            gy = gy_ref[0, t, pl.ds(k, 1), :].astype(jnp.float32)
            A = a_ref[k]
            decay = jnp.exp(dt * A)
            g = c * gy + q[k]
            grad_log_decay = g * states_ref[t, k] * decay
            grad_x = jnp.sum(g * b, axis=0, keepdims=True)
            grad_dt = jnp.sum(grad_log_decay * A, axis=0, keepdims=True) + grad_x * u
            z = delta_ref[0, t, pl.ds(k, 1), :].astype(jnp.float32) + bias_ref[pl.ds(k, 1), :]
            grad_delta = grad_dt * jax.nn.sigmoid(z)
            d = d_ref[pl.ds(k, 1), :]
            gu_ref[0, t, pl.ds(k, 1), :] = (grad_x * dt + d * gy).astype(gu_ref.dtype)
            gdelta_ref[0, t, pl.ds(k, 1), :] = grad_delta.astype(gdelta_ref.dtype)
            ga_ref[0, k] += grad_log_decay * dt
            gd_ref[0, pl.ds(k, 1), :] += gy * u
            gbias_ref[0, pl.ds(k, 1), :] += grad_delta
            # Lane t of the tile's (N, TILE_LEN) block of grad_B and grad_C.
            at_t = lane == t
            gb_ref[0, 0, k] += jnp.where(at_t, jnp.sum(g * (dt * u), axis=1, keepdims=True), 0.0)
            gc_ref[0, 0, k] += jnp.where(at_t, jnp.sum(states_ref[t + 1, k] * gy, axis=1, keepdims=True), 0.0)
            q_next.append(decay * g)
        return tuple(q_next)

    q = jax.lax.fori_loop(0, steps, step, tuple(q_ref[k] for k in range(num_directions)))
    for k in range(num_directions):
        q_ref[k] = q[k]
