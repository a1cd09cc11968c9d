"""Training workdirs written without training: one checkpoint of a config's state, nothing compiled."""

import os

import jax
import ml_collections
import numpy as np

from sasmamba_jax.train import checkpoints, recipe


def save_step_one(workdir: str | os.PathLike, config: ml_collections.ConfigDict, params=None) -> None:
    """Writes ``workdir`` as train.py leaves it after step 1 of ``config``.

    Every array of the state is zero but the parameters where ``params`` (a
    tree like ``abstract_train_state(config).params``) is given; the loader
    is at step 1.
    """
    abstract = recipe.abstract_train_state(config)
    arrays = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract.arrays())
    if params is not None:
        arrays["params"] = params
    latest, best = checkpoints.checkpoint_managers(str(workdir), keep=1)
    latest.save(
        1, args=checkpoints.save_args(abstract.with_arrays(arrays), {"epoch": 0, "step_in_epoch": 1}, config)
    )
    latest.close(), best.close()
