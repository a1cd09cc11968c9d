"""The user's path on 4 devices computes what it computes on 1: train.py, eval.py, infer, export.

JAX fixes its device count when it starts, so the 4-device runs are child
processes with 4 fake CPU devices (``--xla_force_host_platform_device_count``);
this test session keeps its one device and computes the 1-device results
itself. eval.py, infer and export run in one child (this file run as a
script), so that jax, flax and orbax are imported once for the three.

Two slow checks: one evaluates, lifts and exports a workdir written here
without training (a checkpoint as train.py writes them, of random
parameters); the other runs the whole path from train.py, on 4 devices and
on 1. Both
evaluate in batches of one window per device, as infer lifts by default, so
that eval.py and infer run one compiled program (and so do the 1-device
references here).
"""

import importlib.util
import json
import os
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest
import workdir_checkpoints
from flax import nnx
from sasmamba_jax.configs import tiny

from sasmamba_jax.cli import export as export_cli
from sasmamba_jax.cli import infer
from sasmamba_jax.evaluate import tasks
from sasmamba_jax.io import loader, model_dirs, pytorch, serving
from sasmamba_jax.lifting import sequences
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import loop, recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 4
# The tiny recipe cut to what trains and compiles in seconds.
SMALL_MODEL = {"num_frames": 9, "depth": 1}
CONFIG_FLAGS = ["--config=configs/tiny.py"] + [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
TRAIN_STEPS = 2
# One window per device: eval.py's batches are then infer's (and the 1-device
# references' batches are 4 windows too, one program for all of them).
BATCH = NUM_DEVICES
P1_ATOL_MM = 0.01
POSES_ATOL = 1e-5
KEYPOINT_FRAMES = 20
EXPORT_BATCH = 2
TIMEOUT_S = 900


def _small_config():
    config = tiny.get_config()
    with config.unlocked():
        config.model.update(SMALL_MODEL)
        config.max_steps = TRAIN_STEPS
    return config


def _env(num_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def _run(command, num_devices):
    result = subprocess.run(
        command, env=_env(num_devices), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _run_entry_points(workdir, keypoints_path, output_dir, num_devices):
    """eval.py, infer and export on ``workdir`` in one child with ``num_devices`` devices; their outputs."""
    _run([sys.executable, os.path.abspath(__file__), workdir, keypoints_path, output_dir], num_devices)
    with open(os.path.join(output_dir, "eval.json")) as f:
        p1 = json.load(f)["p1"]
    with open(os.path.join(output_dir, "devices.json")) as f:
        devices = json.load(f)
    return {
        "p1": p1,
        "poses": np.load(os.path.join(output_dir, "infer.npz"))["poses_3d"],
        "exported": serving.load_exported(os.path.join(output_dir, "forward.jax")),
        **devices,
    }


def _entry_points_main(workdir, keypoints_path, output_dir):
    """The child: the three command lines as a user types them, one after another."""
    # What load_model does with every device and each kind of checkpoint: every
    # parameter on all of them.
    model = loader.load_model(workdir)
    model_dir = os.path.join(output_dir, "model")
    model_dirs.save_model(model, model_dir)
    kinds = {"workdir": workdir, "model_dir": model_dir}
    if importlib.util.find_spec("torch") is not None:
        kinds["pth"] = os.path.join(output_dir, "model.pth")
        pytorch.write_pytorch_checkpoint(model_dirs.export_pytorch_state_dict(model), kinds["pth"])

    def devices_per_parameter(path):
        params = jax.tree.leaves(model_dirs.params_of(loader.load_model(path)))
        return sorted({len(param.sharding.device_set) for param in params})

    param_devices = {kind: devices_per_parameter(path) for kind, path in kinds.items()}
    with open(os.path.join(output_dir, "devices.json"), "w") as f:
        json.dump({"device_count": jax.device_count(), "param_devices": param_devices}, f)
    sys.argv = [
        "eval.py",
        *CONFIG_FLAGS,
        f"--config.eval.batch_size={BATCH}",
        f"--checkpoint={workdir}",
        f"--output={output_dir}/eval.json",
    ]
    try:
        runpy.run_path(os.path.join(REPO, "eval.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    lifted = os.path.join(output_dir, "infer.npz")
    arguments = ["--checkpoint", workdir, "--input", keypoints_path, "--format", "h36m", "--output", lifted]
    if infer.main(arguments) != 0:
        sys.exit("infer failed")
    forward = os.path.join(output_dir, "forward.jax")
    if export_cli.main([forward, "--checkpoint", workdir, "--batch", str(EXPORT_BATCH), "--flip-tta"]) != 0:
        sys.exit("export failed")


@pytest.fixture(scope="module")
def keypoints_path(tmp_path_factory):
    """A (T, 17, 2) sequence of normalised keypoints longer than one window."""
    path = tmp_path_factory.mktemp("keypoints") / "keypoints.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.uniform(-0.6, 0.6, (KEYPOINT_FRAMES, 17, 2)).astype(np.float32))
    return str(path)


def _one_device_results(workdir, keypoints_path):
    """What eval.py, infer and export compute on one device, through the library they call."""
    config = _small_config()
    config.eval.batch_size = BATCH
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    model = loader.load_model(workdir, mesh=mesh)
    task = tasks.load_task(config.data, model.config.num_frames, config.seed)
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    p1 = tasks.evaluate_model(graphdef, params, task, config.eval, mesh, model.config.in_chans)["p1"]
    poses = sequences.lift(model, np.load(keypoints_path), batch_size=BATCH)
    return {"p1": p1, "poses": poses, "model": model}


def _assert_same_results(ours, single, keypoints_path):
    assert ours["device_count"] == NUM_DEVICES
    assert {"workdir", "model_dir"} <= ours["param_devices"].keys()
    assert all(counts == [NUM_DEVICES] for counts in ours["param_devices"].values()), ours["param_devices"]
    np.testing.assert_allclose(ours["p1"], single["p1"], rtol=0, atol=P1_ATOL_MM)
    np.testing.assert_allclose(ours["poses"], single["poses"], rtol=0, atol=POSES_ATOL)
    frames = single["model"].config.num_frames
    windows = np.stack([np.load(keypoints_path)[:frames], np.load(keypoints_path)[-frames:]])
    assert windows.shape[0] == EXPORT_BATCH
    expected = sequences.lift_sequences(single["model"], list(windows), stride=frames, batch_size=BATCH)
    np.testing.assert_allclose(ours["exported"](windows), np.stack(expected), rtol=0, atol=POSES_ATOL)


# ---------------------------------------------------------------------------
# Default run: a step-0 workdir, evaluated, lifted and exported on 4 devices


@pytest.fixture(scope="module")
def random_workdir(tmp_path_factory):
    """A train.py workdir holding one checkpoint of random parameters (nothing compiled)."""
    workdir = tmp_path_factory.mktemp("random")
    config = _small_config()
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda x: (0.2 * rng.standard_normal(x.shape)).astype(x.dtype),
        recipe.abstract_train_state(config).params,
    )
    workdir_checkpoints.save_step_one(workdir, config, params)
    return str(workdir)


# Slow: the 4-device child and the 1-device references, half a minute on a cold cache.
@pytest.mark.slow
def test_eval_infer_and_export_on_4_devices_match_1_device(random_workdir, keypoints_path, tmp_path):
    ours = _run_entry_points(random_workdir, keypoints_path, str(tmp_path), NUM_DEVICES)
    single = _one_device_results(random_workdir, keypoints_path)
    _assert_same_results(ours, single, keypoints_path)


# ---------------------------------------------------------------------------
# The whole path from train.py


def _train(workdir, num_devices):
    command = [sys.executable, "train.py", *CONFIG_FLAGS, f"--config.max_steps={TRAIN_STEPS}"]
    _run([*command, f"--workdir={workdir}"], num_devices)
    with open(os.path.join(workdir, loop.RESULTS_FILE)) as f:
        return json.load(f)


@pytest.mark.slow
def test_the_whole_path_on_4_devices_matches_1_device(keypoints_path, tmp_path):
    workdirs = {n: str(tmp_path / f"workdir_{n}") for n in (1, NUM_DEVICES)}
    trained = {n: _train(workdirs[n], n) for n in workdirs}
    assert trained[1]["steps"] == trained[NUM_DEVICES]["steps"] == TRAIN_STEPS
    np.testing.assert_allclose(trained[NUM_DEVICES]["p1"], trained[1]["p1"], rtol=0, atol=P1_ATOL_MM)
    output_dir = tmp_path / "outputs"
    output_dir.mkdir()
    ours = _run_entry_points(workdirs[NUM_DEVICES], keypoints_path, str(output_dir), NUM_DEVICES)
    # eval.py scores the trained parameters as train.py's final evaluation did.
    np.testing.assert_allclose(ours["p1"], trained[NUM_DEVICES]["p1"], rtol=0, atol=P1_ATOL_MM)
    _assert_same_results(ours, _one_device_results(workdirs[1], keypoints_path), keypoints_path)


if __name__ == "__main__":
    _entry_points_main(*sys.argv[1:])
