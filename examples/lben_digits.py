"""LBEN reproduction at small scale: Lipschitz bound vs accuracy and certified robustness on digits.

Protocol (Revay, Wang & Manchester 2020's MNIST FC experiment, scaled to sklearn
digits): stratified 80/20 split (random_state=0), standardized; LipschitzDense(80)
with 10 outputs for gamma in {0.1, 0.2, 0.5, 1, 5} (m = 1, diagonal metric,
Peaceman-Rachford alpha = 1, relative tolerance 1e-3); next to MonotoneDense(80)
+ Dense(10) and an unconstrained DEQ of the same width (ForwardFPI(DenseCell(80,
relu, no normalization)) + Dense(10), Anderson); and one convolutional LBEN,
LipschitzConv2D(8 filters, 10 outputs, gamma = 1, 3x3 circular convolutions,
channel metric, 2x2 average pooling) on the 8x8 images. Adam 1e-3 for 40 epochs,
batch 64, cross-entropy on the logits.

For each model: test error; empirical Lipschitz constant of the whole classifier
(gradient ascent on |f(a) - f(b)| / |a - b|, 200 steps from 64 pairs of test
inputs; a lower bound); the certified Lipschitz bound (gamma for LBEN,
||W_out|| ||U|| / lambda_min(sym(I - W)) for monDEQ, none for the unconstrained
DEQ); certified accuracy at eps in {0.1, 0.25, 0.5} (2-norm in standardized
input units): correct and (top1 - top2) > sqrt(2) bound eps. Writes
examples/output/lben_digits.json and the plot
examples/output/lben_certified_accuracy.png (certified accuracy vs eps).

Run: python examples/lben_digits.py [--epochs 40] [--seed 0]
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_implicit.datasets import load_digits  # noqa: E402
from keras_implicit.layers import (  # noqa: E402
    DenseCell,
    ForwardFPI,
    LipschitzConv2D,
    LipschitzDense,
    MonotoneDense,
)
from keras_implicit.lipschitz import lipschitz_bound  # noqa: E402
from keras_implicit.robustness import certified_accuracy, empirical_lipschitz  # noqa: E402

try:
    from mondeq_digits import fit_timed
except ImportError:  # run from the repository root
    from examples.mondeq_digits import fit_timed

GAMMAS = (0.1, 0.2, 0.5, 1.0, 5.0)
EPS = (0.1, 0.25, 0.5)
WIDTH = 80
OUT = os.path.join(os.path.dirname(__file__), "output")


def lben(gamma):
    inputs = keras.Input((64,))
    y = LipschitzDense(WIDTH, 10, lipschitz=gamma, m=1.0, tol=1e-3, max_iter=200, name="deq")(inputs)
    return keras.Model(inputs, y, name=f"lben_{gamma:g}")


def lben_conv(gamma=1.0):
    """The convolutional LBEN on the 8x8 images (reshaping is an isometry: same bound)."""
    inputs = keras.Input((64,))
    x = keras.layers.Reshape((8, 8, 1))(inputs)
    y = LipschitzConv2D(8, 10, lipschitz=gamma, pool=2, tol=1e-3, max_iter=200, name="deq")(x)
    return keras.Model(inputs, y, name="lben_conv")


def mondeq():
    inputs = keras.Input((64,))
    z = MonotoneDense(WIDTH, m=1.0, tol=1e-3, max_iter=200, name="deq")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(z), name="mondeq")


def unconstrained():
    inputs = keras.Input((64,))
    z = ForwardFPI(DenseCell(WIDTH, activation="relu", normalization=None), solver="anderson", tol=1e-3,
                   max_iter=100, stop_mode="rel", name="deq")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(z), name="unconstrained")


def certified_bound(model):
    """A certified Lipschitz bound of the classifier, or None."""
    deq = model.get_layer("deq")
    if isinstance(deq, (LipschitzDense, LipschitzConv2D)):
        return deq.lipschitz
    if isinstance(deq, MonotoneDense):
        return lipschitz_bound(deq) * lipschitz_bound(model.get_layer("head"))
    return None


def run(name, build, data, seed, epochs):
    (x_te, y_te) = data[1]
    model, hist, seconds = fit_timed(build, data, seed, epochs)
    acc = model.evaluate(x_te, y_te, verbose=0, return_dict=True)["accuracy"]
    emp = empirical_lipschitz(model, x_te, steps=200, pairs=64, learning_rate=0.01, seed=seed)
    bound = certified_bound(model)
    cert = None if bound is None else certified_accuracy(model, x_te, y_te, list(EPS), bound).tolist()
    curve = None
    if bound is not None:
        grid = np.linspace(0.0, 1.5, 31)
        curve = {"eps": grid.tolist(), "accuracy": certified_accuracy(model, x_te, y_te, grid, bound).tolist()}
    row = {"model": name, "test_error": 100 * (1 - acc), "empirical_lipschitz": emp, "certified_bound": bound,
           "certified_accuracy": dict(zip(map(str, EPS), cert)) if cert else None, "curve": curve,
           "fwd_iters": hist.history.get("deq_fwd_iters", [None])[-1], "train_seconds": seconds}
    bound_s = "-" if bound is None else f"{bound:.3g}"
    cert_s = " ".join(f"{100 * c:6.1f}" for c in cert) if cert else "     -      -      -"
    print(f"{name:<16}{row['test_error']:>8.2f}{emp:>11.3f}{bound_s:>9} {cert_s}{seconds:>8.0f}s", flush=True)
    return row


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row["curve"] is not None:
            ax.plot(row["curve"]["eps"], np.array(row["curve"]["accuracy"]) * 100, label=row["model"])
    ax.set_xlabel("radius eps (2-norm, standardized inputs)")
    ax.set_ylabel("certified test accuracy (%)")
    ax.set_title("Digits: certified accuracy of LBEN and monDEQ")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_digits()
    builders = {f"LBEN γ={g:g}": (lambda g=g: lben(g)) for g in GAMMAS}
    builders["LBEN conv γ=1"] = lben_conv
    builders["monDEQ"] = mondeq
    builders["unconstrained"] = unconstrained
    print(f"\nDigits, width {WIDTH}, Adam 1e-3, {args.epochs} epochs, batch 64, seed {args.seed}\n")
    print(f"{'model':<16}{'error %':>8}{'emp. Lip.':>11}{'bound':>9}  cert. acc. % at eps " + ", ".join(map(str, EPS)))
    rows = [run(name, build, data, args.seed, args.epochs) for name, build in builders.items()]
    for row in rows:
        if row["certified_bound"] is not None:
            assert row["empirical_lipschitz"] <= row["certified_bound"] * (1 + 1e-4), row
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "lben_digits.json"), "w") as fh:
        json.dump({"epochs": args.epochs, "seed": args.seed, "width": WIDTH, "rows": rows}, fh, indent=2)
    plot(rows, os.path.join(OUT, "lben_certified_accuracy.png"))


if __name__ == "__main__":
    main()
