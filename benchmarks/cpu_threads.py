"""How the sequential scan uses a multi-core CPU, side by side in one run.

    python benchmarks/cpu_threads.py

Three timings at the published scan size for B=1 (L=243*17, E=128, N=16),
each the best of --repeats after a compiling call:

1. one direction's scan loop in one compiled program;
2. the four directions' loops in one program (what the model runs): if
   XLA:CPU ran independent loops side by side this would take about
   4 / cores times (1), one after another it takes 4 times;
3. the four-direction program called from two Python threads at once, per
   call: side by side, two calls cost about what one does.

These set the floor of the model's B=1 forward on CPU: its ten scan calls
run one direction after another on one core.
"""

import argparse
import os
from concurrent.futures import ThreadPoolExecutor

import jax
from scan import best_time, scan_inputs  # benchmarks/scan.py, beside this file

from sasmamba_jax.ops import selective_scan

LENGTH, DIRECTIONS, CHANNELS, STATE = 243 * 17, 4, 128, 16


def scan_arguments(directions, seed):
    """selective_scan's positional arguments for B=1 at the published size."""
    return tuple(scan_inputs(1, LENGTH, directions, CHANNELS, STATE, seed).values())


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    scan = jax.jit(lambda *arrays: selective_scan(*arrays, backend="sequential"))
    one_direction = scan_arguments(1, seed=0)
    four_directions = [scan_arguments(DIRECTIONS, seed) for seed in (1, 2)]

    def two_threads():
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda arguments: jax.block_until_ready(scan(*arguments)), four_directions))

    single = best_time(scan, *one_direction, repeats=args.repeats)
    together = best_time(scan, *four_directions[0], repeats=args.repeats)
    threaded = best_time(two_threads, repeats=args.repeats) / 2
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")
    print(f"sequential scan, B=1, L={LENGTH}, E={CHANNELS}, N={STATE}; best of {args.repeats}")
    print(f"1 direction, one program              {single:8.4f} s")
    print(f"4 directions, one program             {together:8.4f} s  = {together / single:4.2f} x one")
    print(
        f"4 directions, two threads, per call   {threaded:8.4f} s  = "
        f"{threaded / together:4.2f} x one program alone"
    )


if __name__ == "__main__":
    main()
