"""OptEq, GEQ and the multi-branch GEQ at small scale, with the stability checks GEQ claims.

`--part dense --dataset digits|mnist1d`: OptEqDense(w), GaussianEquilibrium(w),
MonotoneDense and a one-hidden-layer ReLU MLP, each with a Dense head; widths
chosen so that the four parameter counts agree within 3 % (digits: OptEq/GEQ
114, monDEQ 87, as `mondeq_digits.py`; MNIST-1D: 355 and 256).

`--part conv` (MNIST-1D as 1 x 40 images): MultiBranchEquilibrium(33 filters,
scales (1, 1), (1, 2), (1, 4), kernel (1, 5), patch (1, 2)), with the Gaussian
kernel (GEQ) and with the linear one (MOptEq), against
MonotoneConv2D(40, kernel (1, 5), padding (0, 2)) as `mondeq_mnist1d.py`; each
average-pooled to 4 positions and a Dense head (18,262 vs 17,852 parameters).

Protocol (as the monDEQ scripts): standardized inputs, Adam 1e-3 constant, batch
64, relative tolerance 1e-2 for every equilibrium layer (OptEq: Peaceman-Rachford
alpha 1, max_norm 0.9; GEQ: Anderson, gamma "auto", max_norm 0.9; multi-branch:
Anderson forward, phantom gradients, as the GEQ paper trains; monDEQ: m = 1,
Peaceman-Rachford alpha 1). For each model and seed: test accuracy,
forward/backward iterations per batch (last epoch), seconds per epoch, test
accuracy under Gaussian input noise of standard deviation 0.1, 0.3 and 0.5 (in
standardized units, one fixed draw), and the empirical Lipschitz constant of the
logits (`robustness.empirical_lipschitz`, 100 Adam steps on 32 test pairs; a
lower bound). Writes examples/output/opteq_geq_<part>_<dataset>.json.

Run: python examples/opteq_geq.py [--part dense|conv] [--dataset digits|mnist1d] [--epochs 40] [--seeds 0 1 2]
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_implicit import robustness  # noqa: E402
from keras_implicit.datasets import load  # noqa: E402
from keras_implicit.layers import (GaussianEquilibrium, MonotoneConv2D, MonotoneDense,  # noqa: E402
                                   MultiBranchEquilibrium, OptEqDense)

try:
    from mondeq_digits import fit_timed, mlp_like
except ImportError:  # run from the repository root
    from examples.mondeq_digits import fit_timed, mlp_like

NOISE = (0.1, 0.3, 0.5)
SETTINGS = {"tol": 1e-2, "stop_mode": "rel", "name": "deq"}
WIDTHS = {"digits": (114, 87), "mnist1d": (355, 256)}


def dense_head(layer, input_dim, name):
    inputs = keras.Input((input_dim,))
    return keras.Model(inputs, keras.layers.Dense(10)(layer(inputs)), name=name)


def dense_models(input_dim, dataset):
    wide, mondeq_width = WIDTHS[dataset]
    models = {
        f"OptEqDense({wide})": lambda: dense_head(OptEqDense(wide, max_norm=0.9, **SETTINGS), input_dim, "opteq"),
        f"GaussianEquilibrium({wide})": lambda: dense_head(
            GaussianEquilibrium(wide, max_norm=0.9, **SETTINGS), input_dim, "geq"),
        f"MonotoneDense({mondeq_width})": lambda: dense_head(
            MonotoneDense(mondeq_width, m=1.0, alpha=1.0, **SETTINGS), input_dim, "mondeq"),
    }
    reference = models[f"MonotoneDense({mondeq_width})"]
    models["MLP (same parameters)"] = lambda: mlp_like(reference(), input_dim, 10)
    return models


def conv_head(layer, filters, pool):
    inputs = keras.Input((1, 40, 1))
    z = layer(inputs)
    h = keras.layers.Flatten()(keras.layers.AveragePooling2D((1, pool))(z))
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def multibranch(kernel):
    return conv_head(MultiBranchEquilibrium(
        33, scales=((1, 1), (1, 2), (1, 4)), kernel_size=(1, 5), patch_size=(1, 2), kernel=kernel, max_norm=0.9,
        **SETTINGS), 33, 10)


def conv_models():
    return {
        "MultiBranchEquilibrium(33), 3 branches": lambda: multibranch("gaussian"),
        "the same, linear kernel (MOptEq)": lambda: multibranch("linear"),
        "MonotoneConv2D(40)": lambda: conv_head(MonotoneConv2D(
            40, kernel_size=(1, 5), padding=(0, 2), m=1.0, alpha=1.0, **SETTINGS), 40, 11),
    }


def run(build, data, seed, epochs):
    (x_te, y_te) = data[1]
    model, hist, seconds = fit_timed(build, data, seed, epochs)
    per_epoch = seconds / epochs
    row = {"params": model.count_params(), "seconds_per_epoch": per_epoch,
           "accuracy": model.evaluate(x_te, y_te, verbose=0, return_dict=True)["accuracy"],
           "fwd_iters": hist.history.get("deq_fwd_iters", [None])[-1],
           "bwd_iters": hist.history.get("deq_bwd_iters", [None])[-1]}
    rng = np.random.default_rng(1000 + seed)
    for sigma in NOISE:
        noisy = (x_te + sigma * rng.standard_normal(x_te.shape)).astype(x_te.dtype)
        row[f"noise_{sigma}"] = model.evaluate(noisy, y_te, verbose=0, return_dict=True)["accuracy"]
    row["empirical_lipschitz"] = robustness.empirical_lipschitz(model, x_te, steps=100, pairs=32, seed=seed)
    return row


def summarize(runs):
    keys = ["accuracy"] + [f"noise_{s}" for s in NOISE]
    out = {"params": runs[0]["params"], "runs": runs}
    for key in keys + ["seconds_per_epoch", "fwd_iters", "bwd_iters", "empirical_lipschitz"]:
        values = [r[key] for r in runs]
        if values[0] is None:
            out[key] = None
            continue
        scale = 100.0 if key in keys else 1.0
        out[key] = float(np.mean(values)) * scale
        out[key + "_sd"] = float(np.std(values)) * scale
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["dense", "conv"], default="dense")
    parser.add_argument("--dataset", choices=["digits", "mnist1d"], default="digits")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    dataset = "mnist1d" if args.part == "conv" else args.dataset
    (x_tr, y_tr), (x_te, y_te) = load(dataset)
    if args.part == "conv":
        data = ((x_tr.reshape(-1, 1, 40, 1), y_tr), (x_te.reshape(-1, 1, 40, 1), y_te))
        builders = conv_models()
    else:
        data = ((x_tr, y_tr), (x_te, y_te))
        builders = dense_models(x_tr.shape[1], dataset)
    rows = {}
    for name, build in builders.items():
        runs = []
        for seed in args.seeds:
            runs.append(run(build, data, seed, args.epochs))
            print(f"{name} seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", flush=True)
        rows[name] = summarize(runs)
    print(f"\n{dataset} ({args.part}), {args.epochs} epochs, Adam 1e-3, batch 64, seeds {args.seeds}\n")
    print(f"{'model':<40}{'params':>8}{'test accuracy':>18}{'fwd/bwd it':>12}{'s/epoch':>9}"
          + "".join(f"{'noise ' + str(s):>11}" for s in NOISE) + f"{'emp. Lip.':>11}")
    for name, r in rows.items():
        its = "/".join("-" if r[k] is None else f"{r[k]:.1f}" for k in ("fwd_iters", "bwd_iters"))  # phantom: no bwd
        print(f"{name:<40}{r['params']:>8}{r['accuracy']:>10.2f} +- {r['accuracy_sd']:.2f}{its:>12}"
              f"{r['seconds_per_epoch']:>9.2f}" + "".join(f"{r[f'noise_{s}']:>10.2f}%" for s in NOISE)
              + f"{r['empirical_lipschitz']:>11.2f}")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output", f"opteq_geq_{args.part}_{dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"part": args.part, "dataset": dataset, "epochs": args.epochs, "seeds": args.seeds, "rows": rows},
                  fh, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
