"""A training workdir's checkpoints as training writes them, and the preemption notice that saves one.

Where they live and how a model is read back: ``io.workdirs``.
"""

import json
import os
import signal

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sasmamba_jax.io.errors import CheckpointError, check_shapes, first_line
from sasmamba_jax.io.workdirs import BEST, CHECKPOINT_DIR, LATEST
from sasmamba_jax.train.recipe import TrainState


def checkpoint_managers(workdir: str, keep: int) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """The latest ``keep`` checkpoints, and the best one by test P1.

    Each manager names its barriers with its own prefix. Orbax's asynchronous
    save ends in a cross-process barrier named after the step's directory
    (``{prefix}_async_write_complete.{step}``, orbax/checkpoint/_src/
    checkpointers/async_checkpointer.py): with the default empty prefix,
    ``latest`` and ``best`` saving the same step wait on one barrier name
    from two threads at once, and the coordination service aborts every
    process ("Barrier ... is already ongoing").
    """
    root = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)

    def barrier_prefix(name):
        return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)

    latest = ocp.CheckpointManager(
        os.path.join(root, LATEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, multiprocessing_options=barrier_prefix(LATEST)
        ),
    )
    best = ocp.CheckpointManager(
        os.path.join(root, BEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1,
            best_fn=lambda metrics: metrics["p1"],
            best_mode="min",
            create=True,
            multiprocessing_options=barrier_prefix(BEST),
        ),
    )
    return latest, best


def save_args(state: TrainState, loader_state: dict, config: ml_collections.ConfigDict):
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state.arrays()),
        loader=ocp.args.JsonSave(loader_state),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
    )


def restore(manager: ocp.CheckpointManager, step: int, state: TrainState) -> tuple[TrainState, dict]:
    """Restores arrays into ``state``'s shapes and shardings, and the data loader's position.

    ``state``'s arrays may be abstract (``jax.ShapeDtypeStruct`` with shardings):
    only their shapes, dtypes and shardings are read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.arrays())
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), loader=ocp.args.JsonRestore()),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"cannot resume from step {step} of {manager.directory} (a run with another model "
            f"config? use a new workdir): {first_line(e)}"
        ) from None
    check_shapes(restored.state, abstract, f"the arrays of step {step} in {manager.directory}")
    return state.with_arrays(restored.state), restored.loader


class PreemptionNotice:
    """Whether the scheduler asked the run to stop, answered alike by every process at one step.

    TPU pods and SLURM send SIGTERM before they preempt a job, to one process
    or to all. With several processes, jax.distributed's preemption service
    (on by default: ``jax.distributed.initialize`` makes SIGTERM notify the
    coordination service) tells every process, and
    ``reached_preemption_sync_point`` picks the same step for all of them,
    so they save one step together. A single process has no such service,
    so its own SIGTERM handler raises the flag.

    Call ``reached(step)`` after every step, from the step the run started at;
    ``close()`` puts back the SIGTERM handler it replaced.
    """

    def __init__(self):
        self._multi_process = jax.process_count() > 1
        self._signalled = False
        self._previous_handler = None
        if not self._multi_process:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._signalled = True

    def reached(self, step: int) -> bool:
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
