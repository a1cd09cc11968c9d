"""Training on a device mesh computes what training on one device computes.

The mesh runs need 8 devices, and JAX fixes its device count when it starts,
so they run in a child process (this file run as a script) with 8 fake CPU
devices; the rest of the test session keeps its single device. The child
records what it saw into an npz file; the assertions are made here.
"""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from sasmamba_jax.configs import common, tiny

from sasmamba_jax.data.pipeline import ClipLoader, make_global_batch
from sasmamba_jax.evaluate import tasks
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import checkpoints, recipe

# Trains four meshes in a subprocess: minutes, so with the slow checks.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
STEPS = 3
# (data, fsdp) sizes, and whether the model runs its layers as one rematerialised loop.
MESHES = {
    "data8": (8, 1, False),
    "data2_fsdp4": (2, 4, False),
    "data2_fsdp4_remat": (2, 4, True),
    "one_device": (1, 1, False),
}
ATOL = 1e-5
# Gradients are compared relative to the largest one: they span many magnitudes.
GRAD_RTOL_OF_MAX = 1e-5
# AdamW's update lr * g / (|g| + eps) turns a rounding difference d in g into a
# parameter difference of about lr * d / (|g| + eps). Summing the batch in another
# order on a mesh leaves d near 1e-8 even where g is 1e-7 (cancellation among terms
# of size 1), so with the release's eps (1e-8) three steps differ by up to 2e-5 on
# some machines, and by 2e-6 with eps 1e-6. With 1e-4 the bound is about 1e-7 per
# step; the gradients themselves are compared directly, so nothing is hidden.
WELL_CONDITIONED_EPS = 1e-4
TIMEOUT_S = 600


def _config(remat=False):
    """The tiny recipe, cut to one layer of width 64: the narrowest SasMamba whose
    larger arrays reach sharding.MIN_SHARDED_SIZE, so that fsdp has something to cut.

    The learning rate is the release's and eps is WELL_CONDITIONED_EPS (see there).
    """
    config = tiny.get_config()
    with config.unlocked():
        config.model.num_frames = 9
        config.model.dim = 64
        config.model.depth = 1
        config.model.remat = remat
        config.batch_size = NUM_DEVICES
        config.optimizer.learning_rate = common.base_config().optimizer.learning_rate
        config.optimizer.eps = WELL_CONDITIONED_EPS
    return config


def _leaves_with_paths(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def _train_on_mesh(config, model, mesh, batches, record, prefix):
    """A fresh state placed on ``mesh`` as train_and_evaluate places it, then STEPS steps."""
    state = recipe.place_state(recipe.create_train_state(config, model, steps_per_epoch=100), mesh)
    placed = [leaf.sharding for _, leaf in _leaves_with_paths(state.arrays())]
    for name, leaf in _leaves_with_paths(state.params):
        # A copy: a zero-copy view would keep the buffer alive and stop its donation.
        record[f"{prefix}/initial/{name}"] = np.array(leaf)
    first_batch = make_global_batch(batches[0], sharding.batch_sharding(mesh))
    _, grads = jax.jit(recipe.loss_and_grads, static_argnums=0)(
        state.graphdef, state.params, first_batch, recipe.dropout_key(state)
    )
    for name, leaf in _leaves_with_paths(grads):
        record[f"{prefix}/grads/{name}"] = np.array(leaf)
    losses, kept_shardings, donated = [], True, True
    for batch in batches:
        previous = state
        global_batch = make_global_batch(batch, sharding.batch_sharding(mesh))
        state, metrics = recipe.train_step(state, global_batch)
        losses.append(float(metrics["loss"]))
        now = [leaf.sharding for _, leaf in _leaves_with_paths(state.arrays())]
        kept_shardings &= all(a == b for a, b in zip(now, placed))
        donated &= all(leaf.is_deleted() for _, leaf in _leaves_with_paths(previous.params))
    record[f"{prefix}/losses"] = np.asarray(losses)
    record[f"{prefix}/kept_shardings"] = np.asarray(kept_shardings)
    record[f"{prefix}/donated"] = np.asarray(donated)
    for name, leaf in _leaves_with_paths(state.params):
        record[f"{prefix}/params/{name}"] = np.array(leaf)
        record[f"{prefix}/spec/{name}"] = np.asarray(str(leaf.sharding.spec))
        record[f"{prefix}/shard_shape/{name}"] = np.asarray(leaf.addressable_shards[0].data.shape)
    return state


def _orbax_round_trip(state, loader_state, workdir, record):
    """Saves a sharded state as train_and_evaluate does, then restores it into a zeroed
    state with the same shardings."""
    latest, _ = checkpoints.checkpoint_managers(workdir, keep=1)
    step = int(state.step)
    latest.save(step, args=checkpoints.save_args(state, loader_state, _config()))
    latest.wait_until_finished()
    shardings = jax.tree.map(lambda leaf: leaf.sharding, state.arrays())
    zeros = jax.tree.map(np.zeros_like, jax.device_get(state.arrays()))
    template = state.with_arrays(sharding.put_replicated_host_tree(zeros, shardings))
    restored, restored_loader_state = checkpoints.restore(latest, step, template)
    pairs = list(zip(_leaves_with_paths(state.arrays()), _leaves_with_paths(restored.arrays())))
    record["orbax/same_paths"] = np.asarray(all(a[0] == b[0] for a, b in pairs))
    record["orbax/bit_identical"] = np.asarray(
        all(np.array_equal(jax.device_get(a[1]), jax.device_get(b[1])) for a, b in pairs)
    )
    same_shardings = all(a[1].sharding == b[1].sharding for a, b in pairs)
    record["orbax/same_shardings"] = np.asarray(same_shardings)
    record["orbax/loader_state"] = np.asarray(json.dumps(loader_state))
    record["orbax/restored_loader_state"] = np.asarray(json.dumps(restored_loader_state))


def _child_main(output_path):
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    config = _config()
    task = tasks.load_task(config.data, config.model.num_frames, config.seed)
    loader = ClipLoader(
        task.data.train_inputs,
        task.data.train_targets,
        global_batch_size=config.batch_size,
        flip=True,
    )
    batches = [next(loader) for _ in range(STEPS)]
    record = {}
    for name, (data, fsdp, remat) in MESHES.items():
        # The same seed: every run starts from the same parameters.
        run_config = _config(remat)
        model = recipe.create_model(run_config)
        devices = jax.devices()[: data * fsdp]
        mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)), devices)
        # As train_and_evaluate runs it: ops that split themselves over the
        # batch (deformable conv, Pallas scan) see the mesh.
        with jax.set_mesh(mesh):
            state = _train_on_mesh(run_config, model, mesh, batches, record, name)
        if name == "data2_fsdp4":
            orbax_dir = os.path.join(os.path.dirname(output_path), "orbax")
            _orbax_round_trip(state, loader.get_state(), orbax_dir, record)
    np.savez(output_path, **record)


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    output = tmp_path_factory.mktemp("sharded") / "runs.npz"
    env = dict(os.environ)
    fake_devices = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {fake_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(output)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with np.load(output) as f:
        return {key: f[key] for key in f.files}


def _params(runs, mesh_name, kind="params"):
    prefix = f"{mesh_name}/{kind}/"
    return {key[len(prefix) :]: value for key, value in runs.items() if key.startswith(prefix)}


@pytest.mark.parametrize("mesh_name", ["data8", "data2_fsdp4", "data2_fsdp4_remat"])
def test_mesh_gradients_match_one_device(mesh_runs, mesh_name):
    ours, single = _params(mesh_runs, mesh_name, "grads"), _params(mesh_runs, "one_device", "grads")
    assert ours.keys() == single.keys() and len(ours) > 20
    largest = max(np.max(np.abs(grad)) for grad in single.values())
    assert largest > 0
    for name in single:
        np.testing.assert_allclose(
            ours[name], single[name], rtol=0, atol=GRAD_RTOL_OF_MAX * largest, err_msg=name
        )


@pytest.mark.parametrize("mesh_name", ["data8", "data2_fsdp4", "data2_fsdp4_remat"])
def test_mesh_training_matches_one_device(mesh_runs, mesh_name):
    ours, single = _params(mesh_runs, mesh_name), _params(mesh_runs, "one_device")
    assert ours.keys() == single.keys() and len(ours) > 20
    for name in single:
        np.testing.assert_allclose(ours[name], single[name], rtol=0, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(
        mesh_runs[f"{mesh_name}/losses"], mesh_runs["one_device/losses"], rtol=1e-5, atol=0
    )


def test_training_moved_the_parameters_more_than_the_tolerance(mesh_runs):
    """The comparison above would be vacuous if the steps changed nothing."""
    initial, final = _params(mesh_runs, "one_device", "initial"), _params(mesh_runs, "one_device")
    largest_change = max(np.max(np.abs(final[name] - initial[name])) for name in final)
    assert largest_change > 100 * ATOL
    assert np.all(np.isfinite(mesh_runs["one_device/losses"]))


def test_fsdp_shards_parameters_and_data_parallel_replicates_them(mesh_runs):
    def sharded_names(mesh_name):
        names = []
        for name, param in _params(mesh_runs, mesh_name).items():
            spec = str(mesh_runs[f"{mesh_name}/spec/{name}"])
            shard_shape = tuple(mesh_runs[f"{mesh_name}/shard_shape/{name}"])
            if shard_shape != param.shape:
                assert "fsdp" in spec, (name, spec)
                fsdp_size = MESHES[mesh_name][1]
                assert np.prod(shard_shape) * fsdp_size == param.size, (name, shard_shape)
                names.append(name)
        return names

    fsdp_sharded = sharded_names("data2_fsdp4")
    assert any("in_proj" in name for name in fsdp_sharded), fsdp_sharded
    assert sharded_names("data2_fsdp4_remat") == fsdp_sharded
    assert sharded_names("data8") == []


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_steps_keep_the_state_shardings_and_donate_the_old_state(mesh_runs, mesh_name):
    """Outputs placed as the inputs were: the next step reuses the compiled program and
    the donated buffers, with no resharding (a spec that differed only by trailing
    Nones once made every fsdp run compile its step twice)."""
    assert bool(mesh_runs[f"{mesh_name}/kept_shardings"])
    assert bool(mesh_runs[f"{mesh_name}/donated"])


def test_fsdp_state_round_trips_through_orbax_into_its_shardings(mesh_runs):
    assert bool(mesh_runs["orbax/same_paths"])
    assert bool(mesh_runs["orbax/bit_identical"])
    assert bool(mesh_runs["orbax/same_shardings"])
    saved_loader = json.loads(str(mesh_runs["orbax/loader_state"]))
    assert saved_loader["step_in_epoch"] == STEPS
    assert json.loads(str(mesh_runs["orbax/restored_loader_state"])) == saved_loader


if __name__ == "__main__":
    _child_main(sys.argv[1])
