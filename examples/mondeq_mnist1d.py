"""Convolutional and multi-tier monDEQ on MNIST-1D vs an MLP with the same parameter count.

MNIST-1D (Greydanus 2020; 4000 train / 1000 test signals of length 40, generated
offline, standardized) as 1 x 40 images; m = 1, Peaceman-Rachford alpha = 1,
relative tol 1e-2; Adam 1e-3 constant, 40 epochs, batch 64, 3 seeds.

* `--model conv`: MonotoneConv2D(40 filters, kernel (1, 5), padding (0, 2): two zero
  samples at each end so that the circular convolution does not join them), average
  pooling over 11 positions, Dense head (17,852 parameters).
* `--model multiscale`: MonotoneMultiscale(filters (8, 16, 32), kernel (1, 5),
  stride (1, 2), padding (0, 4): tiers of width 48, 24, 12), average pooling over 3
  positions of the last tier, Dense head.

Each against a one-hidden-layer ReLU MLP of the same size. Writes
examples/output/mondeq_mnist1d_<model>.json.

Run: python examples/mondeq_mnist1d.py [--model conv|multiscale] [--epochs 40] [--seeds 0 1 2]
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_implicit.datasets import load_mnist1d  # noqa: E402
from keras_implicit.layers import MonotoneConv2D, MonotoneMultiscale  # noqa: E402

try:
    from mondeq_digits import compare, mlp_like
except ImportError:  # run from the repository root
    from examples.mondeq_digits import compare, mlp_like


def conv_mondeq(filters=40):
    inputs = keras.Input((1, 40, 1))
    z = MonotoneConv2D(filters, kernel_size=(1, 5), padding=(0, 2), m=1.0, alpha=1.0, tol=1e-2, name="deq")(inputs)
    h = keras.layers.Flatten()(keras.layers.AveragePooling2D((1, 11))(z))
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="conv_mondeq")


def multiscale_mondeq(filters=(8, 16, 32)):
    inputs = keras.Input((1, 40, 1))
    z = MonotoneMultiscale(filters, kernel_size=(1, 5), stride=(1, 2), padding=(0, 4), m=1.0, alpha=1.0,
                           tol=1e-2, name="deq")(inputs)
    h = keras.layers.Flatten()(keras.layers.AveragePooling2D((1, 3))(z))
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="multiscale_mondeq")


MODELS = {"conv": ("MonotoneConv2D(40)", conv_mondeq), "multiscale": ("MonotoneMultiscale(8,16,32)", multiscale_mondeq)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="conv")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    (x_tr, y_tr), (x_te, y_te) = load_mnist1d()
    images = ((x_tr.reshape(-1, 1, 40, 1), y_tr), (x_te.reshape(-1, 1, 40, 1), y_te))
    flat = ((x_tr, y_tr), (x_te, y_te))
    label, build_deq = MODELS[args.model]
    builders = {label: build_deq, "MLP (same parameters)": lambda: mlp_like(build_deq(), 40, 10)}
    data = {label: images, "MLP (same parameters)": flat}
    rows = compare(builders, data, args.seeds, args.epochs, f"MNIST-1D, {args.epochs} epochs")
    out = os.path.join(os.path.dirname(__file__), "output", f"mondeq_mnist1d_{args.model}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"epochs": args.epochs, "seeds": args.seeds, "rows": rows}, fh, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
