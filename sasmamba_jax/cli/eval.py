"""Evaluates a SasMamba checkpoint with the release's protocol.

    python eval.py --config=configs/h36m_243.py \\
        --config.data.pkl_path=h36m_sh_conf_cam_source_final.pkl \\
        --checkpoint=CKPT --output=results.json [--plot=clip.gif]

CKPT: a release .pth (converted in memory), a model directory written by
``python -m sasmamba_jax.convert``, or a train.py workdir. The model's shape
comes from the checkpoint; the config supplies the data, the evaluation
settings (``--config.eval.flip=False`` turns test-time flipping off), the
device mesh the parameters and batches are split over (``--config.mesh.*``,
all devices by default) and run options such as ``--config.model.scan`` and
``--config.matmul_precision``. The forward is the one ``train.py`` evaluates
with (``forward.predict_batch``).

For a train.py workdir without ``--config`` the config is the one saved with
its latest checkpoint (what the run trained with), ``--config.*`` overrides
applied to it: ``python eval.py --checkpoint=/tmp/demo`` evaluates a demo run
on the demo set.
"""

import json

from absl import flags, logging

from sasmamba_jax.cli import program

_CONFIG = program.define_config_file(
    "config",
    "h36m_243",
    "Data and eval settings: a bundled config's name or a config file "
    "(default: a train.py workdir's saved config, else h36m_243).",
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")
_PLOT = flags.DEFINE_string(
    "plot", None, "Write a GIF/MP4 of the first test clip, predicted vs ground truth."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")

RUN_OPTIONS = ("scan", "chunk_size", "stride_grad")


def _plot_first_clip(path, task, predictions):
    """Prediction vs ground truth on the first test clip, in mm for Human3.6M."""
    from sasmamba_jax.evaluate import protocols
    from sasmamba_jax.lifting import pictures

    inputs = task.data.test_inputs[0]
    pred = predictions[0] - predictions[0][:, task.root_joint : task.root_joint + 1]
    if task.name == "h36m":
        frames = task.data.test_clip_frames[0]
        scale = protocols.millimetres_per_unit(task.data)[0, :, None, None]
        truth = task.data.test_joints_mm[frames]
        truth = truth - truth[:, task.root_joint : task.root_joint + 1]
        pred, unit = pred * scale, "mm"
    else:
        truth, unit = None, "normalised units"
    pictures.save_animation(path, inputs[..., :2], pred, ground_truth_3d=truth, length_unit=unit)


def _config(given):
    """``given`` (--config), or for a workdir without --config its saved config with the --config.* overrides.

    Raises:
        ValueError: the workdir's config cannot be read or lacks an overridden key.
    """
    from sasmamba_jax.io import workdirs

    if flags.FLAGS[_CONFIG.name].present or not workdirs.is_workdir(_CHECKPOINT.value):
        return given
    saved = workdirs.saved_config(_CHECKPOINT.value)
    try:
        saved.update_from_flattened_dict(flags.FLAGS[_CONFIG.name].override_values)
    except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(
            f"a --config.* override does not fit the config saved in {_CHECKPOINT.value}: {e}"
        ) from None
    return saved


@program.command("eval")
def main(argv):
    del argv
    # The config, then the library (cli.program's docstring says why): a config
    # file that fails to load is one line before the imports.
    given = program.config_value(_CONFIG)
    import numpy as np
    from flax import nnx

    from sasmamba_jax.evaluate import protocols, tasks
    from sasmamba_jax.io import loader
    from sasmamba_jax.model import precision
    from sasmamba_jax.parallel import distributed, sharding

    logging.set_verbosity(logging.WARNING)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _config(given)
    options = {name: config.model[name] for name in RUN_OPTIONS}
    matmul_precision = precision.check_matmul_precision(config.matmul_precision)
    mesh = sharding.make_mesh(config.mesh)
    model = loader.load_model(_CHECKPOINT.value, mesh=mesh, dtype=config.dtype, **options)
    task = tasks.load_task(config.data, model.config.num_frames, config.seed)
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    predictions = tasks.predict_test_clips(
        graphdef, params, task, config.eval, mesh, model.config.in_chans, matmul_precision
    )
    results = task.evaluate(predictions)
    if task.name == "h36m":
        print(protocols.format_results_table(results))
    else:
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(results, f, indent=2)
    if _PLOT.value:
        _plot_first_clip(_PLOT.value, task, np.asarray(predictions))
    return 0


def run() -> None:
    """The console script ``sasmamba-eval`` and ``python eval.py``."""
    program.run_absl(main)
