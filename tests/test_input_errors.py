"""Bad input to train.py, eval.py and infer ends in one line and exit status 2, never a traceback.

The in-process tests run what train.py and eval.py run under their ``main``'s
error path, ``program.command``; the subprocess tests run the commands
themselves (one each in the default run, every case under the slow marker).
"""

import gc
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import workdir_checkpoints
from sasmamba_jax.configs import tiny

from sasmamba_jax.cli import infer, program
from sasmamba_jax.io import loader, model_dirs
from sasmamba_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
TIMEOUT_S = 300
REFUSED = f"{os.system.__module__}.system"


class _Hostile:
    """Unpickled by ``pickle.load``, it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line_exit(capsys, run) -> str:
    """Runs ``run`` as train.py's ``main`` does; the single line it ends with."""
    # A restore that failed in an earlier test leaves orbax coroutines that were
    # never awaited; whenever they are collected, the warning hook of the
    # command that ran then prints a line. Collected here, outside the capture.
    gc.collect()
    capsys.readouterr()
    assert program.command("train")(run)() == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.endswith("\n"), error
    assert error.startswith("train.py: error: "), error
    return error


def _tiny_config(**data):
    config = tiny.get_config()
    with config.unlocked():
        config.data.update(data)
    return config


@pytest.fixture
def bad_data(tmp_path):
    """Paths of data files that are missing, ill-formed or hostile, and the hostile one's marker."""
    marker = tmp_path / "the_file_ran_code"
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    a_list = tmp_path / "list.pkl"
    a_list.write_bytes(pickle.dumps([1, 2, 3]))
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps({"train": _Hostile(marker), "test": {}}))
    paths = {"missing": tmp_path / "absent.pkl", "garbage": garbage, "list": a_list, "hostile": hostile}
    return paths, marker


EXPECTED_DATA_ERRORS = {
    "missing": "Human3.6M pickle not found",
    "garbage": "is not a readable pickle",
    "list": "expected a dict with 'train' and 'test'",
    "hostile": f"refused to unpickle {REFUSED}",
}


@pytest.mark.parametrize("case", sorted(EXPECTED_DATA_ERRORS))
def test_bad_pickle_ends_training_in_one_line(tmp_path, capsys, bad_data, case):
    paths, marker = bad_data
    config = _tiny_config(pkl_path=str(paths[case]))
    error = _one_line_exit(capsys, lambda: loop.train_and_evaluate(config, str(tmp_path / "run")))
    assert EXPECTED_DATA_ERRORS[case] in error and str(paths[case]) in error
    assert not marker.exists()


def test_bad_3dhp_npz_ends_training_in_one_line(tmp_path, capsys):
    missing = tmp_path / "data_train_3dhp.npz"
    config = _tiny_config(dataset="3dhp", train_npz=str(missing), test_npz=str(missing))
    error = _one_line_exit(capsys, lambda: loop.train_and_evaluate(config, str(tmp_path / "run")))
    assert "MPI-INF-3DHP npz not found" in error and str(missing) in error


def test_hostile_clip_folder_ends_training_in_one_line(tmp_path, capsys):
    marker = tmp_path / "the_file_ran_code"
    (tmp_path / "clips" / "train").mkdir(parents=True)
    (tmp_path / "clips" / "train" / "00000000.pkl").write_bytes(pickle.dumps(_Hostile(marker)))
    config = _tiny_config(train_clip_dir=str(tmp_path / "clips"))
    error = _one_line_exit(capsys, lambda: loop.train_and_evaluate(config, str(tmp_path / "run")))
    assert f"refused to unpickle {REFUSED}" in error and "00000000.pkl" in error
    assert not marker.exists()


def test_init_from_a_checkpoint_of_other_shapes_ends_in_one_line(tmp_path, capsys, data_dir):
    config = tiny.get_config()
    with config.unlocked():
        config.init_from = str(data_dir / "official_tiny.pth")
        config.model.dim = 16
    error = _one_line_exit(capsys, lambda: loop.train_and_evaluate(config, str(tmp_path / "run")))
    assert "official_tiny.pth has dim=32, the config asks for 16" in error


def test_resuming_a_workdir_of_another_model_ends_in_one_line(tmp_path, capsys):
    other = tiny.get_config()
    with other.unlocked():
        other.model.dim = 16
    workdir_checkpoints.save_step_one(tmp_path, other)
    error = _one_line_exit(capsys, lambda: loop.train_and_evaluate(tiny.get_config(), str(tmp_path)))
    assert "cannot resume from step 1" in error


def test_model_directory_whose_params_do_not_fit_its_config_ends_in_one_line(tmp_path, capsys, data_dir):
    directory = tmp_path / "model"
    model_dirs.save_model(loader.load_model(data_dir / "official_tiny.pth"), directory)
    config_path = directory / model_dirs.CONFIG_FILE
    meta = json.loads(config_path.read_text())
    meta["model"]["dim"] = 16
    config_path.write_text(json.dumps(meta))
    error = _one_line_exit(capsys, lambda: loader.load_model(directory))
    assert f"the parameters in {directory / model_dirs.PARAMS_DIR} do not fit the model config" in error
    assert "['frame_pos_embed']: saved (27, 32), model (27, 16)" in error


def test_infer_corrupt_checkpoint_is_one_line_without_torch_advice(tmp_path, capsys):
    pytest.importorskip("torch")
    keypoints = tmp_path / "keypoints.npy"
    np.save(keypoints, np.zeros((27, 17, 2), np.float32))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04not a checkpoint")
    output = str(tmp_path / "out.npz")
    code = infer.main(
        ["--input", str(keypoints), "--format", "h36m", "--checkpoint", str(corrupt), "--output", output]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error == f"sasmamba_jax.infer: error: {corrupt} is not a readable PyTorch checkpoint\n"


# ---------------------------------------------------------------------------
# The commands themselves


def _run(script, *arguments):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), "--config=configs/tiny.py", *arguments],
        cwd=REPO,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _assert_one_line_exit(result, script, *expected):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr[-3000:]
    for text in expected:
        assert text in lines[0]


def test_train_py_hostile_pickle_is_one_line_and_runs_nothing(tmp_path, bad_data):
    paths, marker = bad_data
    result = _run("train.py", f"--workdir={tmp_path / 'run'}", f"--config.data.pkl_path={paths['hostile']}")
    _assert_one_line_exit(result, "train.py", str(paths["hostile"]), f"refused to unpickle {REFUSED}")
    assert not marker.exists()


def test_eval_py_missing_pickle_is_one_line(tmp_path, data_dir):
    missing = tmp_path / "absent.pkl"
    checkpoint_flag = f"--checkpoint={data_dir / 'official_tiny.pth'}"
    result = _run("eval.py", checkpoint_flag, f"--config.data.pkl_path={missing}")
    _assert_one_line_exit(result, "eval.py", f"Human3.6M pickle not found: {missing}")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
@pytest.mark.parametrize("case", sorted(EXPECTED_DATA_ERRORS))
def test_commands_end_bad_pickles_in_one_line(tmp_path, data_dir, bad_data, script, case):
    paths, marker = bad_data
    if script == "train.py":
        where = f"--workdir={tmp_path / 'run'}"
    else:
        where = f"--checkpoint={data_dir / 'official_tiny.pth'}"
    result = _run(script, where, f"--config.data.pkl_path={paths[case]}")
    _assert_one_line_exit(result, script, str(paths[case]), EXPECTED_DATA_ERRORS[case])
    assert not marker.exists()


@pytest.mark.slow
def test_eval_py_corrupt_pth_is_one_line_without_torch_advice(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04not a checkpoint")
    result = _run("eval.py", f"--checkpoint={corrupt}")
    _assert_one_line_exit(result, "eval.py", f"{corrupt} is not a readable PyTorch checkpoint")
    assert "weights_only" not in result.stderr


@pytest.mark.slow
def test_train_py_init_from_of_other_shapes_is_one_line(tmp_path, data_dir):
    result = _run(
        "train.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.init_from={data_dir / 'official_tiny.pth'}",
        "--config.model.dim=16",
    )
    _assert_one_line_exit(result, "train.py", "has dim=32, the config asks for 16")
