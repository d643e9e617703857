"""Eager calls against compiled calls: what a notebook or custom-loop user waits.

For `ForwardFPI(DenseCell(64), solver="anderson")` and `MonotoneDense(64)` on a
32 x 64 float32 batch, in one run (median of --repeats calls after warm-up):

* eager: `layer(x)` called eagerly (the layer runs its solve as a cached
  `tf.function`, `compile_eager=True`, the default);
* compiled: `tf.function(layer)(x)`, the reference (as inside `model.fit`);
* op by op: `compile_eager=False`, the solve stepped eagerly (what eager calls
  cost before the cache);
* eager with a gradient: `layer(x)` under a `tf.GradientTape` plus the gradient
  of a sum, eagerly and inside `tf.function`.

Then 10 eager calls with 10 different batch sizes on a fresh layer, and the
number of traces of its cached solve (target: at most 2).

Run: python benchmarks/bench_eager.py [--repeats 15]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_implicit as ki  # noqa: E402
from results_io import save  # noqa: E402

BATCH, FEATURES, WIDTH = 32, 64, 64


def make(kind, **kwargs):
    keras.utils.set_random_seed(0)
    if kind == "ForwardFPI(DenseCell(64), anderson)":
        layer = ki.layers.ForwardFPI(ki.layers.DenseCell(WIDTH), solver="anderson", **kwargs)
    else:
        layer = ki.layers.MonotoneDense(WIDTH, **kwargs)
    layer.build((None, FEATURES))
    return layer


def median_ms(fn, repeats):
    for _ in range(3):  # warm-up: traces, XLA compilation, allocator
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        tf.nest.map_structure(lambda t: t.numpy(), out)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def grad_step(layer, x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    return tape.gradient(loss, layer.trainable_variables)


def traces_for_batch_sizes(kind):
    layer = make(kind)
    for b in (1, 3, 7, 8, 16, 31, 32, 50, 64, 100):
        layer(tf.random.normal([b, FEATURES]))
    fns = list(layer._compiled.functions.values())
    return sum(f.experimental_get_tracing_count() for f in fns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    x = tf.random.normal([BATCH, FEATURES], seed=1)
    rows = []
    for kind in ("ForwardFPI(DenseCell(64), anderson)", "MonotoneDense(64)"):
        layer = make(kind)
        slow = make(kind, compile_eager=False)
        compiled = tf.function(lambda t, layer=layer: layer(t))
        compiled_grad = tf.function(lambda t, layer=layer: grad_step(layer, t))
        row = {
            "layer": kind,
            "eager_ms": median_ms(lambda: layer(x), args.repeats),
            "compiled_ms": median_ms(lambda: compiled(x), args.repeats),
            "op_by_op_ms": median_ms(lambda: slow(x), max(3, args.repeats // 3)),
            "eager_grad_ms": median_ms(lambda: grad_step(layer, x), args.repeats),
            "compiled_grad_ms": median_ms(lambda: compiled_grad(x), args.repeats),
            "traces_10_batch_sizes": traces_for_batch_sizes(kind),
        }
        row["eager_over_compiled"] = row["eager_ms"] / row["compiled_ms"]
        row["op_by_op_over_compiled"] = row["op_by_op_ms"] / row["compiled_ms"]
        row["eager_grad_over_compiled"] = row["eager_grad_ms"] / row["compiled_grad_ms"]
        rows.append(row)

    lines = [
        f"Eager vs compiled calls, batch {BATCH} x {FEATURES}, float32, median of {args.repeats} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__})",
        "",
        "| layer | eager ms | compiled ms | eager / compiled | op-by-op ms (before) | op-by-op / compiled "
        "| eager+grad ms | compiled+grad ms | ratio | traces, 10 batch sizes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | {r['eager_over_compiled']:.2f} "
            f"| {r['op_by_op_ms']:.1f} | {r['op_by_op_over_compiled']:.1f} | {r['eager_grad_ms']:.2f} "
            f"| {r['compiled_grad_ms']:.2f} | {r['eager_grad_over_compiled']:.2f} | {r['traces_10_batch_sizes']} |"
        )
    save("bench_eager", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
