"""Every loader runs the scan back end "auto" unless told otherwise, whatever the file recorded.

``load_model`` is what convert, eval.py (with the configs' ``scan="auto"``),
infer and export load with.
"""

import json

import pytest
import workdir_checkpoints
from sasmamba_jax.configs import common, tiny

from sasmamba_jax.cli import convert as convert_cli
from sasmamba_jax.io import loader, model_dirs
from sasmamba_jax.io.loader import DEFAULT_SCAN
from sasmamba_jax.model.sasmamba import SasMambaConfig
from sasmamba_jax.ops.selective_scan import resolve_backend

pytest.importorskip("torch")


def test_configs_and_the_model_default_to_the_loaders_scan():
    assert SasMambaConfig().scan == common.base_config().model.scan == DEFAULT_SCAN == "auto"


def test_a_pth_loads_with_the_auto_scan_which_is_sequential_on_cpu(data_dir):
    model = loader.load_model(data_dir / "official_tiny.pth")
    assert model.config.scan == DEFAULT_SCAN == "auto"
    assert resolve_backend(model.config.scan, "cpu") == "sequential"


def test_model_directories_load_with_the_auto_scan_whatever_they_recorded(tmp_path, data_dir):
    directory = tmp_path / "model"
    model_dirs.save_model(loader.load_model(data_dir / "official_tiny.pth", scan="chunked"), directory)
    assert json.loads((directory / model_dirs.CONFIG_FILE).read_text())["model"]["scan"] == "chunked"
    assert loader.load_model(directory).config.scan == "auto"
    assert loader.load_model(directory, scan="associative").config.scan == "associative"


def test_the_convert_command_writes_the_auto_scan(tmp_path, data_dir):
    directory = tmp_path / "model"
    assert convert_cli.main([str(data_dir / "official_tiny.pth"), str(directory)]) == 0
    assert json.loads((directory / model_dirs.CONFIG_FILE).read_text())["model"]["scan"] == "auto"


def test_training_workdirs_load_with_the_auto_scan_whatever_they_trained_with(tmp_path):
    config = tiny.get_config()
    with config.unlocked():
        config.model.scan = "chunked"
    # Zeros of the state's shapes: only the recorded config matters here, nothing to compile.
    workdir_checkpoints.save_step_one(tmp_path, config)
    assert loader.load_model(tmp_path).config.scan == "auto"
    assert loader.load_model(tmp_path, scan="chunked").config.scan == "chunked"
