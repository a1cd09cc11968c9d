"""The hardware a program is compiled for: compile-only devices of a TPU topology or of a host of NVIDIA GPUs.

    devices = targets.topology_devices("v5e:2x2")   # libtpu: 4 TPU v5e chips
    devices = targets.topology_devices("h100:8")    # the CUDA plugin: one host of 8 H100s
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    # jit(...).lower(...) with shardings on the mesh, then .compile(): XLA's own
    # compiler for that hardware, run on this CPU; nothing executes.

A GPU target is one of ``GPU_CARDS``, optionally ``:N`` GPUs on one host. Each
card's figures (compute capability, SMs, memory, caches) are data in this
package, ``gpu_targets/<card>.textproto`` (an XLA GpuTargetConfig, the source
of each figure named in it). Compiling for a GPU needs the CUDA plugin and
ptxas (``pip install -r requirements-gpu-aot.txt``, no GPU or driver), and the
process's own backends must be CPU only (``JAX_PLATFORMS=cpu``, or
``jax.config.update("jax_platforms", "cpu")`` before jax first starts a
backend): the plugin's start-up check calls cuInit, which fails without a
driver, and the plugin is then not registered.
"""

import functools
import importlib.resources
import importlib.util
import os
import re

import jax

GPU_CARDS = ("a100", "b200", "h100", "h200", "l4", "t4", "v100")
# What JAX's GPU allocator lets one process use unless
# XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise (JAX's "GPU memory allocation" notes).
DEFAULT_GPU_MEMORY_FRACTION = 0.75
# XLA accepts Triton kernels (Pallas on GPUs) from this compute capability up;
# below it the compile fails with FAILED_PRECONDITION.
TRITON_MIN_COMPUTE_CAPABILITY = (8, 0)
_GPU_TOPOLOGY = re.compile(r"^(?P<card>[a-z]\w*)(:(?P<count>\d+))?$")
# A TPU topology name as libtpu takes it: generation, then chips per axis.
_TPU_TOPOLOGY = re.compile(r"^v\d+[a-z]*:\d+(x\d+){1,2}$")
_CUDA_PLUGIN = "jax_plugins.xla_cuda12"
GPU_AOT_INSTALL = "pip install -r requirements-gpu-aot.txt"


class TargetError(ValueError):
    """A topology or installation that cannot be compiled for."""


def topology_devices(topology: str) -> list[jax.Device]:
    """The compile-only devices of a TPU topology ("v5e:2x2") or a host of NVIDIA GPUs ("h100", "t4:4").

    Raises:
        TargetError: an unknown name, or libtpu / the CUDA plugin missing.
    """
    match = _GPU_TOPOLOGY.match(topology)
    if match and match["card"] in GPU_CARDS:
        count = int(match["count"] or 1)
        if count < 1:
            raise TargetError(f"topology {topology!r}: at least one GPU")
        return gpu_devices(match["card"], count)
    if _TPU_TOPOLOGY.match(topology):
        return tpu_devices(topology)
    raise TargetError(
        f"unknown topology {topology!r}; expected a TPU GENERATION:CHIPS (e.g. v5e:1x1, v5p:2x2x1) "
        f"or a GPU CARD[:N] with CARD one of {', '.join(GPU_CARDS)} (e.g. h100, h100:8)"
    )


def tpu_devices(topology: str) -> list[jax.Device]:
    """The compile-only chips of a TPU topology, e.g. "v5e:1x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2"."""
    if importlib.util.find_spec("libtpu") is None:
        raise TargetError('compiling for a TPU needs libtpu: pip install "jax[tpu]==0.10.2"')
    # Where libtpu is loaded for the first time: it reads these then. No
    # metadata server to ask (this is not a TPU VM), and no claim on the
    # machine's one-TPU-user lock, which other JAX processes may hold.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        # One chip per host: the per-chip program is the same however the
        # chips are grouped into hosts, and every slice shape divides by it.
        description = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology,
            chip_config_name="default",
            chips_per_host_bounds=(1, 1, 1),
            num_slices=1,
        )
    except jax.errors.JaxRuntimeError as e:
        raise TargetError(f"unknown topology {topology!r}: {str(e).splitlines()[0]}") from None
    return list(description.devices)


def gpu_devices(card: str, count: int = 1) -> list[jax.Device]:
    """``count`` compile-only GPUs of kind ``card`` (one of ``GPU_CARDS``) on one host."""
    config = gpu_target_config(card)
    if importlib.util.find_spec(_CUDA_PLUGIN) is None:
        raise TargetError(f"compiling for a GPU needs the CUDA plugin and ptxas: {GPU_AOT_INSTALL}")
    from jax.experimental import topologies

    try:
        # Slices x hosts x GPUs per host.
        description = topologies.get_topology_desc(
            platform="cuda", target_config=config, topology=f"1x1x{count}"
        )
    except NotImplementedError:
        raise TargetError(
            "the CUDA plugin is installed but not registered: this process started jax's backends "
            "before JAX_PLATFORMS=cpu was set, and the plugin's cuInit check failed"
        ) from None
    return list(description.devices)


@functools.cache
def gpu_target_config(card: str) -> str:
    """The GpuTargetConfig text proto of ``card`` (one of ``GPU_CARDS``), as get_topology_desc takes it."""
    if card not in GPU_CARDS:
        raise TargetError(f"unknown GPU {card!r}; known: {', '.join(GPU_CARDS)}")
    return importlib.resources.files("sasmamba_jax").joinpath(f"gpu_targets/{card}.textproto").read_text()


@functools.cache
def _card_memory_by_device_kind() -> dict[str, int]:
    memory = {}
    for card in GPU_CARDS:
        config = gpu_target_config(card)
        name = re.search(r'^device_description_str: "(.*)"$', config, re.MULTILINE)[1]
        memory[name] = int(re.search(r"device_memory_size: (\d+)", config)[1])
    return memory


def gpu_memory_fraction() -> float:
    """The share of a GPU's memory JAX's allocator takes: XLA_PYTHON_CLIENT_MEM_FRACTION, else 0.75."""
    text = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if text is None:
        return DEFAULT_GPU_MEMORY_FRACTION
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise TargetError(f"XLA_PYTHON_CLIENT_MEM_FRACTION must be in (0, 1], got {text!r}")
    return fraction


def gpu_memory_bytes(device_kind: str) -> int | None:
    """Memory one process can use of a GPU of this kind (the card's memory x ``gpu_memory_fraction``).

    None for a kind not in ``GPU_CARDS``.
    """
    card_bytes = _card_memory_by_device_kind().get(device_kind)
    return None if card_bytes is None else int(card_bytes * gpu_memory_fraction())


def compute_capability(device: jax.Device) -> tuple[int, int] | None:
    """(major, minor) of an NVIDIA GPU, real or compile-only; None for any other device."""
    # An AMD GPU's platform is "gpu" too; its compute_capability is an
    # architecture name (e.g. "gfx90a").
    text = str(getattr(device, "compute_capability", "")) if device.platform == "gpu" else ""
    match = re.match(r"^(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def supports_triton(device: jax.Device) -> bool:
    """Whether XLA compiles Triton kernels (Pallas on GPUs) for this device."""
    capability = compute_capability(device)
    return capability is not None and capability >= TRITON_MIN_COMPUTE_CAPABILITY
