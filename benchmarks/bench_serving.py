"""Serving every batch size: time per new size and memory, side by side.

A `ForwardFPI(DenseCell(8))` + `Dense(3)` model on 6 features, exported with
`keras_implicit.export_saved_model` and reloaded. Each of `--sizes` distinct batch
sizes (1, 2, ..., n) is served once, by:

* the reloaded `serve` signature (unknown batch size: the solver loop runs
  uncompiled, nothing is compiled per size);
* `tf.function(model)` retraced per shape (each trace sees a known batch size, so its
  solver loop compiles with XLA: what every new batch size cost before issue 13 item 4,
  and what a user who wraps the model that way still pays).

Printed: median and total seconds per new batch size, and the process's resident memory
growth (RSS from /proc/self/statm) across the sizes, for each.

Run: python benchmarks/bench_serving.py [--sizes 60]
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_implicit as ki  # noqa: E402
from results_io import save  # noqa: E402


def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def serve_all(call, x, sizes):
    times = []
    start_rss = rss_mb()
    for n in range(1, sizes + 1):
        start = time.perf_counter()
        np.asarray(call(tf.constant(x[:n])))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "total_s": sum(times), "rss_growth_mb": rss_mb() - start_rss}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, default=60)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3)(ki.layers.ForwardFPI(ki.layers.DenseCell(8), tol=1e-5,
                                                                           name="deq")(inputs)))
    x = np.random.default_rng(0).standard_normal((args.sizes, 6)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        ki.export_saved_model(model, os.path.join(tmp, "sm"))
        loaded = tf.saved_model.load(os.path.join(tmp, "sm"))
        rows = {"reloaded serve signature (any batch size)": serve_all(loaded.serve, x, args.sizes)}
    traced = tf.function(lambda t: model(t))  # one trace per new batch size
    rows["tf.function(model), traced per size (XLA loop)"] = serve_all(traced, x, args.sizes)
    lines = [f"Serving {args.sizes} distinct batch sizes once each ({platform.machine()}, {os.cpu_count()} cores, "
             f"TF {tf.__version__})", "",
             "| path | median s per new size | total s | RSS growth MB |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_s']:.4f} | {r['total_s']:.2f} | {r['rss_growth_mb']:.0f} |")
    first, second = rows.values()
    lines.append("")
    lines.append(f"per-size time ratio (traced / serve): {second['median_s'] / first['median_s']:.0f}x")
    save("bench_serving", "\n".join(lines), {"sizes": args.sizes, "rows": rows})


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")  # the per-size retracing is what is measured
    main()
