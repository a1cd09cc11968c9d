"""SasMamba inference and training throughput, memory and compile time, per scan back end and dtype.

    python benchmarks/model.py                                   # everything, on the default platform
    python benchmarks/model.py --configs small --batches 1 --modes forward
    python benchmarks/model.py --modes train --compile-only      # peak memory without running
    python benchmarks/model.py --fake-cpu-devices 8 --modes train --batches 16   # 8-way data parallel

Runs unchanged on CPU, GPU and TPU. For each (config, batch, back end,
dtype) it reports compile time, steady-state time (best of --repeats),
throughput (frames/s for inference, clips/s for training), XLA's compiled
peak memory (arguments + outputs + temporaries, from ``memory_analysis``),
and a roofline line: analytic FLOPs per second against the machine's
measured matmul peak, and XLA's bytes-accessed estimate per second against
its measured copy bandwidth. Prints a table and writes JSON (--output).
"""

import argparse
import json
import os
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default="small,large", help="small (C=64, depth 5) and/or large (C=128, depth 10)"
    )
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--frames", type=int, default=243)
    parser.add_argument("--scans", default="sequential,associative,chunked")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--modes", default="forward,train")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument(
        "--remat", action="store_true", help="recompute block activations in the backward pass"
    )
    parser.add_argument(
        "--num-microbatches", type=int, default=1, help="accumulate the training step's gradient over N parts"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compile-only", action="store_true", help="report compile time and memory, do not run"
    )
    parser.add_argument("--fake-cpu-devices", type=int, default=0, help="split the CPU into N devices")
    parser.add_argument("--output", default="benchmark_model.json")
    return parser.parse_args()


ARGS = parse_args()
if ARGS.fake_cpu_devices:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.fake_cpu_devices}"

import jax  # noqa: E402  (XLA_FLAGS must be set first)
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402
from sasmamba_jax.configs import common  # noqa: E402

from sasmamba_jax.model import flops  # noqa: E402
from sasmamba_jax.model.sasmamba import SasMamba  # noqa: E402
from sasmamba_jax.parallel import sharding  # noqa: E402
from sasmamba_jax.train import recipe  # noqa: E402

SIZES = {"small": dict(dim=64, depth=5), "large": dict(dim=128, depth=10)}


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def machine_peaks(dtype):
    """Measured matmul FLOP/s (in ``dtype``) and copy bandwidth (bytes/s) of device 0."""
    n = 4096 if jax.default_backend() != "cpu" else 1024
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    flops_per_s = 2 * n**3 / best_time(lambda: matmul(a), 5)
    big = jnp.ones((64 * 2**20,), jnp.float32)
    copy = jax.jit(lambda x: x * 1.0001)
    jax.block_until_ready(copy(big))
    bytes_per_s = 2 * big.nbytes / best_time(lambda: copy(big), 5)
    return flops_per_s, bytes_per_s


def training_config(size, scan, dtype, batch):
    config = common.base_config()
    config.model.dim, config.model.depth = SIZES[size]["dim"], SIZES[size]["depth"]
    config.model.num_frames = ARGS.frames
    config.model.scan = scan
    config.model.chunk_size = ARGS.chunk_size
    config.model.remat = ARGS.remat
    config.dtype = dtype
    config.batch_size = batch
    config.num_microbatches = ARGS.num_microbatches
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    return config


def compiled_stats(compiled):
    memory = compiled.memory_analysis()
    peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    peak -= getattr(memory, "alias_size_in_bytes", 0)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return peak, float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")


def bench_forward(config, batch, repeats):
    model_cfg = recipe.model_config(config)
    model = nnx.jit(lambda: SasMamba(model_cfg, rngs=nnx.Rngs(0)))()
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    x = jnp.zeros((batch, model_cfg.num_frames, 17, model_cfg.in_chans), jnp.float32)
    apply = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    start = time.perf_counter()
    compiled = apply.lower(params, x).compile()
    compile_s = time.perf_counter() - start
    peak, bytes_accessed = compiled_stats(compiled)
    row = dict(compile_s=compile_s, peak_bytes=peak, bytes_accessed=bytes_accessed)
    if not ARGS.compile_only:
        jax.block_until_ready(compiled(params, x))
        seconds = best_time(lambda: compiled(params, x), repeats)
        row.update(seconds=seconds, throughput=batch * model_cfg.num_frames / seconds, unit="frames/s")
    row["flops"] = 2 * flops.model_macs(model_cfg)["total"] * batch
    return row


def bench_train(config, batch, repeats):
    mesh = sharding.make_mesh(config.mesh)
    model = recipe.create_model(config)
    state = recipe.place_state(recipe.create_train_state(config, model, steps_per_epoch=1000), mesh)
    model_cfg = recipe.model_config(config)
    shape = (batch, model_cfg.num_frames, 17)
    batch_sharding = sharding.batch_sharding(mesh)
    data = {
        "input_2d": jax.device_put(jnp.zeros((*shape, model_cfg.in_chans)), batch_sharding),
        "target_3d": jax.device_put(jnp.full((*shape, 3), 0.1), batch_sharding),
    }
    start = time.perf_counter()
    compiled = recipe.train_step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    peak, bytes_accessed = compiled_stats(compiled)
    row = dict(compile_s=compile_s, peak_bytes=peak, bytes_accessed=bytes_accessed, devices=mesh.devices.size)
    if not ARGS.compile_only:
        holder = {"state": state}

        def step():
            holder["state"], metrics = compiled(holder["state"], data)
            return metrics

        jax.block_until_ready(step())
        seconds = best_time(step, repeats)
        row.update(seconds=seconds, throughput=batch / seconds, unit="clips/s")
    # forward + backward: about three forward passes of work
    row["flops"] = 3 * 2 * flops.model_macs(model_cfg)["total"] * batch
    return row


def main():
    platform = jax.devices()[0]
    print(f"platform: {platform.platform} ({platform.device_kind}), {jax.device_count()} device(s)")
    peaks = {}
    results = []
    header = (
        f"{'config':<7}{'B':>4} {'mode':<8}{'scan':<12}{'dtype':<10}{'compile s':>10}{'step s':>9}"
        f"{'throughput':>18}{'peak GB':>9}{'TFLOP/s':>9}{'% mm peak':>10}{'GB/s':>8}{'% bw':>6}"
    )
    print(header)
    for size in ARGS.configs.split(","):
        for batch in map(int, ARGS.batches.split(",")):
            for mode in ARGS.modes.split(","):
                for scan in ARGS.scans.split(","):
                    for dtype in ARGS.dtypes.split(","):
                        if dtype not in peaks:
                            peaks[dtype] = machine_peaks(jnp.dtype(dtype))
                        config = training_config(size, scan, dtype, batch)
                        bench = bench_forward if mode == "forward" else bench_train
                        try:
                            row = bench(config, batch, ARGS.repeats)
                        except Exception as e:  # an out-of-memory back end is a result too
                            row = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
                        row.update(config=size, batch=batch, mode=mode, scan=scan, dtype=dtype)
                        results.append(row)
                        print(format_row(row, peaks[dtype]), flush=True)
    matmul_peak = {d: p[0] for d, p in peaks.items()}
    bandwidth = {d: p[1] for d, p in peaks.items()}
    with open(ARGS.output, "w") as f:
        json.dump(
            dict(
                platform=platform.platform,
                device_kind=platform.device_kind,
                devices=jax.device_count(),
                matmul_peak_flops=matmul_peak,
                copy_bandwidth_bytes=bandwidth,
                argv=sys.argv[1:],
                rows=results,
            ),
            f,
            indent=2,
        )
    print(f"wrote {ARGS.output}")


def format_row(row, peaks):
    prefix = f"{row['config']:<7}{row['batch']:>4} {row['mode']:<8}{row['scan']:<12}{row['dtype']:<10}"
    if "error" in row:
        return prefix + "  " + row["error"]
    seconds = row.get("seconds")
    text = prefix + f"{row['compile_s']:>10.1f}"
    if seconds is None:
        return text + f"{'-':>9}{'-':>18}{row['peak_bytes'] / 1e9:>9.2f}"
    tflops = row["flops"] / seconds / 1e12
    gbps = row["bytes_accessed"] / seconds / 1e9
    return text + (
        f"{seconds:>9.3f}{row['throughput']:>11.1f} {row['unit']:<6}{row['peak_bytes'] / 1e9:>9.2f}"
        f"{tflops:>9.3f}{100 * tflops * 1e12 / peaks[0]:>9.1f}%"
        f"{gbps:>8.1f}{100 * gbps * 1e9 / peaks[1]:>5.0f}%"
    )


if __name__ == "__main__":
    main()
