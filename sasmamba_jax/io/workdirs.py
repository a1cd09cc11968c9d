"""A ``train.py`` workdir's checkpoints: where they live, and its latest model.

A workdir holds ``checkpoints/latest`` and ``checkpoints/best``, Orbax
checkpoint managers' directories, each step with the train state, the data
position and the training config (``train.checkpoints`` writes them).
"""

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from sasmamba_jax.io.errors import CheckpointError, check_shapes, first_line
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig, abstract_model
from sasmamba_jax.parallel import sharding

# A training workdir's checkpoint managers.
CHECKPOINT_DIR = "checkpoints"


LATEST = "latest"


BEST = "best"


def training_model_config(config: Mapping[str, Any]) -> SasMambaConfig:
    """The model a training config describes: its ``model`` fields plus its ``dtype``."""
    return SasMambaConfig.from_dict({**dict(config["model"]), "dtype": config["dtype"]})


def is_workdir(path: str | os.PathLike) -> bool:
    """Whether `path` is a ``train.py`` workdir (it has a ``checkpoints`` folder)."""
    return os.path.isdir(os.path.join(path, CHECKPOINT_DIR))


def _latest_checkpoint(workdir: str | os.PathLike) -> tuple[ocp.CheckpointManager, int]:
    """The manager of a workdir's ``checkpoints/latest`` and its latest step."""
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, LATEST))
    step = manager.latest_step()
    if step is None:
        raise CheckpointError(f"{workdir} has no training checkpoint yet")
    return manager, step


def saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The training config saved with a workdir's latest checkpoint (what the run trained with).

    Raises:
        CheckpointError: no checkpoint yet, or one whose config cannot be read.
    """
    manager, step = _latest_checkpoint(workdir)
    try:
        config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(
            f"cannot read the config of step {step} in {manager.directory}: {first_line(e)}"
        ) from None
    return ml_collections.ConfigDict(config)


def load_model_from_workdir(workdir: str | os.PathLike, mesh: Mesh | None = None, **options: Any) -> SasMamba:
    """The latest checkpoint's model of a training workdir, in eval mode.

    Args:
        workdir: a ``train.py`` workdir.
        mesh: where the parameters go, whatever mesh the run trained on
            (``sharding.place_params``' layout); every device, replicated,
            by default.
        **options: overrides of the model's run options (scan, stride_grad, ...).

    Raises:
        CheckpointError: no checkpoint yet, or one that cannot be restored.
    """
    manager, step = _latest_checkpoint(workdir)
    try:
        saved_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        model_cfg = training_model_config(saved_config).with_options(**options)
        graphdef, abstract = nnx.split(abstract_model(model_cfg))
        target = {"params": sharding.restore_target(abstract, mesh or sharding.default_mesh())}
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )
            ),
        )
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"cannot restore step {step} of {manager.directory}: {first_line(e)}") from None
    check_shapes(restored.state, target, f"the parameters of step {step} in {manager.directory}")
    model = nnx.merge(graphdef, restored.state["params"])
    model.eval()
    return model
