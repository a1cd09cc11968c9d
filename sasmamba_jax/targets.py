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

import contextlib
import dataclasses
import functools
import importlib.resources
import importlib.util
import os
import re

import jax
from jax.experimental.compilation_cache import compilation_cache

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


@dataclasses.dataclass(frozen=True)
class Target:
    """What a program is compiled for, as far as choosing its kernels goes.

    Attributes:
        platform: "cpu", "tpu", "cuda" (an NVIDIA GPU) or "rocm" (an AMD GPU),
            as ``jax.lax.platform_dependent`` names them.
        device_kind: e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3", "Tesla T4".
        compute_capability: (major, minor) of an NVIDIA GPU, else None.
    """

    platform: str
    device_kind: str
    compute_capability: tuple[int, int] | None = None

    @property
    def supports_triton(self) -> bool:
        """Whether XLA compiles Triton kernels (Pallas on GPUs) for it: compute capability 8.0 and up."""
        capability = self.compute_capability
        return capability is not None and capability >= TRITON_MIN_COMPUTE_CAPABILITY


def target_of(device) -> Target:
    """The ``Target`` of a ``jax.Device`` (real or compile-only) or of a mesh's ``AbstractDevice``."""
    if device.platform != "gpu":
        return Target(device.platform, device.device_kind)
    if isinstance(device, jax.Device):
        capability = compute_capability(device)
    else:  # an abstract device names its kind only
        capability = _compute_capability_of_kind(device.device_kind)
    return Target("cuda" if capability else "rocm", device.device_kind, capability)


def current_target() -> Target:
    """The target of a program traced now: the mesh in context's devices, else jax's default device.

    The mesh is the one ``jax.set_mesh`` (or an enclosing ``shard_map``) puts
    in context, so compile-only devices count: a program traced under
    ``jax.set_mesh`` of an ``h100`` mesh targets an H100 on any host. Both are
    part of jax's tracing cache key, so a program traced for one target is
    never reused for another. The arguments' shardings are not: a trace does
    not see them, so a program whose arguments live on other devices than the
    default one is traced under their mesh.
    """
    abstract_device = jax.sharding.get_abstract_mesh().abstract_device
    if abstract_device is not None:
        return target_of(abstract_device)
    default = jax.config.jax_default_device
    if isinstance(default, str):
        default = jax.devices(default)[0]
    return target_of(default or jax.devices()[0])


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


def compiler_options(devices: list[jax.Device]) -> dict[str, bool]:
    """XLA options for compiling for compile-only ``devices``: ``jit(f).lower(...).compile(options)``.

    For GPUs, no Triton GEMM fusions: with no GPU to autotune
    on, XLA's default tiling of them fails for some of the model's dots (the
    dt projection, "blkr,ker->blke", under remat or with two clips per GPU:
    "INTERNAL: Couldn't find output tile sizes that satisfy hlo"), so dots go
    to cuBLAS, one of the two choices a GPU's autotuner makes between. The
    Pallas scan's own Triton kernels are not GEMM fusions and are unchanged.
    """
    return {"xla_gpu_enable_triton_gemm": False} if devices[0].platform == "gpu" else {}


@contextlib.contextmanager
def persistent_cache_for(devices: list[jax.Device]):
    """Compiles inside skip the persistent compilation cache when ``devices`` are compile-only.

    An executable compiled for a topology's devices (a TPU's or a GPU's, not
    this process's) cannot be read back from the cache ("PjRtCompiler must be
    constructed with a Client"): a later compile of the same program warns
    and compiles again. jax decides once per process whether to use the
    cache, so the decision is reset on the way in and out.
    """
    if devices[0] in jax.devices():
        yield
        return
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


@functools.cache
def gpu_target_config(card: str) -> str:
    """The GpuTargetConfig text proto of ``card`` (one of ``GPU_CARDS``), as get_topology_desc takes it."""
    if card not in GPU_CARDS:
        raise TargetError(f"unknown GPU {card!r}; known: {', '.join(GPU_CARDS)}")
    return importlib.resources.files("sasmamba_jax").joinpath(f"gpu_targets/{card}.textproto").read_text()


def _card_field(card: str, pattern: str) -> str:
    return re.search(pattern, gpu_target_config(card), re.MULTILINE)[1]


def _card_device_kind(card: str) -> str:
    return _card_field(card, r'^device_description_str: "(.*)"$')


@functools.cache
def _card_memory_by_device_kind() -> dict[str, int]:
    return {
        _card_device_kind(card): int(_card_field(card, r"device_memory_size: (\d+)")) for card in GPU_CARDS
    }


@functools.cache
def _card_capability_by_device_kind() -> dict[str, tuple[int, int]]:
    return {
        _card_device_kind(card): (
            int(_card_field(card, r"^\s*major: (\d+)")),
            int(_card_field(card, r"^\s*minor: (\d+)")),
        )
        for card in GPU_CARDS
    }


def gpu_device_kinds() -> list[str]:
    """The device kinds (card names) of ``GPU_CARDS``, as compile-only devices report them."""
    return sorted(_card_memory_by_device_kind())


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


def _compute_capability_of_kind(device_kind: str) -> tuple[int, int] | None:
    """A GPU kind's compute capability: a local GPU of that kind's, else the card's in ``GPU_CARDS``."""
    for device in jax.devices():
        if device.device_kind == device_kind:
            return compute_capability(device)
    return _card_capability_by_device_kind().get(device_kind)


def compute_capability(device: jax.Device) -> tuple[int, int] | None:
    """(major, minor) of an NVIDIA GPU, real or compile-only; None for any other device."""
    # An AMD GPU's platform is "gpu" too; its compute_capability is an
    # architecture name (e.g. "gfx90a").
    text = str(getattr(device, "compute_capability", "")) if device.platform == "gpu" else ""
    match = re.match(r"^(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None
