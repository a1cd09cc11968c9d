"""A deterministic, shardable iterator over pose clips.

`ClipLoader` yields the release's training batches: clips drawn without
replacement in a new random order every epoch, each flipped left-right with
probability 1/2 (input and target together, one coin per clip, as the
release's `MotionDataset3D` and `MPI3DHP` do), the input reduced to its first
channels and the target made root-relative.

Every random choice is a function of (seed, epoch, position in the epoch)
only. Process p of P gets rows [p * B / P, (p + 1) * B / P) of each global
batch of B clips, so the global batch, and what training computes from it,
does not depend on how many processes load it. The iterator's position is two
integers, saved and restored with `get_state` / `set_state`.

Letters: N clips, B global batch, b = B / P per-process batch, T frames,
J joints, C channels.
"""

import jax
import numpy as np

from sasmamba_jax import skeleton
from sasmamba_jax.data import augment

_PERMUTATION_STREAM = 0
_FLIP_STREAM = 1


class ClipLoader:
    """Endless iterator over global batches of clips, one process's share.

    Each `next()` returns a dict of numpy arrays:
      'input_2d': (b, T, J, input_channels) float32,
      'target_3d': (b, T, J, 3) float32 root-relative (root joint is 0),
    and, when `drop_remainder` is False, 'valid': (b,) bool, False on the
    rows that pad the last batch of an epoch to full size (they repeat the
    epoch's first clips).
    """

    def __init__(
        self,
        inputs,
        targets,
        *,
        global_batch_size,
        seed=0,
        shuffle=True,
        flip=False,
        process_index=0,
        process_count=1,
        input_channels=2,
        drop_remainder=True,
        root_joint=skeleton.ROOT,
        flip_permutation=skeleton.FLIP_PERMUTATION,
    ):
        """Builds the loader; draws nothing until the first batch.

        Args:
          inputs: (N, T, J, C) clips of 2D joints (and confidence).
          targets: (N, T, J, 3) clips of 3D joints.
          global_batch_size: B, clips per step over all processes.
          seed: seed of the epoch orders and flips.
          shuffle: a new random order every epoch; otherwise clips in order.
          flip: flip each clip with probability 1/2.
          process_index: p, this process's rank in [0, P).
          process_count: P; must divide B.
          input_channels: channels of `inputs` to keep (2 for Human3.6M: x, y;
            3 for MPI-INF-3DHP: x, y, confidence).
          drop_remainder: drop the last N mod B clips of each epoch; otherwise
            pad the last batch and mark the padding in 'valid'.
          root_joint: joint subtracted from the targets (14 for MPI-INF-3DHP).
          flip_permutation: left/right joint permutation used by the flip.
        """
        self._inputs = np.asarray(inputs)
        self._targets = np.asarray(targets)
        if self._inputs.ndim != 4 or self._targets.ndim != 4:
            raise ValueError(
                f"inputs and targets must be (N, T, J, C), got {self._inputs.shape} and {self._targets.shape}"
            )
        if self._inputs.shape[:3] != self._targets.shape[:3] or self._targets.shape[3] != 3:
            raise ValueError(
                f"inputs {self._inputs.shape} and targets {self._targets.shape} "
                "must share (N, T, J) and targets must have 3 channels"
            )
        if not 1 <= input_channels <= self._inputs.shape[3]:
            raise ValueError(f"input_channels={input_channels} not in [1, {self._inputs.shape[3]}]")
        if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a positive multiple "
                f"of process_count {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if not 0 <= root_joint < self._targets.shape[2]:
            raise ValueError(f"root_joint {root_joint} out of range for {self._targets.shape[2]} joints")
        num_samples = self._inputs.shape[0]
        if drop_remainder:
            steps = num_samples // global_batch_size
        else:
            steps = -(-num_samples // global_batch_size)
        if steps == 0:
            raise ValueError(
                f"{num_samples} clips give no batch of {global_batch_size}"
                + (" (drop_remainder=True)" if drop_remainder else "")
            )

        self._seed = int(seed)
        self._shuffle = shuffle
        self._flip = flip
        self._global_batch_size = global_batch_size
        self._local_batch_size = global_batch_size // process_count
        self._process_index = process_index
        self._input_channels = input_channels
        self._drop_remainder = drop_remainder
        self._root_joint = root_joint
        self._flip_permutation = tuple(flip_permutation)
        self._steps_per_epoch = steps
        self._epoch = 0
        self._step = 0
        self._cached_epoch = None
        self._cached_order = None

    @property
    def num_samples(self):
        """N, clips per epoch."""
        return self._inputs.shape[0]

    @property
    def steps_per_epoch(self):
        """Global batches per epoch."""
        return self._steps_per_epoch

    @property
    def epoch(self):
        """Epoch of the next batch, from 0."""
        return self._epoch

    @property
    def step_in_epoch(self):
        """Index of the next batch within its epoch."""
        return self._step

    def _rng(self, epoch, stream):
        """An independent generator for each (seed, epoch, stream)."""
        return np.random.default_rng(np.random.SeedSequence(self._seed, spawn_key=(epoch, stream)))

    def _epoch_order(self, epoch):
        """The epoch's clip order (N,) and flip decisions (N,), by position."""
        if self._cached_epoch != epoch:
            num_samples = self.num_samples
            if self._shuffle:
                order = self._rng(epoch, _PERMUTATION_STREAM).permutation(num_samples)
            else:
                order = np.arange(num_samples)
            flips = self._rng(epoch, _FLIP_STREAM).random(num_samples) < 0.5
            self._cached_epoch, self._cached_order = epoch, (order, flips & self._flip)
        return self._cached_order

    def __iter__(self):
        return self

    def __next__(self):
        order, flips = self._epoch_order(self._epoch)
        first = self._step * self._global_batch_size + self._process_index * self._local_batch_size
        positions = np.arange(first, first + self._local_batch_size)
        valid = positions < self.num_samples
        # Padding rows reuse the epoch's first clips so every row is a real clip.
        positions = positions % self.num_samples
        clips = order[positions]

        inputs = self._inputs[clips].astype(np.float32)
        targets = self._targets[clips].astype(np.float32)
        flipped = flips[positions]
        if flipped.any():
            inputs[flipped] = augment.flip_pose(inputs[flipped], self._flip_permutation)
            targets[flipped] = augment.flip_pose(targets[flipped], self._flip_permutation)
        root = self._root_joint
        batch = {
            "input_2d": np.ascontiguousarray(inputs[..., : self._input_channels]),
            "target_3d": targets - targets[:, :, root : root + 1],
        }
        if not self._drop_remainder:
            batch["valid"] = valid

        self._step += 1
        if self._step == self._steps_per_epoch:
            self._epoch += 1
            self._step = 0
        return batch

    def get_state(self):
        """The position of the next batch, as a JSON-serialisable dict of ints."""
        return {
            "epoch": self._epoch,
            "step_in_epoch": self._step,
            "seed": self._seed,
            "num_samples": self.num_samples,
            "global_batch_size": self._global_batch_size,
        }

    def set_state(self, state):
        """Moves to a position saved by `get_state` (of any process count).

        Raises:
          ValueError: if the state belongs to a loader with another seed, number
            of clips or global batch size, or its position is out of range.
        """
        expected = {
            "seed": self._seed,
            "num_samples": self.num_samples,
            "global_batch_size": self._global_batch_size,
        }
        missing = [key for key in ("epoch", "step_in_epoch", *expected) if key not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}")
        mismatched = {key: (state[key], value) for key, value in expected.items() if int(state[key]) != value}
        if mismatched:
            raise ValueError(f"loader state (saved, current) mismatch: {mismatched}")
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if epoch < 0 or not 0 <= step < self._steps_per_epoch:
            raise ValueError(
                f"invalid position epoch={epoch}, step_in_epoch={step} "
                f"({self._steps_per_epoch} steps per epoch)"
            )
        self._epoch, self._step = epoch, step


def make_global_batch(local_batch, sharding):
    """Assembles each process's batch into global jax arrays.

    Args:
      local_batch: dict of numpy arrays, this process's rows of the batch (as
        returned by `ClipLoader`).
      sharding: `jax.sharding.NamedSharding` that splits the leading (batch)
        axis over the processes' devices, e.g. `NamedSharding(mesh, P('data'))`.

    Returns:
      dict of global `jax.Array`s whose leading axis is the global batch, rows
      in process order.
    """
    return {
        name: jax.make_array_from_process_local_data(sharding, array) for name, array in local_batch.items()
    }
