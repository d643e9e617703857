"""Every layer family trained on digits in float32, mixed_float16 and mixed_bfloat16.

Protocol: sklearn digits, stratified 80/20 split (random_state=0), standardized.
One small model per family (below), the same seed and initial weights in the
three policies; Adam 3e-3, batch 64, `--epochs` epochs (default 6), `--seeds`
(default 0 1 2). Under a mixed policy the families that need float32 (monDEQ,
LBEN, OptEq, linear DEQ, FPI_GD, the explicit Lipschitz layers:
`needs_float32`) compute in float32 and the rest of the model in half
precision; the others (ForwardFPI with a dense
cell, FPI_NN, GEQ, multi-branch, single-index) iterate their cell in half
precision with the solver's arithmetic in float32. The head is a half-precision
Dense whose logits are cast to float32 (Keras' advice for mixed precision);
`mixed_float16` trains with Keras' loss-scaling optimizer.

Prints, per family and policy, means over the seeds: test accuracy, its
difference with float32's (and the largest difference of a single seed: runs
in different precisions part ways after a few steps, so single seeds differ
by a few test samples, 1 point = 3.6 of 360), whether every gradient of a probe
batch and every loss is finite, the forward iterations of the last epoch, and
seconds per epoch (the seeds of a family and policy train one model, its steps
traced once: the first seed's time includes the tracing; float16 runs in software
on most CPUs: times here say nothing about a GPU's). The single-index DEQ has
one output unit: it learns "digit >= 5" (a binary task) in place of the ten
classes. Writes examples/output/mixed_precision_digits.json.

Run: python examples/mixed_precision_digits.py [--epochs 6] [--seeds 0 1 2] [--families fpi mondeq ...]
     python examples/mixed_precision_digits.py --print-saved   (the README table of the saved runs;
     a run of some --families replaces their rows there)
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_implicit import layers as L  # noqa: E402
from keras_implicit.datasets import load  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def _image(x):
    return keras.layers.Reshape((8, 8, 1))(x)


# family -> (body on the 64-feature input, classes); the head is added by `build`.
FAMILIES = {
    "fpi": (lambda x: L.ForwardFPI(L.DenseCell(64), name="deq")(x), 10),
    "fpi_nn": (lambda x: L.FPINetwork(32, hidden=64, name="deq")(x), 10),
    "fpi_gd": (lambda x: L.FPIGradientDescent(32, hidden=64, l2=0.5, name="deq")(x), 10),
    "mondeq_dense": (lambda x: L.MonotoneDense(64, tol=1e-3, name="deq")(x), 10),
    "mondeq_conv": (lambda x: keras.layers.Flatten()(L.MonotoneConv2D(8, tol=1e-3, name="deq")(_image(x))), 10),
    "mondeq_multiscale": (lambda x: keras.layers.Flatten()(
        L.MonotoneMultiscale((8, 16), tol=1e-3, name="deq")(_image(x))), 10),
    "lben_dense": (lambda x: L.LipschitzDense(64, 10, lipschitz=4.0, tol=1e-3, name="deq")(x), None),
    "lben_conv": (lambda x: L.LipschitzConv2D(8, 10, lipschitz=4.0, tol=1e-3, name="deq")(_image(x)), None),
    "opteq": (lambda x: L.OptEqDense(64, max_norm=0.9, name="deq")(x), 10),
    "geq": (lambda x: L.GaussianEquilibrium(64, max_norm=0.9, tol=1e-2, stop_mode="rel", name="deq")(x), 10),
    "multibranch": (lambda x: keras.layers.Flatten()(
        L.MultiBranchEquilibrium(8, scales=(1, 2), name="deq")(_image(x))), 10),
    "linear": (lambda x: L.LinearDEQ(64, name="deq")(x), 10),
    "single_index": (lambda x: L.SingleIndexDEQ("tanh", name="deq")(x), 2),
    "explicit_lipschitz": (lambda x: L.SandwichDense(64, output_units=10, name="deq")(
        L.CPLDense(64)(L.SLLDense(64)(L.AOLDense(64)(x)))), None),
}


def build(family, input_dim=64):
    """The family's model under the current global policy: logits in float32."""
    body, classes = FAMILIES[family]
    inputs = keras.Input((input_dim,))
    h = body(inputs)
    if classes is not None:  # (the LBEN and explicit models end in their own 10 outputs)
        h = keras.layers.Dense(classes)(h)
    logits = keras.layers.Activation("linear", dtype="float32")(h)
    return keras.Model(inputs, logits, name=family)


def labels(family, y):
    return (y >= 5).astype("int64") if FAMILIES[family][1] == 2 else y


def _finite_gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True), from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    return all(g is not None and bool(tf.reduce_all(tf.math.is_finite(tf.cast(g, "float32")))) for g in grads)


def train(family, policy, data, epochs=6, seed=0, batch_size=64, lr=3e-3, reuse=None):
    """Trains the family's model under `policy`; returns its figures (dict).

    `reuse`: a dict kept across the seeds of one family and policy. The first
    call keeps its compiled model there; later calls train that model again,
    from the initial weights a new model of their seed has and the optimizer's
    initial state, so that its training and test steps are not traced again.
    The figures are those of a new model per seed."""
    (x_tr, y_tr), (x_te, y_te) = data
    y_tr, y_te = labels(family, y_tr), labels(family, y_te)
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        model = build(family)
        if reuse:
            reuse["model"].set_weights(model.get_weights())
            model = reuse["model"]
            for v, value in zip(model.optimizer.variables, reuse["optimizer_state"]):
                v.assign(value)
        else:
            model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            if reuse is not None:
                model.optimizer.build(model.trainable_variables)
                reuse.update(model=model, optimizer_state=[v.numpy() for v in model.optimizer.variables])
        finite = _finite_gradients(model, x_tr[:64], y_tr[:64])
        start = time.perf_counter()
        hist = model.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size, verbose=0)
        seconds = time.perf_counter() - start
        res = model.evaluate(x_te, y_te, verbose=0, return_dict=True)
        iters = hist.history.get("deq_fwd_iters", [float("nan")])[-1]
        deq_dtype = next((lay.compute_dtype for lay in model.layers if lay.name == "deq"), None)
        return {"accuracy": float(res["accuracy"]), "final_loss": float(hist.history["loss"][-1]),
                "finite_gradients": finite and bool(np.isfinite(hist.history["loss"][-1])),
                "fwd_iters": float(iters), "seconds_per_epoch": seconds / epochs, "deq_compute_dtype": deq_dtype}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def compare(families, data, epochs=6, seeds=(0, 1, 2), policies=POLICIES):
    """`{family: {policy: figures}}`: means over `seeds` (accuracy, loss, iterations,
    seconds), `accuracies` per seed, `delta` (points of mean accuracy against
    float32) and `worst_seed_delta` (the largest per-seed difference, signed)."""
    table = {}
    for family in families:
        runs = {p: _seeds(family, p, data, epochs, seeds) for p in policies}
        row = {}
        for p in policies:
            row[p] = {k: float(np.mean([r[k] for r in runs[p]]))
                      for k in ("accuracy", "final_loss", "fwd_iters", "seconds_per_epoch")}
            row[p].update(accuracies=[r["accuracy"] for r in runs[p]],
                          finite_gradients=all(r["finite_gradients"] for r in runs[p]),
                          deq_compute_dtype=runs[p][0]["deq_compute_dtype"])
            diffs = [100 * (a - b["accuracy"]) for a, b in zip(row[p]["accuracies"], runs["float32"])]
            row[p]["delta"] = 100 * (row[p]["accuracy"] - np.mean([r["accuracy"] for r in runs["float32"]]))
            row[p]["worst_seed_delta"] = float(max(diffs, key=abs))
        table[family] = row
    return table


def _seeds(family, policy, data, epochs, seeds):
    reuse = {}
    return [train(family, policy, data, epochs, seed, reuse=reuse) for seed in seeds]


def markdown(table):
    """The README's table: mean accuracy (delta against float32) and forward iterations per policy."""
    lines = ["| family | equilibrium layer under a mixed policy | float32 | mixed_float16 | mixed_bfloat16 | "
             "forward iterations f32 / f16 / bf16 |", "|---|---|---|---|---|---|"]
    for family, row in table.items():
        acc = [f"{100 * row[p]['accuracy']:.2f}" for p in POLICIES]
        acc[1:] = [f"{a} ({round(row[p]['delta'], 2) + 0.0:+.2f})" for a, p in zip(acc[1:], POLICIES[1:])]
        iters = " / ".join(_iters(row[p]["fwd_iters"]).strip() for p in POLICIES)
        where = "float32" if row["mixed_float16"]["deq_compute_dtype"] == "float32" else "half"
        lines.append(f"| {family} | {where} | " + " | ".join(acc) + f" | {iters} |")
    return "\n".join(lines)


def _iters(value):
    return "    -" if np.isnan(value) else f"{value:5.1f}"  # (no iterations: exact or explicit)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--print-saved", action="store_true",
                        help="print the README table of the last run (examples/output) and exit")
    args = parser.parse_args()
    saved = os.path.join(os.path.dirname(__file__), "output", "mixed_precision_digits.json")
    if args.print_saved:
        with open(saved) as fh:
            print(markdown(json.load(fh)["rows"]))
        return
    data = load("digits")
    print(f"digits, {args.epochs} epochs, seeds {args.seeds}; mean test accuracy in %, delta: points of mean "
          "accuracy against float32, worst: largest per-seed difference")
    columns = f" {'acc':>6s} {'delta':>6s} {'worst':>6s} {'fin':>3s} {'iters':>5s} {'s/ep':>4s} {'dtype':>8s}"
    print(f"{'family':20s}" + "".join(f"{p:>{len(columns)}s}" for p in POLICIES))
    print(f"{'':20s}" + columns * len(POLICIES))
    table = {}
    for family in args.families:
        row = compare([family], data, args.epochs, args.seeds)[family]
        table[family] = row
        cells = "".join(f" {100 * r['accuracy']:6.2f} {r['delta']:+6.2f} {r['worst_seed_delta']:+6.2f}"
                        f" {'yes' if r['finite_gradients'] else 'NO':>3s} {_iters(r['fwd_iters'])}"
                        f" {r['seconds_per_epoch']:4.1f} {str(r['deq_compute_dtype'])[:8]:>8s}" for r in row.values())
        print(f"{family:20s}{cells}", flush=True)
    worst = max(abs(r["delta"]) for row in table.values() for r in row.values())
    seed_worst = max(abs(r["worst_seed_delta"]) for row in table.values() for r in row.values())
    print(f"largest |delta| of means: {worst:.2f} points; of single seeds: {seed_worst:.2f}; all gradients finite: "
          f"{all(r['finite_gradients'] for row in table.values() for r in row.values())}")
    print(markdown(table))
    # A run of some families (--families) replaces their rows in the saved table
    # of the same protocol, in the families' order; another protocol starts anew.
    rows = {}
    if os.path.exists(saved):
        with open(saved) as fh:
            old = json.load(fh)
        if old["epochs"] == args.epochs and old["seeds"] == args.seeds:
            rows = old["rows"]
    rows.update(table)
    rows = {f: rows[f] for f in FAMILIES if f in rows}
    os.makedirs(os.path.join(os.path.dirname(__file__), "output"), exist_ok=True)
    with open(saved, "w") as fh:
        json.dump({"epochs": args.epochs, "seeds": args.seeds, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
