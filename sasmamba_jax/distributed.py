"""Multi-host start-up: one ``train.py`` for one process or many."""

import os

import jax

# Environment variables through which cluster launchers tell JAX its topology;
# jax.distributed.initialize() reads them when given no arguments.
_CLUSTER_ENVIRONMENT = (
    "JAX_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
)


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins a multi-process run when asked to, else stays a single process.

    With any argument given, ``jax.distributed.initialize`` gets all three.
    With none, it is called with no arguments (auto-detection) only where a
    cluster launcher left its environment variables (TPU pods, SLURM, Open
    MPI, ``JAX_COORDINATOR_ADDRESS``), so a plain run stays single-process.
    """
    if coordinator_address or num_processes is not None or process_id is not None:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
    elif any(name in os.environ for name in _CLUSTER_ENVIRONMENT) and _multi_host_tpu_or_launcher():
        jax.distributed.initialize()


def _multi_host_tpu_or_launcher() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES")
    if hosts is not None:
        return len(hosts.split(",")) > 1
    return True
