"""Cost of a short solve against max_iter: it should not grow with the cap.

`fixed_point(lambda z, x: 0.5 z + x)` on an 8 x 4 float32 batch takes 6
Anderson iterations to tol 1e-5 whatever `max_iter` is. Printed: seconds for
an eager call (the loop stepped op by op; one call) and milliseconds for a
compiled call (`tf.function`, after a warm-up; median of 5), with the solver
loops uncompiled and with XLA, and the length of `SolverInfo.trace`.

Run: python benchmarks/bench_max_iter.py [--max-iters 1000 30000 300000]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import keras_implicit as ki  # noqa: E402


def solve(x, max_iter):
    return ki.fixed_point(lambda z, x: 0.5 * z + x, tf.zeros([8, 4]), x, max_iter=max_iter, tol=1e-5)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-iters", type=int, nargs="+", default=[1000, 30000, 300000])
    args = parser.parse_args()
    x = tf.ones([8, 4])
    print(f"max_iter vs time of a 6-iteration solve ({platform.machine()}, {os.cpu_count()} cores, "
          f"TF {tf.__version__})\n")
    print("| max_iter | iterations | eager s | compiled ms | compiled, XLA loop ms | trace length |")
    print("|---|---|---|---|---|---|")
    for max_iter in args.max_iters:
        ki.config.set_jit_loops(False)
        start = time.perf_counter()
        _, info = solve(x, max_iter)
        eager = time.perf_counter() - start
        compiled = []
        for jit in (False, True):
            ki.config.set_jit_loops(jit)
            fn = tf.function(lambda x: solve(x, max_iter))
            fn(x)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                _, graph_info = fn(x)
                int(graph_info.iterations)
                times.append(time.perf_counter() - start)
            compiled.append(1000 * statistics.median(times))
        print(f"| {max_iter} | {int(info.iterations)} | {eager:.3f} | {compiled[0]:.1f} | {compiled[1]:.1f} | "
              f"{info.trace.shape[0]} |", flush=True)


if __name__ == "__main__":
    main()
