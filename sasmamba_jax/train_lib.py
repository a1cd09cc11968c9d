"""Training: the state, one jitted step, and the checkpointed, sharded loop.

Public step API (compose your own loop with it)::

    model = train_lib.create_model(config)
    state = train_lib.create_train_state(config, model, steps_per_epoch=n)
    state, metrics = train_lib.train_step(state, {"input_2d": x, "target_3d": y})

``train_and_evaluate(config, workdir)`` is the whole recipe of the release
(its loss, AdamW, per-epoch learning-rate decay, DropPath, flip augmentation,
periodic evaluation) on any number of devices and hosts, resuming
automatically from ``workdir/checkpoints``.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx, struct
from jax.experimental import multihost_utils
from tqdm import tqdm

from sasmamba_jax import checkpoint, eval_lib, losses, plotting, sharding, skeleton, step_memory
from sasmamba_jax.checkpoint import BEST, CHECKPOINT_DIR, LATEST
from sasmamba_jax.data.pipeline import ClipLoader, make_global_batch
from sasmamba_jax.metric_writers import MetricWriter
from sasmamba_jax.model import SasMamba, SasMambaConfig

RESULTS_FILE = "results.json"
CURVES_FILE = "curves.png"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
        step: () int32, optimizer steps taken.
        params: the model's parameters.
        opt_state: AdamW's moments and step count.
        rng: (2,) uint32 base key; step s uses ``fold_in(rng, s)`` for DropPath.
        graphdef: the model's structure (static), in training mode.
        tx: the optimizer (static).
        num_microbatches: the batch is processed in this many equal parts whose
            gradients are averaged (static; 1: the whole batch at once).
    """

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    num_microbatches: int = struct.field(pytree_node=False, default=1)

    def arrays(self) -> dict[str, Any]:
        """The checkpointed part: every array, nothing static."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "rng": self.rng}

    def with_arrays(self, arrays: dict[str, Any]) -> "TrainState":
        return self.replace(**arrays)


def memory_settings(config: ml_collections.ConfigDict) -> tuple[bool, int]:
    """(remat, num_microbatches) as configured, an unset key (None) taken as False and 1.

    ``train_and_evaluate`` first fills unset keys with what fits the
    accelerator (``resolve_memory_settings``); the step API and runs on CPU
    take these defaults.
    """
    remat = False if config.model.remat is None else config.model.remat
    num_microbatches = 1 if config.num_microbatches is None else config.num_microbatches
    return remat, num_microbatches


def with_memory_settings(config: ml_collections.ConfigDict, remat: bool, num_microbatches: int):
    """A copy of ``config`` with ``model.remat`` and ``num_microbatches`` set."""
    config = config.copy_and_resolve_references()
    config.model.remat = remat
    config.num_microbatches = num_microbatches
    return config


def model_config(config: ml_collections.ConfigDict) -> SasMambaConfig:
    """The model a training config describes (``config.model`` plus ``config.dtype``)."""
    remat, _ = memory_settings(config)
    return checkpoint.training_model_config(config.to_dict()).with_options(remat=remat)


def create_model(config: ml_collections.ConfigDict) -> SasMamba:
    """A freshly initialised SasMamba (the release's initialisation), seeded by ``config.seed``."""
    return _initialised_model(model_config(config), config.seed)


# Static arguments, not a closure per call: a run's initialisation compiles
# once per model and seed in a process, not once per run.
@functools.partial(nnx.jit, static_argnums=(0, 1))
def _initialised_model(model_cfg: SasMambaConfig, seed: int) -> SasMamba:
    return SasMamba(model_cfg, rngs=nnx.Rngs(params=seed))


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int | None) -> optax.Schedule:
    """The release's learning rate: multiplied by ``lr_decay`` after every epoch."""
    opt = config.optimizer
    return _decayed_per_epoch(opt.learning_rate, opt.lr_decay, steps_per_epoch)


def _decayed_per_epoch(learning_rate: float, lr_decay: float, steps_per_epoch: int | None) -> optax.Schedule:
    if not steps_per_epoch:
        return optax.constant_schedule(learning_rate)
    return optax.exponential_decay(
        learning_rate, transition_steps=steps_per_epoch, decay_rate=lr_decay, staircase=True
    )


def optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int | None) -> optax.GradientTransformation:
    """The release's AdamW, on ``learning_rate_schedule``.

    One transform per distinct setting, shared by every state built with it:
    a state holds its transform as a static field, so a new transform for the
    same setting would make ``train_step`` trace and compile again.
    """
    opt = config.optimizer
    return _adamw(
        opt.learning_rate,
        opt.lr_decay,
        steps_per_epoch,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
    )


@functools.cache
def _adamw(learning_rate, lr_decay, steps_per_epoch, *, b1, b2, eps, weight_decay):
    schedule = _decayed_per_epoch(learning_rate, lr_decay, steps_per_epoch)
    return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def create_train_state(
    config: ml_collections.ConfigDict, model: SasMamba, *, steps_per_epoch: int | None = None
) -> TrainState:
    """Wraps a model into a fresh training state.

    Args:
        config: a training config (``optimizer.*``, ``seed``).
        model: the model to train; its parameters are taken as they are.
        steps_per_epoch: enables the per-epoch learning-rate decay (constant
            learning rate when None).
    """
    tx = optimizer(config, steps_per_epoch)
    _, num_microbatches = memory_settings(config)
    if num_microbatches < 1 or config.batch_size % num_microbatches:
        raise ValueError(
            f"num_microbatches ({num_microbatches}) must be positive and divide "
            f"batch_size ({config.batch_size})"
        )
    graphdef, params = nnx.split(nnx.view(model, deterministic=False))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(config.seed)),
        graphdef=graphdef,
        tx=tx,
        num_microbatches=num_microbatches,
    )


def loss_and_grads(
    graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array], dropout_key: jax.Array
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], nnx.State]:
    """The release's loss on a batch and its gradient w.r.t. the parameters.

    Returns:
        ((loss, {"mpjpe", "n_mpjpe", "velocity"}), grads).
    """

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        pred = model(batch["input_2d"], rngs=nnx.Rngs(dropout=dropout_key))
        return losses.pose_loss(pred, batch["target_3d"])

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def dropout_key(state: TrainState) -> jax.Array:
    """DropPath's key for the state's current step."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def split_microbatches(batch: dict[str, jax.Array], num_microbatches: int) -> dict[str, jax.Array]:
    """(B, ...) arrays -> (num_microbatches, B / num_microbatches, ...).

    Microbatch i takes rows i, i + num_microbatches, ...: with the batch split
    into contiguous blocks of rows over the devices, every microbatch is then
    split over all of them too.
    """

    def split(array):
        rows = array.shape[0] // num_microbatches
        return jnp.swapaxes(array.reshape(rows, num_microbatches, *array.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulated_loss_and_grads(
    state: TrainState, batch: dict[str, jax.Array]
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], nnx.State]:
    """``loss_and_grads`` of the whole batch, computed one microbatch at a time.

    Every loss term is a mean over equally many elements per microbatch, so the
    mean over microbatches is the whole batch's loss and gradient; only one
    microbatch's activations are alive at once. Microbatch i draws DropPath
    keys from ``fold_in(dropout_key(state), i)``.
    """
    key = dropout_key(state)
    if state.num_microbatches == 1:
        return loss_and_grads(state.graphdef, state.params, batch, key)

    def add_microbatch(total, inputs):
        index, microbatch = inputs
        result = loss_and_grads(state.graphdef, state.params, microbatch, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, total, result), None

    microbatches = split_microbatches(batch, state.num_microbatches)
    shapes = jax.eval_shape(
        functools.partial(loss_and_grads, state.graphdef),
        state.params,
        jax.tree.map(lambda array: array[0], microbatches),
        key,
    )
    zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    total, _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(state.num_microbatches), microbatches))
    return jax.tree.map(lambda summed: summed / state.num_microbatches, total)


def _train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    (loss, terms), grads = accumulated_loss_and_grads(state, batch)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        **terms,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = """One optimizer step of the release's recipe (jitted; ``state`` is donated).

Args:
    state: the TrainState (its arrays may be sharded over a mesh).
    batch: {"input_2d": (B, T, 17, C_in), "target_3d": (B, T, 17, 3)}, targets
        root-relative.

Returns:
    (new state, metrics): "loss", its terms "mpjpe", "n_mpjpe", "velocity",
    "grad_norm" and "param_norm", as scalars.
"""


def model_from_state(state: TrainState) -> SasMamba:
    """The model with the state's parameters, in eval mode."""
    model = nnx.merge(state.graphdef, jax.device_get(state.params))
    model.eval()
    return model


# ---------------------------------------------------------------------------
# Memory: compiling the step without running it, and settings that fit


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
    state = jax.eval_shape(lambda: create_train_state(config, create_model(config)))
    arrays = state.arrays()
    shardings = sharding.tree_shardings(mesh, arrays)
    state = state.with_arrays(
        jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), arrays, shardings)
    )
    model_cfg = model_config(config)
    clip = (config.batch_size, model_cfg.num_frames, skeleton.NUM_JOINTS)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
        "input_2d": jax.ShapeDtypeStruct((*clip, model_cfg.in_chans), jnp.float32, sharding=batch_sharding),
        "target_3d": jax.ShapeDtypeStruct((*clip, 3), jnp.float32, sharding=batch_sharding),
    }
    return state, batch


def train_step_peak_bytes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """One chip's peak memory of ``train_step`` for ``config`` on ``mesh``, from compiling it.

    A compile that runs out of the devices' memory gives the requirement its
    error states plus the arguments (a lower bound: more than fits).
    """
    args = abstract_train_step_args(config, mesh)
    try:
        # Under the mesh, as train_and_evaluate runs the step: the Pallas scan
        # splits its kernels over it.
        with jax.set_mesh(mesh):
            compiled = train_step.lower(*args).compile()
        return step_memory.compiled_peak_bytes(compiled)
    except jax.errors.JaxRuntimeError as e:
        needed = step_memory.required_bytes(e)
        if needed is None:
            raise
        return needed[0] + step_memory.per_device_bytes(args)


def resolve_memory_settings(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    budget_bytes: int | None,
    peak_bytes=None,
) -> tuple[ml_collections.ConfigDict, step_memory.MemoryChoice | None]:
    """``config`` with unset ``model.remat`` / ``num_microbatches`` (None) chosen to fit one chip.

    Explicit values are never changed. With nothing to choose, or no budget
    (CPU), unset keys take ``memory_settings``' defaults and nothing is
    compiled.

    Args:
        config: a training config.
        mesh: the devices the step runs on.
        budget_bytes: one chip's memory (``step_memory.device_memory_bytes``), or None.
        peak_bytes: (config) -> one chip's peak; default ``train_step_peak_bytes`` on ``mesh``.

    Returns:
        (the config with both keys set, the choice made or None).
    """
    defaults = with_memory_settings(config, *memory_settings(config)), None
    if budget_bytes is None:
        return defaults
    candidates = step_memory.memory_candidates(
        config.model.remat, config.num_microbatches, config.batch_size, mesh.devices.size
    )
    if len(candidates) == 1:
        return defaults
    peak_bytes = peak_bytes or (lambda candidate: train_step_peak_bytes(candidate, mesh))
    choice = step_memory.choose_memory_settings(
        candidates, lambda remat, n: peak_bytes(with_memory_settings(config, remat, n)), budget_bytes
    )
    return with_memory_settings(config, choice.remat, choice.num_microbatches), choice


# ---------------------------------------------------------------------------
# Checkpoints


def _checkpoint_managers(workdir: str, keep: int) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """The latest ``keep`` checkpoints, and the best one by test P1.

    Each manager names its barriers with its own prefix. Orbax's asynchronous
    save ends in a cross-process barrier named after the step's directory
    (``{prefix}_async_write_complete.{step}``, orbax/checkpoint/_src/
    checkpointers/async_checkpointer.py): with the default empty prefix,
    ``latest`` and ``best`` saving the same step wait on one barrier name
    from two threads at once, and the coordination service aborts every
    process ("Barrier ... is already ongoing").
    """
    root = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)

    def barrier_prefix(name):
        return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)

    latest = ocp.CheckpointManager(
        os.path.join(root, LATEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, multiprocessing_options=barrier_prefix(LATEST)
        ),
    )
    best = ocp.CheckpointManager(
        os.path.join(root, BEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1,
            best_fn=lambda metrics: metrics["p1"],
            best_mode="min",
            create=True,
            multiprocessing_options=barrier_prefix(BEST),
        ),
    )
    return latest, best


def _save_args(state: TrainState, loader_state: dict, config: ml_collections.ConfigDict):
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state.arrays()),
        loader=ocp.args.JsonSave(loader_state),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
    )


def _restore(manager: ocp.CheckpointManager, step: int, state: TrainState) -> tuple[TrainState, dict]:
    """Restores arrays into ``state``'s shardings, and the data loader's position."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.arrays())
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), loader=ocp.args.JsonRestore()),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(
            f"cannot resume from step {step} of {manager.directory} (a run with another model "
            f"config? use a new workdir): {checkpoint.first_line(e)}"
        ) from None
    checkpoint.check_shapes(restored.state, abstract, f"the arrays of step {step} in {manager.directory}")
    return state.with_arrays(restored.state), restored.loader


class PreemptionNotice:
    """Whether the scheduler asked the run to stop, answered alike by every process at one step.

    TPU pods and SLURM send SIGTERM before they preempt a job, to one process
    or to all. With several processes, jax.distributed's preemption service
    (on by default: ``jax.distributed.initialize`` makes SIGTERM notify the
    coordination service) tells every process, and
    ``reached_preemption_sync_point`` picks the same step for all of them,
    so they save one step together. A single process has no such service,
    so its own SIGTERM handler raises the flag.

    Call ``reached(step)`` after every step, from the step the run started at;
    ``close()`` puts back the SIGTERM handler it replaced.
    """

    def __init__(self):
        self._multi_process = jax.process_count() > 1
        self._signalled = False
        self._previous_handler = None
        if not self._multi_process:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._signalled = True

    def reached(self, step: int) -> bool:
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


# ---------------------------------------------------------------------------
# The training loop


@dataclasses.dataclass
class _Schedule:
    """When the loop logs, evaluates and checkpoints."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, config, steps_per_epoch):
        total = config.num_epochs * steps_per_epoch
        if config.max_steps > 0:
            total = min(total, config.max_steps)
        return cls(
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            log_every=max(1, config.log_every_steps),
            eval_every=config.eval_every_steps or steps_per_epoch,
            checkpoint_every=config.checkpoint_every_steps or steps_per_epoch,
        )

    def due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps


def _place_state(state: TrainState, mesh) -> TrainState:
    shardings = sharding.tree_shardings(mesh, state.arrays())
    return state.with_arrays(sharding.put_replicated_host_tree(jax.device_get(state.arrays()), shardings))


def _initial_model(config) -> SasMamba:
    if config.init_from:
        model = checkpoint.load_model(config.init_from)
        wanted = model_config(config)
        for field in SasMambaConfig.SHAPE_FIELDS:
            if getattr(model.config, field) != getattr(wanted, field):
                raise checkpoint.CheckpointError(
                    f"init_from {config.init_from} has {field}={getattr(model.config, field)}, "
                    f"the config asks for {getattr(wanted, field)}"
                )
        return checkpoint.build_model(wanted, checkpoint.params_of(model))
    return create_model(config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates a SasMamba; resumes from ``workdir`` if it holds checkpoints.

    Writes ``workdir/checkpoints/{latest,best}`` (Orbax), ``metrics.jsonl`` and
    TensorBoard events, ``curves.png`` and ``results.json``. On SIGTERM
    (``PreemptionNotice``) every process saves the current step to ``latest``
    and returns early, without the final evaluation; the same call resumes.

    Returns:
        The final results: test P1/P2 (mm), the mean-pose baseline's P1, steps,
        wall time, and "preempted": False; after a preemption only "steps",
        "wall_s" and "preempted": True.
    """
    mesh = sharding.make_mesh(config.mesh)
    # Every step, evaluation and compile of the run sees the mesh: the Pallas
    # scan splits its kernels over it (XLA cannot split them itself). And one
    # float32 matmul precision, the evaluation's included.
    with jax.set_mesh(mesh), eval_lib.use_matmul_precision(config.matmul_precision):
        return _train_and_evaluate_on(mesh, config, workdir)


def _train_and_evaluate_on(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict, workdir: str) -> dict:
    start_time = time.time()
    is_writer = jax.process_index() == 0
    # Chosen before anything is built, so the saved config records the choice.
    budget_bytes = step_memory.device_memory_bytes(mesh.devices.flat[0])
    config, choice = resolve_memory_settings(config, mesh, budget_bytes)
    if choice is not None:
        if not choice.fits:
            raise ValueError(step_memory.describe_choice(choice, budget_bytes))
        if is_writer:
            print(step_memory.describe_choice(choice, budget_bytes))
    model_cfg = model_config(config)
    task = eval_lib.load_task(config.data, model_cfg.num_frames, config.seed)
    loader = ClipLoader(
        task.data.train_inputs,
        task.data.train_targets,
        global_batch_size=config.batch_size,
        seed=config.seed,
        flip=config.data.flip,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        input_channels=model_cfg.in_chans,
        root_joint=task.root_joint,
        flip_permutation=task.flip_permutation,
    )
    schedule = _Schedule.from_config(config, loader.steps_per_epoch)
    state = _place_state(
        create_train_state(config, _initial_model(config), steps_per_epoch=loader.steps_per_epoch), mesh
    )
    latest, best = _checkpoint_managers(workdir, config.keep_checkpoints)
    if latest.latest_step() is not None:
        state, loader_state = _restore(latest, latest.latest_step(), state)
        loader.set_state(loader_state)
        if is_writer:
            print(f"resumed from {latest.directory} at step {int(state.step)}")
    writer = MetricWriter(workdir, enabled=is_writer, resume_step=int(state.step))
    batch_sharding = sharding.batch_sharding(mesh)
    lr_schedule = learning_rate_schedule(config, loader.steps_per_epoch)
    baseline = eval_lib.mean_pose_baseline(task)

    def evaluate(state):
        graphdef = eval_lib.eval_graphdef(state.graphdef, state.params)
        return eval_lib.evaluate_model(
            graphdef, state.params, task, config.eval, mesh, model_cfg.in_chans, config.matmul_precision
        )

    step = int(state.step)
    results = None
    window = []  # metrics of the steps since the last log row
    unchecked = []  # (step, loss) of steps whose loss has not been looked at yet
    window_start = time.time()
    progress = tqdm(
        total=schedule.total_steps, initial=step, disable=not is_writer, desc="train", unit="step"
    )
    preemption = PreemptionNotice()
    preempted = False
    try:
        while step < schedule.total_steps and not preempted:
            batch = make_global_batch(next(loader), batch_sharding)
            state, metrics = train_step(state, batch)
            step += 1
            window.append(metrics)
            unchecked.append((step, metrics["loss"]))
            # Look at the previous step's loss while this one runs on the device.
            _check_finite(unchecked[:-1])
            unchecked = unchecked[-1:]
            log_now = schedule.due(step, schedule.log_every)
            eval_now = schedule.due(step, schedule.eval_every)
            preempted = preemption.reached(step)
            save_now = schedule.due(step, schedule.checkpoint_every) or preempted
            if log_now or eval_now or save_now:
                _check_finite(unchecked)
                unchecked = []
            if log_now:
                summary = _summarise(jax.device_get(window), time.time() - window_start, config.batch_size)
                summary["train/learning_rate"] = float(lr_schedule(step - 1))
                writer.write(step, summary)
                progress.set_postfix(
                    loss=f"{summary['train/loss']:.4f}", clips_s=f"{summary['train/clips_per_s']:.1f}"
                )
                window, window_start = [], time.time()
            progress.update(1)
            eval_results = None
            if eval_now:
                eval_results = results = evaluate(state)
                writer.write(step, {"eval/p1": results["p1"], **_secondary(results)})
            if save_now:
                save_args = _save_args(state, loader.get_state(), config)
                latest.save(step, args=save_args)
                if eval_results is not None:
                    best.save(step, args=save_args, metrics={"p1": eval_results["p1"]})
    finally:
        preemption.close()
        progress.close()
        latest.wait_until_finished()
        best.wait_until_finished()
        writer.close()

    if preempted:
        return {"preempted": True, "steps": step, "wall_s": time.time() - start_time}
    if results is None:
        results = evaluate(state)
    final = {
        "preempted": False,
        "p1": results["p1"],
        **_secondary(results, prefix=""),
        "baseline_p1": baseline["p1"],
        "steps": step,
        "wall_s": time.time() - start_time,
        "eval": results,
    }
    if is_writer:
        with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
            json.dump(final, f, indent=2)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(metrics_path):
            plotting.plot_training_curves(metrics_path, os.path.join(workdir, CURVES_FILE))
    return final


def _secondary(results: dict, prefix: str = "eval/") -> dict[str, float]:
    """The dataset's other headline numbers (P2 for Human3.6M, PCK/AUC for 3DHP)."""
    keys = ("p2", "accel", "pck", "auc")
    return {f"{prefix}{k}": results[k] for k in keys if k in results}


def _summarise(window: list[dict], seconds: float, batch_size: int) -> dict[str, float]:
    """Mean of each training metric over the logging window, and throughput."""
    summary = {f"train/{name}": float(np.mean([row[name] for row in window])) for name in window[0]}
    summary["train/clips_per_s"] = len(window) * batch_size / max(seconds, 1e-9)
    return summary


def _check_finite(losses_by_step) -> None:
    for step, loss in losses_by_step:
        loss = float(loss)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss} at step {step}; stopped without saving, "
                "the last good checkpoint is kept"
            )
