"""Linear and single-index deep equilibrium models (Dandapanthula & Ramdas, arXiv 2511.16976).

Two small families whose equilibrium has a closed form or a scalar root, so that
training dynamics can be studied exactly (see `keras_implicit.dynamics`):

* `LinearDEQ`: `z = z A + x U + c` (row vectors), output `z` or `z V`. The
  equilibrium is `z* = (x U + c)(I - A)^{-1}`, well-posed iff `I - A` is
  invertible; plain iteration reaches it iff the spectral radius of `A` is
  below 1.
* `SingleIndexDEQ`: `y = sigma(<w, x> + b y + c)`, one scalar per sample,
  well-posed when `|b| sup sigma' < 1` (then `y -> y - sigma(s + b y)` is
  strictly increasing and has exactly one root).

Both solve exactly by default (`solver="exact"`: a linear solve; a safeguarded
scalar root finder, `tfp.math.find_root_chandrupatla`) and accept any solver
and backward mode of the package instead (e.g. `solver="anderson",
backward=keras_implicit.backward.Neumann(2)`).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import validation
from keras_implicit.layers.family import EquilibriumFamily

EXACT = "exact"

# sup |sigma'| of the activations whose bound is known; others need `lipschitz=`.
SUP_DERIVATIVE = {"tanh": 1.0, "sigmoid": 0.25, "linear": 1.0, "relu": 1.0, "leaky_relu": 1.0, "softplus": 1.0,
                  "elu": 1.0, "hard_tanh": 1.0, "softsign": 1.0}


@keras.saving.register_keras_serializable(package="keras_implicit")
class LinearCell(keras.layers.Layer):
    """The linear equilibrium map `z -> z A + x U + c` (row vectors).

    Args:
        units: int, the state size.
        use_bias: bool, default True (`c`).
        kernel_initializer: for `U`, default "glorot_uniform".
        recurrent_initializer: for `A`, default "zeros".
        bias_initializer: for `c`, default "zeros".
    """

    needs_float32 = True  # its exact solve (`tf.linalg.solve`) has no half-precision kernel

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform", recurrent_initializer="zeros",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = validation.integer(units, "units")
        self.state_size = self.units
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "LinearCell")
        self.kernel = self.add_weight(name="kernel", shape=(x_shape[-1], self.units),
                                      initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(self.units, self.units),
                                                initializer=self.recurrent_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer) \
            if self.use_bias else None

    def drive(self, x):
        """`x U + c`."""
        h = tf.matmul(x, self.kernel)
        return h + self.bias if self.bias is not None else h

    def call(self, z, x):
        return tf.matmul(z, self.recurrent_kernel) + self.drive(x)

    def well_posedness(self):
        """`{"spectral_radius": rho(A), "min_singular_value": sigma_min(I - A)}`
        (numpy floats): the equilibrium exists and is unique iff the second is
        positive; plain iteration converges iff the first is below 1."""
        a = tf.convert_to_tensor(self.recurrent_kernel).numpy().astype("float64")
        return {"spectral_radius": float(np.max(np.abs(np.linalg.eigvals(a)))),
                "min_singular_value": float(np.linalg.svd(np.eye(len(a)) - a, compute_uv=False)[-1])}

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class SingleIndexCell(keras.layers.Layer):
    """The scalar equilibrium map `y -> sigma(<w, x> + b y + c)` (state `[batch, 1]`).

    Args:
        activation: default "tanh".
        use_bias: bool, default False (`c`).
        lipschitz: `sup |sigma'|`; known for the activations in
            `SUP_DERIVATIVE`, required for others.
        kernel_initializer: for `w`, default "glorot_uniform".
        recurrent_initializer: for `b`, default "zeros".
    """

    def __init__(self, activation="tanh", use_bias=False, lipschitz=None, kernel_initializer="glorot_uniform",
                 recurrent_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.state_size = 1
        self.activation = keras.activations.get(activation)
        name = getattr(self.activation, "__name__", None)
        if lipschitz is None:
            if name not in SUP_DERIVATIVE:
                raise ValueError("`lipschitz` (sup |sigma'|) is needed for an activation whose bound is not known "
                                 f"({sorted(SUP_DERIVATIVE)}). Received: activation={activation!r}, lipschitz=None")
            lipschitz = SUP_DERIVATIVE[name]
        self.lipschitz = validation.number(lipschitz, "lipschitz")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "SingleIndexCell")
        self.kernel = self.add_weight(name="kernel", shape=(x_shape[-1], 1), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(),
                                                initializer=self.recurrent_initializer)
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros") if self.use_bias else None

    def index(self, x):
        """`<w, x> + c`, shape `[batch, 1]`."""
        s = tf.matmul(x, self.kernel)
        return s + self.bias if self.bias is not None else s

    def call(self, z, x):
        return self.activation(self.index(x) + self.recurrent_kernel * z)

    def margin(self):
        """`1 - |b| sup sigma'` (a tensor): the model is well-posed when it is positive."""
        return 1.0 - tf.abs(tf.convert_to_tensor(self.recurrent_kernel)) * self.lipschitz

    def get_config(self):
        return {**super().get_config(), "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias, "lipschitz": self.lipschitz,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer)}


class _ExactOrIterative(EquilibriumFamily):
    """A family solved exactly by default (`solver="exact"`), or by any solver
    of the package with its backward modes."""

    def __init__(self, cell_arguments, solver=EXACT, **kwargs):
        self.exact = solver == EXACT
        if self.exact:
            if kwargs.get("return_info"):
                raise ValueError(f"return_info needs an iterative solver (the exact solve has no iterations). "
                                 f"Received: solver={solver!r}, return_info=True")
            kwargs["track_metrics"] = False
        super().__init__(cell_arguments, solver="anderson" if self.exact else solver, **kwargs)

    def call(self, inputs, initial_state=None):
        if not self.exact:
            return super().call(inputs, initial_state)
        x = tf.convert_to_tensor(inputs, self.compute_dtype)
        return self.readout(self.exact_solve(x))

    def get_config(self):
        config = super().get_config()
        if self.exact:
            config["solver"] = EXACT
        return config


@keras.saving.register_keras_serializable(package="keras_implicit")
class LinearDEQ(_ExactOrIterative):
    """Linear deep equilibrium model: `z* = z* A + x U + c`, output `z*` (or `z* V`).

    Math (row vectors): `z* = (x U + c)(I - A)^{-1}`, so the model is the
    linear map `x -> x U (I - A)^{-1} V`, over-parameterized. With
    `solver="exact"` (default) `z*` is one linear solve and its gradient
    TensorFlow's (which is the implicit-function-theorem gradient);
    any other solver runs the package's fixed-point machinery, with its
    backward modes. Under gradient flow on any loss of the output, the matrix
    `U^T U + c^T c + (I - A)^T (I - A)` is conserved
    (`keras_implicit.dynamics.conserved_quantity`); for one unit and no
    output matrix it is `||w||^2 + (1 - b)^2`, the squared distance of
    `(w, b)` to the singular point `(0, 1)`.

    Well-posedness: `I - A` must be invertible (exact solve), and plain
    iteration needs the spectral radius of `A` below 1. Eager calls check
    it and raise a `ValueError` naming the value; `cell.well_posedness()`
    reports both numbers.

    Args:
        units: int, the state size.
        output_units: None (output `z*`) or an int (output `z* V`).
        use_bias: bool, default True.
        solver: "exact" (default) or a solver of `keras_implicit.solvers`.
        backward, tol, max_iter, ...: as `ForwardFPI` (iterative solvers).

    Example:

    >>> import numpy as np, keras_implicit as ki
    >>> layer = ki.layers.LinearDEQ(1, use_bias=False)
    >>> _ = layer(np.ones((1, 1), "float32"))
    >>> _ = layer.cell.kernel.assign([[0.6]]), layer.cell.recurrent_kernel.assign([[0.7]])
    >>> round(float(layer(np.ones((1, 1), "float32"))[0, 0]), 4)  # 0.6 / (1 - 0.7)
    2.0
    """

    cell_class = LinearCell
    cell_name = "linear_cell"

    def __init__(self, units, output_units=None, use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="zeros", bias_initializer="zeros", solver=EXACT, **kwargs):
        super().__init__(dict(units=units, use_bias=use_bias, kernel_initializer=kernel_initializer,
                              recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer),
                         solver=solver, **kwargs)
        self.output_units = None if output_units is None else validation.integer(output_units, "output_units")

    def build(self, input_shape):
        super().build(input_shape)
        self.readout_kernel = None
        if self.output_units is not None:
            self.readout_kernel = self.add_weight(name="readout_kernel", shape=(self.cell.units, self.output_units),
                                                  initializer="glorot_uniform")

    def readout(self, z):
        return z if self.readout_kernel is None else tf.matmul(z, self.readout_kernel)

    def readout_shape(self, state_shape, input_shape):
        return state_shape if self.output_units is None else (self.output_units,)

    def _check(self, iterative):
        if not tf.executing_eagerly():
            return
        report = self.cell.well_posedness()
        if report["min_singular_value"] <= 1e3 * np.finfo(self.compute_dtype).eps:
            raise ValueError("LinearDEQ is not well-posed: I - A is singular (smallest singular value "
                         f"{report['min_singular_value']:.3g}). Received: recurrent_kernel with spectral radius "
                         f"{report['spectral_radius']:.6g}")
        if iterative and self.solver.name == "fixed_point" and report["spectral_radius"] >= 1:
            raise ValueError("Plain fixed-point iteration diverges: the spectral radius of A is "
                         f"{report['spectral_radius']:.6g} >= 1 (use solver='exact' or 'anderson'). Received: "
                         "solver='fixed_point'")

    def call(self, inputs, initial_state=None):
        self._check(not self.exact)
        return super().call(inputs, initial_state)

    def exact_solve(self, x):
        """`z* = (x U + c)(I - A)^{-1}`, differentiable."""
        a = tf.convert_to_tensor(self.cell.recurrent_kernel)
        m = tf.eye(self.cell.units, dtype=a.dtype) - a
        return tf.transpose(tf.linalg.solve(tf.transpose(m), tf.transpose(self.cell.drive(x))))

    def get_config(self):
        return {**super().get_config(), "output_units": self.output_units}


@keras.saving.register_keras_serializable(package="keras_implicit")
class SingleIndexDEQ(_ExactOrIterative):
    """Deep equilibrium single-index model: `y = sigma(<w, x> + b y + c)`.

    One scalar equilibrium per sample. When `|b| sup sigma' < 1` the function
    `g(y) = y - sigma(s + b y)` (`s = <w, x> + c`) has derivative
    `1 - b sigma' >= 1 - |b| sup sigma' > 0`, so exactly one root, which lies
    in `|y| <= |sigma(s)| / (1 - |b| sup sigma')`. `solver="exact"`
    (default) brackets it there and finds it with Chandrupatla's safeguarded
    method (`tfp.math.find_root_chandrupatla`, to `tol`), then takes one
    Newton step through which the gradient flows: the implicit gradient

        dy/ds = sigma' / (1 - b sigma'),   dy/db = sigma' y / (1 - b sigma'),

    with `sigma'` at `s + b y`. Other solvers run the fixed-point machinery.

    Well-posedness `|b| sup sigma' < 1` is checked on every eager call
    (`ValueError` naming `b`), and asserted in graphs (an
    `InvalidArgumentError` when run); never a silent NaN.

    Args:
        activation: default "tanh"; `lipschitz` (sup |sigma'|) for one not
            in `SUP_DERIVATIVE`.
        use_bias: bool, default False.
        solver: "exact" (default) or a solver of `keras_implicit.solvers`.
        tol: the root's position tolerance (default 1e-7); max_iter: of the
            root finder or solver (default 100).

    Example:

    >>> import numpy as np, keras_implicit as ki
    >>> layer = ki.layers.SingleIndexDEQ("tanh")
    >>> _ = layer(np.ones((1, 2), "float32"))
    >>> _ = layer.cell.kernel.assign([[0.5], [0.5]]), layer.cell.recurrent_kernel.assign(0.5)
    >>> y = float(layer(np.ones((1, 2), "float32"))[0, 0])
    >>> round(y, 5), round(float(np.tanh(1.0 + 0.5 * y)), 5)
    (0.89522, 0.89522)
    """

    cell_class = SingleIndexCell
    cell_name = "single_index_cell"

    def __init__(self, activation="tanh", use_bias=False, lipschitz=None, kernel_initializer="glorot_uniform",
                 recurrent_initializer="zeros", solver=EXACT, tol=1e-7, max_iter=100, **kwargs):
        super().__init__(dict(activation=activation, use_bias=use_bias, lipschitz=lipschitz,
                              kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer),
                         solver=solver, tol=tol, max_iter=max_iter, **kwargs)

    def call(self, inputs, initial_state=None):
        margin = self.cell.margin() if self.built else None
        if margin is not None and tf.executing_eagerly() and not float(margin) > 0:
            raise ValueError("SingleIndexDEQ is not well-posed: |b| sup sigma' = "
                         f"{1 - float(margin):.6g} >= 1. Received: b={float(self.cell.recurrent_kernel):.6g}, "
                         f"sup sigma'={self.cell.lipschitz:g}")
        return super().call(inputs, initial_state)

    def exact_solve(self, x):
        cell = self.cell
        margin = cell.margin()
        checks = [] if tf.executing_eagerly() else [tf.debugging.assert_positive(
            margin, message="SingleIndexDEQ is not well-posed: |b| sup sigma' >= 1")]
        with tf.control_dependencies(checks):
            s = cell.index(x)
        b = tf.convert_to_tensor(cell.recurrent_kernel)
        s0, b0 = tf.stop_gradient(s), tf.stop_gradient(b)
        bound = tf.abs(cell.activation(s0)) / tf.maximum(tf.stop_gradient(margin), 1e-12) + 1.0
        import tensorflow_probability as tfp  # deferred: tfp takes seconds to import
        y = tfp.math.find_root_chandrupatla(lambda y: y - cell.activation(s0 + b0 * y), low=-bound, high=bound,
                                            position_tolerance=self.tol, max_iterations=self.max_iter
                                            ).estimated_root
        y = tf.stop_gradient(y)
        pre = s0 + b0 * y
        with tf.GradientTape() as tape:
            tape.watch(pre)
            value = cell.activation(pre)
        slope = tf.stop_gradient(tape.gradient(value, pre))
        residual = y - cell.activation(s + b * y)
        return y - residual / (1.0 - b0 * slope)  # one Newton step: the implicit gradient


__all__ = ["LinearCell", "LinearDEQ", "SingleIndexCell", "SingleIndexDEQ", "SUP_DERIVATIVE"]
