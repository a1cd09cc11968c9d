"""The training loop: ``train_and_evaluate``, the release's recipe on any number of devices and hosts.

It resumes automatically from ``workdir/checkpoints``, evaluates and saves on
a schedule, and stops cleanly on SIGTERM or a non-finite loss.
"""

import dataclasses
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from sasmamba_jax.data.pipeline import ClipLoader, make_global_batch
from sasmamba_jax.evaluate import tasks
from sasmamba_jax.io.errors import CheckpointError
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.io.model_dirs import build_model, params_of
from sasmamba_jax.model.forward import eval_graphdef
from sasmamba_jax.model.precision import use_matmul_precision
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import checkpoints, curves, memory, recipe
from sasmamba_jax.train.metric_writers import MetricWriter
from sasmamba_jax.train.recipe import (
    TrainState,
    abstract_train_state,
    create_model,
    create_train_state,
    model_config,
    place_state,
    train_step,
)

RESULTS_FILE = "results.json"


CURVES_FILE = "curves.png"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


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


def _initial_model(config) -> SasMamba:
    if config.init_from:
        model = load_model(config.init_from)
        wanted = model_config(config)
        for field in SasMambaConfig.SHAPE_FIELDS:
            if getattr(model.config, field) != getattr(wanted, field):
                raise CheckpointError(
                    f"init_from {config.init_from} has {field}={getattr(model.config, field)}, "
                    f"the config asks for {getattr(wanted, field)}"
                )
        return build_model(wanted, params_of(model))
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
    with jax.set_mesh(mesh), use_matmul_precision(config.matmul_precision):
        return _train_and_evaluate_on(mesh, config, workdir)


def _train_and_evaluate_on(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict, workdir: str) -> dict:
    start_time = time.time()
    is_writer = jax.process_index() == 0
    config = _prepare_config(config, mesh, is_writer)
    task, loader = _load_data(config)
    state, latest, best = _start_or_resume(config, mesh, workdir, loader, is_writer)
    schedule = _Schedule.from_config(config, loader.steps_per_epoch)
    first_step = int(state.step)
    run = _Run(
        mesh=mesh,
        config=config,
        workdir=workdir,
        is_writer=is_writer,
        start_time=start_time,
        task=task,
        loader=loader,
        schedule=schedule,
        latest=latest,
        best=best,
        writer=MetricWriter(workdir, enabled=is_writer, resume_step=first_step),
        baseline=tasks.mean_pose_baseline(task),
        progress=tqdm(
            total=schedule.total_steps,
            initial=first_step,
            disable=not is_writer,
            desc="train",
            unit="step",
        ),
        preemption=checkpoints.PreemptionNotice(),
    )
    try:
        state, step, results, preempted = _train(run, state)
    finally:
        run.close()
    if preempted:
        return {"preempted": True, "steps": step, "wall_s": time.time() - start_time}
    return _finish(run, state, step, results)


def _prepare_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, is_writer: bool):
    """``config`` with unset remat / microbatches chosen to fit one chip (the choice printed).

    Chosen before anything is built, so the saved config records the choice.

    Raises:
        ValueError: nothing fits.
    """
    budget_bytes = memory.device_memory_bytes(mesh.devices.flat[0])
    config, choice = memory.resolve_memory_settings(config, mesh, budget_bytes)
    if choice is not None:
        if not choice.fits:
            raise ValueError(memory.describe_choice(choice, budget_bytes))
        if is_writer:
            print(memory.describe_choice(choice, budget_bytes))
    return config


def _load_data(config: ml_collections.ConfigDict) -> tuple[tasks.Task, ClipLoader]:
    """The config's dataset, and the loader of this process's share of each training batch."""
    model_cfg = model_config(config)
    task = tasks.load_task(config.data, model_cfg.num_frames, config.seed)
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
    return task, loader


def _start_or_resume(config, mesh, workdir: str, loader: ClipLoader, is_writer: bool):
    """The initial state on ``mesh``, or the latest checkpoint's (``loader`` set to its position).

    Returns:
        (state, the ``latest`` checkpoint manager, the ``best`` one).
    """
    latest, best = checkpoints.checkpoint_managers(workdir, config.keep_checkpoints)
    if latest.latest_step() is None:
        state = create_train_state(config, _initial_model(config), steps_per_epoch=loader.steps_per_epoch)
        return place_state(state, mesh), latest, best
    # Restored straight into the layout place_state gives: a resumed run
    # neither compiles nor runs the initialisation it would overwrite.
    target = abstract_train_state(config, steps_per_epoch=loader.steps_per_epoch, mesh=mesh)
    state, loader_state = checkpoints.restore(latest, latest.latest_step(), target)
    loader.set_state(loader_state)
    if is_writer:
        print(f"resumed from {latest.directory} at step {int(state.step)}")
    return state, latest, best


@dataclasses.dataclass
class _Run:
    """One call's data, schedule and outputs: checkpoints, metrics, progress bar, SIGTERM notice."""

    mesh: jax.sharding.Mesh
    config: ml_collections.ConfigDict
    workdir: str
    is_writer: bool
    start_time: float
    task: tasks.Task
    loader: ClipLoader
    schedule: _Schedule
    latest: ocp.CheckpointManager
    best: ocp.CheckpointManager
    writer: MetricWriter
    baseline: dict
    progress: tqdm
    preemption: checkpoints.PreemptionNotice

    def evaluate(self, state: TrainState) -> dict:
        """The dataset's evaluation protocol on ``state``'s model (every process takes part)."""
        graphdef = eval_graphdef(state.graphdef, state.params)
        return tasks.evaluate_model(
            graphdef,
            state.params,
            self.task,
            self.config.eval,
            self.mesh,
            model_config(self.config).in_chans,
            self.config.matmul_precision,
        )

    def save(self, step: int, state: TrainState, eval_results: dict | None) -> None:
        """Saves ``step`` to ``latest``, and to ``best`` (by P1) if it was just evaluated."""
        save_args = checkpoints.save_args(state, self.loader.get_state(), self.config)
        self.latest.save(step, args=save_args)
        if eval_results is not None:
            self.best.save(step, args=save_args, metrics={"p1": eval_results["p1"]})

    def close(self) -> None:
        """Restores the SIGTERM handler and waits for the saves in flight."""
        self.preemption.close()
        self.progress.close()
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.writer.close()


class _Window:
    """The training metrics since the last log row, and the losses not looked at yet."""

    def __init__(self, run: _Run):
        self.run = run
        self.lr_schedule = recipe.learning_rate_schedule(run.config, run.loader.steps_per_epoch)
        self.metrics = []
        self.unchecked = []  # (step, loss)
        self.start = time.time()

    def add(self, step: int, metrics: dict) -> None:
        """Adds a step's metrics; checks the previous step's loss while this one runs on the device."""
        self.metrics.append(metrics)
        self.unchecked.append((step, metrics["loss"]))
        _check_finite(self.unchecked[:-1])
        self.unchecked = self.unchecked[-1:]

    def check_finite(self) -> None:
        """Raises NonFiniteLossError if any loss so far is not finite (waits for the device)."""
        _check_finite(self.unchecked)
        self.unchecked = []

    def log(self, step: int) -> None:
        """Writes the window's means and throughput as ``step``'s row, and starts a new window."""
        summary = _summarise(
            jax.device_get(self.metrics), time.time() - self.start, self.run.config.batch_size
        )
        summary["train/learning_rate"] = float(self.lr_schedule(step - 1))
        self.run.writer.write(step, summary)
        self.run.progress.set_postfix(
            loss=f"{summary['train/loss']:.4f}", clips_s=f"{summary['train/clips_per_s']:.1f}"
        )
        self.metrics, self.start = [], time.time()


def _train(run: _Run, state: TrainState) -> tuple[TrainState, int, dict | None, bool]:
    """Trains to the schedule's end or a SIGTERM, logging, evaluating and saving as it is due.

    Returns:
        (state, step reached, the last evaluation's results or None, whether preempted).

    Raises:
        NonFiniteLossError: a loss was NaN or infinite; nothing is saved past its step.
    """
    schedule = run.schedule
    batch_sharding = sharding.batch_sharding(run.mesh)
    window = _Window(run)
    step = int(state.step)
    results = None
    preempted = False
    while step < schedule.total_steps and not preempted:
        batch = make_global_batch(next(run.loader), batch_sharding)
        state, metrics = train_step(state, batch)
        step += 1
        window.add(step, metrics)
        log_now = schedule.due(step, schedule.log_every)
        eval_now = schedule.due(step, schedule.eval_every)
        preempted = run.preemption.reached(step)
        save_now = schedule.due(step, schedule.checkpoint_every) or preempted
        if log_now or eval_now or save_now:
            window.check_finite()
        if log_now:
            window.log(step)
        run.progress.update(1)
        eval_results = None
        if eval_now:
            eval_results = results = run.evaluate(state)
            run.writer.write(step, {"eval/p1": results["p1"], **_secondary(results)})
        if save_now:
            run.save(step, state, eval_results)
    return state, step, results, preempted


def _finish(run: _Run, state: TrainState, step: int, results: dict | None) -> dict:
    """The final results (evaluating ``state`` unless the last step was); process 0 writes
    ``results.json`` and ``curves.png``."""
    if results is None:
        results = run.evaluate(state)
    final = {
        "preempted": False,
        "p1": results["p1"],
        **_secondary(results, prefix=""),
        "baseline_p1": run.baseline["p1"],
        "steps": step,
        "wall_s": time.time() - run.start_time,
        "eval": results,
    }
    if run.is_writer:
        with open(os.path.join(run.workdir, RESULTS_FILE), "w") as f:
            json.dump(final, f, indent=2)
        metrics_path = os.path.join(run.workdir, "metrics.jsonl")
        if os.path.exists(metrics_path):
            curves.plot_training_curves(metrics_path, os.path.join(run.workdir, CURVES_FILE))
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
