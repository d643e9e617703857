"""Forward and backward fixed-point-iteration layers (Jeon, Lee & Choi, 2020)."""

import keras
import tensorflow as tf

from keras_implicit import backward as backward_lib
from keras_implicit import solvers as solvers_lib
from keras_implicit.backward.base import SolveSpec
from keras_implicit.fixed_point import check_on_failure, fixed_point, report_failure
from keras_implicit.info import SolverInfo
from keras_implicit.solvers.base import check_tol_and_max_iter


def _state_shape(cell, x_shape=None):
    """The state shape (without batch) a cell declares through `state_size`.

    A cell whose state shape depends on its input (a convolutional cell) sets
    `state_size = None` and defines `compute_state_shape(x_shape)`; its shape
    is then known only once `x_shape` is (None is returned before).
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
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size,)
    if isinstance(size, (tuple, list, tf.TensorShape)) and all(
        isinstance(d, int) and d > 0 for d in size
    ):
        return tuple(size)
    raise ValueError(
        "`state_size` must be a positive int or a tuple of positive ints. "
        f"Received: state_size={size!r}"
    )


def _resolve_cell(cell):
    if isinstance(cell, dict):
        cell = keras.saving.deserialize_keras_object(cell)
    if not isinstance(cell, keras.layers.Layer):
        raise ValueError(
            f"`cell` must be a Keras layer with call(z, x). Received: cell={cell!r}"
        )
    _state_shape(cell)
    return cell


def cell_function(cell):
    """`f(z, x) = cell(z, x)`, carrying the cell's splitting structure if it has one."""

    def f(z, x):
        return cell(z, x)

    if hasattr(cell, "splitting_problem"):
        f.splitting_problem = cell.splitting_problem
        f.last_problem = None
    if hasattr(cell, "adjoint_splitting_problem"):
        f.adjoint_splitting_problem = lambda z, dz, x: cell.adjoint_splitting_problem(
            z, dz, x, forward_problem=getattr(f, "last_problem", None)
        )
    return f


def _build_cell(cell, x_shape, state_shape):
    """Builds `cell` by calling it once on symbolic tensors; checks its output shape."""
    x_shape = tuple(x_shape)
    z_shape = (x_shape[0],) + state_shape
    out = cell(keras.KerasTensor(z_shape), keras.KerasTensor(x_shape))
    out_shape = tuple(getattr(out, "shape", ()))
    if out_shape[1:] != state_shape:
        raise ValueError(
            f"The cell maps a state of shape {z_shape} to shape {out_shape}; a "
            "fixed-point cell must return its state's shape (`state_size`). "
            f"Received: state_size={cell.state_size!r}, inputs shape={x_shape}"
        )


def _info_spec(batch, max_iter, dtype):
    """Symbolic `SolverInfo` for Keras' functional API."""
    return SolverInfo(
        iterations=keras.KerasTensor((), dtype="int32"),
        residual=keras.KerasTensor((batch,), dtype=dtype),
        converged=keras.KerasTensor((batch,), dtype="bool"),
        trace=keras.KerasTensor((max_iter,), dtype=dtype),
        status=keras.KerasTensor((), dtype="int32"),
    )


class _SolveSettings:
    """Validated solve settings shared by the FPI layers (and their configs)."""

    def _set_solve_settings(self, cell, solver, tol, max_iter, stop_mode, return_info, on_failure):
        self.cell = _resolve_cell(cell)
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

    Call arguments:
        inputs: the cell's input `x`, with a leading batch axis.
        initial_state: optional start iterate, shape `[batch, *state_size]`;
            zeros by default.

    Returns:
        `z*` of shape `[batch, *state_size]`, or `(z*, info)`.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_solve_settings(cell, solver, tol, max_iter, stop_mode, return_info, on_failure)
        self.backward = backward_lib.get(backward)
        self.jit_loop = bool(jit_loop)
        self.track_metrics = bool(track_metrics)
        if self.track_metrics:
            self.fwd_iters_metric = keras.metrics.Mean(name=f"{self.name}_fwd_iters")
            self.fwd_res_metric = keras.metrics.Mean(name=f"{self.name}_fwd_res")
            self.bwd_iters_metric = keras.metrics.Mean(name=f"{self.name}_bwd_iters")

    def build(self, input_shape):
        if self.state_shape is None:
            self.state_shape = _state_shape(self.cell, input_shape)
        if not self.cell.built:
            _build_cell(self.cell, input_shape, self.state_shape)
        self.input_shape_for_export = tuple(input_shape)

    @property
    def spec(self):
        """The forward `SolveSpec` (solver and stopping rule)."""
        return SolveSpec(self.solver, self.tol, self.max_iter, self.stop_mode, self.jit_loop)

    def _record_backward(self, info):
        if self.track_metrics:
            self.bwd_iters_metric.update_state(tf.cast(info.iterations, "float32"))

    def initial_state(self, inputs):
        batch = tf.shape(tf.nest.flatten(inputs)[0])[0]
        shape = tf.concat([[batch], list(self.state_shape)], axis=0)
        return tf.zeros(shape, dtype=self.compute_dtype)

    def solve(self, inputs, initial_state=None):
        """Returns `(z*, SolverInfo)` whatever `return_info` says."""
        if initial_state is None:
            z0 = self.initial_state(inputs)
        else:
            z0 = tf.convert_to_tensor(initial_state, dtype=self.compute_dtype)
            if tuple(z0.shape[1:]) != self.state_shape:
                raise ValueError(
                    f"`initial_state` must have shape (batch, *{self.state_shape}). "
                    f"Received: initial_state.shape={tuple(z0.shape)}"
                )
            batch = tf.nest.flatten(inputs)[0].shape[0]
            if batch is not None and z0.shape[0] is not None and batch != z0.shape[0]:
                raise ValueError(
                    "`initial_state` and the inputs must have the same batch size. Received: "
                    f"initial_state.shape={tuple(z0.shape)}, inputs shape={tuple(tf.nest.flatten(inputs)[0].shape)}"
                )
        return fixed_point(
            cell_function(self.cell),
            z0,
            inputs,
            solver=self.solver,
            backward=self.backward,
            tol=self.tol,
            max_iter=self.max_iter,
            stop_mode=self.stop_mode,
            on_failure=self.on_failure,
            backward_callback=self._record_backward,
            check_captures=False,
            jit_loop=self.jit_loop,
        )

    def call(self, inputs, initial_state=None):
        z, info = self.solve(inputs, initial_state)
        if self.track_metrics:
            self.fwd_iters_metric.update_state(tf.cast(info.iterations, "float32"))
            self.fwd_res_metric.update_state(tf.cast(info.residual, "float32"))
        return (z, info) if self.return_info else z

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + (self.state_shape or _state_shape(self.cell, input_shape))

    def compute_output_spec(self, inputs, initial_state=None):
        batch = inputs.shape[0]
        state_shape = self.state_shape or _state_shape(self.cell, inputs.shape)
        z = keras.KerasTensor((batch,) + state_shape, dtype=self.compute_dtype)
        if not self.return_info:
            return z
        info = _info_spec(batch, self.max_iter, self.compute_dtype)
        return z, info

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
        x_shape, z_shape, dz_shape = (tuple(s) for s in input_shape)
        if self.state_shape is None:
            self.state_shape = _state_shape(self.cell, x_shape)
        for name, shape in (("z_star", z_shape), ("dz", dz_shape)):
            if shape[1:] != self.state_shape:
                raise ValueError(
                    f"`{name}` must have shape (batch, *{self.state_shape}). "
                    f"Received: {name}.shape={shape}"
                )
        if not self.cell.built:
            _build_cell(self.cell, x_shape, self.state_shape)
        self.input_shape_for_export = (x_shape, z_shape, dz_shape)

    def solve(self, x, z_star, dz):
        """Returns `(c, dx, SolverInfo)` whatever `return_info` says."""
        spec = SolveSpec(self.solver, self.tol, self.max_iter, self.stop_mode)
        c, arg_grads, _, info = backward_lib.adjoint_solve(
            cell_function(self.cell), z_star, (x,), dz, spec
        )
        report_failure(info, self.on_failure, "adjoint solve")
        return c, arg_grads[0], info

    def call(self, inputs):
        x, z_star, dz = inputs
        c, dx, info = self.solve(x, z_star, dz)
        return (c, dx, info) if self.return_info else (c, dx)

    def compute_output_spec(self, inputs):
        x, z_star, _ = inputs
        c = keras.KerasTensor(z_star.shape, dtype=self.compute_dtype)
        dx = keras.KerasTensor(x.shape, dtype=self.compute_dtype)
        if not self.return_info:
            return c, dx
        batch = x.shape[0]
        info = _info_spec(batch, self.max_iter, self.compute_dtype)
        return c, dx, info

    def get_config(self):
        return {**super().get_config(), **self._solve_settings_config()}
