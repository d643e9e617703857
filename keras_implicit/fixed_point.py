"""`fixed_point()`: the functional entry point (forward solve + chosen gradient)."""

import warnings

import keras
import tensorflow as tf

from keras_implicit import backward as backward_lib
from keras_implicit import info as info_lib
from keras_implicit import solvers as solvers_lib
from keras_implicit.solvers.base import check_tol_and_max_iter

ON_FAILURE = ("warn", "raise", "ignore")


class ConvergenceError(RuntimeError):
    """Raised by an eager solve with `on_failure="raise"` that did not converge."""

    def __init__(self, message, info=None):
        super().__init__(message)
        self.info = info


def check_on_failure(on_failure):
    if on_failure not in ON_FAILURE:
        raise ValueError(
            f"`on_failure` must be one of {ON_FAILURE}. Received: on_failure={on_failure!r}"
        )
    return on_failure


def report_failure(info, on_failure, what="fixed-point solve"):
    """Warns or raises, in eager mode only, when a solve did not converge.

    In graph mode (`tf.function`, `jit_compile=True`) nothing can be raised
    without breaking compilation; the status travels in `SolverInfo` and in
    the layers' metrics instead.
    """
    if on_failure == "ignore" or not tf.executing_eagerly():
        return
    status = int(info.status)
    if status == info_lib.CONVERGED:
        return
    message = info_lib.describe(info, what)
    if what.startswith("adjoint"):
        message += (
            " (after the Anderson fallback); the gradients of those samples are not exact. "
            "Check that I - df/dz is invertible (a contractive map), or give the backward "
            "mode more iterations: backward=Implicit(max_iter=...)."
        )
    elif status == info_lib.NON_FINITE:
        message += (
            ". NaN or Inf appeared (in the inputs, or the iteration diverged); those "
            "samples' outputs are NaN (the others are unaffected). Check the inputs "
            "for NaN/Inf, or make the map contractive (e.g. spectral normalization)."
        )
    else:
        message += (
            ". Increase `max_iter`, loosen `tol`, use solver='anderson' or "
            "'broyden', or make the map more contractive."
        )
    if on_failure == "raise":
        raise ConvergenceError(message, info)
    warnings.warn(message, UserWarning, stacklevel=3)


class without_gradient:
    """While active, `fixed_point` solves with no gradient at all: no backward
    mode is built and `z*` is a constant to any tape (its gradient is None).

    For graphs that only serve the solution, such as the `<layer>_forward`
    signatures of `export_saved_model`: the implicit gradient is a custom
    gradient, which a SavedModel stores as one more traced function (an
    adjoint solve and its fallback) per solve.
    """

    active = False

    def __enter__(self):
        self._saved, without_gradient.active = without_gradient.active, True

    def __exit__(self, *exc):
        without_gradient.active = self._saved


def _warn_captured(f, z0, args):
    """Warns if `f` captures float tensors by closure (they get no implicit gradient)."""
    specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), (z0, args))
    try:
        concrete = tf.function(lambda z, a: f(z, *a), autograph=False).get_concrete_function(*specs)
    except Exception:  # a function we cannot trace separately is not our concern here
        return
    captured = [t for t in concrete.captured_inputs if t.dtype.is_floating]
    if captured:
        shapes = ", ".join(str(t.shape) for t in captured[:5])
        warnings.warn(
            f"The function passed to fixed_point captures {len(captured)} float "
            f"tensor(s) by closure (shapes {shapes}). The implicit gradient cannot "
            "reach them: pass every tensor that needs a gradient as an extra "
            "argument, fixed_point(f, z0, x, ...), or read it from a tf.Variable.",
            UserWarning,
            stacklevel=3,
        )


def fixed_point(
    f,
    z0,
    *args,
    solver="anderson",
    backward="implicit",
    tol=1e-4,
    max_iter=50,
    stop_mode="abs",
    on_failure="warn",
    backward_callback=None,
    check_captures=True,
    jit_loop=True,
):
    """Solves `z* = f(z*, *args)` and returns `(z_star, info)`.

    The forward pass runs `solver` from `z0` until every sample's residual
    `||f(z) - z||` (or the relative residual, `stop_mode="rel"`) is `<= tol`,
    or `max_iter` iterations. The gradient is chosen by `backward`: the
    default `"implicit"` differentiates the fixed-point equation exactly,

        dL/dx = (df/dx)^T c,   c = (df/dz)^T c + dL/dz*,

    and reaches every tensor in `args` and every variable `f` reads.

    Args:
        f: callable `f(z, *args) -> z`. `z` may be a nested structure of
            `[batch, ...]` tensors (e.g. a tuple `(z, u)`). A
            `solvers.Problem` (or a cell whose methods provide a splitting)
            also offers its structure to the solvers that need it.
        z0: initial iterate, same structure as `f`'s output.
        *args: other inputs of `f`; they receive gradients.
        solver: a `Solver` or an identifier (`"fixed_point"`, `"anderson"`,
            `"broyden"`, `"halpern"`; `"peaceman_rachford"` and
            `"forward_backward"` for problems with a splitting). Default
            `"anderson"`.
        backward: a `BackwardMode` or an identifier (`"implicit"`,
            `"phantom"`, `"jacobian_free"`, `"unrolled"`). Default
            `"implicit"`.
        tol: float > 0, stopping tolerance per sample. Default 1e-4.
        max_iter: int >= 1, iteration cap. Default 50.
        stop_mode: `"abs"` or `"rel"`. Default `"abs"`.
        on_failure: `"warn"` (default; a `UserWarning` in eager mode),
            `"raise"` (`ConvergenceError` in eager mode) or `"ignore"`. In
            compiled code the outcome is reported only through `info`.
        backward_callback: optional callable receiving the `SolverInfo` of
            the adjoint solve (implicit mode) when gradients are computed; the
            ops or tensors it returns (if any) run before the gradients are
            returned. An adjoint solve that fails is reported as the forward
            is (`on_failure`) when the backward pass runs eagerly.
        check_captures: warn if `f` captures float tensors by closure
            (implicit mode only; costs one extra trace of `f`).
        jit_loop: in graph mode, compile solver loops that are not
            differentiated (all but `"unrolled"`'s, and the adjoint loop
            unless a second derivative is being taken) with XLA as nested
            functions. Default True; set False for a cell with operations
            XLA cannot compile.

    Returns:
        `(z_star, info)`: the solution (structure of `z0`) and a
        `SolverInfo`.

    Example:

    >>> import tensorflow as tf, keras_implicit as ki
    >>> x = tf.constant([[0.5], [1.0]])
    >>> z, info = ki.fixed_point(lambda z, x: 0.5 * z + x, tf.zeros([2, 1]), x, tol=1e-6)
    >>> [round(v, 4) for v in z[:, 0].numpy().tolist()]
    [1.0, 2.0]
    """
    solver = solvers_lib.get(solver)
    backward = backward_lib.get(backward)
    check_tol_and_max_iter(tol, max_iter, stop_mode)
    check_on_failure(on_failure)
    if not callable(f):
        raise TypeError(f"`f` must be callable. Received: f={f!r}")
    problem = solvers_lib.Problem.of(f)
    z0 = tf.nest.map_structure(tf.convert_to_tensor, z0)
    args = tuple(
        tf.nest.map_structure(
            lambda a: a if isinstance(a, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(a),
            a,
        )
        for a in args
    )
    spec = solvers_lib.SolveSpec(solver, float(tol), int(max_iter), stop_mode, bool(jit_loop))
    if without_gradient.active:
        z, info = spec.solve_without_gradient(problem.bind(*args), z0)
    else:
        if isinstance(backward, backward_lib.Implicit):
            _refuse_forward_mode(problem, args)
            if check_captures:
                _warn_captured(problem, z0, args)
        z, info = backward.apply(problem, z0, args, spec, _reporting(backward_callback, on_failure))
    report_failure(info, on_failure)
    return nan_where_broken(z, info), info


def watched_forward(tensors):
    """Whether a `tf.autodiff.ForwardAccumulator` watches any of `tensors` (float
    tensors or variables)."""
    try:
        from tensorflow.python.eager import forwardprop_util
    except ImportError:  # a TensorFlow without it: nothing to check against
        return False
    tensors = [tf.convert_to_tensor(t) for t in tensors if tf.as_dtype(t.dtype).is_floating]
    return bool(tensors) and bool(forwardprop_util.pack_tangents(tensors).indices)


def _refuse_forward_mode(problem, args):
    """Forward-mode differentiation (`tf.autodiff.ForwardAccumulator`) cannot pass
    through the implicit mode's custom reverse-mode gradient: its JVP would be
    None eagerly and zeros in graphs. Raise instead when an input of the solve (or a
    variable of the Keras layer that is the map) carries a tangent."""
    tensors = [a for a in tf.nest.flatten(args) if isinstance(a, (tf.Tensor, tf.Variable))]
    layer = problem.f if isinstance(getattr(problem, "f", None), keras.layers.Layer) else None
    if layer is not None:
        tensors += list(layer.variables)
    if watched_forward(tensors):
        raise ValueError(
            "Forward-mode differentiation (tf.autodiff.ForwardAccumulator) does not pass through "
            "backward='implicit': its gradient is a custom reverse-mode rule, so the JVP would be "
            "missing (None eagerly, zeros in a tf.function). Use reverse mode (tf.GradientTape), or "
            "backward='unrolled' for an exact JVP in eager mode. Received: an input of the fixed "
            "point watched by a ForwardAccumulator")


def _reporting(callback, on_failure):
    """The backward callback, preceded (when the backward pass runs eagerly) by
    the same report as the forward's for an adjoint solve that failed."""
    def report(info):
        if tf.executing_eagerly():
            report_failure(info, on_failure, "adjoint (backward) solve")
        return callback(info) if callback is not None else None
    return report


def nan_where_broken(z, info):
    """`z` with NaN for the samples whose iteration produced NaN/Inf before
    converging (their residual is infinite), as any Keras layer returns NaN
    for a NaN input: their loss and gradient are NaN, so training on them
    shows in the loss (and stops `keras.callbacks.TerminateOnNaN`) instead of
    silently poisoning the weights. The other samples are untouched."""
    broken = tf.math.is_inf(info.residual) & tf.logical_not(info.converged)

    def mask(t):
        where = tf.reshape(broken, [-1] + [1] * (t.shape.rank - 1))
        return tf.where(where, tf.constant(float("nan"), t.dtype), t)

    return tf.nest.map_structure(mask, z)
