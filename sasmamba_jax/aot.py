"""Will it fit? train.py's step (or the evaluation forward) compiled for a TPU topology, without a TPU.

    python -m sasmamba_jax.aot --config=configs/h36m_243.py --topology=v5e:1x1
    python -m sasmamba_jax.aot --config=configs/h36m_243_large.py --topology=v5e:2x2 --json=fit.json
    python -m sasmamba_jax.aot --config=configs/h36m_243.py --topology=v5e:1x1 --mode=forward --batch=256
    python -m sasmamba_jax.aot ... --config.model.scan=sequential --config.model.remat=True

The training step is exactly the one ``train.py`` runs for the config: the
same mesh (``config.mesh`` over the topology's chips), the same sharding rule,
the same choice of remat and microbatches for keys left unset
(``train_lib.resolve_memory_settings``, against the chip's HBM). libtpu
compiles it for the topology (``jax.experimental.topologies``); nothing runs.
``--mode=forward`` compiles the evaluation forward (``eval.py``'s, with
test-time flipping if ``config.eval.flip``) at ``--batch`` clips.

Prints one line per chip's verdict; ``--json`` writes ``topology``, ``chips``,
``device_kind``, ``fits``, ``peak_bytes_per_chip``, ``hbm_bytes_per_chip``,
``scan``, ``remat``, ``num_microbatches``, ``compile_s``. Where the compiler
runs out of HBM, ``peak_bytes_per_chip`` is the requirement its error states
plus the arguments: a lower bound. Exit status 0 if it fits, 1 if not, 2 for
a bad flag, topology or mesh, or no libtpu.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

import jax
import ml_collections
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec

from sasmamba_jax import cli, eval_lib, sharding, skeleton, step_memory, train_lib
from sasmamba_jax.ops.selective_scan import resolve_backend

MODES = ("train", "forward")
# A TPU topology name as libtpu takes it: generation, then chips per axis.
_TOPOLOGY_NAME = re.compile(r"^v\d+[a-z]*:\d+(x\d+){1,2}$")
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
    """A topology, mesh or installation this tool cannot compile for."""


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


def topology_devices(topology: str) -> list[jax.Device]:
    """The compile-only devices of a TPU topology (e.g. "v5e:1x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2").

    Raises:
        AotError: libtpu missing, or a topology it does not know.
    """
    if importlib.util.find_spec("libtpu") is None:
        raise AotError('compiling for a TPU needs libtpu: pip install "jax[tpu]==0.10.2"')
    if not _TOPOLOGY_NAME.match(topology):
        raise AotError(f"unknown topology {topology!r}; expected GENERATION:CHIPS, e.g. v5e:1x1, v5p:2x2x1")
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
        raise AotError(f"unknown topology {topology!r}: {str(e).splitlines()[0]}") from None
    return list(description.devices)


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
    return _timed_peak(lambda *a: train_lib.train_step.lower(*a).compile(), args, record)


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
        return eval_lib._predict_batch.lower(graphdef, params, x, flip, replicated).compile()

    return _timed_peak(compile_forward, (state.params, x), record)


def compile_for_topology(
    config: ml_collections.ConfigDict, topology: str, mode: str = "train", batch: int | None = None
) -> Report:
    """Compiles the config's training step (or forward at ``batch`` clips) for ``topology``.

    Raises:
        AotError: as ``topology_devices``, or a mesh the chips cannot form.
    """
    if mode not in MODES:
        raise AotError(f"unknown mode {mode!r}; expected one of {MODES}")
    devices = topology_devices(topology)
    mesh = _mesh(config, devices)
    hbm = step_memory.device_memory_bytes(devices[0])
    record = {}
    # As train.py and eval.py run them: the Pallas scan splits its kernels
    # over the context's mesh.
    with jax.set_mesh(mesh):
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
        scan=resolve_backend(config.model.scan, "tpu"),
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
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:1x1, v5e:2x2, v5p:2x2x1, v6e:2x2.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "train: the training step; forward: the eval forward.")
_BATCH = flags.DEFINE_integer("batch", None, "Clips per forward (--mode=forward); default eval.batch_size.")
_JSON = flags.DEFINE_string("json", None, "Also write the report here as JSON.")
flags.mark_flags_as_required(["config", "topology"])


def main(argv):
    del argv
    # Compiling for a topology needs no local accelerator.
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
