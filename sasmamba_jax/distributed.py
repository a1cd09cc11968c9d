"""Multi-host start-up: one ``train.py`` for one process or many."""

import os

import jax

# Left by cluster launchers that jax.distributed.initialize() reads by itself
# when given no arguments.
_LAUNCHER_ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins a multi-process run when asked to, else stays a single process.

    With any argument given, ``jax.distributed.initialize`` gets all three.
    With none, it is called with no arguments (auto-detection) only on a
    multi-host TPU pod or where a launcher (SLURM, Open MPI,
    ``JAX_COORDINATOR_ADDRESS``) left its environment, so a plain run stays
    single-process.
    """
    if coordinator_address or num_processes is not None or process_id is not None:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
    elif _launched_on_a_cluster():
        jax.distributed.initialize()


def _launched_on_a_cluster() -> bool:
    # Every TPU VM names its workers; a single-host one names only itself.
    tpu_workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(tpu_workers) > 1 or any(name in os.environ for name in _LAUNCHER_ENVIRONMENT)
