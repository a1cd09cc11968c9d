"""The jax.export serving artefact: same outputs as the model, shape checks, CLI."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from sasmamba_jax.cli import export as export_cli
from sasmamba_jax.io import model_dirs, serving
from sasmamba_jax.model import forward
from sasmamba_jax.model.sasmamba import SasMambaConfig

FRAMES = 27


@pytest.fixture(scope="module")
def model():
    config = SasMambaConfig(num_frames=FRAMES, dim=16, depth=1, scan="sequential")
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda leaf: (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32),
        model_dirs.abstract_params(config),
    )
    return model_dirs.build_model(config, params)


def mirror(poses):
    """Reference flip: negate x, swap the Human3.6M left/right joints."""
    out = np.array(poses)
    out[..., 0] *= -1
    for a, b in ((1, 4), (2, 5), (3, 6), (14, 11), (15, 12), (16, 13)):
        out[..., [a, b], :] = out[..., [b, a], :]
    return out


def inputs(shape, seed=0):
    return (0.4 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def exported_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "forward.jax"
    # Lowered for CUDA too: the CPU half must still run here.
    serving.export_forward(model, path, frames=20, batch=2, platforms=("cpu", "cuda"))
    return path


def test_exported_matches_direct_model(model, exported_path):
    x = inputs((2, 20, 17, 2))
    exported = serving.load_exported(exported_path)
    np.testing.assert_allclose(exported(x), np.asarray(forward.predict(model, x)), atol=1e-6, rtol=0)
    assert exported.input_shape == (2, 20, 17, 2) and exported.output_shape == (2, 20, 17, 3)


def test_exported_with_flip_tta_matches_flip_average(model, tmp_path):
    path = tmp_path / "flip.jax"
    serving.export_forward(model, path, batch=1, flip_tta=True)
    x = inputs((1, FRAMES, 17, 2), seed=1)
    direct = np.asarray(forward.predict(model, x))
    flipped = np.asarray(forward.predict(model, mirror(x)))
    expected = (direct + mirror(flipped)) / 2
    np.testing.assert_allclose(serving.load_exported(path)(x), expected, atol=1e-6, rtol=0)


def test_metadata_sidecar(model, exported_path):
    metadata = json.loads(exported_path.with_name("forward.jax.json").read_text())
    assert metadata["input_shape"] == [2, 20, 17, 2]
    assert metadata["flip_tta"] is False
    assert metadata["platforms"] == ["cpu", "cuda"]
    assert SasMambaConfig.from_dict(metadata["model"]) == model.config
    assert serving.load_exported(exported_path).metadata == metadata


def test_shape_mismatch_is_a_clear_error(exported_path):
    forward = serving.load_exported(exported_path)
    with pytest.raises(ValueError, match=r"input of shape \(2, 20, 17, 2\), got \(1, 20, 17, 2\)"):
        forward(np.zeros((1, 20, 17, 2)))


def test_runs_with_jax_alone(exported_path, tmp_path):
    x = inputs((2, 20, 17, 2), seed=2)
    np.save(tmp_path / "x.npy", x)
    expected = serving.load_exported(exported_path)(x)
    # The package is made unimportable: only jax and numpy run the artefact.
    script = (
        "import sys; sys.modules['sasmamba_jax'] = None\n"
        "import jax, numpy as np\n"
        "artefact, x_path, y_path = sys.argv[1:]\n"
        "exported = jax.export.deserialize(bytearray(open(artefact, 'rb').read()))\n"
        "np.save(y_path, np.asarray(exported.call(np.load(x_path))))\n"
    )
    command = [
        sys.executable,
        "-c",
        script,
        str(exported_path),
        str(tmp_path / "x.npy"),
        str(tmp_path / "y.npy"),
    ]
    subprocess.run(command, check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message", [({"frames": FRAMES + 1}, r"frames must be in \[1, 27\]"), ({"batch": 0}, "batch")]
)
def test_bad_export_options(model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        serving.export_forward(model, tmp_path / "x.jax", **kwargs)


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "junk.jax").write_bytes(b"not an export")
    with pytest.raises(ValueError, match="not a serialised jax.export"):
        serving.load_exported(tmp_path / "junk.jax")
    with pytest.raises(ValueError, match="cannot read"):
        serving.load_exported(tmp_path / "absent.jax")


def test_cli_with_release_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "tiny.jax"
    status = export_cli.main(["--checkpoint", str(data_dir / "official_tiny.pth"), "--frames", "9", str(out)])
    assert status == 0
    exported = serving.load_exported(out)
    assert exported.input_shape == (1, 9, 17, 2)
    assert exported.metadata["model"]["dim"] == 32


def test_cli_errors_are_one_line_with_status_2(data_dir, tmp_path, capsys):
    status = export_cli.main(
        ["--checkpoint", str(data_dir / "official_tiny.pth"), "--frames", "100", str(tmp_path / "x.jax")]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "frames must be in [1, 27]" in err
    assert err.startswith("sasmamba_jax.export: error: ")
