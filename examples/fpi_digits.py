"""Input -> ForwardFPI(DenseCell) -> Dense on sklearn digits, with and without XLA.

Prints test accuracy, training time and solver statistics for each mode.

Run: python examples/fpi_digits.py [--epochs 15] [--seeds 0 1 2]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_implicit.datasets import load_digits  # noqa: E402
from keras_implicit.layers import DenseCell, ForwardFPI  # noqa: E402


def run(seed, jit_compile, epochs):
    (x_tr, y_tr), (x_te, y_te) = load_digits()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    z = ForwardFPI(DenseCell(64), name="deq")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(z))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit_compile)
    start = time.perf_counter()
    hist = model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
    seconds = time.perf_counter() - start
    res = model.evaluate(x_te, y_te, verbose=0, return_dict=True)
    return res["accuracy"], seconds, hist.history["deq_fwd_iters"][-1], hist.history["deq_bwd_iters"][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(f"{'mode':<14}{'test accuracy':>20}{'fit seconds':>14}{'fwd it':>8}{'bwd it':>8}")
    for jit in (False, True):
        rows = [run(s, jit, args.epochs) for s in args.seeds]
        acc = np.array([r[0] for r in rows]) * 100
        print(f"{'XLA' if jit else 'graph':<14}{acc.mean():>12.2f} +- {acc.std():.2f} %"
              f"{np.mean([r[1] for r in rows]):>12.1f}{np.mean([r[2] for r in rows]):>8.1f}"
              f"{np.mean([r[3] for r in rows]):>8.1f}")


if __name__ == "__main__":
    main()
