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
(``train_lib.resolve_memory_settings``, against the chip's memory). XLA's own
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

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import ml_collections
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec

from sasmamba_jax import cli, eval_lib, sharding, skeleton, step_memory, targets, train_lib
from sasmamba_jax.ops.selective_scan import resolve_backend

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


def _timed_peak(compile_fn, args, record: dict) -> int:
    """Compiles ``compile_fn(*args)``'s program; one chip's peak, the compile time in ``record``."""
    start = time.perf_counter()
    try:
        peak = step_memory.compiled_peak_bytes(compile_fn(*args))
    except jax.errors.JaxRuntimeError as e:
        needed = step_memory.required_bytes(e)
        if needed is None:
            raise
        peak = needed[0] + step_memory.per_device_bytes(args)
    record["compile_s"] = time.perf_counter() - start
    return peak


def _train_peak(config: ml_collections.ConfigDict, mesh, record: dict) -> int:
    args = train_lib.abstract_train_step_args(config, mesh)
    options = targets.compiler_options(list(mesh.devices.flat))
    return _timed_peak(lambda *a: train_lib.train_step.lower(*a).compile(options), args, record)


def _forward_peak(config: ml_collections.ConfigDict, mesh, batch: int, record: dict) -> int:
    state, _ = train_lib.abstract_train_step_args(config, mesh)
    graphdef = eval_lib.eval_graphdef(state.graphdef, state.params)
    model_cfg = train_lib.model_config(config)
    x = jax.ShapeDtypeStruct(
        (batch, model_cfg.num_frames, skeleton.NUM_JOINTS, model_cfg.in_chans),
        jax.numpy.float32,
        sharding=sharding.batch_sharding(mesh),
    )
    flip = skeleton.FLIP_PERMUTATION if config.eval.flip else None
    replicated = NamedSharding(mesh, PartitionSpec())

    def compile_forward(params, x):
        lowered = eval_lib._predict_batch.lower(graphdef, params, x, flip, replicated)
        return lowered.compile(targets.compiler_options(list(mesh.devices.flat)))

    return _timed_peak(compile_forward, (state.params, x), record)


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
    hbm = step_memory.device_memory_bytes(devices[0])
    record = {}
    # As train.py and eval.py run them: the scan's back end ("auto") is the
    # one for the mesh's devices, and the Pallas scan splits its kernels over
    # the mesh.
    with jax.set_mesh(mesh), targets.persistent_cache_for(devices):
        if mode == "train":
            config, choice = train_lib.resolve_memory_settings(
                config, mesh, hbm, peak_bytes=lambda candidate: _train_peak(candidate, mesh, record)
            )
            peak = choice.peak_bytes if choice else _train_peak(config, mesh, record)
        else:
            config = train_lib.with_memory_settings(config, *train_lib.memory_settings(config))
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


@contextlib.contextmanager
def _stderr_kept_back():
    """Holds back what libtpu's C++ side prints to stderr at start-up (it warns that this is no TPU VM).

    Shown after all if something other than a reported error (AotError,
    ValueError) goes wrong.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except (AotError, ValueError):
            raise
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


_CONFIG = cli.define_config_file("config", None, "Training config file (e.g. configs/h36m_243.py).")
_TOPOLOGY = flags.DEFINE_string(
    "topology",
    None,
    "A TPU topology (v5e:1x1, v5e:2x2, v5p:2x2x1, v6e:2x2) or one host of NVIDIA GPUs, CARD[:N] "
    f"with CARD one of {', '.join(targets.GPU_CARDS)} (h100, h100:8).",
)
_MODE = flags.DEFINE_enum("mode", "train", MODES, "train: the training step; forward: the eval forward.")
_BATCH = flags.DEFINE_integer("batch", None, "Clips per forward (--mode=forward); default eval.batch_size.")
_JSON = flags.DEFINE_string("json", None, "Also write the report here as JSON.")
flags.mark_flags_as_required(["config", "topology"])


def main(argv):
    del argv
    # Compiling for a topology needs no local accelerator. Set before jax
    # starts a backend: the CUDA plugin is then registered for compiling only,
    # without its cuInit check (which fails, loudly, on a host with no GPU).
    jax.config.update("jax_platforms", "cpu")
    config = cli.config_value(_CONFIG)
    try:
        with _stderr_kept_back():
            report = compile_for_topology(config, _TOPOLOGY.value, _MODE.value, _BATCH.value)
    except (AotError, ValueError) as e:
        print(f"aot: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(report.summary(_MODE.value))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=2)
    return 0 if report.fits else 1


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
