"""Convolutional monDEQ and LBEN at image size: 28 x 28 digits.

Data: sklearn's 8x8 digits (stratified 80/20 split, random_state 0, standardized with
train statistics), each image resized to 28 x 28 by bilinear interpolation: MNIST's
size, offline. Models, as the papers' MNIST convolutional experiments:

* monDEQ: MonotoneConv2D(32 channels, 3x3, padding "same"), 4x4 average pooling,
  Dense(10) (the authors' SingleConvNet layout);
* LBEN: LipschitzConv2D(32 filters, 10 outputs, gamma = 1, channel metric, 4x4
  pooling), whose Peaceman-Rachford resolvent is the FFT + Woodbury one (a dense
  resolvent would be 25,088 x 25,088 here).

Both: Peaceman-Rachford alpha 1, relative tol 1e-3, Adam 1e-3, batch 64. Printed per
model: test accuracy, certified accuracy at eps in {0.1, 0.25, 0.5} (2-norm in the
28 x 28 standardized input, LBEN only: its bound is gamma), forward / backward
iterations per batch in the last epoch, seconds per epoch, parameters. Writes
examples/output/conv_digits28.json.

Run: python examples/conv_digits28.py [--epochs 5] [--seed 0]
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_implicit.datasets import load_digits  # noqa: E402
from keras_implicit.layers import LipschitzConv2D, MonotoneConv2D  # noqa: E402
from keras_implicit.robustness import certified_accuracy  # noqa: E402

try:
    from mondeq_digits import fit_timed
except ImportError:  # run from the repository root
    from examples.mondeq_digits import fit_timed

SIZE, EPS = 28, (0.1, 0.25, 0.5)
OUT = os.path.join(os.path.dirname(__file__), "output")
SOLVE = dict(alpha=1.0, tol=1e-3, max_iter=100, stop_mode="rel")


def digits28():
    """`((x_train, y_train), (x_test, y_test))`, images `[N, 28, 28, 1]` float32."""
    (x_tr, y_tr), (x_te, y_te) = load_digits()

    def up(x):
        return tf.image.resize(x.reshape(-1, 8, 8, 1), (SIZE, SIZE), method="bilinear").numpy()

    return (up(x_tr), y_tr), (up(x_te), y_te)


def mondeq_conv():
    inputs = keras.Input((SIZE, SIZE, 1))
    z = MonotoneConv2D(32, padding="same", name="deq", **SOLVE)(inputs)
    h = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(z))
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="mondeq_conv")


def lben_conv():
    inputs = keras.Input((SIZE, SIZE, 1))
    y = LipschitzConv2D(32, 10, lipschitz=1.0, metric="channel", pool=4, name="deq", **SOLVE)(inputs)
    return keras.Model(inputs, y, name="lben_conv")


MODELS = {"monDEQ conv (MonotoneConv2D(32))": (mondeq_conv, None),
          "LBEN conv (LipschitzConv2D(32), gamma 1)": (lben_conv, 1.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = digits28()
    (x_te, y_te) = data[1]
    print(f"digits resized to {SIZE}x{SIZE}: {len(data[0][0])} train / {len(x_te)} test images; "
          f"{args.epochs} epochs, seed {args.seed}")
    rows = {}
    for name, (build, gamma) in MODELS.items():
        model, hist, seconds = fit_timed(build, data, args.seed, args.epochs)
        acc = model.evaluate(x_te, y_te, verbose=0, return_dict=True)["accuracy"]
        cert = None
        if gamma is not None:
            cert = [float(c) for c in certified_accuracy(model, x_te, y_te, list(EPS), gamma)]
        rows[name] = {
            "accuracy": float(acc), "certified": cert, "params": model.count_params(),
            "seconds_per_epoch": seconds / args.epochs,
            "fwd_iters": float(hist.history["deq_fwd_iters"][-1]), "bwd_iters": float(hist.history["deq_bwd_iters"][-1]),
        }
        r = rows[name]
        certs = "" if cert is None else ", certified " + ", ".join(f"eps {e}: {100 * c:.2f} %" for e, c in zip(EPS, cert))
        print(f"{name}: test accuracy {100 * acc:.2f} %{certs}; {r['fwd_iters']:.1f} / {r['bwd_iters']:.1f} "
              f"iterations; {r['seconds_per_epoch']:.1f} s/epoch; {r['params']} parameters", flush=True)
    print()
    print("| model | parameters | test accuracy | certified accuracy, eps 0.1 / 0.25 / 0.5 | fwd / bwd iterations | s / epoch |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        cert = "-" if r["certified"] is None else " / ".join(f"{100 * c:.2f} %" for c in r["certified"])
        print(f"| {name} | {r['params']:,} | {100 * r['accuracy']:.2f} % | {cert} | "
              f"{r['fwd_iters']:.1f} / {r['bwd_iters']:.1f} | {r['seconds_per_epoch']:.1f} |")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "conv_digits28.json"), "w") as fh:
        json.dump({"epochs": args.epochs, "seed": args.seed, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
