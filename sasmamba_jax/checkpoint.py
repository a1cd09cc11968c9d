"""Model directories (Orbax) and ``load_model`` for every checkpoint kind we accept.

A model directory holds ``config.json`` (the ``SasMambaConfig``) and
``params/`` (an Orbax checkpoint of the parameter tree). It is written into a
temporary sibling and renamed into place, so a crash never leaves a
half-written directory behind.
"""

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sasmamba_jax import convert
from sasmamba_jax.convert import CheckpointError
from sasmamba_jax.model import SasMamba, SasMambaConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
FORMAT = "sasmamba-jax-model"


def build_model(config: SasMambaConfig, params: Any) -> SasMamba:
    """A SasMamba with the given parameters (a pure dict), in eval mode."""
    abstract = nnx.eval_shape(lambda: SasMamba(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, params))
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def params_of(model: SasMamba) -> dict:
    """The model's parameters as a pure dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def abstract_params(config: SasMambaConfig) -> dict:
    """Shapes and dtypes of the parameter tree, for restoring without allocating twice."""
    abstract = nnx.eval_shape(lambda: SasMamba(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def export_pytorch_state_dict(model: SasMamba) -> dict[str, np.ndarray]:
    """The release's state_dict (same names, shapes and order) as numpy arrays."""
    return convert.params_to_state_dict(jax.device_get(params_of(model)), model.config.depth)


def save_model(model: SasMamba, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Writes a model directory atomically.

    Raises:
        FileExistsError: ``directory`` exists and ``overwrite`` is False.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory} exists (pass overwrite=True / --overwrite to replace it)")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"{directory} exists and is not a directory")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.tmp-")
    # mkdtemp makes the directory private (0700); give it a plain mkdir's permissions.
    os.chmod(staging, 0o777 & ~convert.current_umask())
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, PARAMS_DIR), jax.device_get(params_of(model)))
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump({"format": FORMAT, "model": model.config.to_dict()}, f, indent=2)
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_directory(new: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(new, target)
        return
    retired = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.old-")
    os.rmdir(retired)
    os.rename(target, retired)
    os.rename(new, target)
    shutil.rmtree(retired)


def read_model_config(directory: str | os.PathLike) -> SasMambaConfig:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path} is not a sasmamba-jax model config")
    return SasMambaConfig.from_dict(meta["model"])


def load_params(params_dir: str | os.PathLike, config: SasMambaConfig) -> dict:
    """Restores a parameter tree saved by ``save_model`` (or a training checkpoint's params)."""
    params_dir = os.path.abspath(os.fspath(params_dir))
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"no parameters at {params_dir}")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_params(config))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(params_dir, target)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot restore parameters from {params_dir}: {first_line}") from None


def load_model(path: str | os.PathLike, **options: Any) -> SasMamba:
    """Loads a SasMamba in eval mode from any checkpoint we know.

    Args:
        path: a release ``.pth`` file (needs torch), a model directory written
            by ``save_model`` / ``python -m sasmamba_jax.convert``, or a
            training workdir (its latest checkpoint).
        **options: overrides of the non-shape settings, e.g. ``scan="chunked"``,
            ``stride_grad="exact"``, ``drop_path_rate=0.0``, ``dtype="bfloat16"``.

    Raises:
        CheckpointError: the path is missing, unreadable or does not fit.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        state_dict = convert.read_pytorch_state_dict(path)
        config = convert.infer_config(state_dict).with_options(**options)
        return build_model(config, convert.state_dict_to_params(state_dict, config))
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        config = read_model_config(path).with_options(**options)
        return build_model(config, load_params(os.path.join(path, PARAMS_DIR), config))
    if os.path.isdir(os.path.join(path, "checkpoints")):
        from sasmamba_jax import train_lib

        return train_lib.load_model_from_workdir(path, **options)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(
        f"{path} is neither a .pth file, a model directory (with {CONFIG_FILE}) nor a training workdir"
    )
