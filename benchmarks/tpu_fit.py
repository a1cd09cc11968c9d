"""Per-chip peak memory and compile time of the published training steps on TPUs and GPUs, from the aot tool.

    PYTHONPATH=. python benchmarks/tpu_fit.py --output=benchmarks/results/tpu_fit.jsonl
    PYTHONPATH=. python benchmarks/tpu_fit.py --output=benchmarks/results/tpu_fit.jsonl --topologies=h100,t4
    PYTHONPATH=. python benchmarks/tpu_fit.py --configs=small --topologies=v5e:1x1 --scans=pallas

Each cell is one ``python -m sasmamba_jax.aot`` process (config as shipped,
plus ``--config.model.scan``, ``--config.model.remat`` and
``--config.num_microbatches=1``), so nothing is chosen for it. Cells already
in ``--output`` (JSON lines) are not compiled again: a long table can be
built over several runs. Prints two Markdown tables, a column per back end:
the peak GB per chip with remat off / on, a line per config and topology
(the README's), then peak and compile time, a line per config, topology and
remat (docs/tpu.md's).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

CONFIGS = {"small": "configs/h36m_243.py", "large": "configs/h36m_243_large.py"}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="small,large")
    parser.add_argument(
        "--topologies",
        default="v5e:1x1,v5e:2x2,v5p:2x2x1,h100,h200,b200,a100,l4,t4,v100",
        help="TPU topologies or GPU hosts",
    )
    parser.add_argument("--scans", default="pallas,sequential,chunked,associative")
    parser.add_argument("--remats", default="False,True")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per compile")
    parser.add_argument("--output", default="tpu_fit.jsonl")
    return parser.parse_args()


def cell_key(row):
    return (row["config"], row["topology"], row["scan"], row["remat"])


def compile_cell(config, topology, scan, remat, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        command = [
            sys.executable,
            "-m",
            "sasmamba_jax.aot",
            f"--config={CONFIGS[config]}",
            f"--topology={topology}",
            f"--config.model.scan={scan}",
            f"--config.model.remat={remat}",
            "--config.num_microbatches=1",
            f"--json={path}",
        ]
        try:
            env = {**os.environ, "JAX_PLATFORMS": "cpu"}
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"compile ran over {timeout} s"}
        if not os.path.exists(path):
            return {"error": _error_line(result.stderr)}
        with open(path) as f:
            return json.load(f)


def _error_line(stderr: str) -> str:
    """The line of a failed tool run that says what went wrong (the tool's own, or the exception's)."""
    lines = stderr.strip().splitlines() or ["no report"]
    errors = [
        line for line in lines if re.match(r"^(sasmamba_jax.aot: error:|\w[\w.]*(Error|Exception)\b)", line)
    ]
    return (errors or lines)[-1][:200]


def format_cell(row):
    if row is None:
        return ""
    if "error" in row:
        # The tool's own one-line errors, to their first clause.
        return row["error"].removeprefix("sasmamba_jax.aot: error: ").split(";")[0]
    gigabytes = row["peak_bytes_per_chip"] / 1e9
    # libtpu stops at the memory it ran out of (a lower bound); XLA's GPU
    # compiler finishes and counts all of it.
    bound = "at least " if row["device_kind"].startswith("TPU") else ""
    fit = f"{gigabytes:.2f} GB" if row["fits"] else f"does not fit ({bound}{gigabytes:.1f} GB)"
    return f"{fit}, {row['compile_s']:.0f} s"


def format_peak(row):
    """A cell's peak GB per chip, "no: X" where it does not fit (libtpu's "≥X" is a lower bound)."""
    if "error" in row:
        return "no Triton" if "needs Triton" in row["error"] else format_cell(row)
    gigabytes = row["peak_bytes_per_chip"] / 1e9
    if row["fits"]:
        return f"{gigabytes:.2f}"
    return f"no: ≥{gigabytes:.1f}" if row["device_kind"].startswith("TPU") else f"no: {gigabytes:.1f}"


def _place(rows, topology):
    """A topology with the memory a chip gives a program, where a report of it says so."""
    hbm = next(
        (r["hbm_bytes_per_chip"] for r in rows if r["topology"] == topology and "hbm_bytes_per_chip" in r),
        None,
    )
    return f"{topology} ({hbm / 1e9:.2f} GB)" if hbm else topology


def _markdown(header, lines):
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(line) + " |" for line in lines]
    )


def format_summary(rows):
    """One line per (config, topology), one column per scan back end: peak GB per chip, remat off / on."""
    by_key = {cell_key(row): row for row in rows}
    scans = list(dict.fromkeys(row["scan"] for row in rows))
    lines = []
    for config, topology in dict.fromkeys((r["config"], r["topology"]) for r in rows):
        cells = []
        for scan in scans:
            off_and_on = [by_key.get((config, topology, scan, remat)) for remat in (False, True)]
            cells.append(" / ".join(format_peak(cell) for cell in off_and_on if cell))
        lines.append([config, _place(rows, topology)] + cells)
    return _markdown(["config", "topology (memory per chip)"] + scans, lines)


def format_table(rows):
    """One line per (config, topology, remat), one column per scan back end: peak per chip, compile s."""
    by_key = {cell_key(row): row for row in rows}
    scans = list(dict.fromkeys(row["scan"] for row in rows))
    lines = []
    for config, topology, remat in dict.fromkeys((r["config"], r["topology"], r["remat"]) for r in rows):
        cells = [by_key.get((config, topology, scan, remat)) for scan in scans]
        lines.append(
            [config, _place(rows, topology), "on" if remat else "off"] + [format_cell(c) for c in cells]
        )
    return _markdown(["config", "topology (memory per chip)", "remat"] + scans, lines)


def main():
    args = parse_args()
    done = {}
    if os.path.exists(args.output):
        with open(args.output) as f:
            for line in f:
                row = json.loads(line)
                done[cell_key(row)] = row
    for config in args.configs.split(","):
        for topology in args.topologies.split(","):
            for scan in args.scans.split(","):
                for remat in args.remats.split(","):
                    key = (config, topology, scan, remat == "True")
                    if key in done:
                        continue
                    row = compile_cell(config, topology, scan, remat, args.timeout)
                    row.update(config=config, topology=topology, scan=scan, remat=remat == "True")
                    done[key] = row
                    with open(args.output, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    print(format_summary(list(done.values())))
    print()
    print(format_table(list(done.values())))


if __name__ == "__main__":
    main()
