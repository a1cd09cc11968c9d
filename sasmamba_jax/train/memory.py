"""How much accelerator memory a compiled program needs, and the remat/microbatch choice that fits.

Memory is XLA's own account of one chip's share of a compiled program:
arguments + outputs + temporaries, less the outputs that reuse a donated
argument's buffer (``compiled.memory_analysis()``). A compile for a TPU that
would not fit fails with RESOURCE_EXHAUSTED; ``required_bytes`` reads the
requirement from that error instead.

``choose_memory_settings`` is the decision ``train.py`` and
``python -m sasmamba_jax.aot`` share for training-config keys left unset
(``config.model.remat``, ``config.num_microbatches`` = None): the step as
configured, then with remat, then with ever more microbatches, and the first
that fits wins. Both change only memory and time, never the update.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sasmamba_jax import skeleton, targets
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train.recipe import (
    TrainState,
    abstract_train_state,
    memory_settings,
    model_config,
    train_step,
    with_memory_settings,
)

GiB = 2**30
# HBM per device as XLA's TPU compiler counts it (its out-of-memory message
# says "exceeds available HBM (15.75G)" for v5e; tests/test_aot.py checks each
# entry against that message). Used where a device cannot be asked: a
# deviceless compile has no memory_stats().
HBM_BYTES_BY_DEVICE_KIND = {
    "TPU v4": int(15.25 * GiB),
    "TPU v5 lite": int(15.75 * GiB),
    "TPU v5": int(95.74 * GiB),
    "TPU v6 lite": int(31.25 * GiB),
}
# XLA prints sizes with binary prefixes ("15.75G" is 15.75 GiB).
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_SIZE = r"([\d.]+)([KMGTP]?)B?"
_OOM_PATTERNS = (
    # "the total memory required for HLO temporaries (36.52G) exceeds available HBM (15.75G)"
    re.compile(rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
    # "Used 20.50G of 15.75G hbm"
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm"),
)


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def compiled_peak_bytes(compiled: jax.stages.Compiled) -> int:
    """One chip's arguments + outputs + temporaries of a compiled program, donated buffers counted once."""
    memory = compiled.memory_analysis()
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ``jax.ShapeDtypeStruct``s or arrays."""

    def leaf_bytes(leaf):
        shape = leaf.sharding.shard_shape(leaf.shape)
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize

    return sum(leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))


def required_bytes(error: Exception) -> tuple[int, int] | None:
    """(bytes the program needed, bytes available) from a compiler's out-of-memory error, or None.

    The "HLO temporaries" form counts temporaries only, so the first number
    is then a lower bound of the program's peak.
    """
    message = str(error)
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    for pattern in _OOM_PATTERNS:
        match = pattern.search(message)
        if match:
            needed, available = _bytes(*match.group(1, 2)), _bytes(*match.group(3, 4))
            return needed, available
    return None


def device_memory_bytes(device: jax.Device) -> int | None:
    """Memory one device can give a program: its ``bytes_limit``, else the device kind's.

    A TPU kind's is HBM_BYTES_BY_DEVICE_KIND; a GPU card's (one of
    ``targets.GPU_CARDS``) is what JAX's allocator takes of it
    (``targets.gpu_memory_bytes``: 75%, or XLA_PYTHON_CLIENT_MEM_FRACTION),
    as a real GPU's ``bytes_limit`` says. None for a CPU, whose programs share
    the host's memory with everything else.
    """
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats()
    except jax.errors.JaxRuntimeError:  # deviceless (compile-only) devices have none
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if device.device_kind in HBM_BYTES_BY_DEVICE_KIND:
        return HBM_BYTES_BY_DEVICE_KIND[device.device_kind]
    gpu_bytes = targets.gpu_memory_bytes(device.device_kind)
    if gpu_bytes is None:
        raise ValueError(
            f"memory of a {device.device_kind!r} device unknown; known kinds: "
            f"{sorted(HBM_BYTES_BY_DEVICE_KIND) + targets.gpu_device_kinds()}"
        )
    return gpu_bytes


@dataclasses.dataclass(frozen=True)
class MemoryChoice:
    """The settings chosen, and what each setting tried needed.

    Attributes:
        remat: rematerialise the layers in the backward pass.
        num_microbatches: microbatches the batch is split into.
        peak_bytes: one chip's peak memory with these settings.
        fits: whether ``peak_bytes`` is within the budget.
        tried: ((remat, num_microbatches), peak_bytes) of every setting compiled, in order.
    """

    remat: bool
    num_microbatches: int
    peak_bytes: int
    fits: bool
    tried: tuple[tuple[tuple[bool, int], int], ...]


def memory_candidates(
    remat: bool | None, num_microbatches: int | None, batch_size: int, num_devices: int
) -> list[tuple[bool, int]]:
    """Settings to try, cheapest in time first: as configured, then remat, then more microbatches.

    Args:
        remat: the config's value; None lets it be chosen (False first, then True).
        num_microbatches: the config's value; None lets it be chosen: 1, then
            every larger count whose microbatch still splits evenly over the
            devices, smallest first.
        batch_size: the global batch.
        num_devices: devices the batch is split over.
    """
    remats = [False, True] if remat is None else [remat]
    if num_microbatches is not None:
        counts = [num_microbatches]
    else:
        splits = range(1, batch_size + 1)
        counts = [n for n in splits if batch_size % n == 0 and (batch_size // n) % num_devices == 0]
        if not counts:
            raise ValueError(f"batch_size {batch_size} does not split evenly over {num_devices} devices")
    return [(r, counts[0]) for r in remats] + [(remats[-1], n) for n in counts[1:]]


def choose_memory_settings(
    candidates: Sequence[tuple[bool, int]], peak_bytes: Callable[[bool, int], int], budget_bytes: int
) -> MemoryChoice:
    """The first candidate whose peak fits the budget, or the last one tried (``fits`` False).

    Args:
        candidates: (remat, num_microbatches) in order of preference (``memory_candidates``).
        peak_bytes: one chip's peak of the step with given settings (compiles it).
        budget_bytes: one chip's memory.
    """
    tried = []
    for remat, num_microbatches in candidates:
        peak = peak_bytes(remat, num_microbatches)
        tried.append(((remat, num_microbatches), peak))
        if peak <= budget_bytes:
            return MemoryChoice(remat, num_microbatches, peak, True, tuple(tried))
    return MemoryChoice(remat, num_microbatches, peak, False, tuple(tried))


def describe_choice(choice: MemoryChoice, budget_bytes: int) -> str:
    """One log line: what was chosen and why."""
    (first, first_peak), *_ = choice.tried
    settings = f"remat={choice.remat}, num_microbatches={choice.num_microbatches}"
    if not choice.fits:
        return (
            f"memory: the training step does not fit one chip ({budget_bytes / 1e9:.2f} GB) with any "
            f"setting tried; the last, {settings}, needs {choice.peak_bytes / 1e9:.2f} GB"
        )
    if len(choice.tried) == 1:
        return (
            f"memory: {settings}: the training step needs {choice.peak_bytes / 1e9:.2f} of "
            f"{budget_bytes / 1e9:.2f} GB per chip"
        )
    return (
        f"memory: chose {settings}: the training step needs {choice.peak_bytes / 1e9:.2f} of "
        f"{budget_bytes / 1e9:.2f} GB per chip (remat={first[0]}, num_microbatches={first[1]} "
        f"would need {first_peak / 1e9:.2f} GB)"
    )


def abstract_train_step_args(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[TrainState, dict[str, jax.ShapeDtypeStruct]]:
    """``train_step``'s arguments as ``train_and_evaluate`` places them, as sharded shapes only.

    Nothing is allocated, so ``mesh`` may hold devices this process cannot
    reach (a TPU topology compiled for from a CPU machine). The learning-rate
    schedule is the constant one; its per-epoch decay is a few scalar
    operations, nothing that changes memory.

    Returns:
        (state, {"input_2d": (B, T, 17, C_in), "target_3d": (B, T, 17, 3)}).
    """
    state = abstract_train_state(config)
    state = state.with_arrays(sharding.restore_target(state.arrays(), mesh))
    model_cfg = model_config(config)
    clip = (config.batch_size, model_cfg.num_frames, skeleton.NUM_JOINTS)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
        "input_2d": jax.ShapeDtypeStruct((*clip, model_cfg.in_chans), jnp.float32, sharding=batch_sharding),
        "target_3d": jax.ShapeDtypeStruct((*clip, 3), jnp.float32, sharding=batch_sharding),
    }
    return state, batch


def program_peak_bytes(compile_fn: Callable[..., jax.stages.Compiled], args) -> int:
    """One chip's peak memory of the program ``compile_fn(*args)`` compiles.

    A compile that runs out of the devices' memory gives the requirement its
    error states plus the arguments (a lower bound: more than fits); any other
    compile error is raised.

    Args:
        compile_fn: lowers and compiles the program for ``args``.
        args: the program's arguments, as (sharded) shapes or arrays.
    """
    try:
        return compiled_peak_bytes(compile_fn(*args))
    except jax.errors.JaxRuntimeError as e:
        needed = required_bytes(e)
        if needed is None:
            raise
        return needed[0] + per_device_bytes(args)


def train_step_peak_bytes(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, compiler_options: dict | None = None
) -> int:
    """One chip's peak memory of ``train_step`` for ``config`` on ``mesh``, from compiling it.

    ``compiler_options`` go to XLA's compiler (``targets.compiler_options``
    for a deviceless target). A compile that runs out of memory gives a lower
    bound, as ``program_peak_bytes``.
    """
    args = abstract_train_step_args(config, mesh)
    # Under the mesh, as train_and_evaluate runs the step: the Pallas scan
    # splits its kernels over it.
    with jax.set_mesh(mesh):
        return program_peak_bytes(lambda *a: train_step.lower(*a).compile(compiler_options), args)


def resolve_memory_settings(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    budget_bytes: int | None,
    peak_bytes=None,
) -> tuple[ml_collections.ConfigDict, MemoryChoice | None]:
    """``config`` with unset ``model.remat`` / ``num_microbatches`` (None) chosen to fit one chip.

    Explicit values are never changed. With nothing to choose, or no budget
    (CPU), unset keys take ``memory_settings``' defaults and nothing is
    compiled.

    Args:
        config: a training config.
        mesh: the devices the step runs on.
        budget_bytes: one chip's memory (``device_memory_bytes``), or None.
        peak_bytes: (config) -> one chip's peak; default ``train_step_peak_bytes`` on ``mesh``.

    Returns:
        (the config with both keys set, the choice made or None).
    """
    defaults = with_memory_settings(config, *memory_settings(config)), None
    if budget_bytes is None:
        return defaults
    candidates = memory_candidates(
        config.model.remat, config.num_microbatches, config.batch_size, mesh.devices.size
    )
    if len(candidates) == 1:
        return defaults
    peak_bytes = peak_bytes or (lambda candidate: train_step_peak_bytes(candidate, mesh))
    choice = choose_memory_settings(
        candidates, lambda remat, n: peak_bytes(with_memory_settings(config, remat, n)), budget_bytes
    )
    return with_memory_settings(config, choice.remat, choice.num_microbatches), choice
