"""tools/record_pytorch_outputs.py against a stand-in for the release's model package.

The release itself needs its CUDA kernels and cannot run here; the stand-in
records the constructor arguments and the loaded tensors, and its output is a
fixed function of the input, so the tool's own work (reading the checkpoint,
inferring the constructor arguments, writing x/y/config) is what is tested.
"""

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tools import record_pytorch_outputs  # noqa: E402

STAND_IN = """
import torch

class SasPoseMamba(torch.nn.Module):
    last = None

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        SasPoseMamba.last = self

    def load_state_dict(self, state_dict, strict=True):
        self.loaded = dict(state_dict)
        self.strict = strict

    def forward(self, x):
        return torch.cat([x[..., :1] * 2, x[..., 1:2] - 1, x[..., :1] * x[..., 1:2]], dim=-1)
"""


@pytest.fixture
def release_dir(tmp_path, monkeypatch):
    # The tool puts the release's checkout on sys.path and imports its
    # `model` package; undo both after the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("model", "model.SasMamba"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "SasMamba.py").write_text(STAND_IN)
    return tmp_path


def test_infers_the_release_constructor_arguments(data_dir):
    state_dict = record_pytorch_outputs.read_state_dict(data_dir / "official_tiny.pth")
    with np.load(data_dir / "official_tiny.npz") as ref:
        recorded = json.loads(str(ref["config"]))
    assert record_pytorch_outputs.constructor_arguments(state_dict) == recorded


def test_records_x_y_and_config(data_dir, release_dir, tmp_path):
    out = tmp_path / "ref.npz"
    record_pytorch_outputs.main(
        [
            "--checkpoint",
            str(data_dir / "official_tiny.pth"),
            "--output",
            str(out),
            "--release-dir",
            str(release_dir),
            "--frames",
            "9",
            "--device",
            "cpu",
        ]
    )
    from model.SasMamba import SasPoseMamba

    model = SasPoseMamba.last
    assert model.strict is True
    assert "STEblocks.0.op.A_logs" in model.loaded and not any(k.startswith("module.") for k in model.loaded)
    with np.load(out) as f:
        x, y, config = f["x"], f["y"], json.loads(str(f["config"]))
    assert x.shape == (2, 9, 17, 2) and x.dtype == np.float32
    assert np.all(np.abs(x) <= 1)
    np.testing.assert_allclose(
        y, np.concatenate([x[..., :1] * 2, x[..., 1:2] - 1, x[..., :1] * x[..., 1:2]], -1)
    )
    assert config["num_frame"] == 27 and config["depth"] == 2
