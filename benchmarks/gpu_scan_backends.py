"""Which XLA scan back end for a GPU without Triton (compute capability < 8.0): each compiled for the card here.

    PYTHONPATH=. python benchmarks/gpu_scan_backends.py                      # t4, the published size
    PYTHONPATH=. python benchmarks/gpu_scan_backends.py --card=v100 --json=out.json

For each of the sequential, chunked and associative back ends, XLA's own
compiler for the card (``sasmamba_jax.targets``, no GPU needed) compiles the
scan's forward and backward (the gradient of ``sum(y)`` with respect to all
seven inputs) at the published size, B=16, L=4131, K=4, E=128, N=16, and this
prints, side by side:

* compile time;
* temporaries (``memory_analysis``): the memory the program needs beyond its
  inputs and outputs;
* kernel launches: the GPU kernels the compiled program runs one after
  another, loop bodies counted once per trip (from the optimised HLO: each
  fusion, custom call and copy is one kernel). Every launch costs a few
  microseconds on any GPU however little it computes, so a program of 100k
  launches cannot take less than a few hundred milliseconds;
* bytes the kernels read and write, summed over the launches (operands and
  results of each kernel, loop bodies counted once per trip): the memory
  traffic, which bounds a memory-bound program's time from below at the card's
  bandwidth.
"""

import argparse
import json
import os
import re
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sasmamba_jax import targets  # noqa: E402
from sasmamba_jax.ops.selective_scan import selective_scan  # noqa: E402

PUBLISHED = {"B": 16, "L": 4131, "K": 4, "E": 128, "N": 16}
BACKENDS = ("sequential", "chunked", "associative")
# Instructions of optimised GPU HLO that each run as one kernel.
_KERNEL_OPCODES = ("fusion", "custom-call", "copy")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "s64": 8}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (?P<type>.+?) (?P<opcode>[\w-]+)\((?P<operands>[^)]*)\)(?P<rest>.*)$")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def _array_bytes(text: str) -> int:
    total = 0
    for match in _ARRAY.finditer(text):
        dims = [int(d) for d in match["dims"].split(",") if d]
        total += int(np.prod(dims, dtype=np.int64)) * _DTYPE_BYTES.get(match["dtype"], 4)
    return total


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """Computation name -> its instruction lines, and the entry computation's name."""
    computations, entry, name = {}, None, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%(\S+) .*\{$", line)
        if header:
            name = header[2]
            computations[name] = []
            entry = name if header[1] else entry
        elif name and line.strip() and line.strip() != "}":
            computations[name].append(line)
    return computations, entry


def kernel_traffic(hlo: str) -> tuple[int, int]:
    """(kernel launches, bytes read and written by them) of a compiled GPU program, loops unrolled."""
    computations, entry = _computations(hlo)
    shapes = {}
    for lines in computations.values():
        for line in lines:
            match = re.match(r"^\s*(?:ROOT )?(%\S+) = (.+?) [\w-]+\(", line)
            if match:
                shapes[match[1]] = match[2]

    def cost(name: str) -> tuple[int, int]:
        launches = traffic = 0
        for line in computations.get(name, []):
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            opcode = match["opcode"]
            if opcode in _KERNEL_OPCODES:
                operands = re.findall(r"%[\w.\-]+", match["operands"])
                launches += 1
                traffic += _array_bytes(match["type"]) + sum(_array_bytes(shapes.get(o, "")) for o in operands)
            elif opcode == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', match["rest"])
                body = re.search(r"body=%([\w.\-]+)", match["rest"])[1]
                condition = re.search(r"condition=%([\w.\-]+)", match["rest"])[1]
                n = int(trips[1]) if trips else 1
                for part in (body, condition):
                    part_launches, part_traffic = cost(part)
                    launches += n * part_launches
                    traffic += n * part_traffic
            elif opcode in ("call", "conditional"):
                for callee in re.findall(r"(?:to_apply=|branch_computations=\{|, )%([\w.\-]+)", match["rest"]):
                    part_launches, part_traffic = cost(callee)
                    launches += part_launches
                    traffic += part_traffic
        return launches, traffic

    return cost(entry)


def scan_inputs(sharding):
    b, length, k, e, n = PUBLISHED.values()
    # u, delta, A, B, C, D, delta_bias
    shapes = [(b, length, k, e)] * 2 + [(k, e, n)] + [(b, length, k, n)] * 2 + [(k, e)] * 2
    return [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding) for shape in shapes]


def measure(backend: str, inputs) -> dict:
    def loss(*args):
        return selective_scan(*args, backend=backend).sum()

    gradients = jax.jit(jax.grad(loss, argnums=tuple(range(7))))
    start = time.perf_counter()
    compiled = gradients.lower(*inputs).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    launches, traffic = kernel_traffic(compiled.as_text())
    return {
        "backend": backend,
        "compile_s": round(seconds, 1),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "kernel_launches": launches,
        "kernel_bytes": traffic,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", default="t4", help=f"one of {', '.join(targets.GPU_CARDS)}")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    devices = targets.gpu_devices(args.card)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    inputs = scan_inputs(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    rows = []
    with targets.persistent_cache_for(devices):
        for backend in BACKENDS:
            rows.append(measure(backend, inputs))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nscan forward+backward at {PUBLISHED}, compiled for {devices[0].device_kind}:\n")
    print("| back end | compile s | temporaries GB | kernel launches | kernel bytes GB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['backend']} | {row['compile_s']:.1f} | {row['temp_bytes'] / 1e9:.2f} | "
            f"{row['kernel_launches']} | {row['kernel_bytes'] / 1e9:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": args.card, "size": PUBLISHED, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
