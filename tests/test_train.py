"""Training: the release's own optimizer steps, checkpoints, resumption and failures.

`tests/data/official_tiny_trainstep.npz` holds three AdamW steps of the PyTorch
release from `official_tiny.pth` (its 'config' entry says how they were made):
batches, outputs, losses, the first step's gradients and the parameters before
and after, in the release's layouts. `train.recipe` must reproduce them.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from compile_counting import count_compilations
from conftest import DEMO_LIMIT_S
from flax import nnx
from sasmamba_jax.configs import tiny

from sasmamba_jax.data.pipeline import ClipLoader
from sasmamba_jax.io import loader, pytorch, workdirs
from sasmamba_jax.model.forward import predict
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import checkpoints, loop, recipe

pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO, "train.py")
SUBPROCESS_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}

RELEASE_STEPS = 3
LOSS_RTOL = 1e-5
ATOL = 1e-5
# Our loss terms and the release's names for them.
RELEASE_LOSS_TERMS = {
    "mpjpe": "loss_3d_pos",
    "n_mpjpe": "loss_3d_scale",
    "velocity": "loss_3d_velocity",
}

# What the demo model must reach on the demo test split: half the mean-pose baseline.
DEMO_P1_GOAL_MM = 95.0

# The short runs of train_and_evaluate: checkpoints halfway and at the end.
LOOP_STEPS = 4
LOOP_CHECKPOINT_EVERY = 2
POISONED_STEP = 4
# Not a checkpoint step: the save at it is the preemption's.
SIGTERM_STEP = 3
# The tiny model cut to 9 frames and one layer, which compiles and runs in half the time.
LOOP_MODEL = {"num_frames": 9, "depth": 1}


# ---------------------------------------------------------------------------
# The release's three training steps


@pytest.fixture(scope="module")
def release(data_dir):
    with np.load(data_dir / "official_tiny_trainstep.npz") as f:
        recorded = {key: f[key] for key in f.files}
    recorded["config"] = json.loads(str(recorded["config"]))
    return recorded


@pytest.fixture(scope="module")
def release_config(release):
    """The tiny config with the optimizer the release's steps were taken with."""
    recorded = release["config"]
    assert "lr=0.0005" in recorded["optimizer"] and "weight_decay=0.01" in recorded["optimizer"]
    assert recorded["model"]["drop_path_rate"] == 0.0 and not recorded["data"]["flip_augmentation"]
    config = tiny.get_config()
    with config.unlocked():
        config.optimizer.learning_rate = 5e-4
    opt = config.optimizer
    assert (opt.weight_decay, opt.b1, opt.b2, opt.eps) == (0.01, 0.9, 0.999, 1e-8)
    return config


def _release_model(data_dir, stride_grad):
    # "auto": the scan back end that also compiles fastest on CPU (any back end matches).
    return loader.load_model(
        data_dir / "official_tiny.pth", drop_path_rate=0.0, stride_grad=stride_grad, scan="auto"
    )


def _release_batch(release, step):
    return {"input_2d": release[f"x{step}"], "target_3d": release[f"y{step}"]}


def _host_copy(tree):
    # A copy, not a zero-copy view: a view would keep the buffers alive and
    # stop train_step from donating them.
    return jax.tree.map(np.array, tree)


def _release_names(params, release):
    """A parameter tree (nnx.State or pure dict) as the release's state_dict."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    return pytorch.params_to_state_dict(jax.device_get(params), release["config"]["model"]["depth"])


@pytest.fixture(scope="module")
def release_run(data_dir, release, release_config):
    """The release's three steps through create_train_state + train_step.

    Returns the final state, the host copies of the state before each step, each
    step's metrics and the eval-mode predictions before each step.
    """
    state = recipe.create_train_state(release_config, _release_model(data_dir, "release"))
    before, metrics, predictions, compiled = [], [], [], []
    for step in range(RELEASE_STEPS):
        model = recipe.model_from_state(state)
        predictions.append(np.asarray(predict(model, release[f"x{step}"])))
        before.append(_host_copy(state.arrays()))
        with count_compilations() as step_compiles:
            state, step_metrics = recipe.train_step(state, _release_batch(release, step))
        compiled.append(step_compiles)
        metrics.append(jax.device_get(step_metrics))
    return {
        "state": state,
        "before": before,
        "metrics": metrics,
        "predictions": predictions,
        "compiled": compiled,
    }


def test_the_step_api_compiles_its_step_once(release_run):
    """create_train_state places the new arrays where train_step returns them: the second
    step reuses the first one's program (a fresh state's scalars on one device used to make
    it compile again)."""
    first, *later = release_run["compiled"]
    assert "jit(_train_step)" in first, first
    assert later == [[]] * (RELEASE_STEPS - 1), later


def test_initial_parameters_are_the_release_checkpoint(release, release_run):
    initial = _release_names(release_run["before"][0]["params"], release)
    assert len(initial) == len([k for k in release if k.startswith("init/")])
    for name, value in initial.items():
        np.testing.assert_array_equal(value, release[f"init/{name}"], err_msg=name)


def test_losses_and_their_terms_match_the_release(release, release_run):
    for step, metrics in enumerate(release_run["metrics"]):
        for ours, theirs in {"loss": "loss", **RELEASE_LOSS_TERMS}.items():
            want, message = release[theirs][step], f"{ours} at step {step}"
            np.testing.assert_allclose(metrics[ours], want, rtol=LOSS_RTOL, err_msg=message)
    assert int(release_run["state"].step) == RELEASE_STEPS


# Slow: the interpreted Pallas kernel in a whole training step; the kernel's own
# forward and gradients are checked against numpy in test_pallas_scan.py.
@pytest.mark.slow
def test_model_with_pallas_scan_takes_the_release_training_steps(data_dir, release, release_config):
    """The release's three recorded AdamW steps, with every scan of the model fused."""
    model = loader.load_model(
        data_dir / "official_tiny.pth", drop_path_rate=0.0, stride_grad="release", scan="pallas"
    )
    state = recipe.create_train_state(release_config, model)
    for step in range(RELEASE_STEPS):
        state, metrics = recipe.train_step(state, _release_batch(release, step))
        np.testing.assert_allclose(metrics["loss"], release["loss"][step], rtol=LOSS_RTOL)

    # As in test_parameters_after_three_steps_match_the_release: where AdamW's
    # first step divides a gradient within a few eps of 0 by itself, rounding
    # becomes a step of up to lr.
    lr = release_config.optimizer.learning_rate
    for name, value in _release_names(state.params, release).items():
        error = np.abs(value - release[f"final/{name}"])
        well_conditioned = np.abs(release[f"grad/{name}"]) >= 100 * release_config.optimizer.eps
        assert np.all(error[well_conditioned] <= ATOL), name
        assert np.all(error <= RELEASE_STEPS * lr), name


def test_predictions_match_the_release(release, release_run):
    for step, prediction in enumerate(release_run["predictions"]):
        want = release[f"pred{step}"]
        np.testing.assert_allclose(prediction, want, rtol=0, atol=ATOL, err_msg=step)


def _step0_gradients(data_dir, release, release_config, stride_grad):
    state = recipe.create_train_state(release_config, _release_model(data_dir, stride_grad))
    (loss, _), grads = jax.jit(recipe.loss_and_grads, static_argnums=0)(
        state.graphdef, state.params, _release_batch(release, 0), recipe.dropout_key(state)
    )
    return float(loss), _release_names(grads, release)


@pytest.fixture(scope="module")
def release_gradients(data_dir, release, release_config):
    return _step0_gradients(data_dir, release, release_config, "release")


def test_step0_gradients_match_the_release(release, release_gradients):
    loss, grads = release_gradients
    np.testing.assert_allclose(loss, release["loss"][0], rtol=LOSS_RTOL)
    assert len(grads) == len([k for k in release if k.startswith("grad/")])
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, release[f"grad/{name}"], rtol=0, atol=ATOL, err_msg=name)


# Two microbatches (slow: a third compile of the gradient) only checks another count.
@pytest.mark.parametrize("num_microbatches", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_microbatched_gradients_match_the_release(data_dir, release, release_config, num_microbatches):
    """Accumulating over microbatches gives the whole batch's loss and gradient."""
    state = recipe.create_train_state(release_config, _release_model(data_dir, "release"))
    state = state.replace(num_microbatches=num_microbatches)
    (loss, _), grads = jax.jit(recipe.accumulated_loss_and_grads)(state, _release_batch(release, 0))
    np.testing.assert_allclose(loss, release["loss"][0], rtol=LOSS_RTOL)
    for name, grad in _release_names(grads, release).items():
        np.testing.assert_allclose(grad, release[f"grad/{name}"], rtol=0, atol=ATOL, err_msg=name)


def test_split_microbatches_deals_rows_round_robin():
    batch = {"input_2d": np.arange(6)[:, None] * np.ones((6, 3))}
    split = recipe.split_microbatches(batch, 3)["input_2d"]
    assert split.shape == (3, 2, 3)
    np.testing.assert_array_equal(split[:, :, 0], [[0, 3], [1, 4], [2, 5]])


def test_num_microbatches_must_divide_the_batch(release_config):
    config = release_config.copy_and_resolve_references()
    with config.unlocked():
        config.num_microbatches = 3
    # The model's shapes are enough: the check comes before any array is made.
    model = nnx.eval_shape(lambda: recipe.create_model(config))
    with pytest.raises(ValueError, match="num_microbatches .3. must be positive and divide batch_size .4."):
        recipe.create_train_state(config, model)


@pytest.mark.slow  # a check of the fixture, not of our code: its own compile of the gradient
def test_exact_stride_backward_differs(data_dir, release, release_config, release_gradients):
    """The fixture's gradients are the release's approximate backward, so the match above
    depends on it: the true gradient of the same loss is far from them."""
    release_loss, _ = release_gradients
    loss, grads = _step0_gradients(data_dir, release, release_config, "exact")
    np.testing.assert_allclose(loss, release_loss, rtol=1e-6)
    differences = {name: np.max(np.abs(grads[name] - release[f"grad/{name}"])) for name in grads}
    assert max(differences.values()) > 100 * ATOL, differences
    # Parameters past the last stride scan (the head) see the same gradient either way.
    assert differences["head.1.weight"] <= ATOL


def test_parameters_after_three_steps_match_the_release(release, release_run, release_config):
    """AdamW's first update is lr * g / (|g| + eps): where the gradient is within a few eps
    of 0 it turns rounding into a step of up to lr. There we only bound the error by
    the size of three steps; everywhere else it must be within ATOL."""
    lr = release_config.optimizer.learning_rate
    final = _release_names(release_run["state"].params, release)
    assert len(final) == len([k for k in release if k.startswith("final/")])
    ill_conditioned = 0
    for name, value in final.items():
        error = np.abs(value - release[f"final/{name}"])
        near_zero_gradient = np.abs(release[f"grad/{name}"]) < 100 * release_config.optimizer.eps
        assert np.all(error[~near_zero_gradient] <= ATOL), (name, error[~near_zero_gradient].max())
        assert np.all(error <= RELEASE_STEPS * lr), name
        ill_conditioned += int(np.sum(error > ATOL))
    assert ill_conditioned <= 4
    # The steps moved the parameters far more than the tolerance.
    moved = max(np.max(np.abs(release[f"final/{k}"] - release[f"init/{k}"])) for k in final)
    assert moved > 100 * ATOL


# ---------------------------------------------------------------------------
# Orbax round trip of a TrainState


def test_train_state_round_trips_through_orbax(tmp_path, release, release_run, release_config):
    """The state after the release's first step, saved and restored as train_and_evaluate
    does it, is bit-identical, and its model predicts what the release predicted."""
    final = release_run["state"]
    mesh = sharding.make_mesh(release_config.mesh, jax.devices()[:1])

    def placed(arrays):
        return recipe.place_state(final.with_arrays(arrays), mesh)

    after_step1 = release_run["before"][1]
    saved = placed(after_step1)
    # The restore target: same structure and shardings, other values (step 3).
    template = placed(_host_copy(final.arrays()))
    loader_state = dict(epoch=2, step_in_epoch=5, seed=0, num_samples=9, global_batch_size=4)
    latest, _ = checkpoints.checkpoint_managers(str(tmp_path), keep=1)
    latest.save(1, args=checkpoints.save_args(saved, loader_state, release_config))
    latest.wait_until_finished()

    # A new manager, as a resumed run has, restoring into a state at another step.
    fresh_manager, _ = checkpoints.checkpoint_managers(str(tmp_path), keep=1)
    assert fresh_manager.latest_step() == 1
    restored, restored_loader = checkpoints.restore(fresh_manager, 1, template)
    assert restored_loader == loader_state
    assert int(restored.step) == 1 and int(template.step) == RELEASE_STEPS
    expected = jax.tree_util.tree_leaves_with_path(after_step1)
    actual = jax.tree_util.tree_leaves_with_path(restored.arrays())
    template_shardings = [leaf.sharding for leaf in jax.tree.leaves(template.arrays())]
    assert [path for path, _ in expected] == [path for path, _ in actual] and len(actual) > 100
    for (path, want), (_, got), wanted_sharding in zip(expected, actual, template_shardings):
        assert got.dtype == want.dtype and np.array_equal(np.asarray(got), want), path
        assert got.sharding == wanted_sharding, path

    model = recipe.model_from_state(restored)
    assert model.deterministic
    model_params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(np.array_equal(a, b) for a, b in zip(model_params, jax.tree.leaves(restored.params)))
    np.testing.assert_allclose(predict(model, release["x1"]), release["pred1"], rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------
# Config errors


def test_model_config_rejects_unknown_model_keys():
    config = tiny.get_config()
    with config.unlocked():
        config.model.drop_path = 0.1
    with pytest.raises(ValueError, match="drop_path"):
        recipe.model_config(config)


def test_train_py_rejects_an_unknown_config_key(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, TRAIN_PY, f"--workdir={workdir}", "--config.optimizer.learnig_rate=1"],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "train.py: error: unknown config key 'learnig_rate' in --config.optimizer.learnig_rate. "
        'Did you mean "learning_rate" instead of "learnig_rate"?'
    )
    assert not workdir.exists()


# ---------------------------------------------------------------------------
# train_and_evaluate: resuming, non-finite losses


def _loop_config(max_steps=LOOP_STEPS):
    config = tiny.get_config()
    with config.unlocked():
        config.model.update(LOOP_MODEL)
        config.max_steps = max_steps
        config.checkpoint_every_steps = LOOP_CHECKPOINT_EVERY
        # Only the evaluation at the end of each call.
        config.eval_every_steps = 1000
        config.eval.flip = False
    return config


def _latest_manager(workdir):
    return ocp.CheckpointManager(os.path.join(workdir, workdirs.CHECKPOINT_DIR, workdirs.LATEST))


def _restore_checkpoint(workdir, step):
    """A training checkpoint's arrays (as saved) and loader position."""
    restored = _latest_manager(workdir).restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), loader=ocp.args.JsonRestore()),
    )
    return restored.state, restored.loader


def _all_finite(model):
    return all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _train_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row for row in rows if "train/loss" in row]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The loop config trained LOOP_STEPS steps: its workdir, results and what it compiled.

    The first run of the loop config in this module (the tests that request
    it come first), so it compiles the config's step.
    """
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    with count_compilations() as compiled:
        results = loop.train_and_evaluate(_loop_config(), workdir)
    return workdir, results, compiled


def _assert_same_final_checkpoint(workdir, reference_workdir):
    ours, our_loader = _restore_checkpoint(workdir, LOOP_STEPS)
    theirs, their_loader = _restore_checkpoint(reference_workdir, LOOP_STEPS)
    assert our_loader == their_loader
    assert their_loader["epoch"] == 0 and their_loader["step_in_epoch"] == LOOP_STEPS
    our_leaves = jax.tree_util.tree_leaves_with_path(ours)
    their_leaves = jax.tree_util.tree_leaves_with_path(theirs)
    assert [p for p, _ in our_leaves] == [p for p, _ in their_leaves]
    for (path, a), (_, b) in zip(our_leaves, their_leaves):
        assert np.array_equal(np.asarray(a), np.asarray(b)), path
    assert int(ours["step"]) == LOOP_STEPS


def _never_initialise(config):
    raise AssertionError("a resumed run initialised a model")


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path, monkeypatch, uninterrupted_run):
    """Resuming restores into the abstract state: no initialisation to compile or run first."""
    reference_workdir, reference_results, _ = uninterrupted_run
    workdir = str(tmp_path)
    halfway = LOOP_STEPS // 2
    first = loop.train_and_evaluate(_loop_config(max_steps=halfway), workdir)
    assert first["steps"] == halfway
    assert _latest_manager(workdir).all_steps() == [halfway]
    assert _restore_checkpoint(workdir, halfway)[1]["step_in_epoch"] == halfway

    monkeypatch.setattr(loop, "_initial_model", _never_initialise)
    second = loop.train_and_evaluate(_loop_config(), workdir)
    assert second["steps"] == LOOP_STEPS
    _assert_same_final_checkpoint(workdir, reference_workdir)
    assert second["p1"] == reference_results["p1"]

    rows, reference_rows = _train_rows(workdir), _train_rows(reference_workdir)
    assert [row["step"] for row in rows] == list(range(1, LOOP_STEPS + 1))
    assert [row["train/loss"] for row in rows] == [row["train/loss"] for row in reference_rows]


def test_a_second_run_of_the_same_config_compiles_nothing(tmp_path, uninterrupted_run):
    """A state holds its optimizer as a static field: a second run with the same settings
    must reuse the first run's compiled step (a new optax transform per run used to
    compile it again), and its evaluation."""
    _, _, first = uninterrupted_run
    with count_compilations() as second:
        loop.train_and_evaluate(_loop_config(max_steps=1), str(tmp_path))
    assert first.count("jit(_train_step)") == 1, first
    assert second == [], second


class _PoisonedLoader(ClipLoader):
    """Serves NaN inputs from the batch of step POISONED_STEP (counted from 1) on."""

    def __next__(self):
        step = self.epoch * self.steps_per_epoch + self.step_in_epoch + 1
        batch = super().__next__()
        if step >= POISONED_STEP:
            batch["input_2d"] = np.full_like(batch["input_2d"], np.nan)
        return batch


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, uninterrupted_run
):
    workdir = str(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "ClipLoader", _PoisonedLoader)
        with pytest.raises(loop.NonFiniteLossError, match=f"at step {POISONED_STEP}\\b"):
            loop.train_and_evaluate(_loop_config(), workdir)
    last_good = LOOP_CHECKPOINT_EVERY
    assert _latest_manager(workdir).all_steps() == [last_good]
    assert not os.path.exists(os.path.join(workdir, loop.RESULTS_FILE))
    assert _all_finite(workdirs.load_model_from_workdir(workdir))

    # The checkpoint is exactly the state of that step: training on from it with
    # clean data ends where the uninterrupted run ended.
    loop.train_and_evaluate(_loop_config(), workdir)
    _assert_same_final_checkpoint(workdir, uninterrupted_run[0])


class _SigtermLoader(ClipLoader):
    """Sends this process SIGTERM, as a scheduler would, while serving the batch of step SIGTERM_STEP."""

    def __next__(self):
        if self.epoch * self.steps_per_epoch + self.step_in_epoch + 1 == SIGTERM_STEP:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_sigterm_saves_the_current_step_and_the_same_call_resumes_bit_exactly(
    tmp_path, monkeypatch, uninterrupted_run
):
    workdir = str(tmp_path)
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "ClipLoader", _SigtermLoader)
        preempted = loop.train_and_evaluate(_loop_config(), workdir)
    assert preempted["preempted"] and preempted["steps"] == SIGTERM_STEP
    assert _latest_manager(workdir).all_steps() == [LOOP_CHECKPOINT_EVERY, SIGTERM_STEP]
    assert _restore_checkpoint(workdir, SIGTERM_STEP)[1]["step_in_epoch"] == SIGTERM_STEP
    assert not os.path.exists(os.path.join(workdir, loop.RESULTS_FILE))
    assert signal.getsignal(signal.SIGTERM) is handler_before

    resumed = loop.train_and_evaluate(_loop_config(), workdir)
    assert not resumed["preempted"] and resumed["steps"] == LOOP_STEPS
    _assert_same_final_checkpoint(workdir, uninterrupted_run[0])


# ---------------------------------------------------------------------------
# train.py killed while saving


KILLS = 3
KILL_RUN_STEPS = 8
TMP_CHECKPOINT = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
TRAIN_TIMEOUT_S = 600


def _kill_run_command(workdir):
    return [
        sys.executable,
        TRAIN_PY,
        f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
        f"--workdir={workdir}",
        f"--config.max_steps={KILL_RUN_STEPS}",
        "--config.checkpoint_every_steps=1",
        "--config.eval_every_steps=1000",
        "--config.eval.flip=False",
        *(f"--config.model.{name}={value}" for name, value in LOOP_MODEL.items()),
    ]


def _finalized_steps(latest_dir):
    if not os.path.isdir(latest_dir):
        return []
    return sorted(int(name) for name in os.listdir(latest_dir) if name.isdigit())


def _kill_during_save(process, latest_dir, after_step, delay_s):
    """SIGKILLs ``process`` ``delay_s`` after it starts writing a checkpoint past ``after_step``.

    Orbax writes step s into a temporary directory and renames it when complete,
    and starts a save only when the previous one is complete.

    Returns the step being saved, or None if the process ended first.
    """
    deadline = time.time() + TRAIN_TIMEOUT_S
    while process.poll() is None and time.time() < deadline:
        names = os.listdir(latest_dir) if os.path.isdir(latest_dir) else []
        saving = [int(m.group(1)) for m in map(TMP_CHECKPOINT.match, names) if m]
        if any(step > after_step for step in saving):
            time.sleep(delay_s)
            process.kill()
            process.wait()
            return max(saving)
        time.sleep(0.002)
    process.kill()
    process.wait()
    return None


@pytest.mark.slow
def test_killing_train_py_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    latest_dir = os.path.join(workdir, workdirs.CHECKPOINT_DIR, workdirs.LATEST)
    command = _kill_run_command(workdir)
    rng = random.Random(0)
    finalized = 0
    for attempt in range(KILLS):
        process = subprocess.Popen(
            command, env=SUBPROCESS_ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # The first kill lands as the save starts, the others a little into it.
        delay_s = 0.0 if attempt == 0 else rng.uniform(0.0, 0.05)
        # Killed while saving a step past the next one, so that every kill leaves
        # at least one new complete checkpoint behind it.
        saving = _kill_during_save(process, latest_dir, after_step=finalized + 1, delay_s=delay_s)
        assert saving is not None, f"run {attempt} ended unkilled: {process.stderr.read()}"
        process.stderr.close()
        steps = _finalized_steps(latest_dir)
        assert steps and saving - 1 <= steps[-1] <= saving, (steps, saving)
        finalized = steps[-1]
        assert _latest_manager(workdir).latest_step() == finalized
        state, loader = _restore_checkpoint(workdir, finalized)
        assert int(state["step"]) == finalized and loader["step_in_epoch"] == finalized
        assert _all_finite(workdirs.load_model_from_workdir(workdir))

    result = subprocess.run(
        command,
        env=SUBPROCESS_ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, loop.RESULTS_FILE)) as f:
        assert json.load(f)["steps"] == KILL_RUN_STEPS
    assert _finalized_steps(latest_dir)[-1] == KILL_RUN_STEPS


# ---------------------------------------------------------------------------
# The demo: python train.py with no --config


@pytest.mark.slow
@pytest.mark.alone
def test_demo_training_beats_the_mean_pose_baseline_within_ten_minutes(demo_run):
    """The README's promise: P1 at most DEMO_P1_GOAL_MM on the demo test split (half the baseline)."""
    workdir, result, elapsed = demo_run["workdir"], demo_run["result"], demo_run["elapsed_s"]
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / loop.RESULTS_FILE) as f:
        results = json.load(f)
    print(f"demo: {elapsed:.0f} s, {json.dumps({k: v for k, v in results.items() if k != 'eval'})}")
    for key in ("p1", "p2", "baseline_p1", "steps", "wall_s"):
        assert np.isfinite(results[key]), key
    assert results["steps"] > 0 and results["wall_s"] < elapsed < DEMO_LIMIT_S
    assert results["p1"] < results["baseline_p1"]
    assert results["p1"] <= DEMO_P1_GOAL_MM, results["p1"]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert rows[-1]["step"] == results["steps"] and any("eval/p1" in row for row in rows)
    assert list((workdir / "tensorboard").glob("events.out.tfevents*"))
    assert (workdir / loop.CURVES_FILE).stat().st_size > 0
