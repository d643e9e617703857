"""Gradient dynamics of linear and single-index deep equilibrium models
(Dandapanthula & Ramdas, arXiv 2511.16976), on the package's own layers.

1. The authors' scalar run: `LinearDEQ(1)` (`z = b z + w x`, output `z = w x / (1 - b)`),
   x ~ U[0, 1] (n = 1000, seed 0), target 2x, mean squared error, gradient descent with
   eta = 0.01 for 200 steps from (w, b) = (0.024, 0.068). Reports the end point, the risk,
   the conserved quantity `||w||^2 + (1 - b)^2` along gradient descent (it grows by
   exactly eta^2 ||grad||^2 per step) and along gradient flow (Dormand-Prince, rtol 1e-10,
   to the same time 200 x 0.01), and the per-step rate of the risk's linear convergence.
2. A tanh single-index DEQ `y = tanh(<w, x> + b y)` in d = 20: teacher w* with
   ||w*|| = 2, b* = 0.5; x ~ N(0, I / d), n = 1000, seed 0; student from w ~ N(0, 0.01 I / d),
   b = 0; gradient descent, eta = 2, 400 steps; exact solve (Chandrupatla) and its
   implicit gradient.
3. Backward approximations on a linear counterexample: `LinearDEQ(1)` from (w, b) =
   (2, -0.5), target 0.2x (the minimizers on that circle have b = -1.46), eta 0.2, 300
   steps, the forward solved by Anderson to 1e-12, the gradient by each backward mode:
   exact (`solver="exact"`), implicit (adjoint by Anderson), Jacobian-free (factor 1),
   Neumann with 2 terms (1 + b: zero at b = -1), with 3 terms (1 + b + b^2), and
   damped with 2 terms (damping 0.5).

Writes examples/output/single_index_dynamics.json and .png (the scalar trajectory on
its circle with the gradient flow's, the risks on a log scale, and the backward
approximations' risks).

Run: python examples/single_index_dynamics.py
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_implicit import backward, dynamics  # noqa: E402
from keras_implicit.layers import LinearDEQ, SingleIndexDEQ  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "output")
MSE = keras.losses.mean_squared_error


def scalar_model(w, b, **kwargs):
    model = keras.Sequential([keras.Input((1,), dtype="float64"),
                              LinearDEQ(1, use_bias=False, dtype="float64", **kwargs)])
    cell = model.layers[0].cell
    cell.kernel.assign([[w]])
    cell.recurrent_kernel.assign([[b]])
    return model


def quantity(variables):
    """`||w||^2 + (1 - b)^2` (variables: kernel, recurrent_kernel)."""
    return {"Q": dynamics.conserved_quantity(variables[1], variables[0])[0, 0]}


def authors_run():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1000, 1))
    gd = dynamics.gradient_descent(*dynamics.model_loss(scalar_model(0.024, 0.068), MSE, x, 2 * x), 0.01, 200,
                                   record=quantity)
    flow = dynamics.gradient_flow(*dynamics.model_loss(scalar_model(0.024, 0.068), MSE, x, 2 * x),
                                  np.linspace(0, 2.0, 201), record=quantity)
    w, b = float(gd["params"][0][-1][0, 0]), float(gd["params"][1][-1][0, 0])
    step_drift = np.diff(gd["Q"]) - 0.01**2 * gd["gradient_norm"][:-1] ** 2
    row = {"w": w, "b": b, "ratio": w / (1 - b), "risk": float(gd["loss"][-1]), "Q_start": float(gd["Q"][0]),
           "Q_end_gd": float(gd["Q"][-1]), "Q_end_flow": float(flow["Q"][-1]),
           "flow_Q_max_change": float(np.max(np.abs(flow["Q"] - flow["Q"][0]))),
           "gd_Q_nondecreasing": bool(np.all(np.diff(gd["Q"]) >= 0)),
           "gd_step_drift_minus_eta2_grad2_max": float(np.max(np.abs(step_drift))),
           "rate": dynamics.linear_rate(gd["loss"][:150]),
           "flow_end": [float(flow["params"][0][-1][0, 0]), float(flow["params"][1][-1][0, 0])]}
    print(f"1. scalar linear DEQ (authors' run): (w, b) = ({w:.3f}, {b:.3f}), w / (1 - b) = {row['ratio']:.6f}, "
          f"risk {row['risk']:.2e}, per-step risk factor {row['rate']:.4f}\n"
          f"   ||w||^2 + (1 - b)^2: start {row['Q_start']:.6f}, after gradient descent {row['Q_end_gd']:.6f} "
          f"(each step adds eta^2 ||grad||^2, to {row['gd_step_drift_minus_eta2_grad2_max']:.1e}), "
          f"after gradient flow {row['Q_end_flow']:.10f} (largest change {row['flow_Q_max_change']:.1e})",
          flush=True)
    return row, gd, flow


def tanh_run():
    rng = np.random.default_rng(0)
    d, n = 20, 1000
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    w_star = rng.standard_normal((d, 1))
    w_star *= 2.0 / np.linalg.norm(w_star)
    teacher = SingleIndexDEQ("tanh", dtype="float64")
    teacher(x[:1])
    teacher.cell.kernel.assign(w_star)
    teacher.cell.recurrent_kernel.assign(0.5)
    y = teacher(x).numpy()
    student = keras.Sequential([keras.Input((d,), dtype="float64"), SingleIndexDEQ("tanh", dtype="float64")])
    student.layers[0].cell.kernel.assign(0.1 * rng.standard_normal((d, 1)) / np.sqrt(d))
    start = time.perf_counter()
    gd = dynamics.gradient_descent(*dynamics.model_loss(student, MSE, x, y), 2.0, 400)
    w, b = gd["params"][0][-1], float(gd["params"][1][-1])
    row = {"risk_start": float(gd["loss"][0]), "risk": float(gd["loss"][-1]),
           "rate": dynamics.linear_rate(gd["loss"][100:]), "b": b,
           "w_error": float(np.linalg.norm(w - w_star) / np.linalg.norm(w_star)),
           "seconds": time.perf_counter() - start}
    print(f"2. tanh single-index DEQ, d = 20: risk {row['risk_start']:.3e} -> {row['risk']:.3e} in 400 steps, "
          f"per-step risk factor {row['rate']:.4f} (steps 100-400), b = {b:.4f} (teacher 0.5), "
          f"||w - w*|| / ||w*|| = {row['w_error']:.2e}", flush=True)
    return row, gd


RULES = {
    "exact (linear solve)": dict(solver="exact"),
    "implicit (Anderson adjoint)": dict(solver="anderson", backward="implicit"),
    "Jacobian-free": dict(solver="anderson", backward="jacobian_free"),
    "Neumann, 2 terms": dict(solver="anderson", backward=backward.Neumann(2)),
    "Neumann, 3 terms": dict(solver="anderson", backward=backward.Neumann(3)),
    "damped Neumann, 2 terms, 0.5": dict(solver="anderson", backward=backward.Neumann(2, damping=0.5)),
}


def counterexample():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1000, 1))
    rows, curves = {}, {}
    print("3. backward approximations, LinearDEQ(1) from (2, -0.5), target 0.2x, eta 0.2, 300 steps:", flush=True)
    for name, kwargs in RULES.items():
        extra = {} if kwargs["solver"] == "exact" else {"tol": 1e-12, "max_iter": 50}
        model = scalar_model(2.0, -0.5, **kwargs, **extra)
        gd = dynamics.gradient_descent(*dynamics.model_loss(model, MSE, x, 0.2 * x), 0.2, 300)
        w, b = float(gd["params"][0][-1][0, 0]), float(gd["params"][1][-1][0, 0])
        rows[name] = {"risk": float(gd["loss"][-1]), "w": w, "b": b}
        curves[name] = gd["loss"]
        print(f"   {name:<30} final risk {rows[name]['risk']:.2e} at (w, b) = ({w:.4f}, {b:.4f})", flush=True)
    return rows, curves


def plot(gd, flow, tanh_gd, curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    r = np.sqrt(gd["Q"][0])
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(r * np.cos(t), 1 + r * np.sin(t), color="0.8", lw=1, label="circle around (0, 1) at the start")
    wf, bf = flow["params"][0][:, 0, 0], flow["params"][1][:, 0, 0]
    ax.plot(wf, bf, color="C1", lw=3, alpha=0.6, label="gradient flow")
    ax.plot(gd["params"][0][:, 0, 0], gd["params"][1][:, 0, 0], ".", ms=2, color="C0", label="gradient descent")
    ws = np.linspace(-0.2, 1.2, 10)
    ax.plot(ws, 1 - ws / 2, "--", color="C2", lw=1, label="minimizers w / (1 - b) = 2")
    ax.plot([0], [1], "kx", label="singular point (0, 1)")
    ax.set_aspect("equal")
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylim(-0.1, 1.2)
    ax.set_xlabel("w")
    ax.set_ylabel("b")
    ax.set_title("scalar linear DEQ, eta 0.01, 200 steps", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    ax.semilogy(gd["loss"], label="scalar linear DEQ (eta 0.01)")
    ax.semilogy(tanh_gd["loss"], label="tanh single-index DEQ, d = 20 (eta 2)")
    ax.set_xlabel("gradient descent step")
    ax.set_ylabel("risk (mean squared error)")
    ax.set_title("linear convergence", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    for name, loss in curves.items():
        ax.semilogy(np.maximum(loss, 1e-32), label=name)
    ax.set_xlabel("gradient descent step")
    ax.set_ylabel("risk")
    ax.set_title("backward approximations, counterexample (b* = -1.46)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    authors, gd, flow = authors_run()
    tanh, tanh_gd = tanh_run()
    rules, curves = counterexample()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "single_index_dynamics.json"), "w") as fh:
        json.dump({"authors_scalar_run": authors, "tanh_d20": tanh, "backward_approximations": rules}, fh, indent=2)
    plot(gd, flow, tanh_gd, curves, os.path.join(OUT, "single_index_dynamics.png"))


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
