"""``load_model``: a SasMamba from any checkpoint we accept, its parameters on a device mesh."""

import os
from typing import Any

from jax.sharding import Mesh

from sasmamba_jax.io import pytorch
from sasmamba_jax.io.errors import CheckpointError
from sasmamba_jax.io.model_dirs import CONFIG_FILE, PARAMS_DIR, build_model, load_params, read_model_config
from sasmamba_jax.io.workdirs import CHECKPOINT_DIR, load_model_from_workdir
from sasmamba_jax.model.sasmamba import DEFAULT_SCAN, SasMamba
from sasmamba_jax.parallel import sharding


def load_model(
    path: str | os.PathLike, *, mesh: Mesh | None = None, scan: str = DEFAULT_SCAN, **options: Any
) -> SasMamba:
    """Loads a SasMamba in eval mode from any checkpoint we know, its parameters on a device mesh.

    Args:
        path: a release ``.pth`` file (needs torch), a model directory written
            by ``save_model`` / ``python -m sasmamba_jax.convert``, or a
            training workdir (its latest checkpoint).
        mesh: the ("data", "fsdp") mesh the parameters go on, replicated
            unless it has an ``fsdp`` axis (``sharding.place_params``); by
            default every device, replicated (``sharding.default_mesh``).
            ``predict`` and ``lift`` split their batches over it.
        scan: the scan back end; "auto" (the default) runs the one measured
            fastest for the platform, whatever back end the file was saved with.
        **options: overrides of the other non-shape settings, e.g.
            ``stride_grad="exact"``, ``drop_path_rate=0.0``, ``dtype="bfloat16"``.

    Raises:
        CheckpointError: the path is missing, unreadable or does not fit.
    """
    path = os.fspath(path)
    options = {"scan": scan, **options}
    mesh = mesh or sharding.default_mesh()
    if os.path.isfile(path):
        state_dict = pytorch.read_pytorch_state_dict(path)
        config = pytorch.infer_config(state_dict).with_options(**options)
        return build_model(config, pytorch.state_dict_to_params(state_dict, config), mesh)
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        config = read_model_config(path).with_options(**options)
        return build_model(config, load_params(os.path.join(path, PARAMS_DIR), config, mesh), mesh)
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        return load_model_from_workdir(path, mesh, **options)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(
        f"{path} is neither a .pth file, a model directory (with {CONFIG_FILE}) nor a training workdir"
    )
