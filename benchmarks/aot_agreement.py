"""Does the aot tool's peak agree with a compile of recipe.train_step built as training builds it?

    PYTHONPATH=. python benchmarks/aot_agreement.py --config=configs/h36m_243.py --topology=v5e:1x1
    PYTHONPATH=. python benchmarks/aot_agreement.py --config=configs/h36m_243_large.py --topology=v5e:2x2
    PYTHONPATH=. python benchmarks/aot_agreement.py --config=configs/h36m_243.py --topology=h100

Runs ``python -m sasmamba_jax.aot`` (its own process, its JSON), then, here,
builds the training state as ``train_and_evaluate`` does (a real model and
AdamW state on the host, placed by ``sharding.tree_shardings``, batches by
``sharding.batch_sharding``), with the tool's reported remat and
microbatches, compiles ``recipe.train_step`` for the same topology and
compares one chip's peak. Exit status 1 if they differ by more than 10%.
``--report=FILE`` takes the tool's ``--json`` output from an earlier run.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sasmamba_jax import targets  # noqa: E402
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import memory, recipe

TOLERANCE = 0.10


def tool_report(config_path: str, topology: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        command = [sys.executable, "-m", "sasmamba_jax.aot", f"--config={config_path}"]
        command += [f"--topology={topology}", f"--json={path}"]
        result = subprocess.run(command, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if result.returncode == 2:
            sys.exit(2)
        with open(path) as f:
            return json.load(f)


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def placed_like_training(config, mesh):
    """The state and a batch as train_and_evaluate places them, as sharded shapes of real host arrays."""
    state = recipe.create_train_state(config, recipe.create_model(config), steps_per_epoch=1000)
    host = jax.device_get(state.arrays())
    shardings = sharding.tree_shardings(mesh, host)
    state = state.with_arrays(
        jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), host, shardings)
    )
    model_cfg = recipe.model_config(config)
    clip = (config.batch_size, model_cfg.num_frames, 17)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
        "input_2d": jax.ShapeDtypeStruct((*clip, model_cfg.in_chans), np.float32, sharding=batch_sharding),
        "target_3d": jax.ShapeDtypeStruct((*clip, 3), np.float32, sharding=batch_sharding),
    }
    return state, batch


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--topology", required=True)
    parser.add_argument("--report", help="the tool's --json output for this config and topology, if at hand")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            report = json.load(f)
    else:
        report = tool_report(args.config, args.topology)
    print(f"tool: {json.dumps(report)}", flush=True)

    jax.config.update("jax_platforms", "cpu")
    config = recipe.with_memory_settings(
        load_config(args.config), report["remat"], report["num_microbatches"]
    )
    devices = targets.topology_devices(args.topology)
    mesh = sharding.make_mesh(config.mesh, devices)
    step_args = placed_like_training(config, mesh)
    start = time.perf_counter()
    with jax.set_mesh(mesh), targets.persistent_cache_for(devices):
        compiled = recipe.train_step.lower(*step_args).compile(targets.compiler_options(devices))
    peak = memory.compiled_peak_bytes(compiled)
    seconds = time.perf_counter() - start
    ratio = peak / report["peak_bytes_per_chip"]
    print(
        f"separate compile of recipe.train_step: {peak / 1e9:.3f} GB per chip in {seconds:.0f} s; "
        f"tool {report['peak_bytes_per_chip'] / 1e9:.3f} GB; ratio {ratio:.4f}"
    )
    return 0 if abs(ratio - 1) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
