"""Every entry point compiled for NVIDIA GPUs (and a TPU host) with neither, and `auto` by compute capability.

XLA's own GPU compiler runs here through the CUDA plugin (requirements-gpu-aot.txt;
``sasmamba_jax.targets``): Triton to PTX to cubin included, no GPU or driver.
The plugin registers only in a process whose backends are CPU only
(JAX_PLATFORMS=cpu before jax starts one, as tests/conftest.py sets it).
Without the plugin the tests skip, saying so.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_aot
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sasmamba_jax.configs import tiny

from sasmamba_jax import skeleton, targets
from sasmamba_jax.model import forward
from sasmamba_jax.model.sasmamba import SasMamba
from sasmamba_jax.ops.selective_scan import PRE_TRITON_GPU_BACKEND, resolve_backend, selective_scan
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import aot, memory, recipe

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRITON_CALL = "__gpu$xla.gpu.triton"
# The tiny recipe cut to what compiles in seconds, as tests/test_aot.py cuts it.
SMALL = {"num_frames": 9, "depth": 1}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins.xla_cuda12") is None,
    reason=f"the CUDA plugin is not installed ({targets.GPU_AOT_INSTALL})",
)


@pytest.fixture(scope="module")
def cuda_registered():
    if jax.config.jax_platforms != "cpu":
        pytest.skip("the CUDA plugin registers only where JAX_PLATFORMS=cpu is set before jax starts")


def _small_config():
    config = tiny.get_config()
    with config.unlocked():
        config.model.num_frames, config.model.depth = SMALL["num_frames"], SMALL["depth"]
    return recipe.with_memory_settings(config, False, 1)


def _custom_call_targets(compiled) -> set[str]:
    return set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))


# ---------------------------------------------------------------------------
# The cards


@pytest.mark.parametrize(
    "card, kind, capability",
    [
        ("a100", "NVIDIA A100-SXM4-40GB", (8, 0)),
        ("b200", "NVIDIA B200", (10, 0)),
        ("h100", "NVIDIA H100 80GB HBM3", (9, 0)),
        ("h200", "NVIDIA H200", (9, 0)),
        ("l4", "NVIDIA L4", (8, 9)),
        ("t4", "Tesla T4", (7, 5)),
        ("v100", "Tesla V100-SXM2-16GB", (7, 0)),
    ],
)
def test_every_card_is_a_compile_only_device_of_its_kind(cuda_registered, card, kind, capability):
    (device,) = targets.topology_devices(card)
    assert device.platform == "gpu" and device.device_kind == kind
    target = targets.target_of(device)
    assert (target.platform, target.compute_capability) == ("cuda", capability)
    assert target.supports_triton == (capability >= (8, 0))


def test_a_host_of_several_gpus(cuda_registered):
    devices = targets.topology_devices("h100:8")
    assert len(devices) == 8 and len({d.id for d in devices}) == 8


def test_gpu_memory_is_the_allocators_share_of_the_card(cuda_registered, monkeypatch):
    (device,) = targets.topology_devices("t4")
    # 15110 MiB: what a T4 reports (the figure's source is in its textproto).
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert memory.device_memory_bytes(device) == int(15843721216 * 0.75)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    assert memory.device_memory_bytes(device) == int(15843721216 * 0.5)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "1.5")
    with pytest.raises(targets.TargetError, match="XLA_PYTHON_CLIENT_MEM_FRACTION must be in"):
        memory.device_memory_bytes(device)


def test_unknown_gpu_names_are_named():
    with pytest.raises(targets.TargetError, match=r"unknown topology 'h800'; .* a GPU CARD\[:N\]"):
        targets.topology_devices("h800")
    with pytest.raises(targets.TargetError, match="unknown GPU 'h800'"):
        targets.gpu_target_config("h800")


# ---------------------------------------------------------------------------
# `auto` by compute capability


def _scan_inputs(mesh):
    b, length, k, e, n = 2, 16, 4, 8, 4
    # u, delta, A, B, C, D, delta_bias
    shapes = [(b, length, k, e)] * 2 + [(k, e, n)] + [(b, length, k, n)] * 2 + [(k, e)] * 2
    replicated = NamedSharding(mesh, PartitionSpec())
    return [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=replicated) for shape in shapes]


def _compiled_scan(devices, backend):
    mesh = Mesh(np.array(devices), ("data",))
    with jax.set_mesh(mesh), targets.persistent_cache_for(devices):
        scan = jax.jit(lambda *args: selective_scan(*args, backend=backend))
        return scan.lower(*_scan_inputs(mesh)).compile(targets.compiler_options(devices))


def test_auto_is_triton_on_h100_and_never_on_t4(cuda_registered):
    h100, t4 = targets.topology_devices("h100"), targets.topology_devices("t4")
    assert resolve_backend("auto", h100[0]) == "pallas"
    assert resolve_backend("auto", t4[0]) == PRE_TRITON_GPU_BACKEND != "pallas"
    assert TRITON_CALL in _custom_call_targets(_compiled_scan(h100, "auto"))
    # The XLA back end: no Triton call, which XLA would refuse for sm_75.
    assert TRITON_CALL not in _custom_call_targets(_compiled_scan(t4, "auto"))


def test_forced_pallas_on_a_t4_is_one_line_at_trace_time(cuda_registered):
    (t4,) = targets.topology_devices("t4")
    with pytest.raises(ValueError, match=r"^scan back end 'pallas' needs Triton.*Tesla T4 is 7\.5") as error:
        _compiled_scan([t4], "pallas")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="needs Triton"):
        resolve_backend("pallas", t4)


# ---------------------------------------------------------------------------
# Every entry point's program, for a TPU host, an H100 and a T4


def _train_step(config, mesh):
    """train.py's step and its abstract arguments."""
    return recipe.train_step, memory.abstract_train_step_args(config, mesh)


def _eval_forward(config, mesh):
    """eval.py's forward (the training state's model, test-time flip) on one clip per device."""
    state, _ = memory.abstract_train_step_args(config, mesh)
    graphdef = forward.eval_graphdef(state.graphdef, state.params)
    replicated = NamedSharding(mesh, PartitionSpec())

    def predict(params, x):
        return forward._predict_batch(graphdef, params, x, skeleton.FLIP_PERMUTATION, replicated)

    return predict, (state.params, _clips(config, mesh))


def _lift_forward(config, mesh):
    """The lifting forward (predict, lift): an eval-mode model's parameters alone, no flip."""
    model_cfg = recipe.model_config(config)
    model = nnx.eval_shape(lambda: SasMamba(model_cfg, rngs=nnx.Rngs(params=0)))
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=replicated), params)

    def predict(params, x):
        return forward._predict_batch(graphdef, params, x, None, replicated)

    return predict, (params, _clips(config, mesh))


def _clips(config, mesh):
    model_cfg = recipe.model_config(config)
    shape = (mesh.devices.size, model_cfg.num_frames, skeleton.NUM_JOINTS, model_cfg.in_chans)
    return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding.batch_sharding(mesh))


# Slow: compiles for compile-only devices cannot be cached, so every run would pay them.
@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e:2x2", "h100", "t4"])
def test_every_entry_point_compiles_for(cuda_registered, topology):
    config = _small_config()
    devices = targets.topology_devices(topology)
    mesh = sharding.make_mesh(config.mesh, devices)
    # The three programs as one, so each target costs one compile.
    programs, arguments = zip(*(entry(config, mesh) for entry in (_train_step, _eval_forward, _lift_forward)))

    def all_entry_points(arguments):
        return [program(*args) for program, args in zip(programs, arguments)]

    with jax.set_mesh(mesh), targets.persistent_cache_for(devices):
        compiled = jax.jit(all_entry_points).lower(arguments).compile(targets.compiler_options(devices))
    calls = _custom_call_targets(compiled)
    if resolve_backend("auto", devices[0]) == "pallas":
        kernel = "tpu_custom_call" if devices[0].platform == "tpu" else TRITON_CALL
        # The train step's forward and backward and both forwards (the Pallas
        # scan's calls, deduplicated by name, are at least its two kernels).
        assert kernel in calls
    else:
        assert TRITON_CALL not in calls
    assert memory.compiled_peak_bytes(compiled) < memory.device_memory_bytes(devices[0])


# ---------------------------------------------------------------------------
# The tool


def _run_aot(*args, tmp_path):
    # The tool sets its own platforms: JAX_PLATFORMS is left out to show it.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return test_aot._run_aot(*args, tmp_path=tmp_path, env=env)


@pytest.mark.slow
def test_the_tool_reports_a_t4_with_an_xla_scan(tmp_path):
    # The forward: the train step for a T4 is compiled above, and the tool's
    # train mode by tests/test_aot.py.
    overrides = [f"--config.model.{key}={value}" for key, value in SMALL.items()]
    result, report = _run_aot(
        "--config=configs/tiny.py", "--topology=t4", "--mode=forward", *overrides, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert list(report) == list(aot.JSON_KEYS)
    assert (report["topology"], report["chips"], report["device_kind"]) == ("t4", 1, "Tesla T4")
    assert report["scan"] == PRE_TRITON_GPU_BACKEND and report["fits"] is True
    assert report["hbm_bytes_per_chip"] == int(15843721216 * targets.gpu_memory_fraction())
    assert 0 < report["peak_bytes_per_chip"] < report["hbm_bytes_per_chip"]
    # One summary line, and nothing from the plugin's cuInit check.
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("forward step on t4 (1 x Tesla T4): fits, ")
    assert result.stderr == ""


def test_an_unknown_gpu_is_a_one_line_error(tmp_path):
    result, report = _run_aot("--config=configs/tiny.py", "--topology=h800:2", tmp_path=tmp_path)
    assert result.returncode == 2 and report is None
    assert result.stderr.startswith("sasmamba_jax.aot: error: unknown topology 'h800:2'")
    assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------------------
# The published model (slow: about a minute a compile, more on a loaded machine)


def _published_step_fits(card, scan, tmp_path):
    """The tool on the published training step for ``card``: it fits, with ``scan``; the JSON's path."""
    result, report = _run_aot("--config=configs/h36m_243.py", f"--topology={card}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert report["scan"] == scan and report["fits"] is True
    return tmp_path / "report.json"


@pytest.mark.slow
def test_the_published_training_step_fits_a_t4(tmp_path):
    _published_step_fits("t4", PRE_TRITON_GPU_BACKEND, tmp_path)


@pytest.mark.slow
def test_the_published_training_step_fits_an_h100_and_a_separate_compile_agrees(tmp_path):
    """The agreement check reads the tool's report rather than compiling the step a third time."""
    report_path = _published_step_fits("h100", "pallas", tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/aot_agreement.py",
            "--config=configs/h36m_243.py",
            "--topology=h100",
            f"--report={report_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=3600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    # Exit status 1 where the two peaks differ by more than 10%.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio" in result.stdout
