"""Hyperband search over monDEQ settings on sklearn digits, accuracy against solver work.

Searches `keras_implicit.tuning.EquilibriumHyperModel("mondeq")` (width, learning rate,
splitting solver and alpha, m, tolerance, iteration budget, backward mode) with
keras-tuner's Hyperband for the cost-aware objective

    val_score = val_accuracy - cost_weight * val_fwd_iters

on the stratified 80/20 digits split (the validation data are the held-out 20 %; there
is no separate test set here). Prints the best trial's hyperparameters, its accuracy
and forward iterations, and the trials on the accuracy-iterations Pareto front; writes
examples/output/tune_mondeq.png (each trial's final validation accuracy against its
forward iterations per batch) and examples/output/tune_mondeq.json.

Run: python examples/tune_mondeq.py [--max-epochs 9] [--cost-weight 0.002] [--seed 0]
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402

from keras_implicit import tuning  # noqa: E402
from keras_implicit.datasets import load_digits  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")


def pareto(points):
    """Indices of the points not dominated in (accuracy up, iterations down)."""
    front = []
    for i, (acc, its) in enumerate(points):
        if not any(a >= acc and n <= its and (a, n) != (acc, its) for a, n in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][1])


def plot(rows, best, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    ax.scatter([r["fwd_iters"] for r in rows], [100 * r["val_accuracy"] for r in rows], s=18, alpha=0.6,
               label="trials")
    front = [rows[i] for i in pareto([(r["val_accuracy"], r["fwd_iters"]) for r in rows])]
    ax.plot([r["fwd_iters"] for r in front], [100 * r["val_accuracy"] for r in front], "k--", lw=1,
            label="Pareto front")
    ax.scatter([best["fwd_iters"]], [100 * best["val_accuracy"]], s=80, marker="*", color="C3",
               label="best score", zorder=3)
    ax.set_xlabel("forward iterations per batch (validation)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Hyperband over MonotoneDense settings, digits")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--cost-weight", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directory", default=None, help="keras-tuner's working directory (default: a temp dir)")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    (x_tr, y_tr), (x_val, y_val) = load_digits()
    hypermodel = tuning.EquilibriumHyperModel("mondeq", input_shape=(64,), classes=10,
                                              cost_weight=args.cost_weight)
    tuner = kt.Hyperband(hypermodel, objective=tuning.OBJECTIVE, max_epochs=args.max_epochs, factor=3,
                         seed=args.seed, directory=args.directory or tempfile.mkdtemp(prefix="kt_"),
                         project_name="tune_mondeq", overwrite=True)
    start = time.perf_counter()
    tuner.search(x_tr, y_tr, validation_data=(x_val, y_val), batch_size=64, verbose=0)
    seconds = time.perf_counter() - start

    rows = []
    for trial in tuner.oracle.trials.values():
        if trial.score is None:
            continue
        rows.append({
            "trial": trial.trial_id,
            "score": trial.score,
            "val_accuracy": trial.metrics.get_last_value("val_accuracy"),
            "fwd_iters": trial.metrics.get_last_value("val_cost"),
            "epochs": trial.hyperparameters.values.get("tuner/epochs"),
            "hyperparameters": {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")},
        })
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = next(r for r in rows if r["trial"] == best_trial.trial_id)
    print(f"Hyperband, max_epochs={args.max_epochs}: {len(rows)} trials in {seconds:.0f} s")
    print(f"best trial {best['trial']} (score {best['score']:.4f} = accuracy - {args.cost_weight} x iterations):")
    print(f"  validation accuracy {100 * best['val_accuracy']:.2f} %, "
          f"forward iterations per batch {best['fwd_iters']:.1f}, after {best['epochs']} epochs")
    for key, value in sorted(best["hyperparameters"].items()):
        print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    print("accuracy-iterations Pareto front (iterations, accuracy %):")
    for i in pareto([(r["val_accuracy"], r["fwd_iters"]) for r in rows]):
        r = rows[i]
        print(f"  {r['fwd_iters']:6.1f}  {100 * r['val_accuracy']:6.2f}  "
              f"({r['hyperparameters']['solver']}, tol {r['hyperparameters']['tol']:.2g}, {r['epochs']} epochs)")
    os.makedirs(OUT, exist_ok=True)
    plot(rows, best, os.path.join(OUT, "tune_mondeq.png"))
    with open(os.path.join(OUT, "tune_mondeq.json"), "w") as f:
        json.dump({"seconds": seconds, "best": best, "trials": rows, "args": vars(args)}, f, indent=1)
    print(f"wrote {os.path.join(OUT, 'tune_mondeq.png')} and tune_mondeq.json")
    return best


if __name__ == "__main__":
    main()
