"""Convolutional equilibrium layers at image size: training-step time and peak memory.

Synthetic batches of 64 images, 28 x 28 x 1 and 32 x 32 x 3, 10 classes, float32,
Peaceman-Rachford (alpha 1) at relative tol 1e-3, implicit backward (Theorem 3).
In one run, interleaved round-robin (median of --repeats), reported as ratios:

* `MonotoneConv2D` (32 channels on 28 x 28 x 1, 64 on 32 x 32 x 3; 4 x 4 average
  pooling and a dense readout, as the authors' SingleConvNet), `MonotoneMultiscale`
  (16, 32, 64 channels, stride 2, padding 2), `LipschitzConv2D` (32 filters,
  gamma 1, metric "channel": its FFT + Woodbury resolvent), each with the forward
  and backward iterations of a step;
* an explicit CNN with about the same number of parameters (one 3 x 3 convolution,
  ReLU, the same pooling and readout) and each layer's step / CNN step;
* peak memory of a training step (TensorFlow's CPU allocator) of `MonotoneConv2D`
  on 28 x 28 x 1 with 10, 50 and 200 forward iterations (tol 1e-30: every iteration
  runs; the implicit backward keeps no iterate).

* with `--reference DIR` (a checkout of locuslab/monotone_op_net; torch installed),
  the authors' `SingleConvNet` and `MultiConvNet` run unmodified in the same run, and
  ours / theirs. On torch 2.x their `torch.rfft`/`torch.irfft` get thin wrappers over
  `torch.fft` and their in-place border ReLU runs under
  `torch.autograd.graph.allow_mutation_on_saved_tensors()` (see `load_reference`).
  Their multi-tier net pads each tier separately (tiers 30, 16, 9 on 28 x 28), ours
  subsamples the padded grid (32, 16, 8): the same channels, not identical tiers.

Run: python benchmarks/bench_conv.py [--repeats 5] [--jit] [--sizes 28 32] [--reference DIR]
     (DIR, e.g.: git --git-dir=<mirror>/.git archive HEAD | tar -x -C /tmp/monotone_op_net)
"""

import argparse
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow keeps CPU allocation statistics (the peak memory below) only with its
# BFC allocator; without it `reset_memory_stats("CPU:0")` raises ValueError.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_io import save  # noqa: E402
from training import mean_of, train_step  # noqa: E402

from keras_implicit.layers import LipschitzConv2D, MonotoneConv2D, MonotoneMultiscale  # noqa: E402

BATCH, CLASSES, TOL = 64, 10, 1e-3
SIZES = {28: (28, 28, 1), 32: (32, 32, 3)}
SOLVE = dict(solver="peaceman_rachford", alpha=1.0, stop_mode="rel", on_failure="ignore")


def _head(z, pool=4):
    h = keras.layers.AveragePooling2D(pool)(z) if pool > 1 else z
    return keras.layers.Dense(CLASSES)(keras.layers.Flatten()(h))


def build(kind, shape, tol=TOL, max_iter=100, seed=0):
    """`(model, equilibrium layer or None)` for one configuration."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    layer = None
    if kind == "monotone_conv":
        filters = 32 if shape[-1] == 1 else 64
        layer = MonotoneConv2D(filters, tol=tol, max_iter=max_iter, name="deq", **SOLVE)
        out = _head(layer(inputs))
    elif kind == "monotone_multiscale":
        layer = MonotoneMultiscale((16, 32, 64), stride=2, padding=2, tol=tol, max_iter=max_iter, name="deq", **SOLVE)
        out = _head(layer(inputs), pool=1)
    elif kind == "lipschitz_conv":
        layer = LipschitzConv2D(32, CLASSES, lipschitz=1.0, metric="channel", pool=4, tol=tol, max_iter=max_iter,
                                name="deq", **SOLVE)
        out = layer(inputs)
    else:
        raise ValueError(kind)
    return keras.Model(inputs, out), layer


def cnn(shape, params, seed=0):
    """One 3x3 convolution + ReLU, 4x4 pooling, dense readout, with about `params` parameters."""
    keras.utils.set_random_seed(seed)
    cells = (shape[0] // 4) * (shape[1] // 4)
    # params = 9 c_in c + c + cells c 10 + 10
    filters = max(1, round((params - CLASSES) / (9 * shape[-1] + 1 + cells * CLASSES)))
    inputs = keras.Input(shape)
    z = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, _head(z))


def load_reference(path):
    """The authors' `mon`, `splitting` and `train` modules (locuslab/monotone_op_net), unmodified.

    Written for torch 1.x: on torch 2.x `torch.rfft`/`torch.irfft` (removed) are
    provided as thin wrappers over `torch.fft.fftn`/`ifftn`, and `train.py`'s
    torchvision imports (data loading only, unused here) get empty stand-ins.
    """
    import types

    import torch

    if not hasattr(torch, "rfft"):
        def rfft(x, signal_ndim, onesided=True):  # old API: full spectrum as (real, imag) pairs
            assert signal_ndim == 2 and not onesided
            return torch.view_as_real(torch.fft.fftn(x, dim=(-2, -1)))

        def irfft(x, signal_ndim, onesided=True):
            assert signal_ndim == 2 and not onesided
            return torch.fft.ifftn(torch.view_as_complex(x.contiguous()), dim=(-2, -1)).real

        torch.rfft, torch.irfft = rfft, irfft
    try:
        import torchvision  # noqa: F401
    except ImportError:
        for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, os.path.abspath(path))
    import splitting
    import train

    return train, splitting


def reference_step(train, splitting, kind, shape, tol=TOL, seed=0):
    """A training step of the authors' SingleConvNet / MultiConvNet (PR, alpha 1) on one batch."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    common = dict(in_dim=shape[0], in_channels=shape[-1], alpha=1.0, tol=tol, max_iter=100)
    if kind == "monotone_conv":
        model = train.SingleConvNet(splitting.MONPeacemanRachford, out_channels=32 if shape[-1] == 1 else 64,
                                    m=1.0, **common)
    else:
        model = train.MultiConvNet(splitting.MONPeacemanRachford, conv_sizes=(16, 32, 64), m=1.0, **common)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(x, y):
        # the border ReLU zeroes the border of ReLU's saved output in place
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    return model, step


def iterations(layer, step, x, y):
    """Forward and backward iterations of one training step (the layer's metrics)."""
    for m in (layer.fwd_iters_metric, layer.bwd_iters_metric):
        m.reset_state()
    step(x, y)
    return mean_of(layer.fwd_iters_metric), mean_of(layer.bwd_iters_metric)


def peak_memory_mib(step, x, y):
    peaks = []
    for _ in range(3):
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(x, y).numpy()
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
    return statistics.median(peaks) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    parser.add_argument("--reference", default=None,
                        help="a checkout of locuslab/monotone_op_net: time its SingleConvNet and MultiConvNet "
                             "(needs torch) in the same run")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs, info = {}, {}
    for size in args.sizes:
        shape = SIZES[size]
        x = tf.constant(rng.standard_normal((BATCH,) + shape).astype("float32"))
        y = tf.constant(rng.integers(0, CLASSES, BATCH))
        params = {}
        for kind in ("monotone_conv", "monotone_multiscale", "lipschitz_conv"):
            model, layer = build(kind, shape)
            step = train_step(model, args.jit)
            t0 = time.perf_counter()
            step(x, y).numpy()  # trace (and compile)
            first = time.perf_counter() - t0
            name = f"{size}x{size}x{shape[-1]} {kind}"
            fwd, bwd = iterations(layer, step, x, y)
            params[kind] = model.count_params()
            info[name] = {"params": params[kind], "fwd": fwd, "bwd": bwd, "first_call_s": first,
                          "peak_mib": peak_memory_mib(step, x, y)}
            runs[name] = (lambda s, x, y: lambda: s(x, y).numpy())(step, x, y)
            print(f"built {name}: {params[kind]} parameters, {fwd:.1f} / {bwd:.1f} iterations, "
                  f"first call {first:.1f} s", flush=True)
        if args.reference:
            import torch

            train, splitting = load_reference(args.reference)
            tx = torch.tensor(np.transpose(x.numpy(), (0, 3, 1, 2)).copy())
            ty = torch.tensor(y.numpy())
            for kind in ("monotone_conv", "monotone_multiscale"):
                model, step = reference_step(train, splitting, kind, shape)
                t0 = time.perf_counter()
                step(tx, ty)
                first = time.perf_counter() - t0
                model.mon.stats.reset()
                step(tx, ty)
                name = f"{size}x{size}x{shape[-1]} {kind} (authors', torch)"
                info[name] = {"params": sum(p.numel() for p in model.parameters()),
                              "fwd": float(model.mon.stats.fwd_iters.avg), "bwd": float(model.mon.stats.bkwd_iters.avg),
                              "first_call_s": first, "peak_mib": None}
                runs[name] = (lambda s, x, y: lambda: s(x, y))(step, tx, ty)
                print(f"built {name}: {info[name]['params']} parameters", flush=True)
        m = cnn(shape, params["monotone_conv"])
        step = train_step(m, args.jit)
        step(x, y).numpy()
        name = f"{size}x{size}x{shape[-1]} cnn"
        info[name] = {"params": m.count_params(), "fwd": None, "bwd": None, "first_call_s": None,
                      "peak_mib": peak_memory_mib(step, x, y)}
        runs[name] = (lambda s, x, y: lambda: s(x, y).numpy())(step, x, y)

    times = {k: [] for k in runs}
    order = list(runs)
    for _ in range(args.repeats):  # a fresh random order each round
        random.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    # peak memory against the iteration count (tol 1e-30: max_iter iterations run)
    shape = SIZES[args.sizes[0]]
    x = tf.constant(rng.standard_normal((BATCH,) + shape).astype("float32"))
    y = tf.constant(rng.integers(0, CLASSES, BATCH))
    memory = {}
    for max_iter in (10, 50, 200):
        model, layer = build("monotone_conv", shape, tol=1e-30, max_iter=max_iter)
        step = train_step(model, args.jit)
        step(x, y).numpy()
        memory[max_iter] = {"peak_mib": peak_memory_mib(step, x, y), "fwd": iterations(layer, step, x, y)[0]}

    mode = "XLA (jit_compile=True)" if args.jit else "graph"
    lines = [f"Convolutional layers, batch {BATCH}, float32, PR alpha 1, tol {TOL:g} (rel), {mode}; training step,"
             f" median of {args.repeats} interleaved runs, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
             "",
             f"{'configuration':<50}{'params':>9}{'s/step':>9}{'fwd it':>8}{'bwd it':>8}{'/ CNN':>8}{'peak MiB':>10}"]
    rows = []
    for name in runs:
        size = name.split()[0]
        ratio = med[name] / med[f"{size} cnn"]
        i = info[name]
        its = f"{i['fwd']:>8.1f}{i['bwd']:>8.1f}" if i["fwd"] is not None else f"{'-':>8}{'-':>8}"
        peak = f"{i['peak_mib']:>10.0f}" if i["peak_mib"] is not None else f"{'-':>10}"
        lines.append(f"{name:<50}{i['params']:>9}{med[name]:>9.3f}{its}{ratio:>8.2f}{peak}")
        rows.append({"configuration": name, "seconds_per_step": med[name], "ratio_to_cnn": ratio, **i})
    for name in runs:  # the authors' code against ours, same size and kind
        if "(authors'" in name:
            ours = name.split(" (")[0]
            lines.append(f"{ours}: ours / authors' step time = {med[ours] / med[name]:.2f}")
            rows.append({"configuration": f"{ours} ours / authors'", "ratio": med[ours] / med[name]})
    lines += ["", f"peak memory of a MonotoneConv2D step on {shape[0]}x{shape[1]}x{shape[2]} against forward iterations:"]
    for max_iter, m in memory.items():
        lines.append(f"  max_iter {max_iter:>3} ({m['fwd']:.0f} iterations): {m['peak_mib']:.0f} MiB")
    spread = max(m["peak_mib"] for m in memory.values()) / min(m["peak_mib"] for m in memory.values()) - 1
    lines.append(f"  largest / smallest - 1: {100 * spread:.1f} %")
    name = "bench_conv_xla" if args.jit else "bench_conv"
    save(name, "\n".join(lines), {"mode": mode, "rows": rows, "memory": {str(k): v for k, v in memory.items()},
                                  "memory_spread": spread,
                                  "machine": {"processor": platform.processor(), "cores": os.cpu_count(),
                                              "tensorflow": tf.__version__}})


if __name__ == "__main__":
    main()
