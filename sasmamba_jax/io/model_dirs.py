"""Model directories: a SasMamba's config and parameters, written atomically, read onto a mesh.

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
from jax.sharding import Mesh

from sasmamba_jax.io import pytorch
from sasmamba_jax.io.errors import CheckpointError, check_shapes, first_line
from sasmamba_jax.io.files import current_umask, replace_directory
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig, abstract_model
from sasmamba_jax.parallel import sharding

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
FORMAT = "sasmamba-jax-model"


def build_model(config: SasMambaConfig, params: Any, mesh: Mesh | None = None) -> SasMamba:
    """A SasMamba with the given parameters (a pure dict), in eval mode.

    Args:
        config: the model's config.
        params: the parameters, host or device arrays.
        mesh: where the parameters go (``sharding.place_params``); every
            device, replicated, by default (``sharding.default_mesh``).
    """
    graphdef, state = nnx.split(abstract_model(config))
    nnx.replace_by_pure_dict(state, sharding.place_params(params, mesh or sharding.default_mesh()))
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def params_of(model: SasMamba) -> dict:
    """The model's parameters as a pure dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def abstract_params(config: SasMambaConfig) -> dict:
    """Shapes and dtypes of the parameter tree, for restoring without allocating twice."""
    return nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))


def export_pytorch_state_dict(model: SasMamba) -> dict[str, np.ndarray]:
    """The release's state_dict (same names, shapes and order) as numpy arrays."""
    return pytorch.params_to_state_dict(jax.device_get(params_of(model)), model.config.depth)


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
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, PARAMS_DIR), jax.device_get(params_of(model)))
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump({"format": FORMAT, "model": model.config.to_dict()}, f, indent=2)
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def load_params(params_dir: str | os.PathLike, config: SasMambaConfig, mesh: Mesh) -> dict:
    """Restores a parameter tree saved by ``save_model`` onto ``mesh`` (``sharding.place_params``' layout)."""
    params_dir = os.path.abspath(os.fspath(params_dir))
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"no parameters at {params_dir}")
    target = sharding.restore_target(abstract_params(config), mesh)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # Shapes first: orbax refuses a sharded target of another shape
            # with advice about its own options, not the arrays that differ.
            saved = checkpointer.metadata(params_dir).item_metadata.tree
            check_shapes(saved, target, f"the parameters in {params_dir}")
            return checkpointer.restore(params_dir, target)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot restore parameters from {params_dir}: {first_line(e)}") from None
