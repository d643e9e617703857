"""The `keras-implicit` command."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The check that the export serves without this package: it imports TensorFlow only.
_RELOAD_CHECK = r"""
import json, sys
import numpy as np
import tensorflow as tf
assert "keras_implicit" not in sys.modules
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
logits = loaded.serve(tf.constant(data["x"])).numpy()
print(json.dumps({"accuracy": float((logits.argmax(1) == data["y"]).mean()),
                  "max_abs_diff": float(np.abs(logits - data["logits"]).max()),
                  "signatures": sorted(loaded.signatures.keys())}))
"""


def reload_check(path, x, y, logits):
    """Runs the export in a fresh Python process that imports only TensorFlow."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        np.savez(data, x=x, y=y, logits=logits)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run(
            [sys.executable, "-c", _RELOAD_CHECK, str(path), data],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"Reloading the export failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


MODELS = ("mondeq", "fpi", "lben")


def build_demo_model(input_dim, model="mondeq", units=None, num_classes=10, solver=None, lipschitz=1.0):
    """The demo's equilibrium classifier, `Input -> equilibrium layer "deq" -> Dense`.

    * `"mondeq"` (default): `MonotoneDense(87)`, Peaceman-Rachford with
      alpha = 1 and relative tolerance 1e-2, as in Winston & Kolter's MNIST model.
    * `"fpi"`: `ForwardFPI(DenseCell(64))` with Anderson at tol 1e-4.
    * `"lben"`: `Input -> LipschitzDense(80, num_classes, lipschitz)` (its own
      output map: the whole classifier is `lipschitz`-Lipschitz).
    """
    import keras

    from keras_implicit.layers import DenseCell, ForwardFPI, LipschitzDense, MonotoneDense

    inputs = keras.Input((input_dim,), name="x")
    if model == "lben":
        layer = LipschitzDense(units or 80, num_classes, lipschitz=lipschitz,
                               solver=solver or "peaceman_rachford", tol=1e-3, name="deq")
        return keras.Model(inputs, layer(inputs), name="lben_classifier")
    if model == "mondeq":
        layer = MonotoneDense(units or 87, solver=solver or "peaceman_rachford", tol=1e-2, name="deq")
    elif model == "fpi":
        layer = ForwardFPI(DenseCell(units or 64), solver=solver or "anderson", tol=1e-4, name="deq")
    else:
        raise ValueError(f"Unknown demo model; expected one of {MODELS}. Received: model={model!r}")
    outputs = keras.layers.Dense(num_classes, name="logits")(layer(inputs))
    return keras.Model(inputs, outputs, name=f"{model}_classifier")


def demo(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from keras_implicit.datasets import load
    from keras_implicit.export import export_saved_model

    start = time.time()
    keras.utils.set_random_seed(args.seed)
    (x_tr, y_tr), (x_te, y_te) = load(args.dataset)
    print(
        f"keras-implicit demo: {args.dataset}, {len(x_tr)} train / {len(x_te)} test samples, "
        f"{x_tr.shape[1]} features"
    )
    print(f"model: {args.model}")
    model = build_demo_model(x_tr.shape[1], model=args.model, units=args.units, solver=args.solver,
                             lipschitz=args.lipschitz)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose
    )
    results = model.evaluate(x_te, y_te, verbose=0, return_dict=True)
    last = {k: v[-1] for k, v in history.history.items()}
    print(f"\ntest accuracy: {results['accuracy']:.4f}")
    print(
        "solver statistics (last epoch, per batch): "
        f"forward iterations {last['deq_fwd_iters']:.1f}, "
        f"final residual {last['deq_fwd_res']:.2e}, "
        f"backward iterations {last['deq_bwd_iters']:.1f}"
    )
    print(
        f"solver statistics (test set): forward iterations {results['deq_fwd_iters']:.1f}, "
        f"final residual {results['deq_fwd_res']:.2e}"
    )
    if args.model == "lben":
        from keras_implicit.robustness import certified_accuracy

        eps = [0.1, 0.25, 0.5]
        cert = certified_accuracy(model, x_te, y_te, eps, args.lipschitz)
        print(f"certified accuracy (Lipschitz bound {args.lipschitz:g}, 2-norm radius): "
              + ", ".join(f"eps {e}: {c:.4f}" for e, c in zip(eps, cert)))
    export_dir = args.export or os.path.join("saved_models", f"{args.model}_{args.dataset}")
    names = export_saved_model(model, export_dir, overwrite=True)  # the demo refreshes its own export
    print(f"exported SavedModel to {export_dir} with signatures {names}")
    # One batch for both, so that both runs solve exactly the same problem (an
    # equilibrium solved to a tolerance depends a little on its batch).
    logits = model(x_te, training=False).numpy()
    check = reload_check(export_dir, x_te, y_te, logits)
    agree = check["max_abs_diff"] <= 1e-4 * (1.0 + float(abs(logits).max()))
    print(
        "reloaded in a fresh process (TensorFlow only): "
        f"accuracy {check['accuracy']:.4f}, max |logit difference| {check['max_abs_diff']:.2e} "
        f"-> {'agrees' if agree else 'DISAGREES'}"
    )
    print(f"done in {time.time() - start:.1f} s")
    return 0 if agree else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-implicit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small equilibrium classifier on bundled data")
    p.add_argument("--dataset", choices=["digits", "mnist1d"], default="digits")
    p.add_argument("--model", choices=list(MODELS), default="mondeq")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--export", default=None, help="SavedModel directory (default saved_models/<model>_<dataset>)")
    p.add_argument("--units", type=int, default=None, help="width (default 87 for mondeq, 64 for fpi, 80 for lben)")
    p.add_argument("--lipschitz", type=float, default=1.0, help="the Lipschitz bound of --model lben (default 1)")
    p.add_argument("--solver", default=None,
                   choices=["peaceman_rachford", "forward_backward", "anderson", "broyden", "fixed_point", "halpern"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2], help="Keras fit verbosity")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1. Received: --epochs={args.epochs}")
    if not args.lipschitz > 0:
        parser.error(f"--lipschitz must be > 0. Received: --lipschitz={args.lipschitz}")
    if args.command == "demo":
        return demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
