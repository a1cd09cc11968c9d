"""Training state and the release's step: the model, AdamW, one jitted and donated update.

Public step API (compose your own loop with it)::

    model = recipe.create_model(config)
    train_state = recipe.create_train_state(config, model, steps_per_epoch=n)
    train_state, metrics = recipe.train_step(train_state, {"input_2d": x, "target_3d": y})

``train.loop.train_and_evaluate`` runs it with the release's whole recipe.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from sasmamba_jax.io.workdirs import training_model_config
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig, abstract_model
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import losses


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
    return training_model_config(config.to_dict()).with_options(remat=remat)


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
    """Wraps a model into a fresh training state, on the devices of the model's parameters.

    Args:
        config: a training config (``optimizer.*``, ``seed``).
        model: the model to train; its parameters are taken as they are.
        steps_per_epoch: enables the per-epoch learning-rate decay (constant
            learning rate when None).

    Every new array (the step, AdamW's moments, the key) is placed on the
    parameters' mesh (``place_state``), as ``train_step`` returns them: left
    on one device, they would make the second step compile again.
    """
    state = _new_train_state(config, model, steps_per_epoch)
    return place_state(state, sharding.params_mesh(state.params))


def abstract_train_state(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int | None = None, mesh: Mesh | None = None
) -> TrainState:
    """The shapes and dtypes of ``create_train_state(config, create_model(config), ...)``.

    Nothing is initialised, compiled or allocated; the optimizer is the one
    ``create_train_state`` builds for the same ``steps_per_epoch``. With
    ``mesh``, every array also carries the sharding ``place_state`` gives it
    there: the target to restore a checkpoint into.
    """
    graphdef, params = nnx.split(abstract_model(model_config(config)))
    state = jax.eval_shape(
        lambda params: _new_train_state(config, nnx.merge(graphdef, params), steps_per_epoch), params
    )
    if mesh is None:
        return state
    return state.with_arrays(sharding.restore_target(state.arrays(), mesh))


def _new_train_state(
    config: ml_collections.ConfigDict, model: SasMamba, steps_per_epoch: int | None
) -> TrainState:
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


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """``state`` with every array on ``mesh`` by ``sharding.place_params``' rule.

    AdamW's moments are laid out as their parameters, the scalars replicated.

    Arrays already placed so stay where they are; the others must be the same
    on every process.
    """
    return state.with_arrays(sharding.place_params(state.arrays(), mesh))


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
