"""Core solver benchmark: time per forward+backward step and peak memory, side by side.

Problem (the issue's): a DEQ with cell z = tanh(z W + x U + b), hidden 256, input 64,
batch 128, float32, W = 0.9 x a random orthogonal matrix, loss sum(z * r).

Measured in one run, interleaved round-robin so that machine noise hits every
configuration alike, and reported as ratios:

* (a) 30 forward + 30 backward iterations (tol 1e-30, i.e. never met) per solver,
  against the floor: 30 bare cell evaluations + 30 cell VJPs in the same style of
  `tf.while_loop` (the least any fixed-point solver with an implicit backward can do);
* (b) tol 1e-4 per solver, with the iterations taken forward and backward;
* peak memory of a training step (TensorFlow's CPU allocator statistics) for
  max_iter 10, 50, 200 with the Implicit and the Unrolled backward;
* with the optional `bench` extra (torch, torchdeq) the same configurations in
  torchdeq, as our time / torchdeq time.

Each timed call directly follows an untimed call of the same configuration, as
steps follow each other in training. torchdeq is timed after ours in the same
run (see `main` for why not interleaved).

Run: python benchmarks/bench_core.py [--repeats 30] [--out benchmarks/results/bench_core.json]
"""

import argparse
import json
import os
import platform
import random
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow keeps CPU allocation statistics (the peak memory below) only with its
# BFC allocator; without it `reset_memory_stats("CPU:0")` raises ValueError.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_implicit as ki  # noqa: E402
from keras_implicit.backward import Implicit  # noqa: E402

HIDDEN, D_IN, BATCH, SCALE = 256, 64, 128, 0.9
NEVER = 1e-30  # a tolerance no float32 residual meets: fixed iteration counts
SOLVERS = ("fixed_point", "anderson", "broyden")


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))
    w = tf.Variable((SCALE * q).astype("float32"), name="w")
    u = tf.Variable((rng.standard_normal((D_IN, HIDDEN)) / np.sqrt(D_IN)).astype("float32"), name="u")
    b = tf.Variable(np.zeros(HIDDEN, "float32"), name="b")
    x = tf.constant(rng.standard_normal((BATCH, D_IN)).astype("float32"))
    r = tf.constant(rng.standard_normal((BATCH, HIDDEN)).astype("float32"))
    return (w, u, b), x, r


JIT = False  # set by --jit


def make_step(params, solver, tol, max_iter, backward="implicit"):
    w, u, b = params
    bwd_iters = tf.Variable(0, dtype=tf.int32, trainable=False)

    def cell(z, x):
        return tf.tanh(tf.matmul(z, w) + tf.matmul(x, u) + b)

    if backward == "implicit":
        backward = Implicit(tol=tol, max_iter=max_iter)

    @tf.function(jit_compile=JIT)
    def step(x, r):
        with tf.GradientTape() as tape:
            z, info = ki.fixed_point(
                cell, tf.zeros([BATCH, HIDDEN]), x, solver=solver, backward=backward, tol=tol,
                max_iter=max_iter, on_failure="ignore", check_captures=False,
                backward_callback=lambda i: bwd_iters.assign(i.iterations),
            )
            loss = tf.reduce_sum(z * r)
        grads = tape.gradient(loss, [w, u, b])
        return grads, info.iterations

    return step, bwd_iters


def make_floor(params, iters=30):
    """30 bare cell evaluations, then 30 VJPs and the parameter VJP: the floor."""
    w, u, b = params

    @tf.function(jit_compile=JIT)
    def floor(x, r):
        def body(i, z):
            return i + 1, tf.tanh(tf.matmul(z, w) + tf.matmul(x, u) + b)

        _, z = tf.while_loop(lambda i, z: i < iters, body, (0, tf.zeros([BATCH, HIDDEN])))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z)
            fz = tf.tanh(tf.matmul(z, w) + tf.matmul(x, u) + b)

        def vjp(i, c):
            return i + 1, tape.gradient(fz, z, output_gradients=c) + r

        _, c = tf.while_loop(lambda i, c: i < iters, vjp, (0, r))
        return tape.gradient(fz, [w, u, b], output_gradients=c)

    return floor


def torchdeq_steps(seed=0):
    """The same problem in torchdeq (optional); returns {name: callable} or {}."""
    try:
        import torch
        from torchdeq import get_deq
    except ImportError:
        return {}
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))
    w = torch.tensor((SCALE * q).astype("float32"), requires_grad=True)
    u = torch.tensor((rng.standard_normal((D_IN, HIDDEN)) / np.sqrt(D_IN)).astype("float32"), requires_grad=True)
    b = torch.zeros(HIDDEN, requires_grad=True)
    x = torch.tensor(rng.standard_normal((BATCH, D_IN)).astype("float32"))
    r = torch.tensor(rng.standard_normal((BATCH, HIDDEN)).astype("float32"))
    names = {"fixed_point": "fixed_point_iter", "anderson": "anderson", "broyden": "broyden"}

    def make(solver, tol, max_iter):
        deq = get_deq(f_solver=names[solver], b_solver=names[solver], f_max_iter=max_iter,
                      b_max_iter=max_iter, f_tol=tol, b_tol=tol, ift=True)

        def step():
            xu = x @ u
            z_out, info = deq(lambda z: torch.tanh(z @ w + xu + b), torch.zeros(BATCH, HIDDEN))
            loss = (z_out[-1] * r).sum()
            grads = torch.autograd.grad(loss, [w, u, b])
            return grads, info

        return step

    steps = {}
    for s in SOLVERS:
        steps[f"(a) {s}"] = make(s, NEVER, 30)
        steps[f"(b) {s}"] = make(s, 1e-4, 100)
    return steps


def peak_memory(params, x, r, solver, max_iter, backward):
    step, _ = make_step(params, solver, NEVER, max_iter, backward)
    step(x, r)  # trace and warm up
    peaks = []
    for _ in range(5):  # the allocator's peak varies a little from call to call
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(x, r)
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
    return statistics.median(peaks)


def run_to_end(fn):
    out = fn()
    tf.nest.map_structure(lambda t: t.numpy() if isinstance(t, tf.Tensor) else t, out)


def measure(runs, repeats):
    """Median-ready timings: rounds in a fresh random order, so that machine
    noise hits every configuration alike; each timed call directly follows an
    untimed call of the same configuration, as steps follow each other in
    training."""
    times = {k: [] for k in runs}
    for fn in runs.values():  # warm-up round
        run_to_end(fn)
    order = list(runs)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            run_to_end(runs[name])
            t0 = time.perf_counter()
            run_to_end(runs[name])
            times[name].append(time.perf_counter() - t0)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_core.json"))
    parser.add_argument("--no-torch", action="store_true", help="skip torchdeq even if installed")
    parser.add_argument("--jit", action="store_true", help="compile our steps and the floor with XLA")
    args = parser.parse_args()
    global JIT
    JIT = args.jit

    params, x, r = make_problem()
    runs = {"floor": make_floor(params)}
    iters = {}
    ours = {}
    for s in SOLVERS:
        ours[f"(a) {s}"] = make_step(params, s, NEVER, 30)
        ours[f"(b) {s}"] = make_step(params, s, 1e-4, 100)
    for name, (step, bwd) in ours.items():
        runs[name] = (lambda step: lambda: step(x, r))(step)
        _, fwd_it = step(x, r)  # trace
        iters[name] = (int(fwd_it), int(bwd.numpy()))
    runs["floor"] = (lambda fl: lambda: fl(x, r))(runs["floor"])
    times = measure(runs, args.repeats)
    # torchdeq runs after all of ours, not interleaved with them: once torch has
    # run in the process, our XLA-compiled loops ran up to 2x slower in the
    # following calls whatever the pause (Broyden 33-36 ms vs 17-19 ms), which
    # measures the interaction of the two runtimes, not either library.
    torch_runs = {} if args.no_torch else torchdeq_steps()
    torch_iters = {}
    for name, fn in torch_runs.items():
        _, info = fn()
        torch_iters[name] = int(info["nstep"].max()) if "nstep" in info else None
    times.update(measure({f"torchdeq {k}": v for k, v in torch_runs.items()}, args.repeats))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    floor = med["floor"]
    rows = []
    print(f"\nDEQ tanh cell, hidden {HIDDEN}, input {D_IN}, batch {BATCH}, float32; median of {args.repeats} "
          f"interleaved runs on {platform.processor() or platform.machine()} ({os.cpu_count()} cores)\n")
    header = f"{'configuration':<22}{'ms/step':>9}{'fwd it':>8}{'bwd it':>8}{'/ floor':>9}{'per-it / FPI':>14}{'/ torchdeq':>12}"
    print(header)
    print("-" * len(header))
    print(f"{'floor (30 f + 30 VJP)':<22}{floor:>9.2f}{30:>8}{30:>8}{1.0:>9.2f}")
    for name in ours:
        f_it, b_it = iters[name]
        per_it = (med[name] / (f_it + b_it))
        fpi_name = name[:4] + "fixed_point"
        fpi_per_it = med[fpi_name] / sum(iters[fpi_name])
        tname = f"torchdeq {name}"
        ratio_t = med[name] / med[tname] if tname in med else None
        row = {
            "configuration": name, "ms": med[name], "forward_iterations": f_it, "backward_iterations": b_it,
            "ratio_to_floor": med[name] / floor if name.startswith("(a)") else None,
            "per_iteration_ratio_to_fixed_point": per_it / fpi_per_it,
            "torchdeq_ms": med.get(tname), "torchdeq_forward_iterations": torch_iters.get(name),
            "ratio_to_torchdeq": ratio_t,
        }
        rows.append(row)
        fl = f"{row['ratio_to_floor']:>9.2f}" if row["ratio_to_floor"] is not None else f"{'':>9}"
        tt = f"{ratio_t:>12.2f}" if ratio_t is not None else f"{'n/a':>12}"
        print(f"{name:<22}{med[name]:>9.2f}{f_it:>8}{b_it:>8}{fl}{row['per_iteration_ratio_to_fixed_point']:>14.2f}{tt}")
    if torch_runs:
        print("\ntorchdeq ms/step: " + ", ".join(f"{k}: {med['torchdeq ' + k]:.2f}" for k in torch_runs))

    print("\nPeak memory of a training step (anderson, every iteration run), MiB:")
    mem = []
    for max_iter in (10, 50, 200):
        imp = peak_memory(params, x, r, "anderson", max_iter, "implicit") / 2**20
        unr = peak_memory(params, x, r, "anderson", max_iter, "unrolled") / 2**20
        mem.append({"max_iter": max_iter, "implicit_mib": imp, "unrolled_mib": unr})
        print(f"  max_iter {max_iter:>3}: implicit {imp:7.2f}   unrolled {unr:7.2f}")
    flat = max(m["implicit_mib"] for m in mem) / min(m["implicit_mib"] for m in mem)
    print(f"  implicit max/min over max_iter: {flat:.3f} (target <= 1.10)")

    result = {
        "problem": {"hidden": HIDDEN, "input": D_IN, "batch": BATCH, "dtype": "float32", "w_scale": SCALE},
        "repeats": args.repeats, "machine": {"processor": platform.processor(), "cores": os.cpu_count(),
                                             "tensorflow": tf.__version__},
        "floor_ms": floor, "rows": rows, "memory": mem, "implicit_memory_max_over_min": flat,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
