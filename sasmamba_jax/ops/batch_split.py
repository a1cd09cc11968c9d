"""Running an op on each device's slice of the batch under the context's mesh.

Some ops cannot be left to XLA's partitioner: a Pallas kernel cannot be
partitioned at all (Mosaic refuses; a Triton call is gathered whole onto
every device), and a gather or scatter-add whose indices the partitioner
cannot see to be per-sample is computed on the whole batch. Under a mesh
(``jax.set_mesh``, as the trainer sets it) such an op is a ``shard_map``
over the batch, split across every mesh axis as the project's batches are
(``sharding.DATA_AXES``). Autodiff sums the unsplit operands' gradients
across devices.
"""

import functools

import jax
from jax.sharding import PartitionSpec


def split_over_batch(fn, batched: tuple[bool, ...]):
    """``fn`` on each device's slice of the batch, under the context's mesh (if any).

    Args:
        fn: an op of ``len(batched)`` positional arrays whose outputs all
            have the batch on axis 0.
        batched: per operand, whether its axis 0 is the batch (split) or it
            is shared whole by every sample (a parameter).

    Returns:
        The op, the same function on one device or a mesh.
    """

    @functools.wraps(fn)
    def split(*operands):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return fn(*operands)
        batch, whole = PartitionSpec(mesh.axis_names), PartitionSpec()
        # check_vma=False: pallas_call's outputs carry no varying-axes type.
        # Autodiff still sums the whole operands' cotangents over the devices.
        return jax.shard_map(
            fn,
            in_specs=tuple(batch if split_it else whole for split_it in batched),
            out_specs=batch,
            check_vma=False,
        )(*operands)

    return split
