"""``python -m sasmamba_jax.aot``: will train.py's step fit a TPU topology or a GPU host? (``train.aot``)

    python -m sasmamba_jax.aot --config=h36m_243 --topology=v5e:1x1
    python -m sasmamba_jax.aot --config=configs/h36m_243_large.py --topology=v5e:2x2 --json=fit.json
    python -m sasmamba_jax.aot --config=h36m_243 --topology=h100
    python -m sasmamba_jax.aot --config=h36m_243 --topology=t4:2 --mode=forward --batch=256
    python -m sasmamba_jax.aot ... --config.model.scan=sequential --config.model.remat=True

Exit status 0 if it fits, 1 if not, 2 for a bad flag, topology or mesh, or
no libtpu / CUDA plugin (``pip install -r requirements-gpu-aot.txt``).
"""

import contextlib
import dataclasses
import json
import os
import sys
import tempfile

import jax
from absl import flags

from sasmamba_jax import targets
from sasmamba_jax.cli import program
from sasmamba_jax.train.aot import MODES, compile_for_topology


@contextlib.contextmanager
def _stderr_kept_back():
    """Holds back what libtpu's C++ side prints to stderr at start-up (it warns that this is no TPU VM).

    Shown after all if something other than a reported error (``program.INPUT_ERRORS``,
    AotError among them) goes wrong.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except program.INPUT_ERRORS:
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


_CONFIG = program.define_config_file(
    "config", None, "Training config: a bundled config's name (h36m_243) or a config file."
)


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


@program.command("aot")
def main(argv):
    del argv
    # Compiling for a topology needs no local accelerator. Set before jax
    # starts a backend: the CUDA plugin is then registered for compiling only,
    # without its cuInit check (which fails, loudly, on a host with no GPU).
    jax.config.update("jax_platforms", "cpu")
    config = program.config_value(_CONFIG)
    with _stderr_kept_back():
        report = compile_for_topology(config, _TOPOLOGY.value, _MODE.value, _BATCH.value)
    print(report.summary(_MODE.value))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=2)
    return 0 if report.fits else 1


def run() -> None:
    """The console script ``sasmamba-aot`` and ``python -m sasmamba_jax.aot``."""
    program.run_absl(main)
