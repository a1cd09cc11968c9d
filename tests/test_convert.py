"""The PyTorch checkpoint bridge (`io/pytorch.py`) and model directories (`io/model_dirs.py`).

`tests/data/official_tiny.pth` is a training checkpoint written by the release
itself (T=27, C=32, depth 2); `official_tiny.npz` holds the release's output
'y' for the input 'x'. Layouts are checked against index loops written from
the definitions and against torch's own Linear / Conv2d functions.
"""

import fractions
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sasmamba_jax.cli import convert as convert_cli
from sasmamba_jax.io import loader, model_dirs, pytorch
from sasmamba_jax.io.errors import CheckpointError
from sasmamba_jax.model.forward import predict
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig
from sasmamba_jax.ops import deform_conv2d_depthwise

torch = pytest.importorskip("torch")

ATOL = 1e-4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT}


@pytest.fixture(scope="module")
def pth_path(data_dir):
    return data_dir / "official_tiny.pth"


@pytest.fixture(scope="module")
def release_checkpoint(pth_path):
    return torch.load(pth_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def release_state_dict(release_checkpoint):
    """The fixture's tensors as numpy, read with torch directly (not through convert)."""
    return {name: t.numpy() for name, t in release_checkpoint["model"].items()}


@pytest.fixture(scope="module")
def reference(data_dir):
    with np.load(data_dir / "official_tiny.npz") as f:
        return {"x": f["x"], "y": f["y"]}


@pytest.fixture(scope="module")
def tiny_model(pth_path):
    return loader.load_model(pth_path)


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("converted") / "tiny"
    model_dirs.save_model(tiny_model, directory)
    return directory


@pytest.fixture(scope="module")
def random_model():
    return SasMamba(SasMambaConfig(num_frames=9, dim=16, depth=2), rngs=nnx.Rngs(0))


def _random_params(config, seed=0):
    """A parameter tree of the config's shapes, filled with random numbers without running inits."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: rng.standard_normal(leaf.shape).astype(np.float32), model_dirs.abstract_params(config)
    )


def _leaves(tree):
    """{path: numpy array} of a parameter tree (a pure dict), paths as tuples of keys."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(key.key for key in path): np.asarray(leaf) for path, leaf in flat}


def _assert_bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.float32
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def _assert_same_params(tree_a, tree_b):
    leaves_a, leaves_b = _leaves(tree_a), _leaves(tree_b)
    assert list(leaves_a) == list(leaves_b)
    for path in leaves_a:
        _assert_bitwise_equal(leaves_a[path], leaves_b[path])


def _assert_same_state_dict(ours, theirs):
    assert list(ours) == list(theirs)
    for name in theirs:
        _assert_bitwise_equal(ours[name], theirs[name])


def _assert_matches_release(model, reference):
    out = np.asarray(predict(model, reference["x"]))
    assert out.shape == reference["y"].shape
    np.testing.assert_allclose(out, reference["y"], rtol=0, atol=ATOL)


def _torch_save(obj, path):
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------------------
# Name table and layouts


def test_name_table_lists_the_release_names_in_order(release_state_dict):
    names = [entry.torch_name for entry in pytorch.name_table(depth=2)]
    assert names == list(release_state_dict)


def test_name_table_covers_every_parameter_of_our_model_once():
    paths = [entry.jax_path for entry in pytorch.name_table(depth=3)]
    assert len(set(paths)) == len(paths)
    config = SasMambaConfig(num_frames=9, dim=16, depth=3)
    assert set(_leaves(model_dirs.abstract_params(config))) == set(paths)


def test_expected_shapes_are_the_release_shapes(release_state_dict):
    config = pytorch.infer_config(release_state_dict)
    shapes = pytorch.expected_shapes(config)
    assert list(shapes) == list(release_state_dict)
    assert shapes == {name: w.shape for name, w in release_state_dict.items()}


def _arange(*shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_linear_layout_transposes():
    weight = _arange(5, 3)  # torch (out, in)
    kernel = pytorch.LINEAR.to_jax(weight)
    assert kernel.shape == (3, 5)
    for i in range(3):
        for o in range(5):
            assert kernel[i, o] == weight[o, i]
    np.testing.assert_array_equal(pytorch.LINEAR.to_torch(kernel), weight)


def test_conv_layout_moves_channels_last():
    weight = _arange(4, 3, 2, 5)  # torch (out, in, kh, kw)
    kernel = pytorch.CONV.to_jax(weight)
    assert kernel.shape == (2, 5, 3, 4)
    for o in range(4):
        for i in range(3):
            for a in range(2):
                for b in range(5):
                    assert kernel[a, b, i, o] == weight[o, i, a, b]
    np.testing.assert_array_equal(pytorch.CONV.to_torch(kernel), weight)


def test_depthwise_layout_drops_the_group_axis():
    weight = _arange(6, 1, 3, 3)  # torch (E, 1, k, k)
    kernel = pytorch.DEPTHWISE.to_jax(weight)
    assert kernel.shape == (3, 3, 6)
    for e in range(6):
        for a in range(3):
            for b in range(3):
                assert kernel[a, b, e] == weight[e, 0, a, b]
    np.testing.assert_array_equal(pytorch.DEPTHWISE.to_torch(kernel), weight)


def test_position_embedding_layout_drops_the_batch_axis():
    weight = _arange(1, 17, 4)
    embedding = pytorch.UNBATCHED.to_jax(weight)
    assert embedding.shape == (17, 4)
    for x in range(17):
        for c in range(4):
            assert embedding[x, c] == weight[0, x, c]
    np.testing.assert_array_equal(pytorch.UNBATCHED.to_torch(embedding), weight)


@pytest.mark.parametrize("trailing", [(), (5,)], ids=["Ds", "A_logs"])
def test_per_direction_layout_splits_the_stacked_rows(trailing):
    num_directions, inner = 4, 3
    weight = _arange(num_directions * inner, *trailing)
    split = pytorch.PER_DIRECTION.to_jax(weight)
    assert split.shape == (num_directions, inner, *trailing)
    for k in range(num_directions):
        for e in range(inner):
            np.testing.assert_array_equal(split[k, e], weight[k * inner + e])
    np.testing.assert_array_equal(pytorch.PER_DIRECTION.to_torch(split), weight)


def test_mapped_layers_compute_what_torch_computes(tiny_model, release_state_dict):
    """Each layout kind, applied by the name table, against torch's own layer functions."""
    sd = {name: torch.from_numpy(w) for name, w in release_state_dict.items()}
    rng = np.random.default_rng(0)
    op = tiny_model.spatial_blocks[1].op
    prefix = "STEblocks.1.op"

    x = rng.standard_normal((5, 2), np.float32)
    theirs = torch.nn.functional.linear(
        torch.from_numpy(x), sd["Spatial_patch_to_embedding.weight"], sd["Spatial_patch_to_embedding.bias"]
    )
    np.testing.assert_allclose(tiny_model.joint_embed(x), theirs.numpy(), atol=1e-5)

    # (B, H, W, E) for us, (B, E, H, W) for torch; 'same' padding of a 3x3 kernel.
    grid = rng.standard_normal((2, 6, 17, 64), np.float32)
    grid_torch = torch.from_numpy(grid.transpose(0, 3, 1, 2).copy())
    theirs = torch.nn.functional.conv2d(
        grid_torch,
        sd[f"{prefix}.conv2d.offset_conv.weight"],
        sd[f"{prefix}.conv2d.offset_conv.bias"],
        padding=1,
    )
    np.testing.assert_allclose(op.offset_conv(grid), theirs.numpy().transpose(0, 2, 3, 1), atol=1e-4)

    # With zero offsets the deformable conv is a plain depthwise conv.
    zero_offsets = np.zeros((2, 6, 17, 18), np.float32)
    ours = deform_conv2d_depthwise(grid, zero_offsets, op.dcn_kernel[...], op.dcn_bias[...])
    theirs = torch.nn.functional.conv2d(
        grid_torch, sd[f"{prefix}.conv2d.dcn.weight"], sd[f"{prefix}.conv2d.dcn.bias"], padding=1, groups=64
    )
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-5)

    a_logs = release_state_dict[f"{prefix}.A_logs"]
    ds = release_state_dict[f"{prefix}.Ds"]
    for k in range(4):
        for e in range(64):
            assert np.array_equal(op.A_log[...][k, e], a_logs[k * 64 + e])
            assert op.D[...][k, e] == ds[k * 64 + e]
    np.testing.assert_array_equal(
        tiny_model.frame_pos_embed[...], release_state_dict["Temporal_pos_embed"][0]
    )


# ---------------------------------------------------------------------------
# Round trips


def test_release_state_dict_round_trip_is_exact(release_state_dict):
    config = pytorch.infer_config(release_state_dict)
    params = pytorch.state_dict_to_params(release_state_dict, config)
    _assert_same_state_dict(pytorch.params_to_state_dict(params, config.depth), release_state_dict)


def test_our_params_round_trip_is_exact(tmp_path, random_model):
    """A model with its own random inits: params -> state_dict -> params, and through a .pth."""
    model = random_model
    params = jax.device_get(model_dirs.params_of(model))
    state_dict = pytorch.params_to_state_dict(params, depth=2)
    _assert_same_state_dict(model_dirs.export_pytorch_state_dict(model), state_dict)
    _assert_same_params(pytorch.state_dict_to_params(state_dict, model.config), params)

    pytorch.write_pytorch_checkpoint(state_dict, tmp_path / "random.pth")
    _assert_same_state_dict(pytorch.read_pytorch_state_dict(tmp_path / "random.pth"), state_dict)
    reloaded = loader.load_model(tmp_path / "random.pth")
    assert reloaded.config == model.config.with_options(scan=loader.DEFAULT_SCAN)
    _assert_same_params(model_dirs.params_of(reloaded), params)
    assert os.listdir(tmp_path) == ["random.pth"]


def test_build_model_uses_the_given_params():
    config = SasMambaConfig(num_frames=9, dim=16, depth=2)
    params = _random_params(config)
    model = model_dirs.build_model(config, params)
    _assert_same_params(model_dirs.params_of(model), params)
    assert model.config == config
    assert model.deterministic


# ---------------------------------------------------------------------------
# infer_config


def test_infer_config_reads_the_release_shapes(release_state_dict):
    config = pytorch.infer_config(release_state_dict)
    assert config == SasMambaConfig(
        num_frames=27, in_chans=2, dim=32, depth=2, mlp_ratio=2.0, ssm_conv=3, d_state=16, ssm_ratio=2.0
    )


@pytest.mark.parametrize(
    "shape",
    [
        dict(num_frames=5, in_chans=3, dim=48, depth=3, mlp_ratio=4.0),
        dict(num_frames=12, dim=16, depth=1, ssm_conv=5, d_state=8, ssm_ratio=1.0),
    ],
    ids=["in3-dim48-depth3-mlp4", "conv5-state8-ratio1"],
)
def test_infer_config_reads_other_shapes_from_written_checkpoints(tmp_path, shape):
    config = SasMambaConfig(**shape)
    state_dict = pytorch.params_to_state_dict(_random_params(config), config.depth)
    pytorch.write_pytorch_checkpoint(state_dict, tmp_path / "m.pth")
    assert pytorch.infer_config(pytorch.read_pytorch_state_dict(tmp_path / "m.pth")) == config


def test_infer_config_names_what_is_missing(release_state_dict):
    without_embedding = dict(release_state_dict)
    del without_embedding["Spatial_patch_to_embedding.weight"]
    with pytest.raises(CheckpointError, match="Spatial_patch_to_embedding.weight"):
        pytorch.infer_config(without_embedding)
    without_blocks = {n: w for n, w in release_state_dict.items() if not n.startswith("STEblocks.")}
    with pytest.raises(CheckpointError, match="STEblocks"):
        pytorch.infer_config(without_blocks)


# ---------------------------------------------------------------------------
# .pth variants


def _prefixed(state_dict):
    return {f"module.{name}": tensor for name, tensor in state_dict.items()}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": sd},
        lambda sd: sd,
        lambda sd: {"model": _prefixed(sd)},
        lambda sd: _prefixed(sd),
    ],
    ids=["model", "state_dict", "bare", "model-dataparallel", "bare-dataparallel"],
)
def test_pth_variants_are_read(tmp_path, release_checkpoint, release_state_dict, wrap):
    path = _torch_save(wrap(release_checkpoint["model"]), tmp_path / "variant.pth")
    _assert_same_state_dict(pytorch.read_pytorch_state_dict(path), release_state_dict)


def test_release_training_checkpoint_is_read(pth_path, release_state_dict):
    _assert_same_state_dict(pytorch.read_pytorch_state_dict(pth_path), release_state_dict)


def test_dataparallel_checkpoint_loads(tmp_path, release_checkpoint, tiny_model):
    path = _torch_save(_prefixed(release_checkpoint["model"]), tmp_path / "dp.pth")
    _assert_same_params(model_dirs.params_of(loader.load_model(path)), model_dirs.params_of(tiny_model))


# ---------------------------------------------------------------------------
# Errors


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_missing_file(tmp_path):
    for read in (pytorch.read_pytorch_state_dict, loader.load_model):
        with pytest.raises(CheckpointError, match="not found"):
            read(tmp_path / "nope.pth")


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "make",
    [
        lambda d, pth: _write_bytes(d / "half.pth", pth.read_bytes()[: pth.stat().st_size // 2]),
        lambda d, pth: _write_bytes(d / "text.pth", b"epoch: 1\nthis is not a checkpoint\n"),
        lambda d, pth: _write_bytes(d / "noise.pth", np.random.default_rng(0).bytes(4096)),
        lambda d, pth: _write_bytes(d / "list.pkl", pickle.dumps([1.0, 2.0, 3.0])),
        # torch's weights-only unpickler refuses it and advises weights_only=False.
        lambda d, pth: _write_bytes(d / "fraction.pth", pickle.dumps({"model": fractions.Fraction(1, 3)})),
    ],
    ids=["truncated", "text", "random-bytes", "pickled-list", "refused-by-weights-only"],
)
def test_unreadable_files(tmp_path, pth_path, make):
    path = make(tmp_path, pth_path)
    for read in (pytorch.read_pytorch_state_dict, loader.load_model):
        with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint$") as info:
            read(path)
        assert path.name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [[torch.zeros(3)], {}, {"epoch": 1, "lr": 0.1}, {"model": {"a": 1}}, {"state_dict": {"w": "x"}}],
    ids=["torch-list", "empty", "no-tensors", "model-without-tensors", "state_dict-without-tensors"],
)
def test_files_without_a_state_dict(tmp_path, payload):
    path = _torch_save(payload, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        loader.load_model(path)


def test_every_mismatch_is_reported_by_name_at_once(tmp_path, release_checkpoint):
    state_dict = dict(release_checkpoint["model"])
    del state_dict["head.1.bias"], state_dict["TTEblocks.1.op.Ds"]
    state_dict["extra.weight"] = torch.zeros(2)
    state_dict["STEblocks.0.op.bogus"] = torch.zeros(2)
    state_dict["STEblocks.1.op.dt_projs_bias"] = torch.zeros(4, 63)
    state_dict["Spatial_norm.weight"] = torch.zeros(31)
    path = _torch_save({"model": state_dict}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        loader.load_model(path)
    message = str(info.value)
    for name in ("head.1.bias", "TTEblocks.1.op.Ds", "extra.weight", "STEblocks.0.op.bogus"):
        assert name in message
    assert "STEblocks.1.op.dt_projs_bias: checkpoint (4, 63), model (4, 64)" in message
    assert "Spatial_norm.weight: checkpoint (31,), model (32,)" in message
    for kind in ("missing", "unexpected", "mis-shaped"):
        assert kind in message


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(dim=64), "dim"),
        (dict(depth=3, num_frames=81), "depth"),
        (dict(bogus=1), "bogus"),
        (dict(scan="nope"), "scan"),
    ],
    ids=["shape-field", "shape-fields", "unknown-option", "bad-option-value"],
)
def test_bad_options(pth_path, model_dir, options, match):
    for path in (pth_path, model_dir):
        with pytest.raises(ValueError, match=match):
            loader.load_model(path, **options)


def test_paths_that_are_no_model(tmp_path, model_dir):
    with pytest.raises(CheckpointError, match="neither"):
        loader.load_model(tmp_path)
    (tmp_path / model_dirs.CONFIG_FILE).write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a sasmamba-jax model config"):
        loader.load_model(tmp_path)
    (tmp_path / model_dirs.CONFIG_FILE).write_bytes((model_dir / model_dirs.CONFIG_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="no parameters"):
        loader.load_model(tmp_path)


# ---------------------------------------------------------------------------
# load_model outputs against the release


def test_load_model_matches_release_from_pth_and_directory(tiny_model, model_dir, reference):
    _assert_matches_release(tiny_model, reference)
    from_directory = loader.load_model(model_dir)
    assert from_directory.config == tiny_model.config
    _assert_same_params(model_dirs.params_of(from_directory), model_dirs.params_of(tiny_model))
    _assert_matches_release(from_directory, reference)


def test_load_model_with_options_matches_release(pth_path, model_dir, reference):
    options = dict(scan="chunked", stride_grad="exact", drop_path_rate=0.0)
    from_pth = loader.load_model(pth_path, **options)
    from_directory = loader.load_model(model_dir, **options)
    for model in (from_pth, from_directory):
        assert (model.config.scan, model.config.stride_grad, model.config.drop_path_rate) == (
            "chunked",
            "exact",
            0.0,
        )
    _assert_matches_release(from_pth, reference)
    _assert_matches_release(from_directory, reference)


# ---------------------------------------------------------------------------
# Command line


def test_cli_converts_and_checks(tmp_path, pth_path, data_dir, tiny_model, capsys):
    out_dir = tmp_path / "converted"
    reference_npz = str(data_dir / "official_tiny.npz")
    assert convert_cli.main([str(pth_path), str(out_dir), "--check", reference_npz]) == 0
    printed = capsys.readouterr().out
    assert "max abs error" in printed and "max rel error" in printed and "OK" in printed
    converted = loader.load_model(out_dir)
    assert converted.config == tiny_model.config
    _assert_same_params(model_dirs.params_of(converted), model_dirs.params_of(tiny_model))
    assert sorted(os.listdir(tmp_path)) == ["converted"]


def test_cli_check_fails_on_a_tampered_reference(tmp_path, pth_path, reference, capsys):
    tampered = tmp_path / "tampered.npz"
    y = reference["y"].copy()
    y[0, 3, 5, 1] += 0.01
    np.savez(tampered, x=reference["x"], y=y)
    assert convert_cli.main([str(pth_path), str(tmp_path / "out"), "--check", str(tampered)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_refuses_to_replace_without_overwrite(tmp_path, pth_path, capsys):
    out_dir = tmp_path / "existing"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    assert convert_cli.main([str(pth_path), str(out_dir)]) == 2
    assert "exists" in capsys.readouterr().err
    assert os.listdir(out_dir) == ["keep.txt"]
    assert (out_dir / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["existing"]

    assert convert_cli.main([str(pth_path), str(out_dir), "--overwrite"]) == 0
    assert sorted(os.listdir(out_dir)) == [model_dirs.CONFIG_FILE, model_dirs.PARAMS_DIR]
    assert sorted(os.listdir(tmp_path)) == ["existing"]


def test_cli_truncated_checkpoint_writes_nothing(tmp_path, pth_path, capsys):
    truncated = _write_bytes(tmp_path / "half.pth", pth_path.read_bytes()[:1000])
    assert convert_cli.main([str(truncated), str(tmp_path / "out")]) == 2
    assert "is not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["half.pth"]


def test_cli_missing_reference_writes_nothing(tmp_path, pth_path, capsys):
    missing = str(tmp_path / "no.npz")
    assert convert_cli.main([str(pth_path), str(tmp_path / "out"), "--check", missing]) == 2
    assert "reference file not found" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_cli_exit_code_and_stderr_of_the_real_command(tmp_path, pth_path):
    truncated = _write_bytes(tmp_path / "half.pth", pth_path.read_bytes()[: pth_path.stat().st_size // 2])
    out_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "sasmamba_jax.convert", str(truncated), str(out_dir)],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0] == f"sasmamba_jax.convert: error: {truncated} is not a readable PyTorch checkpoint"
    assert os.listdir(tmp_path) == ["half.pth"]


def test_cli_to_pytorch_writes_the_release_state_dict(tmp_path, model_dir, release_state_dict, capsys):
    new_pth = tmp_path / "new.pth"
    assert convert_cli.main(["--to-pytorch", str(model_dir), str(new_pth)]) == 0
    written = torch.load(new_pth, map_location="cpu", weights_only=True)
    assert list(written) == ["model"]
    _assert_same_state_dict({n: t.numpy() for n, t in written["model"].items()}, release_state_dict)
    assert os.listdir(tmp_path) == ["new.pth"]

    capsys.readouterr()
    assert convert_cli.main(["--to-pytorch", str(model_dir), str(new_pth)]) == 2
    assert "exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# save_model


def test_save_model_refuses_an_existing_directory(tmp_path, random_model):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileExistsError):
        model_dirs.save_model(random_model, tmp_path / "m")
    assert os.listdir(tmp_path / "m") == []


def test_save_model_refuses_to_replace_a_file(tmp_path, random_model):
    (tmp_path / "m").write_text("not a model")
    with pytest.raises(FileExistsError, match="not a directory"):
        model_dirs.save_model(random_model, tmp_path / "m", overwrite=True)
    assert (tmp_path / "m").read_text() == "not a model"


def test_outputs_get_the_permissions_of_plain_files(tmp_path, random_model):
    previous = os.umask(0o022)
    try:
        model_dirs.save_model(random_model, tmp_path / "m")
        pytorch.write_pytorch_checkpoint(
            model_dirs.export_pytorch_state_dict(random_model), tmp_path / "m.pth"
        )
    finally:
        os.umask(previous)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "m.pth").stat().st_mode & 0o777 == 0o644


def test_cli_to_pytorch_into_a_missing_folder_is_a_one_line_error(tmp_path, model_dir, capsys):
    destination = str(tmp_path / "no" / "such" / "x.pth")
    assert convert_cli.main(["--to-pytorch", str(model_dir), destination]) == 2
    assert capsys.readouterr().err.startswith("sasmamba_jax.convert: error: ")


def _boom(*args, **kwargs):
    raise RuntimeError("simulated crash")


@pytest.mark.parametrize("crash", ["orbax-save", "config-json"])
def test_crashed_overwrite_keeps_the_old_directory(tmp_path, monkeypatch, random_model, crash):
    old = random_model
    directory = tmp_path / "model"
    model_dirs.save_model(old, directory)
    config_bytes = (directory / model_dirs.CONFIG_FILE).read_bytes()

    if crash == "orbax-save":
        monkeypatch.setattr(model_dirs.ocp.StandardCheckpointer, "save", _boom)
    else:
        monkeypatch.setattr(model_dirs.json, "dump", _boom)
    new = model_dirs.build_model(old.config, _random_params(old.config, seed=1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        model_dirs.save_model(new, directory, overwrite=True)
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["model"]
    assert (directory / model_dirs.CONFIG_FILE).read_bytes() == config_bytes
    _assert_same_params(model_dirs.params_of(loader.load_model(directory)), model_dirs.params_of(old))

    model_dirs.save_model(new, directory, overwrite=True)
    assert os.listdir(tmp_path) == ["model"]
    _assert_same_params(model_dirs.params_of(loader.load_model(directory)), model_dirs.params_of(new))


# ---------------------------------------------------------------------------
# Without torch

NO_TORCH_SCRIPT = """
import sys

sys.modules["torch"] = None  # makes every `import torch` fail

import numpy as np

import sasmamba_jax
import sasmamba_jax.io.loader
import sasmamba_jax.io.pytorch
import sasmamba_jax.model.sasmamba
from sasmamba_jax.model.forward import predict

pth_path, model_dir, reference_npz = sys.argv[1:]
model = sasmamba_jax.io.loader.load_model(model_dir)
with np.load(reference_npz) as reference:
    error = np.max(np.abs(np.asarray(predict(model, reference["x"])) - reference["y"]))
print("max abs error:", error)
for read in (sasmamba_jax.io.pytorch.read_pytorch_state_dict, sasmamba_jax.io.loader.load_model):
    try:
        read(pth_path)
    except ImportError as e:
        print("ImportError:", e)
    else:
        raise SystemExit("read a .pth without torch")
assert sys.modules["torch"] is None
"""


def test_converted_model_runs_without_torch(pth_path, model_dir, data_dir):
    """The core package imports, loads a converted model and predicts with torch blocked."""
    command = [sys.executable, "-c", NO_TORCH_SCRIPT, str(pth_path), str(model_dir)]
    result = subprocess.run(
        [*command, str(data_dir / "official_tiny.npz")],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=REPO_ROOT,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert float(lines[0].removeprefix("max abs error:")) <= ATOL
    errors = [line for line in lines if line.startswith("ImportError:")]
    assert len(errors) == 2
    assert all("pip install" in line and "torch" in line for line in errors)
