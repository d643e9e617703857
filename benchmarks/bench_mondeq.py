"""monDEQ benchmark: MonotoneDense forward+backward cost and the ratio to an MLP step.

MonotoneDense width 87, batch 128, inputs of size 64 and 784, float32. In one run,
interleaved (median of --repeats):

* time per training step (forward solve + Theorem-3 backward + parameter gradients)
  for Peaceman-Rachford (alpha 1) and forward-backward (alpha = its bound
  2m/||I - W||^2, halved) at relative tol 1e-2 and 1e-4, with the iterations taken;
* the time of a training step of an explicit one-hidden-layer MLP with the same
  parameter count, and the ratio monDEQ step / MLP step;
* if torch is installed: a straightforward PyTorch implementation of the same PR
  solver (forward, Theorem-3 backward, as in the paper) on the identical problem.

Run: python benchmarks/bench_mondeq.py [--repeats 30] [--jit]
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch's OpenMP threads spin for a while after each of its steps; a short pause
# after every torch run (outside the timed region) keeps that spin from slowing
# whatever is timed next, without changing torch's own threading.
TORCH_PAUSE_S = 0.05

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training import mean_of, train_step  # noqa: E402

from keras_implicit.layers import MonotoneDense  # noqa: E402

WIDTH, BATCH, CLASSES = 87, 128, 10


def build(d, solver, alpha, tol, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    layer = MonotoneDense(WIDTH, solver=solver, alpha=alpha, tol=tol, max_iter=500, name="deq",
                          on_failure="ignore")
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(layer(inputs)))
    return model, layer


def mlp(d, params, seed=0):
    keras.utils.set_random_seed(seed)
    hidden = round((params - CLASSES) / (d + 1 + CLASSES))
    inputs = keras.Input((d,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(h))


def torch_pr(d, tol, seed=0):
    """A plain PyTorch PR monDEQ step (the paper's algorithm), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    n = WIDTH
    lim = 1 / np.sqrt(n)
    a = (torch.rand(n, n) * 2 - 1).mul(lim).requires_grad_()
    b = (torch.rand(n, n) * 2 - 1).mul(lim).requires_grad_()
    u = (torch.rand(n, d) * 2 - 1).mul(1 / np.sqrt(d)).requires_grad_()
    bias = torch.zeros(n, requires_grad=True)
    head = torch.nn.Linear(n, CLASSES)
    params = [a, b, u, bias] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    alpha = 1.0

    class Backward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, w, vinv):
            ctx.save_for_backward(z, w, vinv)
            return z

        @staticmethod
        def backward(ctx, g):
            z, w, vinv = ctx.saved_tensors
            j = (z > 0).to(g.dtype)
            v = j * g
            y = torch.zeros_like(g)
            uu = torch.zeros_like(g)
            for _ in range(500):
                y_cur = (j * uu + alpha * v) / (j + alpha * (1 - j))
                uh = 2 * y_cur - uu
                yh = uh @ vinv
                uu = 2 * yh - uh
                err = (yh - y_cur).norm() / (1e-6 + y_cur.norm())
                y = y_cur
                if err < tol:
                    break
            return g + y @ w, None, None

    def step(x, target):
        eye = torch.eye(n)
        w = (1 - 1.0) * eye - a.T @ a + b - b.T
        with torch.no_grad():
            vinv = torch.linalg.inv(eye + alpha * (eye - w))
            inj = x @ u.T + bias
            z = torch.zeros(x.shape[0], n)
            uu = torch.zeros_like(z)
            for _ in range(500):
                z = torch.relu(uu)
                uh = 2 * z - uu
                zh = (uh + alpha * inj) @ vinv.T
                uu = 2 * zh - uh
                if (zh - z).norm() / (1e-6 + z.norm()) < tol:
                    break
        zn = torch.relu(z @ w.T + x @ u.T + bias)
        zn = Backward.apply(zn, w, vinv)
        loss = torch.nn.functional.cross_entropy(head(zn), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs, iters, meta = {}, {}, {}
    for d in (64, 784):
        x = tf.constant(rng.standard_normal((BATCH, d)).astype("float32"))
        y = tf.constant(rng.integers(0, CLASSES, BATCH))
        model, layer = build(d, "peaceman_rachford", 1.0, 1e-2)
        fb_alpha = 0.5 * layer.forward_backward_bound()
        meta[d] = {"fb_alpha": fb_alpha, "params": model.count_params()}
        for solver, alpha in (("peaceman_rachford", 1.0), ("forward_backward", fb_alpha)):
            for tol in (1e-2, 1e-4):
                model, layer = build(d, solver, alpha, tol)
                step = train_step(model, args.jit)
                name = f"d={d} {solver[:2].upper()} tol {tol:g}"
                step(x, y)
                _, info = layer.solve(x)
                bwd = layer.bwd_iters_metric
                bwd.reset_state()
                step(x, y)
                iters[name] = (int(info.iterations), mean_of(bwd))
                runs[name] = (lambda s, x, y: lambda: s(x, y).numpy())(step, x, y)
        m = mlp(d, meta[d]["params"])
        meta[d]["mlp_params"] = m.count_params()
        runs[f"d={d} MLP"] = (lambda s, x, y: lambda: s(x, y).numpy())(train_step(m, args.jit), x, y)
        t = torch_pr(d, 1e-2)
        if t is not None:
            import torch

            tx, ty = torch.tensor(x.numpy()), torch.tensor(y.numpy())
            runs[f"d={d} torch PR tol 0.01"] = (lambda t, tx, ty: lambda: float(t(tx, ty).detach()))(t, tx, ty)
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    order = list(runs)
    for _ in range(args.repeats):  # a fresh random order each round: no configuration always follows another
        random.shuffle(order)
        for name in order:
            fn = runs[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if "torch" in name:
                time.sleep(TORCH_PAUSE_S)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    mode = "XLA" if args.jit else "graph"
    print(f"\nMonotoneDense({WIDTH}), batch {BATCH}, float32, {mode}; training step, median of {args.repeats} "
          f"interleaved runs, {os.cpu_count()} cores\n")
    print(f"{'configuration':<28}{'ms/step':>9}{'fwd it':>8}{'bwd it':>8}{'/ MLP step':>12}")
    rows = []
    for name in runs:
        d = int(name.split()[0][2:])
        ratio = med[name] / med[f"d={d} MLP"]
        f_it, b_it = iters.get(name, (None, None))
        its = f"{f_it:>8}{b_it:>8.1f}" if f_it is not None else f"{'':>8}{'':>8}"
        print(f"{name:<28}{med[name]:>9.2f}{its}{ratio:>12.2f}")
        rows.append({"configuration": name, "ms": med[name], "forward_iterations": f_it,
                     "backward_iterations": b_it, "ratio_to_mlp": ratio})
    for d, m in meta.items():
        print(f"d={d}: monDEQ {m['params']} parameters, MLP {m['mlp_params']}; FB alpha {m['fb_alpha']:.3g}")
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"bench_mondeq{'_xla' if args.jit else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"mode": mode, "rows": rows, "meta": {str(k): v for k, v in meta.items()},
                   "machine": {"processor": platform.processor(), "cores": os.cpu_count(),
                               "tensorflow": tf.__version__}}, fh, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
