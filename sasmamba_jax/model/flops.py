"""Parameter and compute counts of SasMamba, exact and as a profiler reports them.

Two views of the same model:

* exact: every trainable parameter, and an analytic multiply-accumulate
  (MAC) count of every layer, the selective scan and the deformable
  convolution included;
* profiler-style: what layer-hook profilers (thop, ptflops) see in the
  release. They count only ``nn.Linear`` / ``nn.Conv2d`` modules and the
  parameters of leaf modules, so they miss the SSM's directly held tensors
  (``x_proj_weight``, ``dt_projs_*``, ``A_logs``, ``Ds``), the position
  embeddings, the deformable convolution and the scan. The paper's 0.64M
  parameters are this count.
"""

import jax
import numpy as np
from flax import nnx

from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig
from sasmamba_jax.ops.stride_scan import NUM_DIRECTIONS

# Per state element and step: h = exp(dt*A) * h + (dt*u) * B is two MACs
# (the decay product and the drive product) and y += C * h is one more.
SCAN_MACS_PER_STATE = 3


def count_params(model: SasMamba) -> int:
    """Number of trainable parameters (exact)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _names_hidden_from_profilers() -> tuple[str, ...]:
    return ("x_proj", "dt_proj_kernel", "dt_proj_bias", "A_log", "D", "joint_pos_embed", "frame_pos_embed")


def count_params_profiler_style(model: SasMamba) -> int:
    """Parameters a layer-hook profiler sees in the release (the paper's count)."""
    hidden = _names_hidden_from_profilers()
    total = 0
    for path, leaf in jax.tree.leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param))):
        if getattr(path[-1], "key", None) not in hidden:
            total += int(np.prod(leaf.shape))
    return total


def block_macs(config: SasMambaConfig, num_frames: int) -> dict[str, int]:
    """MACs of one SasMamba block on one clip, by component."""
    positions = num_frames * config.num_joints
    c, e, n, r, k = config.dim, config.inner_dim, config.d_state, config.dt_rank, config.ssm_conv
    taps = k * k
    return {
        "in_proj": positions * c * 2 * e,
        "offset_conv": positions * e * taps * 2 * taps,
        # four bilinear corner weights per sample, then the kernel tap
        "deform_conv": positions * e * taps * (4 + 1),
        "x_proj": NUM_DIRECTIONS * positions * e * (r + 2 * n),
        "dt_proj": NUM_DIRECTIONS * positions * r * e,
        "scan": NUM_DIRECTIONS * positions * e * (n * SCAN_MACS_PER_STATE + 1),
        "out_proj": positions * e * c,
        "mlp": 2 * positions * c * config.mlp_dim,
    }


def model_macs(config: SasMambaConfig, num_frames: int | None = None) -> dict[str, int]:
    """Analytic MACs of a forward pass on one clip, by component, and their total.

    Args:
        config: the model.
        num_frames: clip length (default: the model's frames).
    """
    num_frames = num_frames or config.num_frames
    positions = num_frames * config.num_joints
    per_block = block_macs(config, num_frames)
    counts = {name: 2 * config.depth * macs for name, macs in per_block.items()}
    counts["embed"] = positions * config.in_chans * config.dim
    counts["head"] = positions * config.dim * 3
    counts["total"] = sum(counts.values())
    return counts
