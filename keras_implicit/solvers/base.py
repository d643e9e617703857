"""The one loop driver shared by every solver, and the `Solver` base class.

A solver declares what it needs from the problem (`requires = "map"` or
`"splitting"`, see `solvers.problem`), works on a flat `[batch, n]` view of
the (possibly nested) state and implements two methods:

* `init(F, z) -> state`: its own loop state, a tuple of tensors whose shapes
  never change. `F` is the form of the problem the solver asked for.
* `step(F, z, state, k) -> (z_next, state, candidate, diff, ref)`: one
  iteration from iterate `z`. `candidate` is the iterate that the residual
  `||diff||` belongs to (for the generic solvers `candidate = z` and
  `diff = F(z) - z`), and `ref` scales `diff` in the relative stop mode.

`solve()` owns the `tf.while_loop`: per-sample stopping, best-iterate tracking,
the fixed-size residual trace and the non-finite guard. Solvers never touch
gradients.
"""

import numpy as np
import tensorflow as tf

from keras_implicit import config
from keras_implicit import info as info_lib
from keras_implicit.registry import Configurable
from keras_implicit.solvers.problem import BoundProblem, bookkeeping_dtype  # noqa: F401 (re-exported)
from keras_implicit import validation

try:  # a tape watching the loop (Unrolled) needs the residuals cut off
    from tensorflow.python.eager.record import could_possibly_record
except ImportError:  # pragma: no cover - private TensorFlow API moved
    def could_possibly_record():
        return True

STOP_MODES = ("abs", "rel", "rel_sq")
# Guards the relative residual ||diff|| / (||ref|| + eps) against ref = 0.
REL_EPS = 1e-6
# `SolverInfo.trace` records at most this many iterations (the first ones).
TRACE_LENGTH = 10_000


class Solver(Configurable):
    """Base class of the fixed-point solvers.

    Subclasses set `name`, implement `init`/`step` and `get_config`. They are
    plain Python objects (no variables), so one instance can serve any number
    of layers.
    """

    # What the solver needs from the problem: "map" or "splitting".
    requires = "map"
    # Whether `jit_loop` pays off: solvers with many small per-iteration ops
    # (Anderson, Broyden) run 3-4x faster per iteration in an XLA loop; for
    # plain iteration, whose step is the cell itself, the nested XLA call
    # costs more than it saves (measured: 10.5 vs 8.8 ms per benchmark step).
    compile_loop = True

    def init(self, F, z):
        raise NotImplementedError

    def step(self, F, z, state, k):
        raise NotImplementedError



# Ops that XLA cannot compile (printing, Python functions) or compiles away
# (assertions): a loop holding one runs uncompiled, as written.
_NOT_FOR_XLA = frozenset({"Assert", "Print", "PrintV2", "PyFunc", "PyFuncStateless", "EagerPyFunc"})


def _xla_changes_meaning(concrete):
    """Whether the loop's graph (its body and condition included) holds an op of `_NOT_FOR_XLA`."""
    graph = concrete.graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return not ops.isdisjoint(_NOT_FOR_XLA)


def check_tol_and_max_iter(tol, max_iter, stop_mode):
    """Validates the stopping settings (construction-time errors, Keras style)."""
    validation.number(tol, "tol")
    validation.integer(max_iter, "max_iter")
    if stop_mode not in STOP_MODES:
        raise ValueError(
            f"`stop_mode` must be one of {STOP_MODES}. Received: stop_mode={stop_mode!r}"
        )


def row_sum(t):
    """Sum over the last axis, keeping it (size 1), as a matrix-vector product.

    XLA on CPU runs a last-axis `reduce_sum` of a `[128, 256]` tensor as a slow
    loop (measured about 20 us each inside a compiled solver loop); the same sum
    as a product with a ones vector is one fast GEMV (a Broyden iteration got
    16% cheaper).
    """
    n = t.shape[-1]
    ones = tf.ones([n, 1], t.dtype)
    if t.shape.rank == 2:
        return tf.matmul(t, ones)
    out = tf.matmul(tf.reshape(t, [-1, n]), ones)
    return tf.reshape(out, tf.concat([tf.shape(t)[:-1], [1]], axis=0))


def _sq_norm(x, dtype=None):
    """Per-sample squared 2-norm, shape `[batch, 1]`, computed in `dtype`
    (default: `x`'s)."""
    if dtype is not None and x.dtype != dtype:
        x = tf.cast(x, dtype)
    return row_sum(tf.square(x))


def _block_matrix(sizes, dtype):
    """`[n, blocks]` 0/1 matrix summing a flat state's entries per block."""
    return tf.constant(np.repeat(np.eye(len(sizes)), sizes, axis=0), dtype)


def solve(problem, z0, solver, tol=1e-4, max_iter=50, stop_mode="abs", parallel_iterations=10,
          jit_loop=False):
    """Runs `solver` on a fixed-point problem from `z0`; the single `tf.while_loop` of the package.

    Args:
        problem: a `BoundProblem` (see `solvers.problem`), or a callable
            mapping a state (nested structure of `[batch, ...]` tensors, like
            `z0`) to a state of the same structure.
        z0: initial state.
        solver: a `Solver` instance; it receives the form of the problem
            that its `requires` names.
        tol: stop when every sample's residual is `<= tol`.
        max_iter: at most this many iterations (function evaluations).
        stop_mode: `"abs"` for `||f(z) - z||`, `"rel"` for
            `||f(z) - z|| / (||f(z)|| + 1e-6)`, `"rel_sq"` for Jeon, Lee &
            Choi's rule `||f(z) - z||^2 / (1e-6 + ||z||^2)` (squared change
            relative to the current iterate; `tol` applies to that squared
            ratio), per sample.
        jit_loop: in graph mode and for a known batch size, compile the loop
            with XLA (as a nested `tf.function(jit_compile=True)`) even when
            the surrounding graph is not, for solvers whose `compile_loop` is
            True (with an unknown batch size, as in a serving signature, every
            new size would be compiled anew: such loops run uncompiled). XLA fuses the
            solvers' many small per-iteration ops (3-4x faster Anderson and
            Broyden iterations on CPU); `keras_implicit.config.set_jit_loops`
            turns it off for the whole process. Only for loops that are not
            differentiated: TensorFlow cannot backpropagate through an XLA
            loop from a non-XLA graph.

    Returns:
        `(z, info)`: for each sample its first iterate within `tol` (so
        that it does not depend on the rest of the batch), or else its
        lowest-residual iterate, in the
        structure of `z0`, and a `SolverInfo` (with the absolute residual of
        each block of a nested state in `block_residuals`).

    The loop is differentiable (the `Unrolled` backward mode backpropagates
    through it); shapes and dtypes of the loop state never change, so it
    compiles with XLA.

    Outside XLA every op of the loop body costs a few microseconds of
    executor time whatever its size, so the bookkeeping is kept to a handful
    of ops per iteration: squared residuals (the square root is taken once,
    after the loop), `[batch, 1]` shapes that broadcast without reshapes, the
    trace written into a `TensorArray`, and no iteration test in `cond`
    (`maximum_iterations` already bounds the loop).
    """
    if not isinstance(problem, BoundProblem):
        problem = BoundProblem(problem)
    F = problem.form(solver, z0)
    z0_flat = F.start(z0)
    dtype = z0_flat.dtype
    acc = bookkeeping_dtype(dtype)  # residuals, tolerance, trace
    max_iter = int(max_iter)
    # The loop compares squared quantities ("rel_sq" is squared already).
    squared = stop_mode != "rel_sq"
    # (capped at the dtype's largest value: a tol whose square overflows must not
    # accept an infinite residual)
    largest = float(np.finfo(acc.as_numpy_dtype).max)
    tol_sq = tf.constant(min(float(tol) ** 2 if squared else float(tol), largest), acc)
    # Per-block squared residuals: tracked apart only when they differ from
    # the stopping residual (several blocks, or a relative stop mode).
    blocks = F.block_sizes
    track_blocks = len(blocks) > 1 or stop_mode != "abs"
    block_matrix = _block_matrix(blocks, acc) if len(blocks) > 1 else None

    batch = tf.shape(z0_flat)[0]
    inf = tf.fill(tf.stack([batch, 1]), tf.constant(float("inf"), acc))
    state0 = solver.init(F, z0_flat)
    # The residuals steer the loop and never carry gradients; the stop is
    # only needed where a tape could record the loop (the Unrolled mode).
    stop = tf.stop_gradient if could_possibly_record() else (lambda t: t)

    def block_sq(diff):
        if block_matrix is None:
            return _sq_norm(diff, acc)
        return tf.matmul(tf.square(tf.cast(diff, acc)), block_matrix)

    def measure(diff, ref, cand):
        res = _sq_norm(diff, acc)
        if stop_mode == "rel":
            res = res / tf.square(tf.sqrt(_sq_norm(ref, acc)) + REL_EPS)
        elif stop_mode == "rel_sq":
            res = res / (REL_EPS + _sq_norm(cand, acc))
        return stop(res)

    def cond(k, z, state, best_z, best_res, best_blocks, ok, trace):
        # Go on while some sample is neither converged nor broken.
        return tf.reduce_any(ok & (best_res > tol_sq))

    def body(k, z, state, best_z, best_res, best_blocks, ok, trace):
        z_next, state, cand, diff, ref = solver.step(F, z, state, k)
        # Loop variables keep their static shapes (reshapes inside a solver or
        # an operator may lose them).
        if z_next.shape != z.shape:
            z_next = tf.ensure_shape(z_next, z.shape)
        if cand.shape != z.shape:
            cand = tf.ensure_shape(cand, z.shape)
        res = measure(diff, ref, cand)
        finite = tf.math.is_finite(res)
        # A converged sample keeps its first converged iterate, so that its
        # result does not depend on the other samples of its batch.
        done = best_res <= tol_sq
        better = (res < best_res) & tf.logical_not(done)  # false for NaN
        best_z = tf.where(better, cand, best_z)
        best_res = tf.where(better, res, best_res)
        if track_blocks:
            best_blocks = tf.where(better, stop(block_sq(diff)), best_blocks)
        ok = ok & (finite | done)
        worst = tf.reduce_max(tf.where(finite, res, tf.zeros_like(res)))
        if bounded_writes:  # past the trace's length nothing is recorded
            trace = tf.cond(k < trace_length, lambda: trace.write(k, worst), lambda: trace)
        else:
            trace = trace.write(k, worst)
        return k + 1, z_next, state, best_z, best_res, best_blocks, ok, trace

    loop_vars = (
        tf.constant(0, tf.int32),
        z0_flat,
        state0,
        z0_flat,
        inf,
        tf.fill(tf.stack([batch, len(blocks)]), tf.constant(float("inf"), acc)) if track_blocks
        else tf.zeros([0], acc),
        tf.ones(tf.stack([batch, 1]), tf.bool),
    )

    # The trace holds the first `TRACE_LENGTH` iterations, so that memory and time do
    # not grow with `max_iter`; eagerly it grows with the iterations run (an eager
    # TensorArray of fixed size creates every unwritten entry when stacked).
    trace_length = min(max_iter, TRACE_LENGTH)
    eager = tf.executing_eagerly()
    bounded_writes = not eager and max_iter > trace_length

    def run_loop(*flat_vars):
        trace = (tf.TensorArray(acc, size=0, dynamic_size=True, element_shape=[]) if eager
                 else tf.TensorArray(acc, size=trace_length, element_shape=[]))
        out = tf.while_loop(
            cond,
            body,
            tf.nest.pack_sequence_as(loop_vars, list(flat_vars)) + (trace,),
            maximum_iterations=max_iter,
            parallel_iterations=parallel_iterations,
        )
        return tf.nest.flatten(out[:-1]) + [out[-1].stack()]

    flat_vars = tf.nest.flatten(loop_vars)
    compiled = None
    # XLA compiles a loop per shape: with an unknown batch size (a serving
    # signature, an eager cache relaxed to any batch) every new size would pay a
    # compilation, so such loops run uncompiled.
    static_batch = z0_flat.shape[0] is not None
    if jit_loop and static_batch and solver.compile_loop and config.jit_loops_enabled() and not eager:
        compiled = tf.function(run_loop, jit_compile=True, autograph=False)
        if _xla_changes_meaning(compiled.get_concrete_function(*flat_vars)):
            compiled = None  # the same trace is reused below when the loop compiles
    out = compiled(*flat_vars) if compiled is not None else run_loop(*flat_vars)
    k, _, _, best_z, best_res, best_blocks, ok = tf.nest.pack_sequence_as(loop_vars, list(out[:-1]))
    trace = out[-1]
    # Converged by the loop's own test (before the square root, which could
    # round a residual equal to tol up past it).
    converged = best_res[:, 0] <= tol_sq
    if not track_blocks:
        best_blocks = best_res
    best_blocks = tf.sqrt(best_blocks)
    best_res = tf.sqrt(best_res[:, 0]) if squared else best_res[:, 0]
    bad = tf.logical_not(ok[:, 0])
    # A sample whose iteration produced NaN/Inf before converging reports an infinite
    # residual (its returned iterate is the last finite one; `fixed_point` turns it
    # into NaN so that training on it shows in the loss).
    best_res = tf.where(bad, tf.constant(float("inf"), acc), best_res)
    best_blocks = tf.where(bad[:, None], tf.constant(float("inf"), acc), best_blocks)
    status = tf.where(
        tf.reduce_any(bad),
        info_lib.NON_FINITE,
        tf.where(tf.reduce_all(converged), info_lib.CONVERGED, info_lib.MAX_ITER_REACHED),
    )
    # Unwritten entries of the trace read as zero; pad after the last
    # iteration with its last value.
    trace = tf.sqrt(trace) if squared else trace
    recorded = tf.minimum(k, trace_length)
    last = tf.gather(trace, tf.maximum(recorded - 1, 0))
    if eager:  # as many entries as iterations run
        trace = trace[:trace_length]
        trace = tf.concat([trace, tf.fill([trace_length - tf.shape(trace)[0]], last)], axis=0)
    else:
        trace = tf.where(tf.range(trace_length) < recorded, trace, last)
    info = info_lib.SolverInfo(
        iterations=k,
        residual=tf.stop_gradient(best_res),
        converged=converged,
        trace=tf.stop_gradient(trace),
        status=tf.cast(status, tf.int32),
        block_residuals=tf.stop_gradient(best_blocks),
    )
    return F.finish(best_z), info
