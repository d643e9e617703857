"""Implicit differentiation (implicit function theorem) of a fixed point."""

import weakref

import keras
import tensorflow as tf
from tensorflow.python.eager import tape as tape_lib  # (how a read reaches custom_gradient)

try:  # private, long-stable: TensorFlow's registry of graph-mode gradient functions
    from tensorflow.python.framework.ops import _gradient_registry
except ImportError:  # pragma: no cover
    _gradient_registry = None

from keras_implicit import info as info_lib
from keras_implicit.autodiff import tf_variable
from keras_implicit import solvers as solvers_lib
from keras_implicit.backward.base import BackwardMode
from keras_implicit.solvers.base import check_tol_and_max_iter
from keras_implicit.solvers.problem import Problem
from keras_implicit.solvers.spec import SolveSpec, could_possibly_record, stop_recording


class _Export:
    """`first_order` is set while a SavedModel is written (`first_order_only`)."""

    first_order = False


class first_order_only:
    """While active, implicit gradients are first order only, with a clear error
    on differentiating them again.

    TensorFlow saves the custom gradient of an op in an exported function,
    but not the custom gradients inside that gradient (the re-attachment of
    `z*` that makes second derivatives exact): reloading would warn about
    "unsaved custom gradients" and a second derivative would fail without
    saying why. `export_saved_model` writes under this context, so the
    export loads quietly, its first derivatives are exact, and a second
    derivative raises "second derivatives of an exported equilibrium layer
    are not saved".
    """

    def __enter__(self):
        self._saved, _Export.first_order = _Export.first_order, True

    def __exit__(self, *exc):
        _Export.first_order = self._saved


def _no_second_order(t):
    if t is None:
        return None
    return tf.raw_ops.PreventGradient(
        input=t, message="second derivatives of an exported equilibrium layer are not saved")


def _announce_non_trainable(problem):
    """Lets `tf.custom_gradient` see the float non-trainable variables of a
    Keras layer map: it hands `grad_fn` only the trainable variables `f`
    reads, so a non-trainable one that a tape watches (`tape.watch`) would get
    `None` where unrolled autodiff and finite differences give a value. Their
    gradients then come from the same adjoint as the others'."""
    layer = getattr(problem, "f", None)
    for v in getattr(layer, "non_trainable_variables", ()) if isinstance(layer, keras.layers.Layer) else ():
        v = tf_variable(v)
        if v.dtype.is_floating:
            tape_lib.variable_accessed(v)


def _is_float(t):
    return isinstance(t, (tf.Tensor, tf.Variable)) and t.dtype.is_floating


def adjoint_solve(f, z_star, args, dz, spec, variables=(), forward=None):
    """Solves the adjoint equation of `z* = f(z*, *args)` for a cotangent `dz`.

    With `J = df/dz` at `(z*, args)` the adjoint `c` solves

        c = J^T c + dz,      i.e.   (I - J)^T c = dz,

    a fixed-point problem iterated with `spec` from `c = dz` using
    vector-Jacobian products only (`f` is linearized once; each iteration
    costs one VJP, no forward evaluation). Then

        dL/d(args) = (df/d args)^T c,    dL/d(variables) = (df/d variables)^T c.

    Every operation is differentiable, so the result can itself be
    differentiated (second derivatives). A solver that `requires` the
    splitting form gets the problem's adjoint splitting (monDEQ's Theorem 3)
    instead of the VJP map; which one runs is the solver's business.

    Args:
        f: a `solvers.Problem`, a cell, or a callable `f(z, *args) -> z`
            (nested structures allowed).
        z_star: the fixed point, structure of `z`.
        args: tuple of the other inputs of `f` (nested structures allowed).
        dz: cotangent, structure of `z`.
        spec: `SolveSpec` of the adjoint solve.
        variables: variables read by `f` that need gradients.
        forward: the forward `BoundProblem` of the same call, whose
            splitting resolvent the adjoint may reuse (only when no tape
            records the adjoint: a reused resolvent carries no gradient).

    Returns:
        `(c, arg_grads, var_grads, info)`: the adjoint (structure of `z`),
        gradients for the flattened `args` (None for non-float entries), one
        gradient per variable, and the adjoint solve's `SolverInfo`.
    """
    problem = Problem.of(f)
    flat_args = tf.nest.flatten(args)
    z_leaves = tf.nest.flatten(z_star)
    watched = [a for a in flat_args if _is_float(a)]
    variables = list(variables or ())
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(z_leaves)
        tape.watch(watched)
        tape.watch(variables)
        fz = problem(z_star, *args)
    fz_leaves = tf.nest.flatten(fz)
    dz_leaves = tf.nest.flatten(dz)

    def adjoint_map(c):
        c_leaves = tf.nest.flatten(c)
        jtc = tape.gradient(
            fz_leaves,
            z_leaves,
            output_gradients=c_leaves,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return tf.nest.pack_sequence_as(z_star, [a + b for a, b in zip(jtc, dz_leaves)])

    if forward is not None and could_possibly_record():
        forward = None
    adjoint = problem.bind_adjoint(adjoint_map, z_star, dz, args, forward)
    c, info = _solve_with_fallback(adjoint, dz, spec)
    c_leaves = tf.nest.flatten(c)
    grads = tape.gradient(
        fz_leaves,
        watched + variables,
        output_gradients=c_leaves,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    del tape
    arg_grads = []
    it = iter(grads[: len(watched)])
    for a in flat_args:
        arg_grads.append(next(it) if _is_float(a) else None)
    var_grads = list(grads[len(watched):])
    return c, arg_grads, var_grads, info


# The adjoint's safe rule: where a sample's adjoint solve did not converge (plain
# iteration on a map that is not a contraction, too few iterations), it is solved
# again by Anderson, which solves the linear adjoint equation whenever I - J is
# invertible (it acts as GMRES on linear maps), from `dL/dz*`. Its small
# least-squares systems are solved by one `tf.linalg.solve` (the solver state is
# float32 or float64, also for half-precision maps): the fallback's loop is traced
# into every implicit backward graph, and differentiated in second-order graphs,
# where the unrolled elimination took 40 % of the tracing time.
FALLBACK_MEMORY = 8
FALLBACK_MIN_ITER = 100


def _solve_with_fallback(adjoint, dz, spec):
    """`spec.solve(adjoint, dz)`; if some sample did not converge, Anderson
    (memory 8, at least 100 iterations) solves again from `dz` and each sample
    keeps the result with the smaller residual. The returned `SolverInfo`
    describes what is returned (iterations: both solves together; trace: the
    first solve's), so a failure that the fallback could not mend is still
    reported."""
    c, info = spec.solve(adjoint, dz)
    fallback = SolveSpec(solvers_lib.Anderson(memory=FALLBACK_MEMORY, unrolled_solve=False), spec.tol, max(spec.max_iter, FALLBACK_MIN_ITER),
                         spec.stop_mode, spec.jit_loop)

    def retry():
        c2, info2 = fallback.solve(adjoint, dz)
        take = (info2.residual < info.residual) | tf.logical_not(tf.math.is_finite(info.residual))

        def pick(a, b):
            return tf.where(tf.reshape(take, [-1] + [1] * (a.shape.rank - 1)), b, a)

        merged = tf.nest.map_structure(pick, c, c2)
        residual = tf.where(take, info2.residual, info.residual)
        converged = tf.where(take, info2.converged, info.converged)
        status = tf.where(tf.reduce_all(converged), info_lib.CONVERGED,
                          tf.where(tf.reduce_any(tf.math.is_inf(residual) & tf.logical_not(converged)),
                                   info_lib.NON_FINITE, info_lib.MAX_ITER_REACHED))
        return merged, info_lib.SolverInfo(
            iterations=info.iterations + info2.iterations, residual=residual, converged=converged,
            trace=info.trace, status=tf.cast(status, info.status.dtype),
            block_residuals=pick(info.block_residuals, info2.block_residuals))

    return tf.cond(tf.reduce_all(info.converged), lambda: (c, info), retry)


class Implicit(BackwardMode):
    """Exact gradients by the implicit function theorem.

    At the fixed point `z* = f(z*, x)`, `dz*/dx = (I - J)^{-1} df/dx` with
    `J = df/dz`. The backward pass solves the adjoint equation
    `c = J^T c + dL/dz*` with a fixed-point solver (VJPs only) and returns
    `dL/dx = (df/dx)^T c`. Memory does not grow with the number of forward
    iterations. The backward pass is itself differentiable: `z*` is
    re-attached with its own implicit derivative there, so second
    derivatives are exact too.

    Args:
        solver: solver of the adjoint equation; `None` (default) uses the
            forward solver.
        tol: tolerance of the adjoint solve; `None` (default) uses the
            forward `tol`.
        max_iter: iteration cap of the adjoint solve; `None` (default) uses
            the forward `max_iter`.
        stop_mode: `"abs"` or `"rel"`; `None` (default) uses the forward
            `stop_mode`. With `"abs"` the tolerance is on the scale of
            `dL/dz*`, which shrinks with the batch size of a mean loss;
            `"rel"` makes the gradient's accuracy independent of that scale.

    Where the adjoint solve does not converge for a sample (e.g. plain
    iteration on a map that is not a contraction, or too small a
    `max_iter`), Anderson solves it again from `dL/dz*` and the better result
    is kept; the adjoint's `SolverInfo` (given to `fixed_point`'s
    `backward_callback`, reported eagerly like the forward's, and logged by
    the layers as `<name>_bwd_res`) tells what was returned.

    Gradients reach the explicit `args` of `f` and the variables `f` reads;
    a tensor that `f` captures by closure gets none (`fixed_point` warns when
    it can see one).

    Reference: Bai, Kolter & Koltun, "Deep equilibrium models", NeurIPS 2019;
    Jeon, Lee & Choi, "Differentiable forward and backward fixed-point
    iteration layers", arXiv 2002.02868.
    """

    name = "implicit"
    exact = True

    def __init__(self, solver=None, tol=None, max_iter=None, stop_mode=None):
        self.solver = None if solver is None else solvers_lib.get(solver)
        check_tol_and_max_iter(
            1e-4 if tol is None else tol,
            1 if max_iter is None else max_iter,
            "abs" if stop_mode is None else stop_mode,
        )
        self.tol = None if tol is None else float(tol)
        self.max_iter = max_iter
        self.stop_mode = stop_mode

    def adjoint_spec(self, spec):
        """The adjoint solve's settings: ours where given, else the forward's."""
        return SolveSpec(
            solver=self.solver or spec.solver,
            tol=spec.tol if self.tol is None else self.tol,
            max_iter=spec.max_iter if self.max_iter is None else self.max_iter,
            stop_mode=spec.stop_mode if self.stop_mode is None else self.stop_mode,
            jit_loop=spec.jit_loop,
        )

    def apply(self, problem, z0, args, spec, callback=None):
        return _implicit_op(problem, z0, args, spec, self.adjoint_spec(spec), callback)

    def get_config(self):
        return {
            "solver": None if self.solver is None else solvers_lib.serialize(self.solver),
            "tol": self.tol,
            "max_iter": self.max_iter,
            "stop_mode": self.stop_mode,
        }


_HELD = "_keras_implicit_gradients"


def _look_up_in(graph_ref, name):
    """A registered gradient that holds only its name and a weak reference to
    the graph that holds the function."""
    def gradient(op, *grads):
        graph = graph_ref()
        if graph is None:  # pragma: no cover - nothing can still ask: its ops died with it
            raise LookupError(f"the graph that held the gradient {name} was freed")
        return getattr(graph, _HELD)[name](op, *grads)

    return gradient


def _hand_gradient_to_graph(outputs):
    """In a graph, `tf.custom_gradient` registers its gradient function in
    TensorFlow's global gradient registry, which is never pruned: each entry
    held the traced graph and, through `grad_fn`, the problem and its Keras
    layer for the life of the process (every trial of a keras-tuner search, or
    every model of a test session, stayed in memory, and full garbage
    collections grew to seconds). The function moves to the graph of the op
    (kept alive by whoever can still differentiate it), the registry keeps a
    look-up by weak reference, and the entry goes when the graph does."""
    if tf.executing_eagerly() or _gradient_registry is None:
        return
    try:
        op = outputs[0].op
        name = op.get_attr("_gradient_op_type").decode()
        entry = _gradient_registry._registry[name]
        function = entry["type"]
    except (AttributeError, KeyError, ValueError, IndexError, TypeError):  # pragma: no cover
        return  # TensorFlow's internals changed: leave its registration as it is
    graph = op.graph
    if getattr(graph, _HELD, None) is None:
        setattr(graph, _HELD, {})
    getattr(graph, _HELD)[name] = function
    entry["type"] = _look_up_in(weakref.ref(graph), name)
    weakref.finalize(graph, _gradient_registry._registry.pop, name, None).atexit = False


def _implicit_op(problem, z0, args, spec, adjoint_spec, callback):
    """`z* = f(z*, *args)` solved with `spec` from `z0`, with the implicit gradient.

    With `spec=None`, `z0` is taken as the fixed point itself (the
    re-attachment of `z*` inside the backward pass, for second order)."""
    flat_args = tf.nest.flatten(args)
    z_structure = z0

    @tf.custom_gradient
    def op(*flat):
        a = tf.nest.pack_sequence_as(args, list(flat))
        bound = problem.bind(*a)
        _announce_non_trainable(problem)
        if spec is None:
            # Let custom_gradient see which variables f reads.
            with stop_recording():
                problem(z0, *a)
            z, info = tf.nest.map_structure(tf.identity, z0), None
        else:
            # The custom gradient replaces the forward's own: record nothing
            # (eager memory), which also lets the loop compile with XLA.
            with stop_recording():
                z, info = spec.solve(bound, z0)
        z_sg = tf.nest.map_structure(tf.stop_gradient, z)
        z_leaves = tf.nest.flatten(z)

        def grad_fn(*upstream, variables=None):
            dz = [
                tf.zeros_like(zl) if g is None else g
                for zl, g in zip(z_leaves, upstream[: len(z_leaves)])
            ]
            dz = tf.nest.pack_sequence_as(z_structure, dz)
            # z* re-attached with its own implicit derivative, so that what we
            # compute here has exact derivatives as well (second order).
            first_order = _Export.first_order
            z_hat = z_sg if first_order else _implicit_op(problem, z_sg, a, None, adjoint_spec, None)[0]
            _, arg_grads, var_grads, binfo = adjoint_solve(
                problem, z_hat, a, dz, adjoint_spec, variables, forward=bound
            )
            if first_order:
                arg_grads = [_no_second_order(g) for g in arg_grads]
                var_grads = [_no_second_order(g) for g in var_grads]
            deps = callback(binfo) if callback is not None else None
            if deps:  # the gradients wait for what the callback did
                with tf.control_dependencies(tf.nest.flatten(deps)):
                    arg_grads = [None if g is None else tf.identity(g) for g in arg_grads]
                    var_grads = [tf.identity(g) for g in var_grads]
            if variables:
                return arg_grads, var_grads
            return arg_grads

        outputs = list(z_leaves)
        if info is not None:
            outputs += list(info)
        return tuple(outputs), grad_fn

    outputs = op(*flat_args)
    _hand_gradient_to_graph(outputs)
    n = len(tf.nest.flatten(z_structure))
    z = tf.nest.pack_sequence_as(z_structure, list(outputs[:n]))
    info = None
    if len(outputs) > n:
        info = info_lib.SolverInfo(*outputs[n:])
    return z, info
