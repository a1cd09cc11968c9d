"""Every loader runs the scan back end "auto" unless told otherwise, whatever the file recorded.

``load_model`` is what convert, eval.py (with the configs' ``scan="auto"``),
infer and export load with.
"""

import json

import pytest

from configs import tiny
from sasmamba_jax import checkpoint, train_lib
from sasmamba_jax.checkpoint import DEFAULT_SCAN
from sasmamba_jax.ops.selective_scan import resolve_backend

pytest.importorskip("torch")


def test_a_pth_loads_with_the_auto_scan_which_is_sequential_on_cpu(data_dir):
    model = checkpoint.load_model(data_dir / "official_tiny.pth")
    assert model.config.scan == DEFAULT_SCAN == "auto"
    assert resolve_backend(model.config.scan, "cpu") == "sequential"


def test_model_directories_load_with_the_auto_scan_whatever_they_recorded(tmp_path, data_dir):
    directory = tmp_path / "model"
    checkpoint.save_model(checkpoint.load_model(data_dir / "official_tiny.pth", scan="chunked"), directory)
    assert json.loads((directory / checkpoint.CONFIG_FILE).read_text())["model"]["scan"] == "chunked"
    assert checkpoint.load_model(directory).config.scan == "auto"
    assert checkpoint.load_model(directory, scan="associative").config.scan == "associative"


def test_the_convert_command_writes_the_auto_scan(tmp_path, data_dir):
    directory = tmp_path / "model"
    assert checkpoint.convert_main([str(data_dir / "official_tiny.pth"), str(directory)]) == 0
    assert json.loads((directory / checkpoint.CONFIG_FILE).read_text())["model"]["scan"] == "auto"


def test_training_workdirs_load_with_the_auto_scan_whatever_they_trained_with(tmp_path):
    config = tiny.get_config()
    with config.unlocked():
        config.model.scan = "chunked"
    state = train_lib.create_train_state(config, train_lib.create_model(config))
    latest, best = train_lib._checkpoint_managers(str(tmp_path), keep=1)
    latest.save(1, args=train_lib._save_args(state, {"epoch": 0, "step_in_epoch": 1}, config))
    latest.close(), best.close()
    assert checkpoint.load_model(tmp_path).config.scan == "auto"
    assert checkpoint.load_model(tmp_path, scan="chunked").config.scan == "chunked"
