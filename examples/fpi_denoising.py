"""FPI_GD and FPI_NN denoisers on digits (Jeon, Lee & Choi, Sec. 5.2, at small scale).

Data: sklearn's 8x8 digits scaled to [0, 1], stratified 80/20 split (random_state=0);
noisy inputs `y = x + sigma n`, `n ~ N(0, I)`, sigma in {0.2, 0.4} (fixed noise for the
test set, fresh noise every epoch for training).

Models (about 33k parameters each):
* FPI_GD: `FPIGradientDescent(64, hidden=256, step_size=20, l2=0.005)` (the multi-label
  example's settings), the clean image is
  `sigmoid(x*)` with `x*` a stationary point of a learned energy
  `mean_k relu(W [y; sigmoid(x)] + b)_k^2 + 0.0025 |x|^2`;
* FPI_NN: `FPINetwork(64, hidden=170)`, `x* = sigmoid(fc2(relu(fc1([y; x*]))))`;
* MLP: Dense(256, relu) -> Dense(64, sigmoid).
Anderson (tol 1e-4 relative, at most 50 iterations), implicit backward; mean squared
error, Adam 1e-3, 60 epochs, batch 64, seed 0. Reports test PSNR (dB, peak 1, mean over
images) for each model and for the noisy input; writes examples/output/fpi_denoising.json
and examples/output/fpi_denoising.png (rows: noisy, FPI_GD, FPI_NN, MLP, clean; sigma 0.4).

Run: python examples/fpi_denoising.py [--epochs 60]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_implicit.datasets import load_digits  # noqa: E402
from keras_implicit.layers import FPIGradientDescent, FPINetwork  # noqa: E402

SIGMAS = (0.2, 0.4)
HIDDEN = 256
NN_HIDDEN = 170  # its first layer reads [y; x]: 170 matches the others' parameter count
OUT = os.path.join(os.path.dirname(__file__), "output")


def psnr(clean, estimate):
    """Mean over images of 10 log10(1 / MSE) (pixel range [0, 1])."""
    mse = np.mean((clean - estimate) ** 2, axis=1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def build(kind):
    inputs = keras.Input((64,))
    if kind == "FPI_GD":
        out = FPIGradientDescent(64, hidden=HIDDEN, step_size=20.0, l2=0.005, solver="anderson", tol=1e-4,
                                 max_iter=50, name="fpi")(inputs)
    elif kind == "FPI_NN":
        out = FPINetwork(64, hidden=NN_HIDDEN, solver="anderson", tol=1e-4, max_iter=50, name="fpi")(inputs)
    else:
        h = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
        out = keras.layers.Dense(64, activation="sigmoid")(h)
    return keras.Model(inputs, out, name=kind)


class NoisyImages(keras.utils.PyDataset):
    """Clean training images with fresh Gaussian noise each epoch."""

    def __init__(self, x, sigma, batch_size=64, seed=0):
        super().__init__()
        self.x, self.sigma, self.batch_size = x, sigma, batch_size
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def on_epoch_end(self):
        self.noisy = (self.x + self.sigma * self.rng.standard_normal(self.x.shape)).astype("float32")
        self.order = self.rng.permutation(len(self.x))

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        return self.noisy[idx], self.x[idx]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (x_tr, _), (x_te, _) = load_digits(standardize=False)
    x_tr, x_te = x_tr / 16.0, x_te / 16.0
    rng = np.random.default_rng(1234)
    results, shown = {}, {}
    print(f"\ndigits denoising, Adam 1e-3, {args.epochs} epochs, batch 64, seed {args.seed}\n")
    print(f"{'sigma':<7}{'model':<8}{'params':>8}{'test PSNR dB':>14}{'fwd it':>8}{'s/run':>8}")
    for sigma in SIGMAS:
        y_te = (x_te + sigma * rng.standard_normal(x_te.shape)).astype("float32")
        row = {"noisy input": {"psnr": psnr(x_te, y_te)}}
        print(f"{sigma:<7}{'input':<8}{'-':>8}{row['noisy input']['psnr']:>14.2f}", flush=True)
        shown[sigma] = {"noisy": y_te[:8], "clean": x_te[:8]}
        for kind in ("FPI_GD", "FPI_NN", "MLP"):
            keras.utils.set_random_seed(args.seed)
            model = build(kind)
            model.compile(keras.optimizers.Adam(1e-3), "mse")
            start = time.perf_counter()
            hist = model.fit(NoisyImages(x_tr.astype("float32"), sigma, seed=args.seed), epochs=args.epochs,
                             verbose=0)
            seconds = time.perf_counter() - start
            estimate = model.predict(y_te, verbose=0)
            its = hist.history.get("fpi_fwd_iters", [None])[-1]
            row[kind] = {"psnr": psnr(x_te, estimate), "params": model.count_params(), "fwd_iters": its,
                         "seconds": seconds}
            shown[sigma][kind] = estimate[:8]
            it = "-" if its is None else f"{its:.1f}"
            print(f"{sigma:<7}{kind:<8}{model.count_params():>8}{row[kind]['psnr']:>14.2f}{it:>8}{seconds:>8.0f}",
                  flush=True)
        results[str(sigma)] = row
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "fpi_denoising.json"), "w") as fh:
        json.dump({"epochs": args.epochs, "seed": args.seed, "results": results}, fh, indent=2)
    rows = {name: shown[0.4][name] for name in ("noisy", "FPI_GD", "FPI_NN", "MLP", "clean")}
    grid(rows, os.path.join(OUT, "fpi_denoising.png"), "digits denoising, sigma = 0.4 (test images)")


def grid(rows, path, title, label_size=8):
    """One row of 8 digit images per entry of `rows` (name -> `[n, 64]` images in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 8, figsize=(8, len(rows) * 1.1))
    for r, (name, images) in enumerate(rows.items()):
        for c in range(8):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c].reshape(8, 8), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=label_size)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
