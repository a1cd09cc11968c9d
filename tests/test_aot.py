"""The ahead-of-time compile tool on TPU topologies, the memory choice it shares with train.py, `auto`.

Every TPU compile here is deviceless (libtpu, no TPU): ``jax.experimental.topologies``.
The GPU targets have tests/test_gpu_targets.py.
"""

import json
import os
import pathlib
import subprocess
import sys

# Before libtpu loads (the first topology below): no TPU VM metadata server to
# ask, and no claim on the one-TPU-user lock other JAX processes may hold.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402
from sasmamba_jax.configs import tiny  # noqa: E402

from sasmamba_jax import targets  # noqa: E402
from sasmamba_jax.ops.selective_scan import (  # noqa: E402
    lowered_for_platforms,
    resolve_backend,
    selective_scan,
)
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import aot, loop, memory, recipe

GiB = 2**30
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The tiny recipe cut to what compiles for a TPU in seconds: the same step,
# fewer frames and one layer.
SMALL_OVERRIDES = ["--config.model.num_frames=9", "--config.model.depth=1"]


def _run_aot(*args, tmp_path, env=None):
    """The tool in a process of its own (``env``: default, this one's with JAX_PLATFORMS=cpu); its report."""
    json_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "sasmamba_jax.aot", *args, f"--json={json_path}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        # About 2 minutes a compile on 2 busy CPU cores; far more on a loaded machine.
        timeout=1800,
        env={**os.environ, "JAX_PLATFORMS": "cpu"} if env is None else env,
    )
    report = json.loads(json_path.read_text()) if json_path.exists() else None
    return result, report


@pytest.fixture(scope="module")
def v5e_1x1():
    return targets.topology_devices("v5e:1x1")


# ---------------------------------------------------------------------------
# The tool


# Slow: compiles for compile-only devices cannot be cached, so every run would pay them.
@pytest.mark.slow
def test_tiny_training_step_fits_one_v5e_chip(tmp_path):
    result, report = _run_aot(
        "--config=configs/tiny.py", "--topology=v5e:1x1", *SMALL_OVERRIDES, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert list(report) == list(aot.JSON_KEYS)
    assert report["topology"] == "v5e:1x1" and report["chips"] == 1
    assert report["device_kind"] == "TPU v5 lite"
    assert report["hbm_bytes_per_chip"] == memory.HBM_BYTES_BY_DEVICE_KIND["TPU v5 lite"]
    assert report["fits"] is True
    assert report["scan"] == resolve_backend("auto", "tpu")
    # Nothing to choose: it fits as configured.
    assert report["remat"] is False and report["num_microbatches"] == 1
    # At least the parameters, AdamW's two moments and the new parameters' copy.
    config = tiny.get_config()
    with config.unlocked():
        config.model.num_frames, config.model.depth = 9, 1
    params = jax.eval_shape(lambda: recipe.create_model(config))
    param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    assert 3 * param_bytes < report["peak_bytes_per_chip"] < report["hbm_bytes_per_chip"]
    assert report["compile_s"] > 0
    # One summary line; libtpu's start-up warnings held back.
    assert result.stdout.count("\n") == 1 and "fits, " in result.stdout
    assert result.stderr == ""


# Slow: a second tool compile; the out-of-memory report itself is checked below without one.
@pytest.mark.slow
def test_an_over_large_batch_reports_that_it_does_not_fit(tmp_path):
    result, report = _run_aot(
        "--config=configs/tiny.py",
        "--topology=v5e:1x1",
        *SMALL_OVERRIDES,
        "--config.batch_size=65536",
        "--config.model.remat=False",
        "--config.num_microbatches=1",
        tmp_path=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert report["fits"] is False
    assert report["peak_bytes_per_chip"] > report["hbm_bytes_per_chip"]
    # Explicit settings are reported as given, not replaced.
    assert report["remat"] is False and report["num_microbatches"] == 1
    assert "does NOT fit" in result.stdout


def test_an_unknown_topology_is_a_one_line_error(tmp_path):
    result, report = _run_aot("--config=configs/tiny.py", "--topology=v9z:1x1", tmp_path=tmp_path)
    assert result.returncode == 2
    assert report is None
    assert result.stderr.startswith("sasmamba_jax.aot: error: unknown topology 'v9z:1x1'")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "topology, mesh, message",
    [
        ("v5e", {}, r"unknown topology 'v5e'; expected a TPU GENERATION:CHIPS"),
        ("v5e:2x2", {"fsdp": 3}, r"mesh: 4 devices cannot be split into mesh axes \[-1, 3\]"),
        ("v5e:1x1", {"data": 2}, r"mesh: mesh data=2 x fsdp=1 needs 2 devices, 1 exist"),
    ],
)
def test_bad_topologies_and_meshes_are_named(topology, mesh, message):
    config = tiny.get_config()
    config.mesh.update(mesh)
    with pytest.raises(ValueError, match=message):
        aot.compile_for_topology(config, topology)


def test_missing_libtpu_is_named(monkeypatch):
    real_find_spec = targets.importlib.util.find_spec
    monkeypatch.setattr(
        targets.importlib.util, "find_spec", lambda name: None if name == "libtpu" else real_find_spec(name)
    )
    with pytest.raises(targets.TargetError, match=r'needs libtpu: pip install "jax\[tpu\]'):
        targets.topology_devices("v5e:1x1")


@pytest.mark.parametrize(
    "topology, chips, kind",
    [
        ("v5e:1x1", 1, "TPU v5 lite"),
        ("v5e:2x2", 4, "TPU v5 lite"),
        ("v5p:2x2x1", 4, "TPU v5"),
        ("v6e:2x2", 4, "TPU v6 lite"),
    ],
)
def test_hbm_table_is_what_the_compiler_allows(topology, chips, kind):
    devices = targets.topology_devices(topology)
    assert len(devices) == chips and devices[0].device_kind == kind
    replicated = NamedSharding(Mesh(np.array(devices[:1]), ("x",)), PartitionSpec())
    # Its temporaries (298 GB) exceed every chip's HBM.
    too_big = jax.ShapeDtypeStruct((200_000, 200_000), jnp.float32, sharding=replicated)
    with pytest.raises(jax.errors.JaxRuntimeError) as error:
        jax.jit(lambda x: jnp.sin(x) @ x.T).lower(too_big).compile()
    _, available = memory.required_bytes(error.value)
    # The compiler prints GiB with two decimals.
    assert abs(available - memory.device_memory_bytes(devices[0])) <= 0.005 * GiB


@pytest.mark.slow  # a compile for a compile-only device
def test_forward_mode_compiles_the_evaluation_forward(v5e_1x1):
    config = tiny.get_config()
    with config.unlocked():
        config.model.num_frames, config.model.depth = 9, 1
    report = aot.compile_for_topology(config, "v5e:1x1", mode="forward", batch=8)
    assert report.fits and report.chips == 1
    x_bytes = 8 * 9 * 17 * config.model.in_chans * 4
    assert report.peak_bytes_per_chip > x_bytes


# ---------------------------------------------------------------------------
# Reading memory


def test_required_bytes_reads_both_out_of_memory_messages():
    temporaries = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(36.52G) exceeds available HBM (15.75G)."
    )
    used = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.50G of 15.75G hbm"
    )
    assert memory.required_bytes(temporaries) == (int(36.52 * GiB), int(15.75 * GiB))
    assert memory.required_bytes(used) == (int(20.5 * GiB), int(15.75 * GiB))
    assert memory.required_bytes(RuntimeError("INVALID_ARGUMENT: Used 1G of 2G hbm")) is None


def test_per_device_bytes_counts_one_shard():
    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    x = jax.ShapeDtypeStruct((4, 6), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
    assert memory.per_device_bytes({"a": x, "b": [x]}) == 2 * 4 * 6 * 4


def test_cpu_devices_have_no_budget():
    assert memory.device_memory_bytes(jax.devices("cpu")[0]) is None


# ---------------------------------------------------------------------------
# The remat / microbatch choice


def test_candidates_try_remat_before_microbatches():
    assert memory.memory_candidates(None, None, 16, 2) == [
        (False, 1),
        (True, 1),
        (True, 2),
        (True, 4),
        (True, 8),
    ]
    assert memory.memory_candidates(False, None, 8, 1) == [(False, n) for n in (1, 2, 4, 8)]
    assert memory.memory_candidates(None, 4, 16, 1) == [(False, 4), (True, 4)]
    assert memory.memory_candidates(True, 2, 16, 1) == [(True, 2)]


def _fake_peaks(remat, num_microbatches):
    """A step whose activations (8 GB, 2 GB with remat) shrink with microbatches; 1 GB of state."""
    return int(1e9 + (2e9 if remat else 8e9) / num_microbatches)


@pytest.mark.parametrize(
    "budget, expected",
    [(10e9, (False, 1)), (5e9, (True, 1)), (1.6e9, (True, 4)), (1.13e9, (True, 16))],
)
def test_the_first_setting_that_fits_is_chosen(budget, expected):
    choice = memory.choose_memory_settings(
        memory.memory_candidates(None, None, 16, 1), _fake_peaks, int(budget)
    )
    assert (choice.remat, choice.num_microbatches) == expected
    assert choice.fits and choice.peak_bytes == _fake_peaks(*expected) <= budget
    assert choice.tried[-1] == (expected, choice.peak_bytes)


def test_nothing_fitting_is_reported_not_hidden():
    candidates = memory.memory_candidates(None, None, 4, 1)
    choice = memory.choose_memory_settings(candidates, _fake_peaks, 10**8)
    assert not choice.fits
    assert (choice.remat, choice.num_microbatches) == (True, 4)
    assert "does not fit" in memory.describe_choice(choice, 10**8)


def _peaks_of_configs(calls):
    def peak_bytes(config):
        calls.append((config.model.remat, config.num_microbatches))
        return _fake_peaks(config.model.remat, config.num_microbatches)

    return peak_bytes


def _resolve(config, budget_bytes, calls):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    return memory.resolve_memory_settings(config, mesh, budget_bytes, _peaks_of_configs(calls))


def test_unset_keys_are_chosen_and_written_into_the_config():
    config = tiny.get_config()
    with config.unlocked():
        config.batch_size = 16
    calls = []
    resolved, choice = _resolve(config, int(1.6e9), calls)
    assert calls == [(False, 1), (True, 1), (True, 2), (True, 4)]
    assert (resolved.model.remat, resolved.num_microbatches) == (True, 4)
    assert (choice.remat, choice.num_microbatches) == (True, 4)
    assert "chose remat=True, num_microbatches=4" in memory.describe_choice(choice, int(1.6e9))
    # The caller's config is left as it was.
    assert config.model.remat is None and config.num_microbatches is None


def test_explicit_settings_are_never_overridden():
    config = tiny.get_config()
    with config.unlocked():
        config.batch_size = 16
        config.model.remat = False
    calls = []
    resolved, choice = _resolve(config, int(1.6e9), calls)
    assert resolved.model.remat is False and resolved.num_microbatches == 16
    assert all(remat is False for remat, _ in calls)
    with config.unlocked():
        config.num_microbatches = 1
    calls = []
    resolved, choice = _resolve(config, int(1.6e9), calls)
    assert calls == [] and choice is None
    assert (resolved.model.remat, resolved.num_microbatches) == (False, 1)


def test_without_a_budget_unset_keys_take_the_defaults_uncompiled():
    calls = []
    resolved, choice = _resolve(tiny.get_config(), None, calls)
    assert calls == [] and choice is None
    assert (resolved.model.remat, resolved.num_microbatches) == (False, 1)


@pytest.mark.slow  # a short training run: minutes on a busy machine
def test_train_and_evaluate_logs_and_saves_the_choice(tmp_path, monkeypatch, capsys):
    config = tiny.get_config()
    with config.unlocked():
        config.model.num_frames, config.model.depth = 9, 1
        config.max_steps = 1
        config.eval.flip = False
    # A CPU has no budget; pretend it is a chip on which only remat fits.
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: int(5e9))
    monkeypatch.setattr(
        memory, "train_step_peak_bytes", lambda c, mesh: _fake_peaks(c.model.remat, c.num_microbatches)
    )
    loop.train_and_evaluate(config, str(tmp_path))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("memory:")]
    assert lines == [
        "memory: chose remat=True, num_microbatches=1: the training step needs 3.00 of 5.00 GB per chip "
        "(remat=False, num_microbatches=1 would need 9.00 GB)"
    ]
    saved = json.loads(next(tmp_path.glob("checkpoints/latest/*/config/metadata")).read_text())
    assert saved["model"]["remat"] is True and saved["num_microbatches"] == 1


# ---------------------------------------------------------------------------
# `auto` decided by the devices compiled for


def _scan_operands(shardings=None):
    batch, length, k, e, n = 2, 16, 4, 8, 4
    # u, delta, A, B, C, D, delta_bias
    shapes = [(batch, length, k, e)] * 2 + [(k, e, n)] + [(batch, length, k, n)] * 2 + [(k, e)] * 2
    return [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=shardings) for shape in shapes]


def _loops_and_kernels(lowered) -> tuple[int, int]:
    """(while loops, TPU kernel calls) in a lowered program: sequential is a loop, Pallas a kernel."""
    text = lowered.as_text()
    return text.count("stablehlo.while"), text.count("tpu_custom_call")


def _lowered(backend, operands):
    return jax.jit(lambda *args: selective_scan(*args, backend=backend)).lower(*operands)


def test_auto_is_decided_by_the_mesh_in_context(v5e_1x1):
    tpu_mesh = Mesh(np.array(v5e_1x1), ("x",))
    on_tpu = _scan_operands(NamedSharding(tpu_mesh, PartitionSpec()))
    on_cpu = _scan_operands()
    assert (resolve_backend("auto", "cpu"), resolve_backend("auto", "tpu")) == ("sequential", "pallas")
    assert resolve_backend("auto", v5e_1x1[0]) == "pallas" and resolve_backend("auto") == "sequential"
    cpu_auto = _loops_and_kernels(_lowered("auto", on_cpu))
    with jax.set_mesh(tpu_mesh):
        assert resolve_backend("auto") == "pallas"
        tpu_auto = _loops_and_kernels(_lowered("auto", on_tpu))
        tpu_pallas = _loops_and_kernels(_lowered("pallas", on_tpu))
    assert cpu_auto == _loops_and_kernels(_lowered("sequential", on_cpu))
    assert tpu_auto == tpu_pallas
    loops, kernels = cpu_auto
    assert loops > 0 and kernels == 0
    loops, kernels = tpu_auto
    assert loops == 0 and kernels > 0


def test_a_program_lowered_for_several_platforms_gets_each_platforms_back_end():
    def exported_module(backend, platforms):
        scan = jax.jit(lambda *args: selective_scan(*args, backend=backend))
        return jax.export.export(scan, platforms=platforms)(*_scan_operands()).mlir_module()

    with lowered_for_platforms(("cpu", "cuda")):
        both = exported_module("auto", ("cpu", "cuda"))
    cpu_loops = exported_module("sequential", ("cpu",)).count("stablehlo.while")
    cuda_loops = exported_module("chunked", ("cuda",)).count("stablehlo.while")
    # One branch per platform: the sequential loop for CPU, and for CUDA the
    # chunked scan, which every NVIDIA GPU compiles (no Triton call).
    assert both.count("stablehlo.while") == cpu_loops + cuda_loops
    assert "triton" not in both
