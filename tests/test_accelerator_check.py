"""benchmarks/accelerator_check.py: its --quick run on CPU, and parity checks that can fail.

The script is meant for the first GPU or TPU at hand; here it runs at tiny
sizes on two fake CPU devices (the training step is split over both): in the
default run with the XLA back ends that compile fastest, with every default
back end as a slow test. Its parity checks are shown to compare against the
release's fixture by failing on a perturbed copy of it.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import pytest

from sasmamba_jax import targets
from sasmamba_jax.ops.selective_scan import PRE_TRITON_GPU_BACKEND

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator_check.py"
MODES = ("forward", "forward+backward")
LABELS = {
    "sequential": "sequential",
    "associative": "associative",
    "chunked": "chunked",
    "pallas": "pallas (interpret)",
}


def _quick_run(directory, scan_backends, train_backends):
    """A --quick run on two fake CPU devices: (output, JSON report, markdown)."""
    json_path, markdown_path = directory / "check.json", directory / "check.md"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
        "PYTHONPATH": str(REPO),
    }
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        f"--scan-backends={','.join(scan_backends)}",
        f"--train-backends={','.join(train_backends)}",
        f"--json={json_path}",
        f"--markdown={markdown_path}",
    ]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output, json.loads(json_path.read_text()), markdown_path.read_text()


def _check_quick_run(output, report, table, scan_backends, train_backends):
    """Every expected record and row is there, parity passed and every timing ran."""
    assert report["platform"] == "cpu" and report["devices"] == 2 and report["quick"]
    assert report["jax_version"] and report["device_kind"]
    records = report["records"]

    parity = [(r["check"], r["backend"]) for r in records if r["step"] == "parity"]
    # "auto" runs the sequential scan on CPU.
    assert parity == [("scan", "sequential"), ("forward", "sequential"), ("gradient", "sequential")]
    for record in records:
        if record["step"] == "parity":
            assert record["passed"] and record["max_abs_error"] <= record["tolerance"], record
            assert record["matmul_precision"] == "highest"

    scans = [(r["backend"], r["mode"]) for r in records if r["step"] == "scan"]
    assert scans == [(b, m) for b in scan_backends for m in MODES]
    trains = [r for r in records if r["step"] == "train"]
    assert [r["backend"] for r in trains] == list(train_backends)
    assert all(r["devices"] == 2 for r in trains)
    for record in records:
        assert record["device_kind"] == report["device_kind"]
        assert record["jax_version"] == report["jax_version"]
        if record["step"] != "parity":
            assert "error" not in record, record
            assert 0 < record["min_s"] <= record["median_s"] <= record["max_s"] and record["compile_s"] > 0
            assert record["time_vs_sequential"] > 0

    parity_table, scan_table, train_table = _tables(table)
    assert [row[:2] for row in parity_table] == [[c, b] for c, b in parity]
    assert all(row[-1] == "ok" for row in parity_table)
    assert [row[:2] for row in scan_table] == [[m, LABELS[b]] for b, m in scans]
    assert [row[:2] for row in train_table] == [[LABELS[r["backend"]], "2"] for r in trains]
    for step in ("parity", "scan", "train"):
        assert f"== {step} (budget" in output
    assert "where the time went:" in output


@pytest.mark.slow  # model gradients and training steps compiled in a child process: a minute
def test_quick_run_with_every_default_back_end(tmp_path):
    """Every row is written and parity passes, the Pallas rows too: the scan's speed-up lines
    and the Pallas training step under the mesh."""
    scan_backends = ("sequential", "associative", "chunked", "pallas")
    train_backends = ("pallas", "sequential", "chunked")
    output, report, table = _quick_run(tmp_path, scan_backends, train_backends)
    _check_quick_run(output, report, table, scan_backends, train_backends)
    for mode in MODES:
        assert f"- scan {mode}: the fastest XLA back end (" in table


def _tables(markdown):
    """The body rows of each markdown table, in order, as lists of cells."""
    tables = []
    for block in markdown.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            tables.append([[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]])
    return tables


@pytest.fixture(scope="module")
def check_module(data_dir):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import accelerator_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return accelerator_check, accelerator_check.load_fixture(data_dir)


def _perturbed(fixture, key):
    """The fixture with one recorded array moved by far more than any tolerance."""
    changed = dict(fixture)
    changed[key] = fixture[key] + 1e-3
    return changed


@pytest.mark.parametrize(
    "check, key",
    [
        ("scan", "forward/scan.STEblocks.0.y"),
        ("forward", "forward/y"),
        pytest.param("gradient", "step/grad/STEblocks.0.op.A_logs", marks=pytest.mark.slow),
    ],
)
def test_parity_fails_against_a_perturbed_fixture(check_module, check, key):
    module, fixture = check_module
    result = module.PARITY_CHECKS[check](_perturbed(fixture, key), "sequential")
    assert not result["passed"] and result["max_abs_error"] > 5e-4, result


@pytest.mark.parametrize(
    "target, expected",
    [
        ("cpu", ["sequential"]),
        ("v5e:1x1", ["pallas"]),
        ("h100", ["pallas", PRE_TRITON_GPU_BACKEND]),
        ("t4", [PRE_TRITON_GPU_BACKEND]),
    ],
)
def test_parity_covers_what_auto_picks_on_each_platform(check_module, target, expected):
    """On an NVIDIA GPU that compiles Triton, the pre-Ampere fallback is checked too."""
    module, _ = check_module
    if target == "cpu":
        device = jax.devices("cpu")[0]
    else:
        if target in ("h100", "t4") and importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
            pytest.skip(f"the CUDA plugin is not installed ({targets.GPU_AOT_INSTALL})")
        (device,) = targets.topology_devices(target)
    assert module.auto_backends(device) == expected


def test_a_slow_call_is_timed_fewer_times(check_module):
    """The warm-up call decides how many timed calls fit the cap; never fewer than one."""
    module, _ = check_module

    def call(seconds):
        time.sleep(seconds)
        return seconds

    fast = module.time_compiled(call, [0.001], repeats=3, cap_s=10.0)
    slow = module.time_compiled(call, [0.05], repeats=3, cap_s=0.01)
    assert fast["repeats"] == 3 and slow["repeats"] == 1
    assert slow["median_s"] >= 0.05 and fast["min_s"] <= fast["median_s"] <= fast["max_s"]


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--only=parity,bench",
            "--only: expected a comma-separated list of parity, scan, train, got 'parity,bench'",
        ),
        (
            "--scan-backends=fast",
            "--scan-backends: expected a comma-separated list of sequential, associative",
        ),
        ("--repeats=0", "--repeats must be at least 1, got 0"),
    ],
)
def test_bad_flags_are_one_line_and_status_2(check_module, capsys, flag, message):
    module, _ = check_module
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args([flag, "--json=x.json", "--markdown=x.md"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
