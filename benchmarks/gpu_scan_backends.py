"""Which XLA scan back end for a GPU without Triton (compute capability < 8.0), each compiled for the card.

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
* bytes the kernels read and write, summed over the launches (each kernel's
  operands and results; of a dynamic-slice only the slice, of an in-place
  dynamic-update-slice only the update; loop bodies once per trip): the memory
  traffic, which bounds the program's time from below at the card's bandwidth.
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
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%\S+ = (?P<type>.+?) (?P<opcode>[\w-]+)\((?P<operands>[^)]*)\)(?P<rest>.*)$"
)
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def _array_bytes(text: str) -> int:
    total = 0
    for match in _ARRAY.finditer(text):
        dims = [int(d) for d in match["dims"].split(",") if d]
        total += int(np.prod(dims, dtype=np.int64)) * _DTYPE_BYTES.get(match["dtype"], 4)
    return total


def _computations(hlo: str) -> tuple[dict[str, list[re.Match]], str]:
    """Computation name -> its parsed instructions, and the entry computation's name."""
    computations, entry, name = {}, None, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%(\S+) .*\{$", line)
        if header:
            name = header[2]
            computations[name] = []
            entry = name if header[1] else entry
        elif name and (match := _INSTRUCTION.match(line)):
            computations[name].append(match)
    return computations, entry


def _name(instruction: re.Match) -> str:
    return re.match(r"^\s*(?:ROOT )?(%\S+) =", instruction[0])[1]


def _operands(instruction: re.Match) -> list[str]:
    return re.findall(r"%[\w.\-]+", instruction["operands"])


def _fusion_traffic(fused: list[re.Match]) -> int:
    """Bytes one run of a fused computation reads and writes.

    A parameter read only through dynamic-slices counts the slices; one that
    is only the buffer a dynamic-update-slice writes into (in place) counts
    nothing; the root's dynamic-update-slices count their updates.
    """
    by_name = {_name(i): i for i in fused}
    users = {name: [i for i in fused if name in _operands(i)] for name in by_name}
    traffic = 0
    for name, instruction in by_name.items():
        if instruction["opcode"] != "parameter":
            continue
        readers = users[name]
        sliced = readers and all(_operands(r)[0] == name for r in readers)
        if sliced and all(r["opcode"] == "dynamic-slice" for r in readers):
            traffic += sum(_array_bytes(r["type"]) for r in readers)
        elif sliced and all(r["opcode"] == "dynamic-update-slice" for r in readers):
            continue
        else:
            traffic += _array_bytes(instruction["type"])
    root = next(i for i in fused if i[0].lstrip().startswith("ROOT"))
    outputs = [by_name[o] for o in _operands(root)] if root["opcode"] == "tuple" else [root]
    for output in outputs:
        if output["opcode"] == "dynamic-update-slice":
            traffic += _array_bytes(by_name[_operands(output)[1]]["type"])
        else:
            traffic += _array_bytes(output["type"])
    return traffic


def kernel_traffic(hlo: str) -> tuple[int, int]:
    """(kernel launches, bytes read and written by them) of a compiled GPU program, loops unrolled."""
    computations, entry = _computations(hlo)
    types = {_name(i): i["type"] for instructions in computations.values() for i in instructions}

    def cost(name: str) -> tuple[int, int]:
        launches = traffic = 0
        for instruction in computations.get(name, []):
            opcode, rest = instruction["opcode"], instruction["rest"]
            if opcode in _KERNEL_OPCODES:
                launches += 1
                fused = re.search(r"calls=%([\w.\-]+)", rest) if opcode == "fusion" else None
                if fused:
                    traffic += _fusion_traffic(computations[fused[1]])
                else:
                    operands = [types[o] for o in _operands(instruction)]
                    traffic += _array_bytes(instruction["type"]) + sum(map(_array_bytes, operands))
            elif opcode == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
                n = int(trips[1]) if trips else 1
                for part in re.findall(r"(?:condition|body)=%([\w.\-]+)", rest):
                    part_launches, part_traffic = cost(part)
                    launches += n * part_launches
                    traffic += n * part_traffic
            elif opcode in ("call", "conditional"):
                for callee in re.findall(r"(?:to_apply=|branch_computations=\{|, )%([\w.\-]+)", rest):
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
