"""monDEQ reproduction at small scale: MonotoneDense vs an MLP of the same size.

Protocol (Winston & Kolter 2020's MNIST FC model, scaled to sklearn digits):
stratified 80/20 split (random_state=0), standardized; MonotoneDense(87), m = 1,
Peaceman-Rachford with alpha = 1 and relative tolerance 1e-2 in training and testing
(as the paper), ReLU; Adam with a constant learning rate 1e-3 for 40 epochs, batch
size 64; against a one-hidden-layer ReLU MLP with the same parameter count. Reports
test accuracy (mean +- sd over seeds), forward/backward iterations per batch (last
epoch) and training time per epoch, and writes examples/output/mondeq_digits.json.

Run: python examples/mondeq_digits.py [--epochs 40] [--seeds 0 1 2]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_implicit.datasets import load  # noqa: E402
from keras_implicit.layers import MonotoneDense  # noqa: E402


def mondeq(input_dim, classes, width=87):
    inputs = keras.Input((input_dim,))
    z = MonotoneDense(width, m=1.0, solver="peaceman_rachford", alpha=1.0, tol=1e-2, name="deq")(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes)(z), name="mondeq")


def mlp_like(model, input_dim, classes):
    """One hidden ReLU layer with the parameter count of `model`: (d + 1 + c) h + c = P."""
    hidden = round((model.count_params() - classes) / (input_dim + 1 + classes))
    inputs = keras.Input((input_dim,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes)(h), name=f"mlp_{hidden}")


def fit_timed(build, data, seed, epochs, batch_size=64, lr=1e-3):
    """Builds with `seed`, trains with Adam (constant `lr`) on sparse labels and
    logits; returns `(model, history, seconds)`."""
    (x_tr, y_tr), _ = data
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    hist = model.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size, verbose=0)
    return model, hist, time.perf_counter() - start


def run(build, data, seed, epochs, batch_size=64, lr=1e-3):
    (x_te, y_te) = data[1]
    model, hist, seconds = fit_timed(build, data, seed, epochs, batch_size, lr)
    per_epoch = seconds / epochs
    res = model.evaluate(x_te, y_te, verbose=0, return_dict=True)
    return {
        "accuracy": res["accuracy"], "seconds_per_epoch": per_epoch, "params": model.count_params(),
        "fwd_iters": hist.history.get("deq_fwd_iters", [None])[-1],
        "bwd_iters": hist.history.get("deq_bwd_iters", [None])[-1],
    }


def summarize(runs):
    """Mean/sd accuracy and mean iterations and time over the seeds' runs."""
    acc = np.array([r["accuracy"] for r in runs]) * 100

    def mean(key):
        return None if runs[0][key] is None else float(np.mean([r[key] for r in runs]))

    return {"params": runs[0]["params"], "accuracy_mean": acc.mean(), "accuracy_sd": acc.std(),
            "accuracies": acc.tolist(), "seconds_per_epoch": mean("seconds_per_epoch"),
            "fwd_iters": mean("fwd_iters"), "bwd_iters": mean("bwd_iters")}


def compare(builders, data, seeds, epochs, title):
    """Trains every `builders[name]()` on `data` for each seed; prints and returns the table.

    `data` is one data set for all, or a dict name -> data set."""
    rows = {}
    for name, build in builders.items():
        d = data[name] if isinstance(data, dict) else data
        rows[name] = summarize([run(build, d, s, epochs) for s in seeds])
    print(f"\n{title}, Adam 1e-3 constant, batch 64, seeds {seeds}\n")
    print(f"{'model':<28}{'params':>8}{'test accuracy':>20}{'fwd it':>8}{'bwd it':>8}{'s/epoch':>9}")
    for name, r in rows.items():
        its = (f"{r['fwd_iters']:>8.1f}{r['bwd_iters']:>8.1f}" if r["fwd_iters"] is not None else f"{'-':>8}{'-':>8}")
        print(f"{name:<28}{r['params']:>8}{r['accuracy_mean']:>12.2f} +- {r['accuracy_sd']:.2f} %{its}"
              f"{r['seconds_per_epoch']:>9.2f}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist1d"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=87)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = load(args.dataset)
    d, classes = data[0][0].shape[1], 10
    builders = {"MonotoneDense": lambda: mondeq(d, classes, args.width)}
    builders["MLP (same parameters)"] = lambda: mlp_like(mondeq(d, classes, args.width), d, classes)
    rows = compare(builders, data, args.seeds, args.epochs, f"{args.dataset}, {args.epochs} epochs")
    out = args.out or os.path.join(os.path.dirname(__file__), "output", f"mondeq_{args.dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"dataset": args.dataset, "epochs": args.epochs, "seeds": args.seeds, "rows": rows}, fh, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
