"""Which fusions a TPU compile spends its time on: the one-layer model's forward+backward for one v5e chip.

    PYTHONPATH=. python benchmarks/tpu_fusion_times.py [--batch=16] [--top=10]

Compiles (libtpu, deviceless) the gradient of the published model at depth
1 (B=16, T=243, dim 64, scan=pallas), with libtpu logging each fusion's
emission time and XLA dumping the optimised HLO, then sums those times by
kind of fusion (a fusion counts once, in the first kind it matches) and
lists the slowest. The emission times are per fusion on the compiler's
threads, so their sum exceeds the wall time.
"""

import argparse
import collections
import glob
import os
import re
import tempfile

LOG_DIR = tempfile.mkdtemp(prefix="tpu_fusion_times_")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ["LIBTPU_INIT_ARGS"] = f"--vmodule=lowering_emitter=1 --log_dir={LOG_DIR}"

import jax  # noqa: E402
import tpu_compile_parts as parts  # noqa: E402

EMISSION = re.compile(r"emitting for (\S+) time: ([0-9.]+) (us|ms|s|min) ")
SECONDS_PER_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
# erf's rational polynomial carries this coefficient (2 / sqrt(pi)).
ERF_CONSTANT = "constant(1.12837911)"


def emission_seconds(log_text):
    """{fusion name: seconds} from libtpu's INFO log."""
    return {m.group(1): float(m.group(2)) * SECONDS_PER_UNIT[m.group(3)] for m in EMISSION.finditer(log_text)}


def fusion_bodies(hlo_text):
    """{instruction name: its line plus the text of every computation it calls, recursively}."""
    computations, lines_of = {}, None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            lines_of = computations.setdefault(name, [])
        elif lines_of is not None and line.startswith("  "):
            lines_of.append(line)

    def expand(lines, depth=0):
        text = []
        for line in lines:
            text.append(line)
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called and depth < 4:
                text += expand(computations.get(called.group(1), []), depth + 1)
        return text

    bodies = {}
    for lines in computations.values():
        for line in lines:
            named = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
            if named:
                bodies[named.group(1)] = "\n".join(expand([line]))
    return bodies


def kind_of(body):
    if ERF_CONSTANT in body:
        return "exact GELU / its derivative (erf)"
    if " convolution(" in body:
        return "matmul or convolution, with what is fused into it"
    if "dynamic_update_index_in_dim" in body.splitlines()[0]:
        return "layer loop storing a residual for the backward"
    return "everything else"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=parts.BATCH)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    parts.BATCH = args.batch

    mesh, replicated = parts.single_v5e_chip()
    fn, shapes = parts.parameter_gradient(*parts.model_forward(1))
    dump_dir = os.path.join(LOG_DIR, "hlo")
    with jax.set_mesh(mesh):
        lowered = jax.jit(fn).lower(*parts.abstract_args(shapes, replicated))
        lowered.compile(compiler_options={"xla_dump_to": dump_dir})

    (log_path,) = glob.glob(os.path.join(LOG_DIR, "*.INFO.*"))
    with open(log_path) as f:
        seconds = emission_seconds(f.read())
    (hlo_path,) = glob.glob(os.path.join(dump_dir, "*after_optimizations.txt"))
    with open(hlo_path) as f:
        bodies = fusion_bodies(f.read())

    by_kind = collections.defaultdict(list)
    for name, time in seconds.items():
        by_kind[kind_of(bodies.get(name, name))].append(time)
    print(f"one-layer model fwd+bwd for v5e:1x1 at B={args.batch}: {len(seconds)} fusions emitted")
    print(f"{'fusions':>8}{'summed s':>10}{'largest s':>11}  kind")
    for kind, times in sorted(by_kind.items(), key=lambda item: -sum(item[1])):
        print(f"{len(times):>8}{sum(times):>10.1f}{max(times):>11.2f}  {kind}")
    print(f"{len(seconds):>8}{sum(seconds.values()):>10.1f}{'':>11}  all")
    print(f"\nslowest {args.top}:")
    for name, time in sorted(seconds.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{time:>8.2f} s  {name}  ({kind_of(bodies.get(name, name))})")


if __name__ == "__main__":
    main()
