"""Forward and backward fixed-point-iteration layers (Jeon, Lee & Choi, 2020)."""

import keras
import tensorflow as tf

from keras_implicit import config
from keras_implicit import validation
from keras_implicit.autodiff import tf_variable
from keras_implicit import backward as backward_lib
from keras_implicit import solvers as solvers_lib
from keras_implicit.solvers.spec import SolveSpec
from keras_implicit.fixed_point import (check_on_failure, fixed_point, report_failure, watched_forward,
                                         without_gradient)
from keras_implicit.info import SolverInfo
from keras_implicit.solvers.base import TRACE_LENGTH, bookkeeping_dtype, check_tol_and_max_iter


def _is_shape(size):
    return isinstance(size, (tuple, list, tf.TensorShape)) and all(validation.is_int(d) for d in size)


def block_shapes(state_shape):
    """The list of block shapes of a state shape (one block for one tensor)."""
    return [tuple(state_shape)] if _is_shape(state_shape) else [tuple(s) for s in state_shape]


def _batched(batch, state_shape, make):
    """`make((batch, *shape))` for the state's one shape or each block's (same structure)."""
    out = [make((batch,) + s) for s in block_shapes(state_shape)]
    return out[0] if _is_shape(state_shape) else tuple(out)


def _check_state(name, shapes, state_shape, batch=None):
    """Raises unless `shapes` (with batch axes, one per block) fit the state and `batch`."""
    shapes = [tuple(s) for s in shapes]
    if [s[1:] for s in shapes] != block_shapes(state_shape) or any(
            None not in (batch, s[0]) and s[0] != batch for s in shapes):
        raise ValueError(
            f"`{name}` must have shape(s) (batch, *{state_shape}) with the same batch size as the "
            f"inputs ({batch}). Received: {name}.shape=" + ", ".join(str(s) for s in shapes)
        )


def _state_shape(cell, x_shape=None):
    """The state shape (without batch) a cell declares through `state_size`.

    `state_size` is an int, a shape (tuple of ints), or, for a state of
    several tensors, a tuple of those, e.g. `(16, (4, 4, 2))` for
    `(z_a [batch, 16], z_b [batch, 4, 4, 2])`. A cell whose state shape
    depends on its input (a convolutional cell) sets `state_size = None` and
    defines `compute_state_shape(x_shape)`; its shape is then known only once
    `x_shape` is (None is returned before).
    """
    size = getattr(cell, "state_size", None)
    if size is None and hasattr(cell, "compute_state_shape"):
        if x_shape is None:
            return None
        size = tuple(cell.compute_state_shape(tuple(x_shape)))
    if size is None:
        raise ValueError(
            "The cell needs a `state_size` attribute (an int, or a shape without "
            f"the batch axis), like a Keras RNN cell. Received: cell={cell!r} "
            "without `state_size`"
        )

    def one(s):
        if validation.is_int(s) and s > 0:  # numpy ints too
            return (int(s),)
        if _is_shape(s) and len(s) and all(d > 0 for d in s):
            return tuple(int(d) for d in s)
        raise ValueError(
            "`state_size` must be a positive int, a tuple of positive ints, or a tuple "
            f"of those for a state of several tensors. Received: state_size={size!r}"
        )

    if isinstance(size, (tuple, list)) and size and not _is_shape(size):
        return tuple(one(s) for s in size)
    return one(size)


def _resolve_cell(cell):
    if isinstance(cell, dict):
        cell = keras.saving.deserialize_keras_object(cell)
    if not isinstance(cell, keras.layers.Layer):
        raise ValueError(
            f"`cell` must be a Keras layer with call(z, x). Received: cell={cell!r}"
        )
    _state_shape(cell)
    return cell


def _build_cell(cell, x_shape, state_shape):
    """Builds `cell` by calling it once on symbolic tensors; checks its output shape."""
    x_shape = tuple(x_shape)
    z = _batched(x_shape[0], state_shape, keras.KerasTensor)
    out = cell(z, keras.KerasTensor(x_shape))
    got = tf.nest.map_structure(lambda t: tuple(t.shape), out)
    want = tf.nest.map_structure(lambda t: tuple(t.shape), z)
    if tf.nest.flatten(got) != tf.nest.flatten(want) or len(tf.nest.flatten(out)) != len(tf.nest.flatten(z)):
        raise ValueError(
            f"The cell maps a state of shape {want} to shape {got}; a "
            "fixed-point cell must return its state's shape (`state_size`). "
            f"Received: state_size={cell.state_size!r}, inputs shape={x_shape}"
        )


def _info_spec(batch, max_iter, dtype, blocks=1):
    """Symbolic `SolverInfo` for Keras' functional API (residuals in the solve's
    bookkeeping dtype: float32 for half precision)."""
    dtype = bookkeeping_dtype(dtype).name
    return SolverInfo(
        iterations=keras.KerasTensor((), dtype="int32"),
        residual=keras.KerasTensor((batch,), dtype=dtype),
        converged=keras.KerasTensor((batch,), dtype="bool"),
        trace=keras.KerasTensor((min(max_iter, TRACE_LENGTH),), dtype=dtype),
        status=keras.KerasTensor((), dtype="int32"),
        block_residuals=keras.KerasTensor((batch, blocks), dtype=dtype),
    )


try:  # Internal but stable (tf.function itself asks it): how tapes may differentiate.
    from tensorflow.python.ops.gradients_util import PossibleTapeGradientTypes as _gradient_types
except ImportError:  # pragma: no cover
    def _gradient_types(tensors):
        return 2


_PROBE = None


def _higher_order_tape(nested):
    """Whether nested tapes watch these tensors (a second derivative may be taken).

    A custom gradient inside a `tf.function` is differentiable once from an
    eager tape, not twice (its backward function refers to the forward
    graph), so such calls run op by op."""
    global _PROBE
    tensors, variables = nested
    # Tapes watch a variable through its resource handle. Tapes that watch
    # every variable read (the default) watch the cell's variables only once
    # the solve reads them: a probe variable read now tells how many do.
    if _PROBE is None:
        with tf.init_scope():
            _PROBE = tf.Variable(0.0, trainable=True, name="keras_implicit_tape_probe")
    _PROBE.read_value()
    leaves = [t for t in tf.nest.flatten(tensors) if isinstance(t, tf.Tensor)]
    leaves += [tf_variable(v).handle for v in variables] + [_PROBE.handle]
    return _gradient_types(leaves) == 2


class _BackwardMean(keras.metrics.Mean):
    """A mean over backward passes (adjoint iterations, residuals), logged only
    where a backward pass ran.

    Evaluation runs no backward pass, so `val_<name>_bwd_iters` would read 0.
    Keras logs what `result()` returns (a dict is merged into the logs): in
    a traced step this is the mean only if the step traced a backward pass
    (`measured` is set by the backward callback and cleared by each forward
    call), and eagerly (at the end of `fit`'s epoch or `evaluate`) only if
    something was counted. Train and evaluation logs then agree with their
    steps' logs, and the validation logs carry no `bwd_iters`.
    """

    measured = False

    def result(self):
        if tf.executing_eagerly():
            measured = bool(self.count.numpy() > 0)
        else:
            measured = self.measured
        return {self.name: super().result()} if measured else {}


class _Cache:
    """Compiled eager solves, kept out of Keras/TF tracking (never saved)."""

    def __init__(self):
        self.functions = {}


class _SolveSettings:
    """Validated solve settings shared by the FPI layers (and their configs)."""

    def _set_solve_settings(self, cell, solver, tol, max_iter, stop_mode, return_info, on_failure):
        self.cell = _resolve_cell(cell)
        # An unbuilt cell with the default policy follows the layer's dtype
        # (`ForwardFPI(DenseCell(5), dtype="float64")`).
        default = keras.config.dtype_policy().name
        if not self.cell.built and self.cell.dtype_policy.name == default and self.dtype_policy.name != default:
            self.cell.dtype_policy = self.dtype_policy
        self.state_shape = _state_shape(self.cell)
        self.solver = solvers_lib.get(solver)
        check_tol_and_max_iter(tol, max_iter, stop_mode)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.stop_mode = stop_mode
        self.return_info = bool(return_info)
        self.on_failure = check_on_failure(on_failure)

    def _solve_settings_config(self):
        return {
            "cell": keras.saving.serialize_keras_object(self.cell),
            "solver": solvers_lib.serialize(self.solver),
            "tol": self.tol,
            "max_iter": self.max_iter,
            "stop_mode": self.stop_mode,
            "return_info": self.return_info,
            "on_failure": self.on_failure,
        }


@keras.saving.register_keras_serializable(package="keras_implicit")
class ForwardFPI(_SolveSettings, keras.layers.Layer):
    """Forward fixed-point-iteration layer: outputs `z*` with `z* = cell(z*, x)`.

    The forward pass runs a fixed-point solver on the cell; the backward pass
    follows `backward` (by default the implicit function theorem: the adjoint
    `c = (d cell/dz)^T c + dL/dz*` is solved with VJPs, and
    `dL/dx = (d cell/dx)^T c`). Memory does not grow with the iterations.

    Solver statistics are tracked as metrics and appear in `model.fit` logs:
    `<name>_fwd_iters`, `<name>_fwd_res` (mean final residual) and, with the
    implicit backward, `<name>_bwd_iters`. They never enter the loss.

    Under a mixed-precision policy the cell computes in half precision and
    the solver's arithmetic (iterates, least squares, residuals) in float32;
    a half-precision cell's residual bottoms out near 1e-3 |z| (float16) or
    1e-2 |z| (bfloat16): use `stop_mode="rel"` with `tol=1e-2` there.

    Args:
        cell: a Keras layer with `call(z, x)` returning the next state and a
            `state_size` (int, or shape without batch axis).
        solver: `Solver` or identifier, default `"anderson"`.
        backward: `BackwardMode` or identifier, default `"implicit"`.
        tol: float > 0, default 1e-4.
        max_iter: int >= 1, default 50.
        stop_mode: `"abs"` (default) or `"rel"`.
        return_info: if True the layer returns `(z, SolverInfo)`. Default
            False.
        on_failure: `"warn"` (default), `"raise"` or `"ignore"`; applies in
            eager mode (see `fixed_point`).
        track_metrics: bool, default True.
        jit_loop: compile the solver loops with XLA in graph mode (see
            `fixed_point`), default True.
        compile_eager: when the layer is called eagerly, run the solve as a
            cached `tf.function` (as fast as in `fit`; one trace per setting,
            batch sizes share it after the second). Default True; set False
            to step through a cell that cannot be traced.

    Call arguments:
        inputs: the cell's input `x`, with a leading batch axis.
        initial_state: optional start iterate, shape `[batch, *state_size]`
            (a tuple of such tensors for a nested state); zeros by default.

    Returns:
        `z*` of shape `[batch, *state_size]` (a tuple of tensors for a
        nested `state_size` such as `(16, (4, 4, 2))`), or `(z*, info)`;
        `info.block_residuals` holds each block's residual and the metrics
        `<name>_fwd_res_<b>` their means.

    Example:

    >>> import keras, keras_implicit as ki
    >>> inputs = keras.Input((64,))
    >>> z = ki.layers.ForwardFPI(ki.layers.DenseCell(32))(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(z))
    >>> model.output_shape
    (None, 10)

    Reference: Jeon, Lee & Choi, "Differentiable forward and backward
    fixed-point iteration layers", arXiv 2002.02868.
    """

    def __init__(
        self,
        cell,
        solver="anderson",
        backward="implicit",
        tol=1e-4,
        max_iter=50,
        stop_mode="abs",
        return_info=False,
        on_failure="warn",
        track_metrics=True,
        jit_loop=True,
        compile_eager=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_solve_settings(cell, solver, tol, max_iter, stop_mode, return_info, on_failure)
        self.backward = backward_lib.get(backward)
        self.jit_loop = bool(jit_loop)
        self.compile_eager = bool(compile_eager)
        self.track_metrics = bool(track_metrics)
        self._compiled = _Cache()
        if self.track_metrics:
            self.fwd_iters_metric = keras.metrics.Mean(name=f"{self.name}_fwd_iters")
            self.fwd_res_metric = keras.metrics.Mean(name=f"{self.name}_fwd_res")
            self.bwd_iters_metric = _BackwardMean(name=f"{self.name}_bwd_iters")
            self.bwd_res_metric = _BackwardMean(name=f"{self.name}_bwd_res")
            self._add_block_metrics()

    def _add_block_metrics(self):
        """`<name>_fwd_res_<b>` per block of a nested state, once its shape is known
        (at construction, or at build for a state that follows the input)."""
        blocks = 0 if self.state_shape is None else len(block_shapes(self.state_shape))
        self.block_res_metrics = [keras.metrics.Mean(name=f"{self.name}_fwd_res_{b}")
                                  for b in range(blocks)] if blocks > 1 else []

    def build(self, input_shape):
        if self.state_shape is None:
            self.state_shape = _state_shape(self.cell, input_shape)
            if self.track_metrics:
                self._add_block_metrics()
        if not self.cell.built:
            _build_cell(self.cell, input_shape, self.state_shape)
        self.input_shape_for_export = tuple(input_shape)

    @property
    def spec(self):
        """The forward `SolveSpec` (solver and stopping rule)."""
        return SolveSpec(self.solver, self.tol, self.max_iter, self.stop_mode, self.jit_loop)

    def _record_backward(self, info):
        """Adds the adjoint's iterations and mean residual to `<name>_bwd_iters`
        and `<name>_bwd_res`. Returns the updates, which the gradients wait
        for: a backward function built by `tf.function` for an eager tape
        keeps only what its outputs need."""
        if not self.track_metrics:
            return None
        ops = []
        for m, value in ((self.bwd_iters_metric, tf.cast(info.iterations, "float32")),
                         (self.bwd_res_metric, tf.reduce_mean(tf.cast(info.residual, "float32")))):
            m.measured = True
            # (the tf.Variable's assign, unlike Keras', returns the op)
            total, count = tf_variable(m.total), tf_variable(m.count)
            ops += [total.assign_add(tf.cast(value, total.dtype), read_value=False),
                    count.assign_add(tf.ones([], count.dtype), read_value=False)]
        return [op for op in ops if op is not None]

    def initial_state(self, inputs):
        """Zeros of the state's shape (each block's, for a nested state)."""
        batch = tf.shape(tf.nest.flatten(inputs)[0])[0]
        return _batched(batch, self.state_shape,
                        lambda s: tf.zeros(tf.stack([s[0], *s[1:]]), dtype=self.compute_dtype))

    def _check_initial_state(self, inputs, initial_state):
        z0 = tf.nest.map_structure(lambda t: tf.convert_to_tensor(t, dtype=self.compute_dtype),
                                   initial_state)
        _check_state("initial_state", [t.shape for t in tf.nest.flatten(z0)], self.state_shape,
                     tf.nest.flatten(inputs)[0].shape[0])
        return z0

    def _solve(self, inputs, z0, on_failure):
        # A cell may compute tensors from its weights once per solve rather than at
        # every iteration (`solve_constants()`, passed as `cell(z, x, constants)`);
        # as arguments of the fixed point they receive their gradient.
        constants = getattr(self.cell, "solve_constants", None)
        args = (inputs,) if constants is None else (inputs, constants())
        return fixed_point(
            solvers_lib.Problem.of(self.cell),
            z0,
            *args,
            solver=self.solver,
            backward=self.backward,
            tol=self.tol,
            max_iter=self.max_iter,
            stop_mode=self.stop_mode,
            on_failure=on_failure,
            backward_callback=self._record_backward,
            check_captures=False,
            jit_loop=self.jit_loop,
        )

    def _record_forward(self, z, info):
        self.fwd_iters_metric.update_state(tf.cast(info.iterations, "float32"))
        self.fwd_res_metric.update_state(tf.cast(info.residual, "float32"))
        for b, metric in enumerate(self.block_res_metrics):
            metric.update_state(tf.cast(info.block_residuals[:, b], "float32"))
        return z, info

    def _compiled_solve(self, with_state, record):
        """The solve (and the metric updates) as a `tf.function`, cached per
        setting that changes its graph.

        Eager calls (notebooks, custom loops, attacks) run it instead of the
        op-by-op loop (30-140x slower). `reduce_retracing` relaxes the batch
        axis after a second shape, so new batch sizes do not retrace."""
        key = (self.solver, self.backward, self.tol, self.max_iter, self.stop_mode,
               self.jit_loop and config.jit_loops_enabled(), with_state, record, self.compute_dtype,
               without_gradient.active)
        fn = self._compiled.functions.get(key)
        if fn is None:
            def run(x, z0):
                out = self._solve(x, z0, "ignore")
                return self._record_forward(*out) if record else out

            fn = tf.function(run, reduce_retracing=True, autograph=False)
            # Every layer has its own cached function (one or two traces each);
            # TensorFlow counts them all as retraces of one code object and
            # would warn once a notebook holds five layers.
            fn._omit_frequent_tracing_warning = True
            self._compiled.functions[key] = fn
        return fn

    def _run(self, inputs, initial_state, record):
        if initial_state is None:
            z0 = self.initial_state(inputs)
        else:
            z0 = self._check_initial_state(inputs, initial_state)
        if self.compile_eager and tf.executing_eagerly() and not _higher_order_tape(
                ([inputs, z0], self.cell.trainable_variables)) and not watched_forward(
                    tf.nest.flatten(inputs) + list(self.cell.variables)):
            # (a forward-mode accumulator goes to the plain solve, which says what it supports)
            z, info = self._compiled_solve(initial_state is not None, record)(inputs, z0)
            report_failure(info, self.on_failure)
            return z, info
        z, info = self._solve(inputs, z0, self.on_failure)
        return self._record_forward(z, info) if record else (z, info)

    def solve(self, inputs, initial_state=None):
        """Returns `(z*, SolverInfo)` whatever `return_info` says (no readout,
        no metric update)."""
        return self._run(inputs, initial_state, record=False)

    def readout(self, z):
        """Maps the equilibrium to the layer's output (the identity here;
        families override it, with `readout_shape`)."""
        return z

    def readout_shape(self, state_shape, input_shape):
        """The output shape (without batch) of `readout` for a state of `state_shape`."""
        return state_shape

    def call(self, inputs, initial_state=None):
        if self.track_metrics:
            # until this call's backward is traced
            self.bwd_iters_metric.measured = self.bwd_res_metric.measured = False
        z, info = self._run(inputs, initial_state, record=self.track_metrics)
        y = self.readout(z)
        return (y, info) if self.return_info else y

    def _output_shape(self, input_shape):
        state_shape = self.state_shape or _state_shape(self.cell, input_shape)
        return self.readout_shape(state_shape, tuple(input_shape))

    def compute_output_shape(self, input_shape):
        return _batched(input_shape[0], self._output_shape(input_shape), tuple)

    def compute_output_spec(self, inputs, initial_state=None):
        batch = inputs.shape[0]
        y = _batched(batch, self._output_shape(inputs.shape),
                     lambda s: keras.KerasTensor(s, dtype=self.compute_dtype))
        if not self.return_info:
            return y
        state_shape = self.state_shape or _state_shape(self.cell, inputs.shape)
        return y, _info_spec(batch, self.max_iter, self.compute_dtype, len(block_shapes(state_shape)))

    def backward_layer(self, **overrides):
        """A `BackwardFPI` sharing this layer's cell and its adjoint settings."""
        adjoint = (
            self.backward.adjoint_spec(self.spec)
            if isinstance(self.backward, backward_lib.Implicit)
            else self.spec
        )
        kwargs = dict(
            solver=adjoint.solver,
            tol=adjoint.tol,
            max_iter=adjoint.max_iter,
            stop_mode=adjoint.stop_mode,
            name=f"{self.name}_backward",
            dtype=self.dtype_policy,
        )
        kwargs.update(overrides)
        return BackwardFPI(self.cell, **kwargs)

    def get_config(self):
        config = {
            **self._solve_settings_config(),
            "backward": backward_lib.serialize(self.backward),
            "track_metrics": self.track_metrics,
            "jit_loop": self.jit_loop,
            "compile_eager": self.compile_eager,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_implicit")
class BackwardFPI(_SolveSettings, keras.layers.Layer):
    """Backward fixed-point-iteration layer: the adjoint of a fixed point.

    Called on `(x, z_star, dz)` it solves

        c = (d cell/dz)^T c + dz          (at z = z_star)

    by fixed-point iteration of vector-Jacobian products, and returns `c`
    and the input cotangent `dx = (d cell/dx)^T c`. When `z_star` is the
    fixed point of `cell(., x)` and `dz = dL/dz*`, `dx = dL/dx`: this is the
    computation `ForwardFPI` runs for its gradient, as a reusable graph node
    (e.g. an exported signature). It is differentiable itself.

    Args:
        cell: the cell of the forward layer (share the instance to share
            weights; see `ForwardFPI.backward_layer()`).
        solver: default `"anderson"`.
        tol: default 1e-4.
        max_iter: default 50.
        stop_mode: default `"abs"`.
        return_info: if True, also return the adjoint `SolverInfo`.
        on_failure: `"warn"` (default), `"raise"` or `"ignore"`.

    Call arguments:
        inputs: a tuple `(x, z_star, dz)`.

    Returns:
        `(c, dx)`, or `(c, dx, info)`.
    """

    def __init__(
        self,
        cell,
        solver="anderson",
        tol=1e-4,
        max_iter=50,
        stop_mode="abs",
        return_info=False,
        on_failure="warn",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_solve_settings(cell, solver, tol, max_iter, stop_mode, return_info, on_failure)

    def build(self, input_shape):
        if not (isinstance(input_shape, (list, tuple)) and len(input_shape) == 3):
            raise ValueError(
                "BackwardFPI is called on a tuple (x, z_star, dz). "
                f"Received: input shapes {input_shape!r}"
            )
        x_shape, z_shape, dz_shape = input_shape
        x_shape = tuple(x_shape)
        if self.state_shape is None:
            self.state_shape = _state_shape(self.cell, x_shape)
        for name, shape in (("z_star", z_shape), ("dz", dz_shape)):
            nested = isinstance(shape, (tuple, list)) and shape and isinstance(
                shape[0], (tuple, list, tf.TensorShape))
            _check_state(name, shape if nested else [shape], self.state_shape, x_shape[0])
        if not self.cell.built:
            _build_cell(self.cell, x_shape, self.state_shape)
        self.input_shape_for_export = (x_shape, z_shape, dz_shape)

    def solve(self, x, z_star, dz):
        """Returns `(c, dx, SolverInfo)` whatever `return_info` says."""
        spec = SolveSpec(self.solver, self.tol, self.max_iter, self.stop_mode)
        c, arg_grads, _, info = backward_lib.adjoint_solve(self.cell, z_star, (x,), dz, spec)
        report_failure(info, self.on_failure, "adjoint solve")
        return c, arg_grads[0], info

    def call(self, inputs):
        x, z_star, dz = inputs
        c, dx, info = self.solve(x, z_star, dz)
        return (c, dx, info) if self.return_info else (c, dx)

    def compute_output_spec(self, inputs):
        x, z_star, _ = inputs
        c = tf.nest.map_structure(lambda t: keras.KerasTensor(t.shape, dtype=self.compute_dtype), z_star)
        dx = keras.KerasTensor(x.shape, dtype=self.compute_dtype)
        if not self.return_info:
            return c, dx
        batch = x.shape[0]
        info = _info_spec(batch, self.max_iter, self.compute_dtype, len(tf.nest.flatten(z_star)))
        return c, dx, info

    def get_config(self):
        return {**super().get_config(), **self._solve_settings_config()}
