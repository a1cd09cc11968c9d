"""SasMamba in Flax NNX: the same function as the PyTorch release's ``SasPoseMamba``.

Dimension letters: B batch, T frames, J joints (17), C feature width, E = 2C
inner width of the SSM, N state size, R rank of the step-size projection,
K = 4 scan directions, L = T * J.

Parameters keep the layouts of JAX (Linear kernels are (in, out), conv kernels
(kh, kw, in, out)); ``sasmamba_jax.convert`` maps them to and from the
release's state_dict.
"""

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sasmamba_jax import skeleton
from sasmamba_jax.ops import (
    BACKENDS,
    STRIDE_GRADS,
    conv,
    deform_conv2d_depthwise,
    selective_scan,
    stride_merge,
    stride_scan,
)
from sasmamba_jax.ops.stride_scan import NUM_DIRECTIONS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The scan back end of a config that names none, and of every loaded model
# (io.loader.load_model): the one measured fastest for the platform
# (ops.selective_scan.AUTO_BACKENDS). "associative" stores every state, at
# least 182 GB per chip for the published training step (docs/tpu.md).
DEFAULT_SCAN = "auto"


@dataclasses.dataclass(frozen=True)
class SasMambaConfig:
    """Everything that defines a SasMamba.

    Shape fields (``num_frames`` .. ``ssm_ratio``) fix the parameters; the rest
    are run options that any checkpoint can be loaded with.
    """

    num_frames: int = 243
    num_joints: int = skeleton.NUM_JOINTS
    in_chans: int = 2
    dim: int = 64
    depth: int = 5
    mlp_ratio: float = 2.0
    ssm_conv: int = 3
    d_state: int = 16
    ssm_ratio: float = 2.0
    drop_path_rate: float = 0.2
    scan: str = DEFAULT_SCAN
    chunk_size: int = 64
    stride_grad: str = "release"
    # Recompute each block's activations in the backward pass instead of
    # storing them: training memory drops to about one block's worth.
    remat: bool = False
    dtype: str = "float32"

    SHAPE_FIELDS = (
        "num_frames",
        "num_joints",
        "in_chans",
        "dim",
        "depth",
        "mlp_ratio",
        "ssm_conv",
        "d_state",
        "ssm_ratio",
    )

    def __post_init__(self):
        if self.num_joints != skeleton.NUM_JOINTS:
            raise ValueError(
                f"SasMamba's stride scan needs {skeleton.NUM_JOINTS} joints, got {self.num_joints}"
            )
        if self.scan not in BACKENDS:
            raise ValueError(f"unknown scan backend {self.scan!r}; expected one of {BACKENDS}")
        if self.stride_grad not in STRIDE_GRADS:
            raise ValueError(f"unknown stride_grad {self.stride_grad!r}; expected one of {STRIDE_GRADS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {tuple(DTYPES)}")
        if self.ssm_conv % 2 != 1:
            raise ValueError(f"ssm_conv must be odd for 'same' padding, got {self.ssm_conv}")
        for name in ("num_frames", "in_chans", "dim", "depth", "d_state", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SasMambaConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_options(self, **options: Any) -> "SasMambaConfig":
        """The same shapes with other run options (scan, stride_grad, drop_path_rate, ...)."""
        fixed = set(options) & set(self.SHAPE_FIELDS)
        if fixed:
            raise ValueError(f"{sorted(fixed)} are fixed by the parameter shapes and cannot be overridden")
        return SasMambaConfig.from_dict({**self.to_dict(), **options})

    @property
    def inner_dim(self) -> int:
        return round(self.ssm_ratio * self.dim)

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.dim / 16)

    @property
    def mlp_dim(self) -> int:
        return round(self.dim * self.mlp_ratio)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


def _torch_uniform(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(in_features, out_features, *, use_bias, config, rngs):
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=_torch_uniform(in_features),
        bias_init=_torch_uniform(in_features),
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def _layer_norm(features, epsilon, config, rngs):
    return nnx.LayerNorm(
        features, epsilon=epsilon, dtype=config.compute_dtype, param_dtype=jnp.float32, rngs=rngs
    )


def _inverse_softplus_dt(key, shape, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4):
    """The release's step-size bias: softplus(bias) log-uniform in [dt_min, dt_max]."""
    log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max))
    dt = jnp.maximum(jnp.exp(log_dt), dt_floor)
    return dt + jnp.log(-jnp.expm1(-dt))


def drop_path(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Stochastic depth: drops whole residual branches per sample, rescales the rest.

    Args:
        x: (B, ...) residual branch.
        rate: scalar drop probability, a traced value inside the layer scan.
        key: PRNG key.
    """
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / keep_prob, 0).astype(x.dtype)


class StrideSSM(nnx.Module):
    """The structure-aware stride SSM (the release's ``BiSTSSM``, ``op.*``)."""

    def __init__(self, config: SasMambaConfig, *, rngs: nnx.Rngs):
        c, e, n, r, k = config.dim, config.inner_dim, config.d_state, config.dt_rank, config.ssm_conv
        self.config = config
        self.in_proj = _linear(c, 2 * e, use_bias=False, config=config, rngs=rngs)
        self.offset_conv = nnx.Conv(
            e,
            2 * k * k,
            kernel_size=(k, k),
            padding="SAME",
            kernel_init=_torch_uniform(e * k * k),
            bias_init=_torch_uniform(e * k * k),
            dtype=config.compute_dtype,
            param_dtype=jnp.float32,
            # Lax's convolution with gradients that XLA's CPU back end runs fast inside the layer scan.
            conv_general_dilated=conv.conv_general_dilated,
            rngs=rngs,
        )
        self.dcn_kernel = nnx.Param(_torch_uniform(k * k)(rngs.params(), (k, k, e)))
        self.dcn_bias = nnx.Param(_torch_uniform(k * k)(rngs.params(), (e,)))
        self.x_proj = nnx.Param(_torch_uniform(e)(rngs.params(), (NUM_DIRECTIONS, r + 2 * n, e)))
        self.dt_proj_kernel = nnx.Param(_torch_uniform(r)(rngs.params(), (NUM_DIRECTIONS, e, r)))
        self.dt_proj_bias = nnx.Param(_inverse_softplus_dt(rngs.params(), (NUM_DIRECTIONS, e)))
        self.A_log = nnx.Param(
            jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32), (NUM_DIRECTIONS, e, n)))
        )
        self.D = nnx.Param(jnp.ones((NUM_DIRECTIONS, e), jnp.float32))
        self.out_norm = _layer_norm(e, 1e-5, config, rngs)
        self.out_proj = _linear(e, c, use_bias=False, config=config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, J, C) -> (B, T, J, C)."""
        x, z = jnp.split(self.in_proj(x), 2, axis=-1)
        u = stride_scan(nnx.silu(self.deformable_conv(x)), self.config.stride_grad)
        y = stride_merge(self.scan(u), x.shape[1])
        return self.out_proj(self.out_norm(y) * nnx.silu(z))

    def deformable_conv(self, x: jax.Array) -> jax.Array:
        """The structure-aware spatio-temporal convolution: (B, T, J, E) -> (B, T, J, E)."""
        dtype = self.config.compute_dtype
        kernel, bias = self.dcn_kernel[...].astype(dtype), self.dcn_bias[...].astype(dtype)
        return deform_conv2d_depthwise(x, self.offset_conv(x), kernel, bias)

    def scan_inputs(self, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-direction step sizes and state projections of the scan sequences.

        Args:
            u: (B, L, K, E) scan sequences.

        Returns:
            delta (B, L, K, E) before softplus and bias, B (B, L, K, N), C (B, L, K, N).
        """
        cfg = self.config
        dtype = cfg.compute_dtype
        projected = jnp.einsum("blke,kce->blkc", u, self.x_proj[...].astype(dtype))
        dt, B, C = jnp.split(projected, [cfg.dt_rank, cfg.dt_rank + cfg.d_state], axis=-1)
        delta = jnp.einsum("blkr,ker->blke", dt, self.dt_proj_kernel[...].astype(dtype))
        return delta, B, C

    def scan(self, u: jax.Array) -> jax.Array:
        """The selective scan of every direction: (B, L, K, E) -> (B, L, K, E)."""
        delta, B, C = self.scan_inputs(u)
        return selective_scan(
            u,
            delta,
            -jnp.exp(self.A_log[...]),
            B,
            C,
            self.D[...],
            self.dt_proj_bias[...],
            backend=self.config.scan,
            chunk_size=self.config.chunk_size,
        )


class Mlp(nnx.Module):
    def __init__(self, config: SasMambaConfig, *, rngs: nnx.Rngs):
        self.fc1 = _linear(config.dim, config.mlp_dim, use_bias=True, config=config, rngs=rngs)
        self.fc2 = _linear(config.mlp_dim, config.dim, use_bias=True, config=config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> (..., C), exact (erf) GELU as in the release."""
        hidden = nnx.gelu(self.fc1(x), approximate=False)
        # libtpu fuses erf's polynomial into fc2's matmul and the LayerNorm
        # after it, fails to compile that fusion twice and retries: 50 s of a
        # v5e compile per block. Kept apart, the hidden activation is written
        # once more to HBM and nothing else changes.
        return self.fc2(jax.lax.optimization_barrier(hidden))


class SasMambaBlock(nnx.Module):
    """Pre-norm residual block (the release's ``BiSTSSMBlock``)."""

    def __init__(self, config: SasMambaConfig, *, rngs: nnx.Rngs):
        self.norm = _layer_norm(config.dim, 1e-6, config, rngs)
        self.op = StrideSSM(config, rngs=rngs)
        self.norm2 = _layer_norm(config.dim, 1e-6, config, rngs)
        self.mlp = Mlp(config, rngs=rngs)

    def __call__(
        self, x: jax.Array, drop_rate: jax.Array | float = 0.0, drop_keys: jax.Array | None = None
    ) -> jax.Array:
        """(B, T, J, C) -> (B, T, J, C).

        ``drop_keys``: (2,) keys, one per residual branch, for DropPath at
        ``drop_rate``; None runs both branches whole.
        """

        def residual(branch, index):
            return branch if drop_keys is None else drop_path(branch, drop_rate, drop_keys[index])

        x = x + residual(self.op(self.norm(x)), 0)
        return x + residual(self.mlp(self.norm2(x)), 1)


class SasMamba(nnx.Module):
    """Lifts 2D keypoint sequences to root-relative 3D poses."""

    def __init__(self, config: SasMambaConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config.dim
        self.joint_embed = _linear(config.in_chans, c, use_bias=True, config=config, rngs=rngs)
        self.joint_pos_embed = nnx.Param(jnp.zeros((config.num_joints, c), jnp.float32))
        self.frame_pos_embed = nnx.Param(jnp.zeros((config.num_frames, c), jnp.float32))
        self.spatial_blocks = nnx.List([SasMambaBlock(config, rngs=rngs) for _ in range(config.depth)])
        self.temporal_blocks = nnx.List([SasMambaBlock(config, rngs=rngs) for _ in range(config.depth)])
        # One norm of each kind, shared by every layer, as in the release.
        self.spatial_norm = _layer_norm(c, 1e-6, config, rngs)
        self.temporal_norm = _layer_norm(c, 1e-6, config, rngs)
        self.head_norm = _layer_norm(c, 1e-5, config, rngs)
        self.head = _linear(c, 3, use_bias=True, config=config, rngs=rngs)
        self.deterministic = False

    def set_view(self, deterministic: bool | None = None):
        """Lets ``nnx.view(model, deterministic=...)`` switch DropPath off or on."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Lifts a batch of clips.

        Args:
            x: (B, T, J, in_chans) normalised 2D keypoints, T <= num_frames.
            rngs: needs a 'dropout' stream in training mode when drop_path_rate > 0.

        Returns:
            (B, T, J, 3) root-relative 3D poses in float32.
        """
        check_input_shape(x.shape, self.config)
        dtype = self.config.compute_dtype
        num_frames = x.shape[1]
        h = self.joint_embed(x.astype(dtype)) + self.joint_pos_embed[...].astype(dtype)
        positions = self.frame_pos_embed[...][:num_frames, None].astype(dtype)
        keys = None
        if not self.deterministic and self.config.drop_path_rate > 0:
            if rngs is None:
                raise ValueError("DropPath in training mode needs rngs with a 'dropout' stream")
            keys = jax.random.split(rngs.dropout(), (2 * self.config.depth, 2))
        h = self._run_layers(h, positions, keys)
        return self.head(self.head_norm(h)).astype(jnp.float32)

    def _run_layers(self, h: jax.Array, positions: jax.Array, keys: jax.Array | None) -> jax.Array:
        """The 2 * depth layers (spatial block, temporal block, spatial, ...) as one ``lax.scan``.

        A layer is a block, the shared norm of its kind after it, and after the
        first layer the frame positions. Every block has the same structure,
        so the layers' parameters are stacked and the compiler sees one layer
        instead of 2 * depth: a TPU compile of the published training step
        takes minutes when unrolled. With ``remat`` the body is checkpointed:
        only each layer's input is stored, and the backward loop recomputes
        one layer's activations at a time.

        Args:
            h: (B, T, J, C) embedded input.
            positions: (T, 1, C) frame position embedding.
            keys: (2 * depth, 2) DropPath keys, None for no DropPath.

        Returns:
            (B, T, J, C).
        """
        blocks = [block for pair in zip(self.spatial_blocks, self.temporal_blocks) for block in pair]
        norms = [self.spatial_norm, self.temporal_norm] * self.config.depth
        block_def, norm_def = nnx.graphdef(blocks[0]), nnx.graphdef(norms[0])
        rates = np.repeat(np.linspace(0.0, self.config.drop_path_rate, self.config.depth), 2)
        layer_inputs = (
            _stack([nnx.state(block) for block in blocks]),
            _stack([nnx.state(norm) for norm in norms]),
            jnp.asarray(rates, jnp.float32),
            keys,
            jnp.arange(len(blocks)) == 0,
        )

        def layer(h, inputs):
            block_state, norm_state, rate, layer_keys, is_first = inputs
            h = nnx.merge(norm_def, norm_state)(nnx.merge(block_def, block_state)(h, rate, layer_keys))
            return jnp.where(is_first, h + positions, h), None

        if self.config.remat:
            # A loop body cannot be hoisted, so no CSE barrier is needed.
            layer = jax.checkpoint(layer, prevent_cse=False)
        h, _ = jax.lax.scan(layer, h, layer_inputs)
        return h


def _stack(states: list[nnx.State]) -> nnx.State:
    """Same-structured states stacked leaf by leaf on a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def check_input_shape(shape: tuple[int, ...], config: SasMambaConfig) -> None:
    """Raises ValueError naming what is wrong with a (B, T, J, in_chans) input shape."""
    if len(shape) != 4:
        raise ValueError(f"expected input of shape (B, T, J, {config.in_chans}), got {tuple(shape)}")
    _, frames, joints, chans = shape
    if joints != config.num_joints:
        raise ValueError(f"expected {config.num_joints} joints (Human3.6M order), got {joints}")
    if chans != config.in_chans:
        raise ValueError(f"expected {config.in_chans} input channels per joint, got {chans}")
    if not 1 <= frames <= config.num_frames:
        raise ValueError(
            f"expected 1 to {config.num_frames} frames (the model's temporal position "
            f"embedding length), got {frames}"
        )


def abstract_model(config: SasMambaConfig) -> SasMamba:
    """``SasMamba(config)`` with a ``jax.ShapeDtypeStruct`` for every array: nothing allocated.

    The target that loaders fill in. Traced once per config in a process (a
    published config takes about a second); every call returns a new module.
    """
    graphdef, state = _abstract_graph_and_state(config)
    return nnx.merge(graphdef, state)


@functools.cache
def _abstract_graph_and_state(config: SasMambaConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: SasMamba(config, rngs=nnx.Rngs(0))))
