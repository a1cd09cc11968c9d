"""Registers, spills, temporaries and kernel count of the GPU Pallas scan, compiled without a GPU.

For each target card, a child process compiles the scan's forward +
backward (``pallas_scan.selective_scan(..., kernel="gpu")`` and its VJP)
for compile-only devices of that card (``sasmamba_jax.targets``), with XLA
dumping every kernel's PTX and refusing to compile a kernel that spills
(``--xla_gpu_fail_ptx_compilation_on_register_spilling``). The parent runs
the nvcc wheel's ptxas -v on each Triton kernel's PTX, reads the temporaries
from ``memory_analysis()`` and counts the kernels of XLA's thunk sequence.

    python benchmarks/gpu_kernels.py                      # published size, h100 and a100
    python benchmarks/gpu_kernels.py --size=small --json=F

Needs ``pip install -r requirements-gpu-aot.txt`` (the CUDA plugin and ptxas).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

# (Bt, L, K, E, N). The small size keeps what the kernels' code depends on
# (N, K, E a multiple of BLOCK_E, L % CHUNK = 3 and nc % CARRY_UNROLL = 3, as
# at the published size), so its kernels compile to the same registers.
SIZES = {"published": (16, 4131, 4, 128, 16), "small": (1, 163, 4, 64, 16)}
TARGETS = ("h100", "a100")
REGISTER_LIMIT = 128
_ENTRY = re.compile(r"\.visible \.entry (\w+)\(")
_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_THUNK_KERNEL = re.compile(r"\] (\S+) grid: ")

_CHILD = """
import json, sys
import jax, jax.numpy as jnp
import numpy as np
from sasmamba_jax import targets
from sasmamba_jax.ops import pallas_scan

card, (batch, length, k, e, n) = sys.argv[1], json.loads(sys.argv[2])
mesh = jax.sharding.Mesh(np.array(targets.topology_devices(card)), ("data",))
whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
shapes = [(batch, length, k, e), (batch, length, k, e), (k, e, n), (batch, length, k, n),
          (batch, length, k, n), (k, e), (k, e), (batch, length, k, e)]
args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=whole) for s in shapes]

def forward_and_backward(u, delta, A, B, C, D, delta_bias, grad_y):
    scan = lambda *a: pallas_scan.selective_scan(*a, kernel="gpu")
    y, vjp = jax.vjp(scan, u, delta, A, B, C, D, delta_bias)
    return y, vjp(grad_y)

with jax.set_mesh(mesh):
    compiled = jax.jit(forward_and_backward).lower(*args).compile()
print(json.dumps({"temp_bytes": compiled.memory_analysis().temp_size_in_bytes}))
"""


def ptxas_path():
    """The nvcc wheel's ptxas, or None where it is not installed."""
    try:
        import nvidia.cuda_nvcc
    except ImportError:
        return None
    path = os.path.join(list(nvidia.cuda_nvcc.__path__)[0], "bin", "ptxas")
    return path if os.path.exists(path) else None


def measure(card, size, dump_dir):
    """Compiles forward + backward for ``card`` at ``size``; returns its figures.

    Returns:
        dict with temp_bytes, kernels ({name: {"registers", "spill_bytes",
        "arch"}} for each Triton kernel), xla_kernels (names of the other
        kernels XLA launches, in order) and triton_launches.
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_COMPILATION_CACHE": "false",
        "XLA_FLAGS": f"--xla_dump_to={dump_dir} --xla_gpu_fail_ptx_compilation_on_register_spilling=true",
    }
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, card, json.dumps(size)], env=env, capture_output=True, text=True
    )
    if child.returncode != 0:
        raise RuntimeError(f"compile for {card} failed:\n{child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["kernels"] = _triton_kernel_registers(dump_dir)
    launches = _thunk_kernels(dump_dir)
    result["triton_launches"] = [name for name in launches if name in result["kernels"]]
    result["xla_kernels"] = [name for name in launches if name not in result["kernels"]]
    return result


def _triton_kernel_registers(dump_dir):
    ptxas = ptxas_path()
    kernels = {}
    for ptx in sorted(glob.glob(os.path.join(dump_dir, "*.ptx"))):
        text = open(ptx).read()
        names = [name for name in _ENTRY.findall(text) if name.startswith("selective_scan")]
        if not names:
            continue
        arch = re.search(r"^\.target (\w+)", text, re.M).group(1)
        report = subprocess.run(
            [ptxas, "-v", f"-arch={arch}", ptx, "-o", os.devnull], capture_output=True, text=True, check=True
        ).stderr
        for section in report.split("Compiling entry function")[1:]:
            name = re.match(r" '(\w+)'", section).group(1)
            if name in names:
                stores, loads = map(int, _PTXAS_SPILLS.search(section).groups())
                registers = int(_PTXAS_REGISTERS.search(section).group(1))
                kernels[name] = {"registers": registers, "spill_bytes": stores + loads, "arch": arch}
    return kernels


def _thunk_kernels(dump_dir):
    (sequence,) = glob.glob(os.path.join(dump_dir, "*thunk_sequence_after_thunk_passes.txt"))
    return _THUNK_KERNEL.findall(open(sequence).read())


def occupancy_warps(registers, threads=128, registers_per_sm=65536, max_warps=64):
    """Warps of ``threads``-thread programs one SM holds at ``registers`` a thread (registers alone)."""
    per_warp = -(-registers * 32 // 256) * 256  # allocated in units of 256 per warp
    warps_per_block = threads // 32
    blocks = registers_per_sm // (per_warp * warps_per_block)
    return min(blocks * warps_per_block, max_warps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="published")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if ptxas_path() is None:
        parser.exit(2, "ptxas is not installed: pip install -r requirements-gpu-aot.txt\n")
    size = SIZES[args.size]
    results = {}
    for card in args.targets.split(","):
        with tempfile.TemporaryDirectory(prefix=f"gpu-kernels-{card}-") as dump_dir:
            results[card] = measure(card, size, dump_dir)
    print(f"Pallas scan forward + backward, (Bt, L, K, E, N) = {size}, 128 threads a program")
    print("| target | kernel | registers | spilled bytes | warps an SM holds |")
    print("|---|---|---|---|---|")
    for card, result in results.items():
        for name, figures in result["kernels"].items():
            warps = occupancy_warps(figures["registers"])
            row = f"| {card} ({figures['arch']}) | {name.removeprefix('selective_scan_')} "
            print(f"{row}| {figures['registers']} | {figures['spill_bytes']} | {warps} of 64 |")
    print("\n| target | temporaries | Triton launches | other XLA kernels |")
    print("|---|---|---|---|")
    for card, result in results.items():
        others = ", ".join(result["xla_kernels"])
        temp = result["temp_bytes"] / 1e9
        launches, xla = len(result["triton_launches"]), len(result["xla_kernels"])
        print(f"| {card} | {temp:.3f} GB | {launches} | {xla}: {others} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "targets": results}, f, indent=1)


if __name__ == "__main__":
    main()
