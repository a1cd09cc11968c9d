"""Two processes on 127.0.0.1 train exactly like one process with the same devices.

Each process of the pair gets 2 fake CPU devices and reads half of every
global batch; the single process gets 4. Same config, same steps: the final
parameters must agree. The pair also saves ``latest`` and ``best`` at the same
steps, and stops together when one of them gets SIGTERM.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from sasmamba_jax.configs import tiny

from sasmamba_jax.io import workdirs
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import checkpoints, recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 1800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_command(workdir, *extra, steps):
    return [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config=" + os.path.join(REPO, "configs", "tiny.py"),
        f"--workdir={workdir}",
        f"--config.max_steps={steps}",
        "--config.eval.flip=False",
        # AdamW with the release's eps (1e-8) turns summation-order rounding of
        # near-zero gradients into parameter differences of order lr;
        # tests/test_sharded.py explains the choice of 1e-4.
        "--config.optimizer.eps=1e-4",
        *extra,
    ]


def _environment(num_devices, compilation_cache_dir=None):
    """The test session's environment on ``num_devices`` CPU devices.

    ``compilation_cache_dir``: a persistent compilation cache that keeps
    every compile, as tests/conftest.py sets up for the session.
    """
    env = dict(os.environ)
    if compilation_cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(compilation_cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _pair(workdir, *extra, steps, compilation_cache_dir=None):
    """Commands and environments of two processes with 2 devices each."""
    port = _free_port()
    return [
        (
            _train_command(
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *extra,
                steps=steps,
            ),
            _environment(2, compilation_cache_dir),
        )
        for i in range(2)
    ]


def _start_all(commands_and_envs):
    return [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in commands_and_envs
    ]


def _wait_all(processes):
    """Waits for every process within the timeout, kills them on any failure; their outputs."""
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


def _run_all(commands_and_envs):
    return _wait_all(_start_all(commands_and_envs))


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


def _max_difference(leaves, other_leaves):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(leaves, other_leaves, strict=True))


STEPS = 6


def _manager(workdir, name):
    return ocp.CheckpointManager(os.path.join(workdir, workdirs.CHECKPOINT_DIR, name))


def _restore_arrays(manager, step):
    """A training checkpoint's arrays and its loader position, restored as a resumed run does.

    The target's shardings (this process's devices) stand in for the saving
    runs' ones, which this process cannot see.
    """
    target = recipe.abstract_train_state(tiny.get_config(), mesh=sharding.default_mesh())
    state, loader = checkpoints.restore(manager, step, target)
    return jax.device_get(state.arrays()), loader


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def every_step_runs(tmp_path_factory):
    """A pair and a single process with the same devices, checkpointing and evaluating every
    step for STEPS steps: their workdirs. The SIGTERM test below resumes to the pair's last step."""
    every_step = ("--config.checkpoint_every_steps=1", "--config.eval_every_steps=1")
    root = tmp_path_factory.mktemp("every_step")
    pair_dir, single_dir = root / "two_processes", root / "one_process"
    _run_all(_pair(pair_dir, *every_step, steps=STEPS))
    _run_all([(_train_command(single_dir, *every_step, steps=STEPS), _environment(4))])
    return pair_dir, single_dir


@pytest.mark.slow
@pytest.mark.alone
def test_two_processes_train_like_one_and_save_latest_and_best_at_the_same_steps(every_step_runs):
    """Two processes end with the parameters of one process with the same devices. Checkpointing
    and evaluating every step, both managers of both processes save every step, concurrently."""
    pair_dir, single_dir = every_step_runs

    names = [name for _, dirs, files in os.walk(pair_dir) for name in dirs + files]
    assert [name for name in names if "tmp" in name] == []
    latest, best = _manager(pair_dir, workdirs.LATEST), _manager(pair_dir, workdirs.BEST)
    assert latest.all_steps() == list(range(STEPS - 2, STEPS + 1))
    assert len(best.all_steps()) == 1
    for manager in (latest, best):
        for step in manager.all_steps():
            state, loader = _restore_arrays(manager, step)
            assert int(state["step"]) == step and loader["step_in_epoch"] == step
    best_step = best.all_steps()[0]
    if best_step in latest.all_steps():
        saved_by_best = _leaves(_restore_arrays(best, best_step)[0])
        saved_by_latest = _leaves(_restore_arrays(latest, best_step)[0])
        assert all(map(np.array_equal, saved_by_best, saved_by_latest))
    pair = _param_leaves(load_model(pair_dir))
    single = _param_leaves(load_model(single_dir))
    initial = _param_leaves(recipe.create_model(tiny.get_config()))
    assert len(pair) == len(single) == len(initial) > 0
    # Both runs trained: the parameters left their (shared) initial values.
    assert _max_difference(pair, initial) > 1e-4
    # Six steps of rounding apart (1.5e-5 measured since the deformable conv
    # sums its kernel's gradient across devices in its shard_map); a lost or
    # doubled reduction would move parameters by about lr = 5e-4 per step.
    assert _max_difference(pair, single) <= 5e-5
    assert f'"steps": {STEPS}' in (pair_dir / "results.json").read_text()


# A run long enough to be signalled mid-way; neither checkpoints nor
# evaluations fall due before the preemption. Neither changes the training
# itself: the number of epochs only bounds the run, and evaluating or saving
# reads the state without touching it, so the every-step pair above is this
# run's uninterrupted reference.
LONG_RUN = (
    "--config.num_epochs=1000",
    "--config.checkpoint_every_steps=100000",
    "--config.eval_every_steps=100000",
)
LONG_RUN_STEPS = 100000
STEPS_BEFORE_SIGTERM = 2


def _logged_train_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum("train/loss" in json.loads(line) for line in f if line.strip())


# What sasmamba_jax.distributed says when it turns the compilation cache off.
CACHE_OFF = "persistent compilation cache off: in a multi-process run on CPUs"


@pytest.mark.slow
@pytest.mark.alone
def test_sigterm_to_one_process_saves_every_process_and_resumes_bit_exactly(tmp_path, every_step_runs):
    """The preempted and the resumed pair share one persistent compilation cache that keeps
    every compile, as a restarted pod does. On CPUs each process would look programs up under
    its own keys while only process 0 writes them: the resumed pair's process 0 loaded the
    train step while process 1 compiled it, and gloo gave up waiting for process 1 after 30 s
    (docs/guide.md). Every process of a multi-process CPU run now compiles for itself and says
    so; the cache stays empty. The resumed run must end bit-identical to the every-step pair."""
    cache = tmp_path / "compilation_cache"
    preempted_dir = tmp_path / "preempted"
    processes = _start_all(_pair(preempted_dir, *LONG_RUN, steps=LONG_RUN_STEPS, compilation_cache_dir=cache))
    deadline = time.time() + TIMEOUT_S
    while _logged_train_steps(preempted_dir) < STEPS_BEFORE_SIGTERM and time.time() < deadline:
        assert all(p.poll() is None for p in processes), "a process ended before the signal"
        time.sleep(0.2)
    # Only the second process is told, as when the scheduler preempts one host.
    processes[1].send_signal(signal.SIGTERM)
    outputs = _wait_all(processes)
    latest = _manager(preempted_dir, workdirs.LATEST)
    assert len(latest.all_steps()) == 1
    saved = latest.all_steps()[0]
    assert STEPS_BEFORE_SIGTERM <= saved < STEPS
    for output in outputs:
        assert f"preempted: saved step {saved} in" in output, output[-2000:]
    assert not (preempted_dir / "results.json").exists()

    final = STEPS
    resumed = _run_all(_pair(preempted_dir, *LONG_RUN, steps=final, compilation_cache_dir=cache))
    assert f"resumed from {latest.directory} at step {saved}" in resumed[0]
    for output in outputs + resumed:
        assert CACHE_OFF in output, output[-2000:]
    assert not cache.exists() or not any(cache.iterdir())

    reference_dir, _ = every_step_runs
    ours, our_loader = _restore_arrays(_manager(preempted_dir, workdirs.LATEST), final)
    theirs, their_loader = _restore_arrays(_manager(reference_dir, workdirs.LATEST), final)
    assert our_loader == their_loader
    assert int(ours["step"]) == final
    ours, theirs = jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves_with_path(theirs)
    assert [path for path, _ in ours] == [path for path, _ in theirs]
    for (path, a), (_, b) in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b)), path
