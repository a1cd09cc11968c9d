"""On a host with no TPU or GPU, jax starts on the CPU without libtpu's or the CUDA plugin's errors.

The development install brings both (jax[tpu], requirements-gpu-aot.txt);
``import sasmamba_jax`` picks the CPU where this host shows neither
accelerator (``sasmamba_jax.host_platform``). The subprocess checks start
from the plain environment a user has, without this suite's JAX_PLATFORMS=cpu
(tests/conftest.py). The ``--help`` of train.py, eval.py and the aot tool
starts the same way in test_command_lines.py, which checks it is quiet too.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from sasmamba_jax import host_platform

REPO = pathlib.Path(__file__).resolve().parents[1]
# What a start-up message of libtpu or the CUDA plugin contains (the plugin's
# failed cuDNN / cuInit check, libtpu's host bounds and worker hostnames).
NOISE = ("libtpu", "tpu", "cuinit", "cuda", "cudnn", "plugin")
# This suite's own settings for jax and libtpu, left out to start as a user does.
SUITE_SETTINGS = ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY", "ALLOW_MULTIPLE_LIBTPU_LOAD")

needs_cpu_only_host = pytest.mark.skipif(
    host_platform.has_accelerator(), reason="this host has a TPU or a GPU: jax may start it"
)


def _run(command: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in SUITE_SETTINGS}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def noise_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` from libtpu or the CUDA plugin."""
    return [line for line in stderr.splitlines() if any(word in line.lower() for word in NOISE)]


@needs_cpu_only_host
@pytest.mark.parametrize("order", ["sasmamba_jax, jax", "jax, sasmamba_jax"])
def test_import_starts_jax_on_the_cpu_quietly(tmp_path, order):
    # jax imported first: its config, not the environment, is what counts then.
    code = f"import {order}; print(jax.config.jax_platforms, [d.platform for d in jax.devices()])"
    result = _run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cpu", "['cpu']"]
    assert not noise_lines(result.stderr), result.stderr


def _touch(path: pathlib.Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _pci_device(root: pathlib.Path, slot: str, vendor: str, device: str) -> None:
    _touch(root / "sys/bus/pci/devices" / slot / "vendor", vendor + "\n")
    _touch(root / "sys/bus/pci/devices" / slot / "device", device + "\n")


def test_no_accelerator_on_a_bare_host(tmp_path):
    _pci_device(tmp_path, "0000:00:03.0", "0x1af4", "0x1000")  # virtio
    _pci_device(tmp_path, "0000:00:04.0", "0x1ae0", "0x0042")  # Google's gVNIC: no TPU
    _touch(tmp_path / "dev/vfio/vfio")  # the VFIO module alone
    assert not host_platform.has_accelerator(str(tmp_path))


@pytest.mark.parametrize(
    "sign",
    [
        "pci:0x0063",  # TPU v5e
        "pci:0x00ff",  # a Google device this module does not know: taken as a TPU
        "dev/accel0",  # TPU v2-v4
        "dev/vfio/0",  # TPU v5e and later
        "proc/driver/nvidia/version",
        "dev/nvidia0",
        "dev/nvidiactl",
        "dev/kfd",  # AMD
    ],
)
def test_accelerator_signs(tmp_path, sign):
    if sign.startswith("pci:"):
        _pci_device(tmp_path, "0000:00:05.0", "0x1ae0", sign.removeprefix("pci:"))
    else:
        _touch(tmp_path / sign)
    assert host_platform.has_accelerator(str(tmp_path))


@pytest.fixture
def jax_not_imported(monkeypatch):
    """As if jax were not imported yet (the environment is then what jax will read)."""
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)


def test_bare_host_gets_the_cpu(tmp_path, jax_not_imported):
    assert host_platform.use_cpu_without_accelerator(str(tmp_path))
    assert os.environ["JAX_PLATFORMS"] == "cpu"


def test_accelerator_host_is_left_alone(tmp_path, jax_not_imported):
    _touch(tmp_path / "dev/nvidia0")
    assert not host_platform.use_cpu_without_accelerator(str(tmp_path))
    assert "JAX_PLATFORMS" not in os.environ


@pytest.mark.parametrize("chosen", ["", "tpu", "cuda,cpu"])
def test_users_choice_is_kept(tmp_path, jax_not_imported, monkeypatch, chosen):
    monkeypatch.setenv("JAX_PLATFORMS", chosen)
    assert not host_platform.use_cpu_without_accelerator(str(tmp_path))
    assert os.environ["JAX_PLATFORMS"] == chosen


def test_other_systems_are_left_alone(tmp_path, jax_not_imported, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not host_platform.use_cpu_without_accelerator(str(tmp_path))
    assert "JAX_PLATFORMS" not in os.environ


def test_started_jax_is_left_alone(tmp_path, monkeypatch):
    # Its platforms are fixed once a backend has started (and this process's
    # jax holds the suite's JAX_PLATFORMS=cpu in its config besides).
    import jax

    jax.devices()
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert not host_platform.use_cpu_without_accelerator(str(tmp_path))
    assert "JAX_PLATFORMS" not in os.environ
