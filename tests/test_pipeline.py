"""Tests of the clip loader: determinism, resumption, process sharding, flips.

Clips carry their own index in the confidence channel (constant over joints,
so a flip keeps it), which lets the tests see which clip each row is, and
flips are checked against a joint-by-joint swap written here.
"""

import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sasmamba_jax import skeleton
from sasmamba_jax.data import mpi3dhp, pipeline

NUM_CLIPS, NUM_FRAMES = 23, 4


def _clips(num_clips=NUM_CLIPS, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(num_clips, NUM_FRAMES, 17, 3)).astype(np.float32)
    inputs[..., 2] = np.arange(num_clips)[:, None, None]
    targets = rng.normal(size=(num_clips, NUM_FRAMES, 17, 3)).astype(np.float32)
    return inputs, targets


def _take(loader, num_batches):
    return [next(loader) for _ in range(num_batches)]


def _clip_ids(batch):
    return batch["input_2d"][:, 0, 0, 2].astype(int)


def _loop_flip(pose, left, right):
    out = np.array(pose, copy=True)
    for l, r in zip(left, right):
        out[..., l, :], out[..., r, :] = pose[..., r, :], pose[..., l, :]
    out[..., 0] *= -1
    return out


def _assert_batches_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_batches_shapes_and_root_relative_targets():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=0)
    batch = next(loader)
    assert set(batch) == {"input_2d", "target_3d"}
    assert batch["input_2d"].shape == (4, NUM_FRAMES, 17, 2)
    assert batch["input_2d"].dtype == np.float32 and batch["target_3d"].dtype == np.float32
    assert batch["target_3d"].shape == (4, NUM_FRAMES, 17, 3)
    assert loader.steps_per_epoch == 5 and loader.epoch == 0


def test_unshuffled_unflipped_batches_are_the_clips_in_order():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(inputs, targets, global_batch_size=4, shuffle=False, input_channels=3)
    for step in range(5):
        batch = next(loader)
        rows = np.arange(4 * step, 4 * step + 4)
        np.testing.assert_array_equal(batch["input_2d"], inputs[rows])
        np.testing.assert_allclose(batch["target_3d"], targets[rows] - targets[rows][:, :, :1], atol=1e-6)
    assert loader.epoch == 1 and loader.step_in_epoch == 0
    np.testing.assert_array_equal(_clip_ids(next(loader)), [0, 1, 2, 3])


def test_epochs_draw_each_clip_once_in_new_orders():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=3, input_channels=3)
    orders = []
    for epoch in range(3):
        assert loader.epoch == epoch
        ids = np.concatenate([_clip_ids(b) for b in _take(loader, loader.steps_per_epoch)])
        assert len(set(ids)) == 20  # 23 clips, 3 dropped with the remainder.
        orders.append(tuple(ids))
    assert len(set(orders)) == 3


def test_same_seed_same_batches_other_seed_other_batches():
    inputs, targets = _clips()

    def make(seed):
        return pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=seed, flip=True)

    _assert_batches_equal(_take(make(5), 12), _take(make(5), 12))
    assert not np.array_equal(next(make(5))["input_2d"], next(make(6))["input_2d"])


def test_state_restore_mid_epoch_gives_identical_batches():
    inputs, targets = _clips()

    def make():
        return pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=1, flip=True)

    loader = make()
    _take(loader, 7)  # One epoch (5 steps) and 2 steps into the second.
    state = json.loads(json.dumps(loader.get_state()))
    assert state["epoch"] == 1 and state["step_in_epoch"] == 2
    expected = _take(loader, 9)

    restored = make()
    restored.set_state(state)
    _assert_batches_equal(_take(restored, 9), expected)


def test_set_state_rejects_foreign_states():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=1)
    other_seed = pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=2)
    with pytest.raises(ValueError, match="seed"):
        loader.set_state(other_seed.get_state())
    with pytest.raises(ValueError, match="step_in_epoch"):
        loader.set_state({**loader.get_state(), "step_in_epoch": 5})
    with pytest.raises(ValueError, match="lacks"):
        loader.set_state({"epoch": 0})


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_single_process_batch(process_count):
    inputs, targets = _clips()
    options = dict(global_batch_size=8, seed=11, flip=True, input_channels=3)
    single = _take(pipeline.ClipLoader(inputs, targets, **options), 7)  # Crosses an epoch.
    shards = [
        _take(
            pipeline.ClipLoader(inputs, targets, process_index=p, process_count=process_count, **options), 7
        )
        for p in range(process_count)
    ]
    for step, batch in enumerate(single):
        for key in batch:
            joined = np.concatenate([shards[p][step][key] for p in range(process_count)])
            np.testing.assert_array_equal(joined, batch[key])
        assert shards[0][step]["input_2d"].shape[0] == 8 // process_count


def test_flip_probability_and_consistency():
    num_clips = 2000
    inputs, targets = _clips(num_clips, seed=4)
    loader = pipeline.ClipLoader(inputs, targets, global_batch_size=100, seed=0, flip=True, input_channels=3)
    num_flipped = 0
    for batch in _take(loader, 20):
        ids = _clip_ids(batch)
        flipped_inputs = _loop_flip(inputs[ids], skeleton.LEFT_JOINTS, skeleton.RIGHT_JOINTS)
        root_relative = targets[ids] - targets[ids][:, :, :1]
        flipped_targets = _loop_flip(root_relative, skeleton.LEFT_JOINTS, skeleton.RIGHT_JOINTS)
        for row in range(100):
            is_flipped = not np.array_equal(batch["input_2d"][row], inputs[ids[row]])
            if is_flipped:
                np.testing.assert_array_equal(batch["input_2d"][row], flipped_inputs[row])
                np.testing.assert_allclose(batch["target_3d"][row], flipped_targets[row], atol=1e-6)
            else:
                np.testing.assert_allclose(batch["target_3d"][row], root_relative[row], atol=1e-6)
            num_flipped += is_flipped
    # 2000 fair coins: the standard deviation of the fraction is about 0.011.
    assert abs(num_flipped / num_clips - 0.5) < 0.04


def test_3dhp_root_and_permutation():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(
        inputs,
        targets,
        global_batch_size=23,
        flip=True,
        input_channels=3,
        root_joint=mpi3dhp.ROOT_JOINT,
        flip_permutation=mpi3dhp.FLIP_PERMUTATION,
    )
    batch = next(loader)
    np.testing.assert_array_equal(batch["target_3d"][:, :, 14], 0.0)
    ids = _clip_ids(batch)
    flipped = _loop_flip(inputs[ids], [8, 9, 10, 2, 3, 4], [11, 12, 13, 5, 6, 7])
    is_flipped = np.array([not np.array_equal(batch["input_2d"][r], inputs[ids[r]]) for r in range(23)])
    assert 0 < is_flipped.sum() < 23
    np.testing.assert_array_equal(batch["input_2d"][is_flipped], flipped[is_flipped])


def test_keep_remainder_pads_and_marks_the_last_batch():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(
        inputs,
        targets,
        global_batch_size=4,
        seed=2,
        input_channels=3,
        drop_remainder=False,
        process_index=1,
        process_count=2,
    )
    assert loader.steps_per_epoch == 6
    other = pipeline.ClipLoader(
        inputs,
        targets,
        global_batch_size=4,
        seed=2,
        input_channels=3,
        drop_remainder=False,
        process_index=0,
        process_count=2,
    )
    ids, valid = [], []
    for _ in range(6):
        for batch in (next(other), next(loader)):
            ids.append(_clip_ids(batch))
            valid.append(batch["valid"])
    ids, valid = np.concatenate(ids), np.concatenate(valid)
    assert valid.sum() == NUM_CLIPS and not valid[-1] and valid[:NUM_CLIPS].all()
    assert sorted(ids[valid]) == list(range(NUM_CLIPS))


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(global_batch_size=6, process_count=4), "multiple"),
        (dict(global_batch_size=4, process_index=2, process_count=2), "process_index"),
        (dict(global_batch_size=24), "no batch"),
        (dict(global_batch_size=4, input_channels=4), "input_channels"),
    ],
)
def test_bad_options_raise(options, message):
    inputs, targets = _clips()
    with pytest.raises(ValueError, match=message):
        pipeline.ClipLoader(inputs, targets, **options)


def test_make_global_batch_on_a_one_device_mesh():
    inputs, targets = _clips()
    loader = pipeline.ClipLoader(inputs, targets, global_batch_size=4, seed=0, flip=True)
    local = next(loader)
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    global_batch = pipeline.make_global_batch(local, sharding)
    assert set(global_batch) == set(local)
    for key, array in global_batch.items():
        assert isinstance(array, jax.Array) and array.sharding == sharding
        assert array.shape == local[key].shape
        np.testing.assert_array_equal(np.asarray(array), local[key])
