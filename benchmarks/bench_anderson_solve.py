"""Anderson's small least-squares solve outside XLA: unrolled elimination against one `tf.linalg.solve`.

`z = tanh(W z + x)` on a 32 x 64 float32 batch (spectral radius of W about 0.9),
memory-5 Anderson, tol 1e-6, with the unrolled backward (the loop is recorded, as
in `backward="unrolled"` and in second-derivative graphs) and XLA loops off. For
each way of solving, in one run and alternating (--rounds times): the time to
trace the `tf.function`, and the median of --repeats calls after a warm-up.
Without XLA the default (`unrolled_solve=None`) is `tf.linalg.solve`; under XLA
it is the elimination, which XLA fuses.

Run: python benchmarks/bench_anderson_solve.py [--repeats 30] [--rounds 2]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_implicit as ki  # noqa: E402
from results_io import save  # noqa: E402


def measure(unrolled, w, x, repeats):
    def run(x):
        z, info = ki.fixed_point(lambda z, x: tf.tanh(z @ w + x), tf.zeros_like(x), x,
                                 solver=ki.solvers.Anderson(unrolled_solve=unrolled), tol=1e-6, max_iter=60,
                                 backward="unrolled", check_captures=False)
        return z, info.iterations

    start = time.perf_counter()
    fn = tf.function(run).get_concrete_function(x)
    trace = time.perf_counter() - start
    fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        z, iterations = fn(x)
        z.numpy()
        times.append(time.perf_counter() - start)
    return trace, statistics.median(times), int(iterations)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ki.config.set_jit_loops(False)
    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((64, 64)).astype("float32") * 0.9 / 8)
    x = tf.constant(rng.standard_normal((32, 64)).astype("float32"))
    measure(False, w, x, 2)  # the process's first trace pays one-time costs
    rows = []
    for r in range(args.rounds):
        for unrolled in (True, False):
            trace, run, iterations = measure(unrolled, w, x, args.repeats)
            rows.append({"round": r, "solve": "elimination" if unrolled else "linalg.solve",
                         "trace_ms": 1e3 * trace, "run_ms": 1e3 * run, "iterations": iterations})
    lines = [f"Anderson's small solve without XLA, one run "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__})",
             "| round | solve | trace ms | run ms (median) | iterations |", "|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['solve']} | {r['trace_ms']:.0f} | {r['run_ms']:.2f} | {r['iterations']} |"
              for r in rows]
    for what in ("trace_ms", "run_ms"):
        by = {s: statistics.median(r[what] for r in rows if r["solve"] == s) for s in ("elimination", "linalg.solve")}
        lines.append(f"elimination / linalg.solve, {what[:-3]}: {by['elimination'] / by['linalg.solve']:.2f}")
    save("bench_anderson_solve", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
