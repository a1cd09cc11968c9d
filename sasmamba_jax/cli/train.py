"""Trains SasMamba; a thin flag wrapper over sasmamba_jax.train.loop.train_and_evaluate.

    python train.py --workdir=/tmp/sasmamba_demo                 # the bundled demo
    python train.py --config=configs/h36m_243.py --workdir=DIR \\
        --config.data.pkl_path=h36m_sh_conf_cam_source_final.pkl
    python train.py ... --config.max_steps=100 --config.dtype=bfloat16

Re-running the same command resumes from DIR/checkpoints. On SIGTERM (what
TPU pods and SLURM send before preempting) every process saves the current
step and exits with status 0. Bad data files, checkpoints and flags end in
one line and exit status 2; a non-finite loss in exit status 1. Multi-host: add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or nothing
on TPU pods and SLURM, which JAX detects by itself).
"""

import os
import sys

from absl import flags, logging

from sasmamba_jax.cli import program

_CONFIG = program.define_config_file(
    "config", "demo", "Training config: a bundled config's name or a config file."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


@program.command("train")
def main(argv):
    del argv
    # The config, then the library (cli.program's docstring says why): a config
    # file that fails to load is one line before the imports.
    config = program.config_value(_CONFIG)
    from sasmamba_jax.io import workdirs
    from sasmamba_jax.parallel import distributed
    from sasmamba_jax.train import loop

    # Orbax reports every save step at INFO; progress bar and results say enough.
    logging.set_verbosity(logging.WARNING)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        results = loop.train_and_evaluate(config, _WORKDIR.value)
    except loop.NonFiniteLossError as e:
        print(program.error_line(e), file=sys.stderr)
        return 1
    if results["preempted"]:
        print(
            f"preempted: saved step {results['steps']} in "
            f"{os.path.join(_WORKDIR.value, workdirs.CHECKPOINT_DIR, workdirs.LATEST)}; "
            "the same command resumes from it"
        )
        return 0
    print(
        f"P1 {results['p1']:.2f} mm, P2 {results.get('p2', float('nan')):.2f} mm on the test split "
        f"(mean-pose baseline P1 {results['baseline_p1']:.2f} mm) after {results['steps']} steps, "
        f"{results['wall_s']:.0f} s; results in {os.path.join(_WORKDIR.value, loop.RESULTS_FILE)}"
    )
    return 0


def run() -> None:
    """The console script ``sasmamba-train`` and ``python train.py``."""
    program.run_absl(main)
