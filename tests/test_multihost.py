"""Two processes on 127.0.0.1 train exactly like one process with the same devices.

Each process of the pair gets 2 fake CPU devices and reads half of every
global batch; the single process gets 4. Same config, same steps: the final
parameters must agree.
"""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from sasmamba_jax import checkpoint, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_command(workdir, *extra):
    return [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config=" + os.path.join(REPO, "configs", "tiny.py"),
        f"--workdir={workdir}",
        f"--config.max_steps={STEPS}",
        "--config.eval.flip=False",
        # AdamW with the release's eps (1e-8) turns summation-order rounding of
        # near-zero gradients into parameter differences of order lr;
        # tests/test_sharded.py explains the choice of 1e-4.
        "--config.optimizer.eps=1e-4",
        *extra,
    ]


def _environment(num_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_all(commands_and_envs):
    """Starts every process, waits for all within the timeout, kills them on any failure."""
    processes = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in commands_and_envs
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, f"process failed ({p.returncode}):\n{_failure_report(out)}"
    return outputs


def _failure_report(output: str) -> str:
    """A crashed process's glog error lines, then its last lines.

    An abort ends in a dump of every thread's stack, so the line that says
    why (XLA's and the coordination service's ``E``/``F`` log lines) is far
    from the end of the output.
    """
    log_errors = [line for line in output.splitlines() if re.match(r"[EF]\d{4} ", line)]
    return "\n".join(log_errors[-20:]) + "\n...\n" + output[-2000:]


def _param_leaves(model):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
    port = _free_port()
    pair_dir = tmp_path / "two_processes"
    single_dir = tmp_path / "one_process"
    pair = [
        (
            _train_command(
                pair_dir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            _environment(2),
        )
        for i in range(2)
    ]
    _run_all(pair)
    _run_all([(_train_command(single_dir), _environment(4))])

    pair = _param_leaves(checkpoint.load_model(pair_dir))
    single = _param_leaves(checkpoint.load_model(single_dir))
    initial = _param_leaves(train_lib.create_model(tiny.get_config()))
    assert len(pair) == len(single) == len(initial) > 0
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(pair, single)) <= 1e-5
    # Both runs trained: the parameters left their (shared) initial values.
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(pair, initial)) > 1e-4
    assert f'"steps": {STEPS}' in (pair_dir / "results.json").read_text()
