"""JIIO against nested projected gradient descent, side by side in one run.

Both solve `min_x l(x, z)` subject to `z = f(z, x)` per sample from `x0 = 0`,
to the same stationarity: JIIO (`keras_implicit.jiio.solve`, Anderson on the
stacked `(z, x, mu)`) until its stacked residual is below `--tol`, the
nested baseline (`jiio.nested_input_optimization`: a full Anderson DEQ solve
and its adjoint per gradient step, warm-started) until every sample's
gradient mapping is below 10 x `--tol`. Reported: cell evaluations
(JIIO: evaluations of `f`, each with one vector-Jacobian product; nested:
forward plus adjoint iterations), wall time (JIIO: median of compiled calls
after a warm-up; nested: median over runs of the sum of its compiled steps,
the first step, which traces, counted at the median step time), and the
objective each reaches (float64).

Problems:
* linear-quadratic: `f = A z + B x + c` (`||A|| = 0.6`, 6 states, 3 inputs),
  `l = 1/2 ||C z - y||^2 + 0.15 ||x||^2`, batch 4 (convex; as tests/test_jiio.py);
* tanh DEQ: `f = tanh(A z + B x)` (`||A|| = 0.8`, 64 states, 16 inputs),
  `l = ||z - target||^2 + 0.05 ||x||^2`, batch 32.

Run: python benchmarks/bench_jiio.py [--repeats 3] [--tol 1e-8]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_implicit import jiio  # noqa: E402
from results_io import save  # noqa: E402



def linear_quadratic():
    n, d, batch, lam = 6, 3, 4, 0.3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    a *= 0.6 / np.linalg.norm(a, 2)
    bm, c = rng.standard_normal((d, n)) / np.sqrt(n), rng.standard_normal(n)
    cm = rng.standard_normal((n, 5)) / np.sqrt(n)
    y = rng.standard_normal((batch, 5))
    f = lambda z, x: z @ a.T + x @ bm + c  # noqa: E731
    loss = lambda x, z: 0.5 * tf.reduce_sum((z @ cm - y) ** 2, 1) + 0.5 * lam * tf.reduce_sum(x**2, 1)  # noqa: E731
    return f, loss, (batch, n), (batch, d), {"jiio": 0.1, "nested": 0.15}


def tanh_deq():
    n, d, batch = 64, 16, 32
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n))
    a *= 0.8 / np.linalg.norm(a, 2)
    bm = rng.standard_normal((d, n)) / np.sqrt(d)
    target = 0.5 * np.tanh(rng.standard_normal((batch, n)))
    f = lambda z, x: tf.tanh(z @ a.T + x @ bm)  # noqa: E731
    loss = lambda x, z: tf.reduce_sum((z - target) ** 2, 1) + 0.05 * tf.reduce_sum(x**2, 1)  # noqa: E731
    return f, loss, (batch, n), (batch, d), {"jiio": 0.03, "nested": 0.03}


def measure(name, problem, tol, repeats):
    f, loss, z_shape, x_shape, alpha = problem()
    z0, x0 = tf.zeros(z_shape, tf.float64), tf.zeros(x_shape, tf.float64)
    solve = tf.function(lambda z, x: jiio.solve(f, loss, z, x, alpha_x=alpha["jiio"], tol=tol, max_iter=2000,
                                                on_failure="ignore"))
    x, z, _, info = solve(z0, x0)  # warm-up: trace and XLA compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x, z, _, info = solve(z0, x0)
        float(info.residual[0])
        times.append(time.perf_counter() - start)
    row = {"problem": name, "jiio_evaluations": int(info.iterations), "jiio_s": statistics.median(times),
           "jiio_objective": float(tf.reduce_sum(loss(x, z))),
           "jiio_kkt_max": float(tf.reduce_max(info.block_residuals))}
    times = []
    for _ in range(repeats):
        xn, zn, stats = jiio.nested_input_optimization(f, loss, z0, x0, alpha_x=alpha["nested"], steps=20000,
                                                       x_tol=10 * tol, tol=tol)
        # each run traces its compiled step once: its first step counts at the median step time
        seconds = stats["seconds"]
        times.append(statistics.median(seconds[1:]) + sum(seconds[1:]))
    row.update({"nested_steps": stats["steps"], "nested_evaluations": stats["cell_evaluations"],
                "nested_s": statistics.median(times), "nested_objective": float(tf.reduce_sum(loss(xn, zn))),
                "max_x_difference": float(np.abs(xn.numpy() - x.numpy()).max())})
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-8)
    args = parser.parse_args()
    rows = [measure("linear-quadratic", linear_quadratic, args.tol, args.repeats),
            measure("tanh DEQ, 64 states", tanh_deq, args.tol, args.repeats)]
    lines = [f"JIIO vs nested projected gradient descent, tol {args.tol:g}, float64, median of {args.repeats} "
             f"({platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__})", "",
             "| problem | JIIO evaluations | nested steps | nested evaluations | evaluations ratio | JIIO s | nested s "
             "| time ratio | objective JIIO / nested | max x difference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['jiio_evaluations']} | {r['nested_steps']} | {r['nested_evaluations']} | "
            f"{r['nested_evaluations'] / r['jiio_evaluations']:.1f} | {r['jiio_s']:.3f} | {r['nested_s']:.3f} | "
            f"{r['nested_s'] / r['jiio_s']:.1f} | {r['jiio_objective']:.9g} / {r['nested_objective']:.9g} | "
            f"{r['max_x_difference']:.1e} |")
    save("bench_jiio", "\n".join(lines), {"tol": args.tol, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
