"""What one application of a convolutional monDEQ's FFT operator costs, by part.

The state of `MonotoneConv2D(32)` on a batch of 64 28 x 28 images (float32),
`FourierOperator.multiply` (as every resolvent application in a Peaceman-Rachford
iteration, forward or adjoint, runs it) and its parts: the 2-D real FFT, the
per-frequency `32 x 32` complex products (as the einsum runs them and as one
batched matmul on a frequency-major layout), the inverse FFT and the layout
transposes; against one 3 x 3, 32 -> 32 convolution of the same state. Graph mode,
median of --repeats timings of 20 calls each. A training step runs at least one
application per forward and adjoint iteration (5 + 4 at tol 1e-3 in
`bench_conv.py`), which bounds the step from below whatever else it does.

Run: python benchmarks/bench_conv_ops.py [--repeats 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_implicit.operators import FourierOperator  # noqa: E402

B, H, W, C = 64, 28, 28, 32


def timed(fn, arg, calls=20):
    fn(arg)  # trace
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(arg)
    _ = out.numpy()
    return (time.perf_counter() - start) / calls * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = tf.random.Generator.from_seed(0)
    mats = tf.complex(g.normal([H, W // 2 + 1, C, C]), g.normal([H, W // 2 + 1, C, C]))
    op = FourierOperator(mats, (H, W), tf.float32)
    z = g.normal([B, H * W * C])
    img = tf.transpose(tf.reshape(z, [B, H, W, C]), [0, 3, 1, 2])
    spec = tf.signal.rfft2d(img)
    spec_major = tf.transpose(spec, [2, 3, 1, 0])  # [H, W', C, B]
    kernel = g.normal([3, 3, C, C])
    parts = {
        "FourierOperator.multiply (all of it)": (tf.function(op.multiply), z),
        "rfft2d": (tf.function(tf.signal.rfft2d), img),
        "irfft2d": (tf.function(lambda s: tf.signal.irfft2d(s, fft_length=[H, W])), spec),
        "per-frequency product (einsum, as used)": (tf.function(lambda s: tf.einsum("hwoc,bchw->bohw", mats, s)), spec),
        "per-frequency product (batched matmul)": (tf.function(lambda s: tf.matmul(mats, s)), spec_major),
        "layout transpose (state -> [B, C, H, W])": (
            tf.function(lambda t: tf.transpose(tf.reshape(t, [B, H, W, C]), [0, 3, 1, 2])), z),
        "3x3 conv 32 -> 32 (for scale)": (
            tf.function(lambda t: tf.nn.conv2d(tf.reshape(t, [B, H, W, C]), kernel, 1, "SAME")), z),
    }
    times = {name: [] for name in parts}
    for _ in range(args.repeats):
        for name, (fn, arg) in parts.items():
            times[name].append(timed(fn, arg))
    flops = 8 * B * H * (W // 2 + 1) * C * C
    print(f"batch {B}, {H}x{W}x{C} state, float32 / complex64, graph, median of {args.repeats}, "
          f"{os.cpu_count()} cores")
    for name, t in times.items():
        print(f"  {name:<44}{statistics.median(t):8.2f} ms")
    print(f"  (the per-frequency product is {flops / 1e6:.0f} MFLOP: "
          f"{flops / statistics.median(times['per-frequency product (batched matmul)']) / 1e6:.1f} GFLOP/s as a matmul)")


if __name__ == "__main__":
    main()
