"""Two-way bridge between the PyTorch release's state_dict and our Flax parameters.

Every tensor goes through ONE explicit name table (``name_table``): the
release's name, our parameter path, and the layout change between them. Torch
is needed only to read and write ``.pth`` files; the mapping itself works on
numpy arrays.

The command line is ``python -m sasmamba_jax.convert`` (``cli.convert``).
"""

import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from sasmamba_jax.io.errors import CheckpointError
from sasmamba_jax.io.files import current_umask
from sasmamba_jax.model.sasmamba import SasMambaConfig
from sasmamba_jax.ops.stride_scan import NUM_DIRECTIONS


class Layout(NamedTuple):
    """How one tensor changes between the release (torch) and us (jax)."""

    to_jax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Layout(lambda w: w, lambda w: w)
# torch Linear weight (out, in) <-> flax kernel (in, out)
LINEAR = Layout(lambda w: w.T, lambda w: w.T)
# torch Conv2d weight (out, in, kh, kw) <-> flax kernel (kh, kw, in, out)
CONV = Layout(lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1))
# torch depthwise weight (E, 1, k, k) <-> our (k, k, E)
DEPTHWISE = Layout(lambda w: w[:, 0].transpose(1, 2, 0), lambda w: w.transpose(2, 0, 1)[:, None])
# torch position embedding (1, X, C) <-> our (X, C)
UNBATCHED = Layout(lambda w: w[0], lambda w: w[None])
# the release stacks the K directions' copies along rows: (K * E, ...) <-> (K, E, ...)
PER_DIRECTION = Layout(
    lambda w: w.reshape(NUM_DIRECTIONS, -1, *w.shape[1:]),
    lambda w: w.reshape(-1, *w.shape[2:]),
)


class Entry(NamedTuple):
    torch_name: str
    jax_path: tuple[str | int, ...]
    layout: Layout


def _layer_norm(torch_prefix, jax_path):
    return [
        Entry(f"{torch_prefix}.weight", (*jax_path, "scale"), SAME),
        Entry(f"{torch_prefix}.bias", (*jax_path, "bias"), SAME),
    ]


def _linear(torch_prefix, jax_path, bias):
    entries = [Entry(f"{torch_prefix}.weight", (*jax_path, "kernel"), LINEAR)]
    if bias:
        entries.append(Entry(f"{torch_prefix}.bias", (*jax_path, "bias"), SAME))
    return entries


def _block(torch_prefix, jax_path):
    op, jop = f"{torch_prefix}.op", (*jax_path, "op")
    # torch lists a module's own parameters before its submodules' ones, so the
    # op's x_proj .. Ds come before in_proj.
    return [
        *_layer_norm(f"{torch_prefix}.norm", (*jax_path, "norm")),
        Entry(f"{op}.x_proj_weight", (*jop, "x_proj"), SAME),
        Entry(f"{op}.dt_projs_weight", (*jop, "dt_proj_kernel"), SAME),
        Entry(f"{op}.dt_projs_bias", (*jop, "dt_proj_bias"), SAME),
        Entry(f"{op}.A_logs", (*jop, "A_log"), PER_DIRECTION),
        Entry(f"{op}.Ds", (*jop, "D"), PER_DIRECTION),
        *_layer_norm(f"{op}.out_norm", (*jop, "out_norm")),
        *_linear(f"{op}.in_proj", (*jop, "in_proj"), bias=False),
        Entry(f"{op}.conv2d.offset_conv.weight", (*jop, "offset_conv", "kernel"), CONV),
        Entry(f"{op}.conv2d.offset_conv.bias", (*jop, "offset_conv", "bias"), SAME),
        Entry(f"{op}.conv2d.dcn.weight", (*jop, "dcn_kernel"), DEPTHWISE),
        Entry(f"{op}.conv2d.dcn.bias", (*jop, "dcn_bias"), SAME),
        *_linear(f"{op}.out_proj", (*jop, "out_proj"), bias=False),
        *_layer_norm(f"{torch_prefix}.norm2", (*jax_path, "norm2")),
        *_linear(f"{torch_prefix}.mlp.fc1", (*jax_path, "mlp", "fc1"), bias=True),
        *_linear(f"{torch_prefix}.mlp.fc2", (*jax_path, "mlp", "fc2"), bias=True),
    ]


def name_table(depth: int) -> list[Entry]:
    """The release's state_dict names, in its order, mapped to our parameters."""
    table = [
        Entry("Spatial_pos_embed", ("joint_pos_embed",), UNBATCHED),
        Entry("Temporal_pos_embed", ("frame_pos_embed",), UNBATCHED),
        *_linear("Spatial_patch_to_embedding", ("joint_embed",), bias=True),
    ]
    for i in range(depth):
        table += _block(f"STEblocks.{i}", ("spatial_blocks", i))
    for i in range(depth):
        table += _block(f"TTEblocks.{i}", ("temporal_blocks", i))
    table += [
        *_layer_norm("Spatial_norm", ("spatial_norm",)),
        *_layer_norm("Temporal_norm", ("temporal_norm",)),
        *_layer_norm("head.0", ("head_norm",)),
        *_linear("head.1", ("head",), bias=True),
    ]
    return table


def infer_config(state_dict: Mapping[str, np.ndarray]) -> SasMambaConfig:
    """Reads the model's shape settings off the release's tensor shapes.

    Run options (scan, stride_grad, ...) keep their defaults; change them with
    ``SasMambaConfig.with_options``.
    """

    def shape(name):
        if name not in state_dict:
            raise CheckpointError(f"cannot infer the model configuration: tensor {name!r} is missing")
        return state_dict[name].shape

    dim, in_chans = shape("Spatial_patch_to_embedding.weight")
    depth = 0
    while f"STEblocks.{depth}.norm.weight" in state_dict:
        depth += 1
    if depth == 0:
        raise CheckpointError("cannot infer the model configuration: no STEblocks.0.* tensors")
    inner_dim = shape("STEblocks.0.op.in_proj.weight")[0] // 2
    return SasMambaConfig(
        num_frames=shape("Temporal_pos_embed")[1],
        num_joints=shape("Spatial_pos_embed")[1],
        in_chans=in_chans,
        dim=dim,
        depth=depth,
        mlp_ratio=shape("STEblocks.0.mlp.fc1.weight")[0] / dim,
        ssm_conv=shape("STEblocks.0.op.conv2d.dcn.weight")[-1],
        d_state=shape("STEblocks.0.op.A_logs")[1],
        ssm_ratio=inner_dim / dim,
    )


def expected_shapes(config: SasMambaConfig) -> dict[str, tuple[int, ...]]:
    """The release's tensor shapes for a configuration, by name."""
    from flax import nnx

    from sasmamba_jax.model.sasmamba import abstract_model

    params = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    shapes = {}
    for entry in name_table(config.depth):
        leaf = _get(params, entry.jax_path)
        dummy = np.zeros(leaf.shape, np.float32)
        shapes[entry.torch_name] = entry.layout.to_torch(dummy).shape
    return shapes


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: SasMambaConfig) -> dict:
    """Maps the release's state_dict onto our parameter tree (a pure dict).

    Raises:
        CheckpointError: listing every missing, unexpected and mis-shaped tensor at once.
    """
    shapes = expected_shapes(config)
    problems = []
    missing = [name for name in shapes if name not in state_dict]
    unexpected = [name for name in state_dict if name not in shapes]
    misshaped = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)}, model {shapes[name]}"
        for name in shapes
        if name in state_dict and tuple(state_dict[name].shape) != shapes[name]
    ]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors: {'; '.join(misshaped)}")
    if problems:
        raise CheckpointError("the state_dict does not fit SasMamba: " + " | ".join(problems))
    params: dict = {}
    for entry in name_table(config.depth):
        value = entry.layout.to_jax(np.asarray(state_dict[entry.torch_name], np.float32))
        _set(params, entry.jax_path, np.ascontiguousarray(value))
    return params


def params_to_state_dict(params: Mapping, depth: int) -> dict[str, np.ndarray]:
    """Our parameter tree (pure dict) back to the release's state_dict (numpy), in its order."""
    return {
        entry.torch_name: np.ascontiguousarray(
            entry.layout.to_torch(np.asarray(_get(params, entry.jax_path)))
        )
        for entry in name_table(depth)
    }


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------------------
# .pth files (torch needed from here on)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading or writing PyTorch checkpoints needs torch: pip install 'sasmamba-jax[torch]'"
        ) from None
    return torch


def read_pytorch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the release's checkpoint as numpy arrays.

    Accepts the release's training checkpoint (a dict with 'model'), a dict
    with 'state_dict', or a bare state_dict; DataParallel's ``module.``
    prefix is removed.

    Raises:
        CheckpointError: missing, truncated or non-checkpoint file.
    """
    torch = _import_torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    # torch's warnings about a file it then fails to read (an unusual pickle
    # protocol) say nothing the error does not; they are shown only on success.
    with warnings.catch_warnings(record=True) as caught:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
        except Exception:
            # torch's own message for a file its weights-only unpickler refuses
            # advises weights_only=False, which would run the file's code.
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint") from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if isinstance(loaded, Mapping) and "model" in loaded:
        loaded = loaded["model"]
    elif isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not (isinstance(loaded, Mapping) and loaded and all(map(torch.is_tensor, loaded.values()))):
        raise CheckpointError(
            f"{path} holds no state_dict (expected tensors by name, or a dict with 'model')"
        )
    return {
        name.removeprefix("module."): tensor.detach().to(torch.float32).numpy()
        for name, tensor in loaded.items()
    }


def write_pytorch_checkpoint(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes a state_dict in the release's checkpoint layout ({'model': ...}), atomically."""
    torch = _import_torch()
    payload = {"model": {name: torch.from_numpy(np.array(v)) for name, v in state_dict.items()}}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth")
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
