"""Multi-host start-up: one ``train.py`` for one process or many."""

import os
import warnings

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
    single-process. Call it before anything compiles: a multi-process run on
    CPUs turns the persistent compilation cache off (``_compile_on_every_cpu_process``).
    """
    if coordinator_address or num_processes is not None or process_id is not None:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
    elif _launched_on_a_cluster():
        jax.distributed.initialize()
    else:
        return
    _compile_on_every_cpu_process()


def _launched_on_a_cluster() -> bool:
    # Every TPU VM names its workers; a single-host one names only itself.
    tpu_workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(tpu_workers) > 1 or any(name in os.environ for name in _LAUNCHER_ENVIRONMENT)


def _compile_on_every_cpu_process() -> None:
    """Turns the persistent compilation cache off in a multi-process run on CPUs.

    With it, a restarted run aborts when a compile takes longer than 30 s.
    On XLA:CPU a program's cache key includes the topology of the process's
    own devices, so the two processes of one run look up different keys, and
    jax writes entries from process 0 only (``_cache_write`` in
    jax/_src/compiler.py): once a run has filled the cache, process 0 loads
    every program while every other process compiles it. Process 0 then
    waits at the first collective, and XLA:CPU's collectives (gloo) give up
    on a peer after 30 s ("Gloo context initialization failed: ...
    GetKeyValue() timed out"). The cache could not make such a run faster
    anyway: each step waits for the processes that compile.
    """
    if jax.process_count() == 1 or jax.default_backend() != "cpu":
        return
    if jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_enable_compilation_cache", False)
        warnings.warn(
            "persistent compilation cache off: in a multi-process run on CPUs only process 0 "
            "would load its programs from it and the others would fall behind (docs/guide.md)",
            stacklevel=3,
        )
