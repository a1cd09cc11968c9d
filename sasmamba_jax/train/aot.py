"""Will it fit? train.py's step (or the evaluation forward) compiled for a TPU topology or a GPU host, here.

    python -m sasmamba_jax.aot --config=configs/h36m_243.py --topology=v5e:1x1
    python -m sasmamba_jax.aot --config=configs/h36m_243_large.py --topology=v5e:2x2 --json=fit.json
    python -m sasmamba_jax.aot --config=configs/h36m_243.py --topology=h100
    python -m sasmamba_jax.aot --config=configs/h36m_243.py --topology=t4:2 --mode=forward --batch=256
    python -m sasmamba_jax.aot ... --config.model.scan=sequential --config.model.remat=True

The training step is exactly the one ``train.py`` runs for the config: the
same mesh (``config.mesh`` over the topology's chips), the same sharding rule,
the same scan back end for ``auto`` (``selective_scan.resolve_backend`` of the
chips), the same choice of remat and microbatches for keys left unset
(``memory.resolve_memory_settings``, against the chip's memory). XLA's own
compiler for the hardware compiles it (``sasmamba_jax.targets``: libtpu for a
TPU, the CUDA plugin for a GPU); nothing runs. ``--mode=forward`` compiles the
evaluation forward (``eval.py``'s, with test-time flipping if
``config.eval.flip``) at ``--batch`` clips.

A GPU's memory is what JAX's allocator lets one process use: 75% of the
card's, or ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of it when that is set.

Prints one line per chip's verdict; ``--json`` writes ``topology``, ``chips``,
``device_kind``, ``fits``, ``peak_bytes_per_chip``, ``hbm_bytes_per_chip``,
``scan``, ``remat``, ``num_microbatches``, ``compile_s``. Where the compiler
runs out of HBM, ``peak_bytes_per_chip`` is the requirement its error states
plus the arguments: a lower bound. Exit status 0 if it fits, 1 if not, 2 for
a bad flag, topology or mesh, or no libtpu / CUDA plugin
(``pip install -r requirements-gpu-aot.txt``).
"""

import dataclasses
import time

import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from sasmamba_jax import skeleton, targets
from sasmamba_jax.model import forward
from sasmamba_jax.ops.selective_scan import resolve_backend
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import memory, recipe

MODES = ("train", "forward")
JSON_KEYS = (
    "topology",
    "chips",
    "device_kind",
    "fits",
    "peak_bytes_per_chip",
    "hbm_bytes_per_chip",
    "scan",
    "remat",
    "num_microbatches",
    "compile_s",
)


class AotError(ValueError):
    """A mode or mesh this tool cannot compile (a topology's errors are ``targets.TargetError``)."""


@dataclasses.dataclass(frozen=True)
class Report:
    """What one compile for a topology found (the ``--json`` keys)."""

    topology: str
    chips: int
    device_kind: str
    fits: bool
    peak_bytes_per_chip: int
    hbm_bytes_per_chip: int
    scan: str
    remat: bool
    num_microbatches: int
    compile_s: float

    def summary(self, mode: str) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"{mode} step on {self.topology} ({self.chips} x {self.device_kind}): {verdict}, "
            f"{self.peak_bytes_per_chip / 1e9:.2f} of {self.hbm_bytes_per_chip / 1e9:.2f} GB per chip; "
            f"scan={self.scan}, remat={self.remat}, num_microbatches={self.num_microbatches}; "
            f"compiled in {self.compile_s:.1f} s"
        )


def _mesh(config: ml_collections.ConfigDict, devices: list[jax.Device]) -> jax.sharding.Mesh:
    try:
        return sharding.make_mesh(config.mesh, devices)
    except ValueError as e:
        raise AotError(f"mesh: {e}") from None


def _timed(record: dict, peak_fn, *args) -> int:
    """``peak_fn(*args)``, a compile's peak bytes; its time in ``record["compile_s"]``."""
    start = time.perf_counter()
    peak = peak_fn(*args)
    record["compile_s"] = time.perf_counter() - start
    return peak


def _train_peak(config: ml_collections.ConfigDict, mesh, record: dict) -> int:
    options = targets.compiler_options(list(mesh.devices.flat))
    return _timed(record, memory.train_step_peak_bytes, config, mesh, options)


def _forward_peak(config: ml_collections.ConfigDict, mesh, batch: int, record: dict) -> int:
    state, _ = memory.abstract_train_step_args(config, mesh)
    graphdef = forward.eval_graphdef(state.graphdef, state.params)
    model_cfg = recipe.model_config(config)
    x = jax.ShapeDtypeStruct(
        (batch, model_cfg.num_frames, skeleton.NUM_JOINTS, model_cfg.in_chans),
        jax.numpy.float32,
        sharding=sharding.batch_sharding(mesh),
    )
    flip = skeleton.FLIP_PERMUTATION if config.eval.flip else None
    replicated = NamedSharding(mesh, PartitionSpec())

    def compile_forward(params, x):
        lowered = forward._predict_batch.lower(graphdef, params, x, flip, replicated)
        return lowered.compile(targets.compiler_options(list(mesh.devices.flat)))

    return _timed(record, memory.program_peak_bytes, compile_forward, (state.params, x))


def compile_for_topology(
    config: ml_collections.ConfigDict, topology: str, mode: str = "train", batch: int | None = None
) -> Report:
    """Compiles the config's training step (or forward at ``batch`` clips) for ``topology``.

    Raises:
        targets.TargetError: as ``targets.topology_devices``.
        AotError: an unknown mode, or a mesh the chips cannot form.
    """
    if mode not in MODES:
        raise AotError(f"unknown mode {mode!r}; expected one of {MODES}")
    devices = targets.topology_devices(topology)
    mesh = _mesh(config, devices)
    hbm = memory.device_memory_bytes(devices[0])
    record = {}
    # As train.py and eval.py run them: the scan's back end ("auto") is the
    # one for the mesh's devices, and the Pallas scan splits its kernels over
    # the mesh.
    with jax.set_mesh(mesh), targets.persistent_cache_for(devices):
        if mode == "train":
            config, choice = memory.resolve_memory_settings(
                config, mesh, hbm, peak_bytes=lambda candidate: _train_peak(candidate, mesh, record)
            )
            peak = choice.peak_bytes if choice else _train_peak(config, mesh, record)
        else:
            config = recipe.with_memory_settings(config, *recipe.memory_settings(config))
            batch = batch or config.eval.batch_size
            batch = -(-batch // mesh.devices.size) * mesh.devices.size
            peak = _forward_peak(config, mesh, batch, record)
    return Report(
        topology=topology,
        chips=len(devices),
        device_kind=devices[0].device_kind,
        fits=peak <= hbm,
        peak_bytes_per_chip=int(peak),
        hbm_bytes_per_chip=int(hbm),
        scan=resolve_backend(config.model.scan, devices[0]),
        remat=bool(config.model.remat),
        num_microbatches=int(config.num_microbatches),
        compile_s=round(record["compile_s"], 2),
    )
