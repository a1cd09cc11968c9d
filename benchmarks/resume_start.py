"""What a resumed training run builds before it restores: an initialised state, or only its shapes.

A run that resumes overwrites every array of its state with the checkpoint's,
so it only needs the state's shapes, dtypes and shardings
(``recipe.abstract_train_state(config, mesh=...)``). Building the initialised
state instead (``create_train_state(config, create_model(config))`` placed on
the mesh, what ``train.py`` did before) compiles and runs the initialisation.
Each is timed in a fresh process (imports excluded, no persistent compilation
cache), alternately, ``--repeats`` times per config; the medians and their
ratio are printed and appended as one JSON line per config to ``--results``.

    python benchmarks/resume_start.py
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

CONFIGS = ("tiny", "demo", "h36m_243")

_CHILD = """
import importlib, sys, time
import jax
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import recipe
config = importlib.import_module("sasmamba_jax.configs." + sys.argv[1]).get_config()
mesh = sharding.default_mesh()
started = time.perf_counter()
if sys.argv[2] == "initialised":
    state = recipe.place_state(recipe.create_train_state(config, recipe.create_model(config)), mesh)
    jax.block_until_ready(state.arrays())
else:
    recipe.abstract_train_state(config, mesh=mesh)
print(time.perf_counter() - started, jax.devices()[0].device_kind)
"""


def _seconds_and_device(config_name: str, build: str) -> tuple[float, str]:
    environment = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, config_name, build],
        env={**environment, "JAX_ENABLE_COMPILATION_CACHE": "false"},
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, device = result.stdout.splitlines()[-1].split(maxsplit=1)
    return float(seconds), device


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default="benchmarks/results/resume_start.jsonl")
    args = parser.parse_args()
    for config_name in CONFIGS:
        times = {"initialised": [], "abstract": []}
        for _ in range(args.repeats):
            for build in times:
                seconds, device = _seconds_and_device(config_name, build)
                times[build].append(seconds)
        median = {build: statistics.median(values) for build, values in times.items()}
        row = {
            "config": config_name,
            "initialised_s": median["initialised"],
            "abstract_s": median["abstract"],
            "ratio": median["initialised"] / median["abstract"],
            "repeats": args.repeats,
            "device": device,
            "date": datetime.date.today().isoformat(),
        }
        print(
            f"{config_name}: initialised state {row['initialised_s']:.2f} s, "
            f"abstract state {row['abstract_s']:.2f} s, {row['ratio']:.0f}x"
        )
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
