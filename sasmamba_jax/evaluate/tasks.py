"""Evaluation tasks: a dataset with its protocol, and the model's predictions of its test clips.

Predictions go through ``model.forward.predict_batch``, the forward
``train.py`` evaluates with, batch by batch over the parameters' mesh.
"""

import dataclasses
import functools
from collections.abc import Callable

import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sasmamba_jax import skeleton
from sasmamba_jax.data import h36m, mpi3dhp
from sasmamba_jax.evaluate import protocols
from sasmamba_jax.model.forward import predict_batch


@dataclasses.dataclass(frozen=True)
class Task:
    """A dataset with what training and evaluation need to know about it.

    Attributes:
        name: "h36m" or "3dhp".
        data: the loaded ``H36MData`` or ``MPI3DHPData``.
        root_joint: joint the targets are relative to.
        flip_permutation: left/right joint swap of this dataset's joint order.
        evaluate: (M, T, 17, 3) test predictions -> results dict (mm).
    """

    name: str
    data: h36m.H36MData | mpi3dhp.MPI3DHPData
    root_joint: int
    flip_permutation: tuple[int, ...]
    evaluate: Callable[[np.ndarray], dict]


def load_task(data_config: ml_collections.ConfigDict, num_frames: int, seed: int) -> Task:
    """Loads the dataset a config names, split into clips of ``num_frames``."""
    strides = dict(train_stride=data_config.train_stride or None)
    if data_config.dataset == "h36m":
        if not data_config.pkl_path:
            raise ValueError("set --config.data.pkl_path to MotionBERT's Human3.6M pickle")
        data = h36m.load_h36m(
            data_config.pkl_path,
            num_frames,
            seed=seed,
            sample_stride=data_config.sample_stride,
            test_stride=data_config.test_stride or None,
            **strides,
        )
        if data_config.train_clip_dir:
            data = _with_training_clips_from(data_config.train_clip_dir, data, num_frames)
        evaluate = functools.partial(protocols.evaluate_h36m, data=data)
        return Task("h36m", data, skeleton.ROOT, skeleton.FLIP_PERMUTATION, evaluate)
    if data_config.dataset == "3dhp":
        if not data_config.test_npz:
            raise ValueError("set --config.data.test_npz (and train_npz) to P-STMO's MPI-INF-3DHP files")
        data = mpi3dhp.load_3dhp(data_config.train_npz or None, data_config.test_npz, num_frames, **strides)
        evaluate = functools.partial(protocols.evaluate_3dhp, data=data)
        return Task("3dhp", data, mpi3dhp.ROOT_JOINT, mpi3dhp.FLIP_PERMUTATION, evaluate)
    raise ValueError(f"unknown dataset {data_config.dataset!r}; expected 'h36m' or '3dhp'")


def _with_training_clips_from(root: str, data: h36m.H36MData, num_frames: int) -> h36m.H36MData:
    """``data`` with its training clips read from the release's per-clip folder ``root/train``.

    Evaluation still needs the pickle: the folders hold no test bookkeeping.
    """
    inputs, targets = h36m.load_clip_folder(root, "train")
    if inputs.shape[1] != num_frames:
        raise ValueError(
            f"{root}/train holds clips of {inputs.shape[1]} frames; the model takes {num_frames}"
        )
    return dataclasses.replace(data, train_inputs=inputs, train_targets=targets)


def mean_pose_baseline(task: Task) -> dict:
    """Scores predicting the mean root-relative training pose for every test frame."""
    targets = task.data.train_targets
    mean_pose = (targets - targets[:, :, task.root_joint : task.root_joint + 1]).mean(axis=(0, 1))
    test_shape = task.data.test_inputs.shape[:2]
    return task.evaluate(np.broadcast_to(mean_pose, (*test_shape, *mean_pose.shape)))


def predict_clips(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    clips: np.ndarray,
    *,
    batch_size: int,
    flip_permutation: tuple[int, ...] | None,
    mesh: Mesh,
    matmul_precision: str | None = None,
) -> np.ndarray:
    """Predicts every clip, batch by batch, sharded over the mesh (``predict_batch``).

    Args:
        graphdef, params, flip_permutation, mesh, matmul_precision: as ``predict_batch``.
        clips: (M, T, 17, C) model inputs.
        batch_size: clips per step (rounded up to a multiple of the device
            count); every step has this shape, the last one padded.

    Returns:
        (M, T, 17, 3) float32 predictions.
    """
    clips = np.asarray(clips, np.float32)
    num_devices = mesh.devices.size
    batch_size = -(-batch_size // num_devices) * num_devices
    outputs = []
    for start in range(0, len(clips), batch_size):
        batch = clips[start : start + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), np.float32)])
        pred = predict_batch(
            graphdef,
            params,
            padded,
            flip_permutation=flip_permutation,
            mesh=mesh,
            matmul_precision=matmul_precision,
        )
        outputs.append(pred[: len(batch)])
    if not outputs:
        return np.zeros((0, *clips.shape[1:3], 3), np.float32)
    return np.concatenate(outputs)


def predict_test_clips(
    graphdef, params, task: Task, eval_config, mesh: Mesh, in_chans: int, matmul_precision: str | None = None
) -> np.ndarray:
    """(M, T, 17, 3) predictions of every test clip, with test-time flipping if ``eval_config.flip``."""
    return predict_clips(
        graphdef,
        params,
        task.data.test_inputs[..., :in_chans],
        batch_size=eval_config.batch_size,
        flip_permutation=task.flip_permutation if eval_config.flip else None,
        mesh=mesh,
        matmul_precision=matmul_precision,
    )


def evaluate_model(
    graphdef, params, task: Task, eval_config, mesh: Mesh, in_chans: int, matmul_precision: str | None = None
) -> dict:
    """Runs the dataset's evaluation protocol on an eval-mode model."""
    predictions = predict_test_clips(graphdef, params, task, eval_config, mesh, in_chans, matmul_precision)
    return task.evaluate(predictions)
