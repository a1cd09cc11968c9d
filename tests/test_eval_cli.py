"""eval.py end to end: a release checkpoint evaluated on the demo set's test clips.

The protocol itself is tested in test_evaluation.py; here the command line's
wiring is: the .pth converted in memory, test-time flipping on and off, the
results file, and one-line errors.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import workdir_checkpoints
from sasmamba_jax.configs import tiny

from sasmamba_jax import skeleton
from sasmamba_jax.evaluate import tasks
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.model.forward import predict

pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
TIMEOUT_S = 300


def _run_eval(*arguments, config=("--config=configs/tiny.py",)):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "eval.py"), *config, *arguments],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _mirrored(poses):
    """x negated and left/right joints swapped: (..., 17, C) -> (..., 17, C)."""
    mirrored = np.array(poses)[..., skeleton.FLIP_PERMUTATION, :]
    mirrored[..., 0] *= -1
    return mirrored


@pytest.fixture(scope="module")
def expected(data_dir):
    """P1 of the release checkpoint's predictions made here, with and without flipping."""
    model = load_model(data_dir / "official_tiny.pth")
    config = tiny.get_config()
    task = tasks.load_task(config.data, model.config.num_frames, config.seed)
    clips = task.data.test_inputs[..., : model.config.in_chans]
    plain = np.concatenate([np.asarray(predict(model, batch)) for batch in np.array_split(clips, 8)])
    mirrored = np.concatenate(
        [np.asarray(predict(model, _mirrored(batch))) for batch in np.array_split(clips, 8)]
    )
    flipped = (plain + _mirrored(mirrored)) / 2
    return {"flip": task.evaluate(flipped)["p1"], "no_flip": task.evaluate(plain)["p1"]}


# Slow: eval.py over the whole test split twice, and the reference here, about 45 s
# of a warm default run's worker time.
@pytest.mark.slow
@pytest.mark.parametrize("flip", [True, False])
def test_eval_py_scores_a_release_checkpoint(data_dir, tmp_path, expected, flip):
    output = tmp_path / "results.json"
    result = _run_eval(
        f"--checkpoint={data_dir / 'official_tiny.pth'}", f"--output={output}", f"--config.eval.flip={flip}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert {"p1", "p2", "accel", "per_action", "per_joint"} <= results.keys()
    assert len(results["per_joint"]) == 17 and results["per_action"]
    assert all({"p1", "p2"} <= scores.keys() for scores in results["per_action"].values())
    np.testing.assert_allclose(results["p1"], expected["flip" if flip else "no_flip"], rtol=1e-5)
    assert "Average" in result.stdout


@pytest.mark.slow  # the reference predictions above
def test_flipping_changes_the_score(expected):
    assert abs(expected["flip"] - expected["no_flip"]) > 1e-3


@pytest.mark.parametrize(
    "checkpoint, message",
    [("missing.pth", "checkpoint not found"), ("garbage.pth", "garbage.pth")],
)
def test_eval_py_bad_checkpoint_is_a_one_line_error(tmp_path, checkpoint, message):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    result = _run_eval(f"--checkpoint={tmp_path / checkpoint}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--config.eval.flipp=False"], "unknown config key 'flipp' in --config.eval.flipp."),
        (["--config=configs/nope.py"], "No such file or directory: 'configs/nope.py'"),
        (["--config.matmul_precision=fast"], "unknown matmul precision 'fast'; expected one of ('default'"),
        ([], "Flag --checkpoint must have a value"),
    ],
)
def test_eval_py_flag_errors_are_one_line(arguments, message):
    checkpoint = [] if not arguments else ["--checkpoint=unused.pth"]
    result = _run_eval(*checkpoint, *arguments)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A train.py workdir of a small model on the demo set: zero weights, nothing compiled to write it."""
    config = tiny.get_config()
    with config.unlocked():
        config.model.dim = 16
        config.model.depth = 1
        # A quicker evaluation: 16 test clips in one batch, no flipping.
        config.data.test_stride = 81
        config.eval.batch_size = 16
        config.eval.flip = False
    directory = tmp_path_factory.mktemp("workdir")
    workdir_checkpoints.save_step_one(directory, config)
    return directory


def test_eval_py_on_a_workdir_without_config_uses_its_saved_config(workdir, tmp_path):
    # eval.py's default config (h36m_243) names no data: only the saved config does.
    output = tmp_path / "results.json"
    result = _run_eval(f"--checkpoint={workdir}", f"--output={output}", config=())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average" in result.stdout and "p1" in json.loads(output.read_text())


def test_config_overrides_apply_to_a_workdirs_saved_config(workdir, tmp_path):
    missing = tmp_path / "absent.pkl"
    result = _run_eval(f"--checkpoint={workdir}", f"--config.data.pkl_path={missing}", config=())
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"Human3.6M pickle not found: {missing}" in result.stderr
