"""What a solve reports: `SolverInfo` and the status codes."""

from typing import NamedTuple

import tensorflow as tf

CONVERGED = 0
MAX_ITER_REACHED = 1
NON_FINITE = 2

STATUS_NAMES = {
    CONVERGED: "converged",
    MAX_ITER_REACHED: "max_iter reached",
    NON_FINITE: "non-finite",
}


class SolverInfo(NamedTuple):
    """Statistics of one fixed-point solve.

    A `NamedTuple` of tensors, so it passes through `tf.function`, `tf.nest`
    and `keras.tree` unchanged. None of its fields carries a gradient.

    Attributes:
        iterations: int32 scalar, the number of iterations taken (function
            evaluations for the generic solvers).
        residual: float (float32 for a float16 or bfloat16 state, whose squares
            would underflow or overflow), shape `[batch]`, the residual of the returned iterate of
            each sample (absolute or relative according to `stop_mode`).
        converged: bool, shape `[batch]`, whether each sample met `tol`.
        trace: float, shape `[min(max_iter, 10000)]`, the largest finite
            residual over the batch at each of the first iterations; entries
            after `iterations` repeat the last recorded value (the trace's
            size does not grow with `max_iter` beyond 10,000:
            `solvers.base.TRACE_LENGTH`).
        status: int32 scalar, `CONVERGED` (0) when every sample converged,
            `NON_FINITE` (2) when any sample produced NaN/Inf, otherwise
            `MAX_ITER_REACHED` (1).
        block_residuals: float, shape `[batch, blocks]`, the absolute
            residual `||f(z)_b - z_b||` of each block `b` of a nested state
            (one column for a single tensor) at the returned iterate. For the
            splitting solvers it is the splitting's own residual.
    """

    iterations: tf.Tensor
    residual: tf.Tensor
    converged: tf.Tensor
    trace: tf.Tensor
    status: tf.Tensor
    block_residuals: tf.Tensor


def status_name(status):
    """Returns the readable name of a status code (int or scalar tensor)."""
    return STATUS_NAMES.get(int(status), f"unknown status {int(status)}")


def describe(info, what="fixed-point solve"):
    """A one-line human summary of an eager `SolverInfo`."""
    residual = info.residual.numpy()
    n_bad = int((~info.converged.numpy()).sum())
    worst = float(residual.max()) if residual.size else float("nan")
    return (
        f"{what}: {status_name(info.status)} after {int(info.iterations)} "
        f"iterations; {n_bad} of {residual.size} samples above tol, "
        f"largest residual {worst:.3g}"
    )
