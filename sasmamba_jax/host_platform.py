"""Starts jax on the CPU, quietly, on a host with no TPU or GPU (run on ``import sasmamba_jax``).

The development install brings libtpu (``jax[tpu]``) and, for the deviceless
GPU compiles, the CUDA plugin (requirements-gpu-aot.txt). With
``JAX_PLATFORMS`` unset, jax's first backend start tries every installed
platform: on a host with neither accelerator the CUDA plugin prints a
traceback (its cuDNN / cuInit check fails) and libtpu prints errors about
TPU host bounds and worker hostnames, and then jax falls back to the CPU
anyway. Choosing the CPU up front gives the same devices without the noise.

It changes nothing where the user chose: ``JAX_PLATFORMS`` set (even empty),
or ``jax_platforms`` set with ``jax.config.update``, or jax's backends already
started. Where this host shows a TPU or a GPU (or the signs are unclear: not
Linux) jax picks as it always does. The compile-only TPU and GPU devices of
``sasmamba_jax.targets`` need no local backend of their kind; the GPU ones
even need the CPU-only setting (see that module), which the aot tool makes
itself.
"""

import glob
import os
import sys

# Google's PCI vendor id: a TPU chip is one of its PCI devices (jax's own
# check, jax._src.hardware_utils, reads the same files).
_GOOGLE_PCI_VENDOR = "0x1ae0"
# Google PCI devices that are no TPU: the gVNIC network card of Compute
# Engine VMs. Any other Google device counts as a TPU, so that a TPU
# generation newer than this list is never mistaken for a CPU-only host.
_GOOGLE_NON_TPU_DEVICES = frozenset({"0x0042"})
# Device files of an accelerator's driver: TPU v2-v4 (/dev/accelN), TPU v5e
# and later through VFIO (/dev/vfio/N; /dev/vfio/vfio alone is only the
# kernel module), NVIDIA (driver loaded; device nodes also in containers),
# WSL2's GPU and AMD's ROCm driver.
_ACCELERATOR_PATTERNS = (
    "dev/accel*",
    "dev/vfio/[0-9]*",
    "proc/driver/nvidia/version",
    "dev/nvidia0",
    "dev/nvidiactl",
    "dev/dxg",
    "dev/kfd",
)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip().lower()
    except OSError:
        return ""


def has_accelerator(root: str = "/") -> bool:
    """Whether this host shows a TPU or a GPU (``root``: where /sys, /dev and /proc are; tests move it)."""
    for pattern in _ACCELERATOR_PATTERNS:
        if glob.glob(os.path.join(root, pattern)):
            return True
    for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
        if _read(vendor) == _GOOGLE_PCI_VENDOR:
            device = _read(os.path.join(os.path.dirname(vendor), "device"))
            if device not in _GOOGLE_NON_TPU_DEVICES:
                return True
    return False


def use_cpu_without_accelerator(root: str = "/") -> bool:
    """Sets jax's platforms to "cpu" on a Linux host with no TPU or GPU, unless already chosen.

    Returns:
        Whether it set them.
    """
    if not sys.platform.startswith("linux") or "JAX_PLATFORMS" in os.environ:
        return False
    jax = sys.modules.get("jax")
    if jax is not None:
        # jax read JAX_PLATFORMS when it was imported: from now on only its
        # config counts, and only until a backend starts.
        from jax._src import xla_bridge

        if jax.config.jax_platforms or xla_bridge.backends_are_initialized():
            return False
    if has_accelerator(root):
        return False
    # The environment too, so that the processes this one starts (train.py's
    # children, the tests' subprocesses) start as quietly.
    os.environ["JAX_PLATFORMS"] = "cpu"
    if jax is not None:
        jax.config.update("jax_platforms", "cpu")
    return True
