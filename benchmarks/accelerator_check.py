"""The first run on a GPU or TPU: parity with the release, scan and training-step times, in one go.

    PYTHONPATH=. python benchmarks/accelerator_check.py --json=check.json --markdown=check.md
    PYTHONPATH=. python benchmarks/accelerator_check.py --quick --json=/tmp/c.json --markdown=/tmp/c.md
    PYTHONPATH=. python benchmarks/accelerator_check.py --only=parity --json=p.json --markdown=p.md

Needs nothing beyond the repository and requirements.txt (no downloads, no
torch) and is meant to finish in under 8 minutes on one GPU or TPU (not yet
measured on one). Three steps, each with its share of that budget; every
measurement prints the time spent so far, the files are rewritten after each
one (a run cut short keeps what it measured), and the run ends with where the
time went:

  parity  the release's recorded fixture (tests/data), under "highest" matmul
          precision, for every scan back end "auto" can pick on this
          platform (CPU: sequential; TPU: pallas; NVIDIA GPU: pallas and the
          XLA back end it picks below compute capability 8.0): the scan
          alone on the release's recorded scan inputs, the tiny model's
          forward on the release's recorded input, and the loss and
          gradients of the release's first training step.
  scan    the selective scan's forward and forward+backward (gradients of all
          seven inputs) at the published size, B=16 L=4131 K=4 E=128 N=16, for
          every back end (--scan-backends).
  train   one training step of configs/h36m_243.py at B=16 on synthetic clips
          of the right shape, on every local device as train.py runs it (its
          mesh, no remat, one microbatch), for --train-backends.

Timings use the platform's default matmul precision (the configs' default,
what users run). Each one: the compile (timed; no persistent cache, except
with --quick), one warm-up call, then --repeats calls (fewer where the
warm-up says they would take over 30 s) each waited on with
block_until_ready; the median is reported with its ratio to the sequential
back end's, measured in the same run.

Writes one JSON record per measurement (with the device kind and the jax
version) and a markdown table ready for docs/performance.md. Exits 1 if a
parity check fails. A back end that fails to compile or run (out of memory,
say) is a row with its error, not a failed run; bad flags exit 2. --quick
runs tiny sizes once each, in about a minute on a 2-core CPU:
tests/test_accelerator_check.py runs it on two fake CPU devices.
"""

import argparse
import dataclasses
import datetime
import json
import pathlib
import statistics
import sys
import time

import jax
import jaxlib
import numpy as np
from flax import nnx
from sasmamba_jax.configs import h36m_243, tiny
from scan import BACKENDS, label, scan_inputs  # benchmarks/scan.py, beside this file

from sasmamba_jax import targets
from sasmamba_jax.io import errors, model_dirs, pytorch
from sasmamba_jax.model import precision
from sasmamba_jax.model.forward import predict
from sasmamba_jax.ops import selective_scan
from sasmamba_jax.ops.selective_scan import PRE_TRITON_GPU_BACKEND, resolve_backend
from sasmamba_jax.parallel import sharding
from sasmamba_jax.train import memory, recipe

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
FIXTURE_FILES = ("official_tiny.npz", "official_tiny_trainstep.npz")
STEPS = ("parity", "scan", "train")
# Seconds each step may take on one accelerator: 8 minutes in all.
BUDGET_S = {"parity": 90.0, "scan": 150.0, "train": 240.0}
# Seconds the timed calls of one measurement may take, judged by its warm-up call.
TIMING_CAP_S = 30.0
# The tolerances of tests/test_model.py and tests/test_train.py.
SCAN_ATOL = 2e-5
FORWARD_ATOL = 1e-4
GRADIENT_ATOL = 1e-5
LOSS_RTOL = 1e-5
TRAIN_BACKENDS = ("pallas", "sequential", "chunked")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes: the scan's (B, L, E) with K=4 and N=16; the training step's batch and model."""

    scan_batch: int
    scan_length: int
    scan_channels: int
    train_batch: int
    train_model: dict


PUBLISHED = Sizes(scan_batch=16, scan_length=243 * 17, scan_channels=128, train_batch=16, train_model={})
# The training step of the tiny fixture model cut to 9 frames and one layer pair.
QUICK = Sizes(
    scan_batch=2, scan_length=2 * 17, scan_channels=16, train_batch=4, train_model=dict(num_frames=9, depth=1)
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, metavar="PATH", help="where to write the records")
    parser.add_argument("--markdown", required=True, metavar="PATH", help="where to write the tables")
    parser.add_argument(
        "--only", default=",".join(STEPS), metavar="STEPS", help=f"steps to run (default: {','.join(STEPS)})"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one timed call each: the CPU smoke run"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        metavar="N",
        help="timed calls per measurement (default 5; --quick: 1)",
    )
    parser.add_argument(
        "--parity-backends",
        metavar="NAMES",
        help="scan back ends to check against the fixture (default: those 'auto' picks on this platform)",
    )
    parser.add_argument(
        "--scan-backends",
        default=",".join(BACKENDS),
        metavar="NAMES",
        help=f"scan back ends to time (default: {','.join(BACKENDS)})",
    )
    parser.add_argument(
        "--train-backends",
        default=",".join(TRAIN_BACKENDS),
        metavar="NAMES",
        help=f"back ends to time the training step with (default: {','.join(TRAIN_BACKENDS)})",
    )
    args = parser.parse_args(argv)
    args.only = _names(parser, "--only", args.only, STEPS)
    args.scan_backends = _names(parser, "--scan-backends", args.scan_backends, BACKENDS)
    args.train_backends = _names(parser, "--train-backends", args.train_backends, BACKENDS)
    if args.parity_backends is not None:
        args.parity_backends = _names(parser, "--parity-backends", args.parity_backends, BACKENDS)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.quick:
        args.repeats = 1
    args.sizes = QUICK if args.quick else PUBLISHED
    return args


def _names(parser, flag, text, allowed):
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        parser.error(f"{flag}: expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
    return names


def auto_backends(device: jax.Device) -> list[str]:
    """The back ends ``selective_scan(backend="auto")`` picks on ``device``'s platform that run on it.

    The one it picks for this device, and on an NVIDIA GPU also the one it
    picks for GPUs without Triton (compute capability below 8.0), which every
    NVIDIA GPU runs.
    """
    backends = [resolve_backend("auto", device)]
    if targets.target_of(device).platform == "cuda" and PRE_TRITON_GPU_BACKEND not in backends:
        backends.append(PRE_TRITON_GPU_BACKEND)
    return backends


class Clock:
    """Wall time since the start, per step against its budget."""

    def __init__(self):
        self.start = time.perf_counter()
        self.step_start = {}

    def begin(self, step):
        self.step_start[step] = time.perf_counter()
        print(f"\n== {step} (budget {BUDGET_S[step]:.0f} s of {sum(BUDGET_S.values()):.0f} s)", flush=True)

    def step_seconds(self, step):
        return time.perf_counter() - self.step_start[step]

    def progress(self, step, text):
        total = time.perf_counter() - self.start
        spent = self.step_seconds(step)
        over = "  OVER BUDGET" if spent > BUDGET_S[step] else ""
        print(f"[{total:6.1f} s | {step} {spent:5.1f}/{BUDGET_S[step]:.0f} s] {text}{over}", flush=True)


def first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {errors.first_line(error)}"[:300]


# ---------------------------------------------------------------------------
# Parity with the release fixture


def load_fixture(directory: pathlib.Path) -> dict:
    """The release's recorded forward and first training step, by "forward/" and "step/" keys."""
    forward_file, step_file = (directory / name for name in FIXTURE_FILES)
    with np.load(forward_file) as forward, np.load(step_file) as step:
        fixture = {f"forward/{key}": forward[key] for key in forward.files}
        fixture.update({f"step/{key}": step[key] for key in step.files if key != "config"})
    return fixture


def release_model(fixture: dict, backend: str):
    """The release's tiny model (its parameters as the fixture records them) with scan ``backend``."""
    state_dict = {
        key.removeprefix("step/init/"): v for key, v in fixture.items() if key.startswith("step/init/")
    }
    config = pytorch.infer_config(state_dict).with_options(
        scan=backend, drop_path_rate=0.0, stride_grad="release"
    )
    return model_dirs.build_model(config, pytorch.state_dict_to_params(state_dict, config))


def _ours(t, directions):
    """The release's (B, K * X, L) scan layout -> ours, (B, L, K, X)."""
    batch, _, length = t.shape
    return t.reshape(batch, directions, -1, length).transpose(0, 3, 1, 2)


def scan_parity(fixture: dict, backend: str) -> dict:
    """Our scan on the release's recorded inputs of its first block's scan against its recorded output."""
    prefix = "forward/scan.STEblocks.0."
    recorded = {key.removeprefix(prefix): v for key, v in fixture.items() if key.startswith(prefix)}
    directions = recorded["Bs"].shape[1]
    state = recorded["A"].shape[1]
    y = selective_scan(
        _ours(recorded["u"], directions),
        _ours(recorded["delta"], directions),
        recorded["A"].reshape(directions, -1, state),
        recorded["Bs"].transpose(0, 3, 1, 2),
        recorded["Cs"].transpose(0, 3, 1, 2),
        recorded["Ds"].reshape(directions, -1),
        recorded["delta_bias"].reshape(directions, -1),
        backend=backend,
    )
    ours = np.asarray(y).transpose(0, 2, 3, 1).reshape(recorded["y"].shape)
    error = float(np.max(np.abs(ours - recorded["y"])))
    return dict(max_abs_error=error, tolerance=SCAN_ATOL, passed=error <= SCAN_ATOL)


def forward_parity(fixture: dict, backend: str) -> dict:
    """The tiny model's output on the release's recorded input against the release's output."""
    out = np.asarray(predict(release_model(fixture, backend), fixture["forward/x"]))
    error = float(np.max(np.abs(out - fixture["forward/y"])))
    return dict(max_abs_error=error, tolerance=FORWARD_ATOL, passed=error <= FORWARD_ATOL)


def gradient_parity(fixture: dict, backend: str) -> dict:
    """The loss and every parameter's gradient of the release's first training step."""
    model = release_model(fixture, backend)
    graphdef, params = nnx.split(nnx.view(model, deterministic=False))
    # One device's program, whatever the host has: the kernels' numerics, not the mesh's.
    params = jax.device_put(params, jax.devices()[0])
    batch = {"input_2d": fixture["step/x0"], "target_3d": fixture["step/y0"]}
    (loss, _), grads = jax.jit(recipe.loss_and_grads, static_argnums=0)(
        graphdef, params, batch, jax.random.key(0)
    )
    ours = pytorch.params_to_state_dict(jax.device_get(nnx.to_pure_dict(grads)), model.config.depth)
    errors = {name: float(np.max(np.abs(grad - fixture[f"step/grad/{name}"]))) for name, grad in ours.items()}
    missing = {key for key in fixture if key.startswith("step/grad/")} - {f"step/grad/{n}" for n in ours}
    worst = max(errors, key=errors.get)
    release_loss = float(fixture["step/loss"][0])
    loss_error = abs(float(loss) - release_loss) / abs(release_loss)
    passed = errors[worst] <= GRADIENT_ATOL and loss_error <= LOSS_RTOL and not missing
    return dict(
        max_abs_error=errors[worst],
        tolerance=GRADIENT_ATOL,
        worst_parameter=worst,
        loss_relative_error=loss_error,
        loss_tolerance=LOSS_RTOL,
        missing_gradients=sorted(missing),
        passed=passed,
    )


PARITY_CHECKS = {"scan": scan_parity, "forward": forward_parity, "gradient": gradient_parity}


def run_parity(args, clock, report, fixture) -> None:
    backends = args.parity_backends or auto_backends(jax.devices()[0])
    with precision.use_matmul_precision(precision.PARITY_MATMUL_PRECISION):
        for backend in backends:
            for check, function in PARITY_CHECKS.items():
                start = time.perf_counter()
                record = dict(step="parity", check=check, backend=backend)
                record["matmul_precision"] = precision.PARITY_MATMUL_PRECISION
                try:
                    record.update(function(fixture, backend))
                except Exception as error:  # a back end that cannot run here fails its check
                    record.update(passed=False, error=first_line(error))
                record["seconds"] = time.perf_counter() - start
                report.add(record)
                verdict = "ok" if record["passed"] else "FAILED"
                detail = record.get("error") or (
                    f"max abs error {record['max_abs_error']:.2e} (tolerance {record['tolerance']:.0e})"
                )
                clock.progress("parity", f"{check:<8} {label(backend):<20} {verdict:<6} {detail}")


# ---------------------------------------------------------------------------
# Timing


def time_compiled(compiled, args, repeats, *, carry=None, cap_s=TIMING_CAP_S):
    """Median, min and max seconds of up to ``repeats`` calls after one warm-up call.

    Fewer calls (at least one) where the warm-up says ``repeats`` would take
    more than ``cap_s``: a slow back end must not eat the run's budget.
    ``carry``: the index of an argument the call donates and returns as its
    first output (a training state), threaded from call to call.
    """

    def call():
        out = compiled(*args)
        if carry is not None:
            args[carry] = out[0]
        return out

    start = time.perf_counter()
    jax.block_until_ready(call())
    warm_up_s = time.perf_counter() - start
    repeats = max(1, min(repeats, int(cap_s / warm_up_s)))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        seconds.append(time.perf_counter() - start)
    return dict(median_s=statistics.median(seconds), min_s=min(seconds), max_s=max(seconds), repeats=repeats)


def compile_timed(jitted, *args):
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def scan_functions(backend: str):
    """The scan's forward, and its forward+backward (gradients of all seven inputs), jitted."""

    def forward(*inputs):
        return selective_scan(*inputs, backend=backend)

    def loss(*inputs):
        return forward(*inputs).sum()

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=tuple(range(7))))


def run_scan(args, clock, report) -> None:
    sizes = args.sizes
    shape = dict(B=sizes.scan_batch, L=sizes.scan_length, K=4, E=sizes.scan_channels, N=16)
    inputs = scan_inputs(sizes.scan_batch, sizes.scan_length, 4, sizes.scan_channels, 16)
    operands = [inputs[name] for name in ("u", "delta", "A", "B", "C", "D", "delta_bias")]
    print("selective scan, " + " ".join(f"{k}={v}" for k, v in shape.items()), flush=True)
    for backend in args.scan_backends:
        for mode, jitted in zip(("forward", "forward+backward"), scan_functions(backend)):
            record = dict(step="scan", backend=backend, label=label(backend), mode=mode, shape=shape)
            record["matmul_precision"] = "default"
            try:
                compiled, record["compile_s"] = compile_timed(jitted, *operands)
                record["temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
                record.update(time_compiled(compiled, list(operands), args.repeats))
            except Exception as error:  # out of memory, say: a result too
                record["error"] = first_line(error)
            report.add(record)
            clock.progress("scan", f"{mode:<17} {label(backend):<20} {_timing_text(record)}")


def training_config(args, backend):
    config = (tiny if args.quick else h36m_243).get_config().copy_and_resolve_references()
    with config.unlocked():
        config.model.update(args.sizes.train_model)
        config.model.scan = backend
        config.model.remat = False
        config.num_microbatches = 1
        config.batch_size = args.sizes.train_batch
    return config


def synthetic_batch(config, mesh):
    """Clips of the training step's shape: 2D keypoints in [-1, 1], root-relative 3D targets."""
    model_cfg = recipe.model_config(config)
    shape = (config.batch_size, model_cfg.num_frames, 17)
    rng = np.random.default_rng(0)
    target = rng.normal(scale=0.2, size=(*shape, 3)).astype(np.float32)
    target -= target[:, :, :1]
    batch = {
        "input_2d": rng.uniform(-1, 1, (*shape, model_cfg.in_chans)).astype(np.float32),
        "target_3d": target,
    }
    return jax.device_put(batch, sharding.batch_sharding(mesh))


def time_train_step(args, backend) -> dict:
    config = training_config(args, backend)
    mesh = sharding.make_mesh(config.mesh)
    # As train.py runs the step: under the mesh (the Pallas scan splits its
    # kernels over it) and at the config's matmul precision.
    with jax.set_mesh(mesh), precision.use_matmul_precision(config.matmul_precision):
        state = recipe.place_state(recipe.create_train_state(config, recipe.create_model(config)), mesh)
        batch = synthetic_batch(config, mesh)
        compiled, compile_s = compile_timed(recipe.train_step, state, batch)
        record = dict(compile_s=compile_s, peak_bytes=memory.compiled_peak_bytes(compiled))
        record.update(time_compiled(compiled, [state, batch], args.repeats, carry=0))
    model_cfg = recipe.model_config(config)
    record.update(
        matmul_precision=config.matmul_precision,
        devices=mesh.devices.size,
        batch=config.batch_size,
        frames=model_cfg.num_frames,
        dim=model_cfg.dim,
        depth=model_cfg.depth,
        clips_per_s=config.batch_size / record["median_s"],
    )
    return record


def run_train(args, clock, report) -> None:
    config_name = "configs/tiny.py" if args.quick else "configs/h36m_243.py"
    print(f"training step of {config_name} at B={args.sizes.train_batch} on {jax.device_count()} device(s)")
    for backend in args.train_backends:
        record = dict(step="train", backend=backend, label=label(backend), config=config_name)
        try:
            record.update(time_train_step(args, backend))
        except Exception as error:  # out of memory, say: a result too
            record["error"] = first_line(error)
        report.add(record)
        clock.progress("train", f"{label(backend):<20} {_timing_text(record)}")


def _timing_text(record):
    if "error" in record:
        return record["error"]
    median_ms = record["median_s"] * 1e3
    return f"compile {record['compile_s']:6.1f} s  median {median_ms:10.2f} ms of {record['repeats']}"


# ---------------------------------------------------------------------------
# The report: JSON records, ratios and the markdown


class Report:
    """The records so far, both files rewritten after each one: a run cut short keeps what it measured."""

    def __init__(self, meta: dict, json_path: str, markdown_path: str):
        self.meta = meta
        self.records = []
        self.json_path = pathlib.Path(json_path)
        self.markdown_path = pathlib.Path(markdown_path)

    def add(self, record: dict) -> None:
        record.update(device_kind=self.meta["device_kind"], jax_version=self.meta["jax_version"])
        self.records.append(record)
        self.save()

    def save(self) -> None:
        add_ratios(self.records)
        self.json_path.write_text(json.dumps(dict(self.meta, records=self.records), indent=2) + "\n")
        self.markdown_path.write_text(markdown(self.meta, self.records))


def add_ratios(records: list[dict]) -> None:
    """Each timing's median over the sequential back end's for the same step and mode."""
    for record in records:
        if record["step"] == "parity" or "median_s" not in record:
            continue
        base = [
            r
            for r in records
            if r["step"] == record["step"]
            and r.get("mode") == record.get("mode")
            and r["backend"] == "sequential"
            and "median_s" in r
        ]
        if base:
            record["time_vs_sequential"] = record["median_s"] / base[0]["median_s"]


def pallas_speedups(records: list[dict]) -> list[str]:
    """Lines: the fastest XLA back end's scan time over the Pallas kernel's, per mode (issue 22 asks 10x)."""
    lines = []
    for mode in ("forward", "forward+backward"):
        timed = [r for r in records if r["step"] == "scan" and r["mode"] == mode and "median_s" in r]
        pallas = [r for r in timed if r["backend"] == "pallas"]
        xla = [r for r in timed if r["backend"] != "pallas"]
        if pallas and xla:
            fastest = min(xla, key=lambda r: r["median_s"])
            speedup = fastest["median_s"] / pallas[0]["median_s"]
            name = fastest["backend"]
            lines.append(f"scan {mode}: the fastest XLA back end ({name}) takes {speedup:.2f}x pallas's time")
    return lines


def _ms(seconds):
    return f"{seconds * 1e3:.2f}"


def _gb(number):
    return f"{number / 1e9:.2f}"


def markdown(meta: dict, records: list[dict]) -> str:
    lines = [
        f"Device: {meta['device_kind']} ({meta['platform']}, {meta['devices']} device(s)); "
        f"jax {meta['jax_version']}; {meta['date']}; {'quick' if meta['quick'] else 'full'} run",
        "",
        "```bash",
        f"PYTHONPATH=. python benchmarks/accelerator_check.py {' '.join(meta['argv'])}",
        "```",
    ]
    parity = [r for r in records if r["step"] == "parity"]
    if parity:
        lines += [
            "",
            f"Parity with the release fixture, matmul precision {precision.PARITY_MATMUL_PRECISION}:",
            "",
            "| check | back end | max abs error | tolerance | result |",
            "|---|---|---|---|---|",
        ]
        for r in parity:
            error = r["error"] if "error" in r else f"{r['max_abs_error']:.2e}"
            tolerance = f"{r['tolerance']:.0e}" if "tolerance" in r else "-"
            cells = [r["check"], label(r["backend"]), error, tolerance, "ok" if r["passed"] else "FAILED"]
            lines.append("| " + " | ".join(cells) + " |")
    scans = [r for r in records if r["step"] == "scan"]
    if scans:
        shape = " ".join(f"{k}={v}" for k, v in scans[0]["shape"].items())
        lines += [
            "",
            f"Selective scan, {shape} (median of up to {meta['repeats']} calls after a warm-up; "
            "time ratio to sequential, >1 is slower):",
            "",
            "| mode | back end | median ms | vs sequential | calls: min-max ms | compile s | temp GB |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_timing_row(r, [r["mode"], r["label"]], _gb(r.get("temp_bytes", 0))) for r in scans]
        lines += [""] + [f"- {line}" for line in pallas_speedups(records)]
    trains = [r for r in records if r["step"] == "train"]
    if trains:
        lines += [
            "",
            f"Training step, {trains[0]['config']} at B={meta['train_batch']}, synthetic clips, "
            f"no remat, one microbatch (median of up to {meta['repeats']} calls after a warm-up; "
            "peak: one device's):",
            "",
            "| back end | devices | median ms | vs sequential | calls: min-max ms | compile s | peak GB |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            _timing_row(r, [r["label"], str(r.get("devices", "-"))], _gb(r.get("peak_bytes", 0)))
            for r in trains
        ]
    return "\n".join(lines) + "\n"


def _timing_row(record, leading, memory):
    if "error" in record:
        return "| " + " | ".join(leading) + f" | {record['error']} | | | | |"
    ratio = f"{record['time_vs_sequential']:.2f}" if "time_vs_sequential" in record else "-"
    cells = [
        *leading,
        _ms(record["median_s"]),
        ratio,
        f"{record['repeats']}: {_ms(record['min_s'])}-{_ms(record['max_s'])}",
        f"{record['compile_s']:.1f}",
        memory,
    ]
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [name for name in FIXTURE_FILES if not (FIXTURES / name).is_file()]
    if "parity" in args.only and missing:
        print(f"error: the release fixture {FIXTURES / missing[0]} is missing", file=sys.stderr)
        return 2
    if not args.quick:
        # Cold compiles: a persistent cache would make the compile times meaningless.
        # A smoke run keeps the cache it is given (the test suite's).
        jax.config.update("jax_enable_compilation_cache", False)
    device = jax.devices()[0]
    meta = dict(
        device_kind=device.device_kind,
        platform=device.platform,
        devices=jax.device_count(),
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        quick=args.quick,
        repeats=args.repeats,
        train_batch=args.sizes.train_batch,
        argv=sys.argv[1:] if argv is None else list(argv),
        step_seconds={},
    )
    print(
        f"{meta['device_kind']} ({meta['platform']}, {meta['devices']} device(s)), jax {meta['jax_version']}"
    )
    clock = Clock()
    report = Report(meta, args.json, args.markdown)
    runners = {
        "parity": lambda: run_parity(args, clock, report, load_fixture(FIXTURES)),
        "scan": lambda: run_scan(args, clock, report),
        "train": lambda: run_train(args, clock, report),
    }
    spent = meta["step_seconds"]
    for step in STEPS:
        if step in args.only:
            clock.begin(step)
            runners[step]()
            spent[step] = clock.step_seconds(step)
            report.save()
    records = report.records

    print("\nwhere the time went:")
    for step, seconds in spent.items():
        over = "  OVER BUDGET" if seconds > BUDGET_S[step] else ""
        print(f"  {step:<7}{seconds:7.1f} s of {BUDGET_S[step]:.0f} s{over}")
    print(f"  total  {sum(spent.values()):7.1f} s of {sum(BUDGET_S.values()):.0f} s")
    for line in pallas_speedups(records):
        print(line)
    failed = [r for r in records if r["step"] == "parity" and not r["passed"]]
    errors = [r for r in records if r["step"] != "parity" and "error" in r]
    for r in errors:
        print(f"{r['step']} {r['backend']} {r.get('mode', '')}: {r['error']}")
    print(f"wrote {args.json} and {args.markdown}")
    if failed:
        which = ", ".join(f"{r['check']} with {r['backend']}" for r in failed)
        print(f"parity FAILED: {which}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
