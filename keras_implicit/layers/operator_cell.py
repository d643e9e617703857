"""Operator cells: `z = prox(W z + U x + b)` built from an operator, an input
injection and a proximal activation, and the layers that hold them.

A cell subclasses `OperatorCell` and defines `operator()` (the linear map
`W`: `multiply`, `multiply_transpose`, `resolvent(alpha)`) and, unless the
dense `U x + b` of `kernel` and `bias` is meant, `input_injection(x)`. The
base gives it `call`, the forward `splitting(x)` and the Theorem-3
`adjoint_splitting` of the splitting solvers, and the prox (the activation's,
or a cell's own override). monDEQ (`layers/monotone.py`) and LBEN
(`layers/lipschitz.py`) cells differ only in their operator and weights.
"""

import warnings

import keras
import tensorflow as tf

from keras_implicit import prox as prox_lib
from keras_implicit import solvers as solvers_lib
from keras_implicit import validation
from keras_implicit.layers.family import EquilibriumFamily
from keras_implicit.operators import adjoint_prox
from keras_implicit.solvers.problem import Splitting
from keras_implicit.solvers.splitting import ForwardBackward

# torch.nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in the papers' code.
LINEAR_INIT = {"class_name": "VarianceScaling",
               "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"}}


class OperatorCell(keras.layers.Layer):
    """Base of the cells `f(z, x) = prox(W z + U x + b)`.

    Args:
        units: int, width of the (flat) state.
        activation: a proximal activation (`keras_implicit.prox`).
        kernel_initializer, bias_initializer: for the cell's weights.
    """

    # Its resolvents (matrix inverses, FFTs) and norms need float32 under a
    # mixed-precision policy (see `EquilibriumFamily`).
    needs_float32 = True

    def __init__(self, units, activation="relu", kernel_initializer=LINEAR_INIT,
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = validation.integer(units, "units")
        self.state_size = units
        self.activation = prox_lib.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def operator(self):
        raise NotImplementedError

    def input_injection(self, x):
        return tf.matmul(x, self.kernel) + self.bias

    # States are [batch, units]; the convolutional cell overrides these two.
    def _flat(self, t):
        return t

    def _unflat(self, t, like):
        return t

    def prox(self, v, alpha):
        return self.activation.prox(v, alpha)

    def derivative(self, z):
        return self.activation.derivative(z)

    def call(self, z, x):
        wz = self._unflat(self.operator().multiply(self._flat(z)), z)
        return self.prox(wz + self.input_injection(x), 1.0)

    def splitting(self, x):
        """`z = prox(W z + U x + b)` for the splitting solvers (on flat states)."""
        return Splitting(self.operator(), self._flat(self.input_injection(x)), self._flat_prox,
                         start=self._flat, finish=lambda z: self._unflat(z, None))

    def _flat_prox(self, v, alpha):
        return self._flat(self.prox(self._unflat(v, None), alpha))

    def adjoint_splitting(self, z_star, dz, x, forward=None):
        """The adjoint equation as a splitting (Theorem 3).

        Solves for `y = J c` in `0 in (I - W^T) y + D y - (1 + D) J dz`
        (`J` the activation's derivative at `z_star`, `D = (1 - J)/J`) from
        `y = 0`, and maps it to the adjoint `c = dz + W^T y`. The resolvent
        of `forward` (the forward splitting of the same call) is reused when
        it was built for the same alpha.
        """
        op = self.operator()
        j = self._flat(self.derivative(z_star))
        g = self._flat(dz)
        return Splitting(op, None, adjoint_prox(j, j * g), transpose=True,
                         start=lambda c0: tf.zeros_like(g),
                         finish=lambda y: dz + self._unflat(op.multiply_transpose(y), dz),
                         reuse=forward)

    def compute_output_shape(self, z_shape, x_shape=None):
        return tuple(z_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": prox_lib.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


class ImageState:
    """Cells whose state is one `[H, W, filters]` image (`self.spatial = (H, W)`)."""

    def implicit_weight(self):
        """`W` as a dense `[n, n]` matrix (n = H W C; for inspection and tests)."""
        return self.operator().to_dense()

    def _flat(self, t):
        h, w = self.spatial
        return tf.reshape(t, [-1, h * w * self.filters])

    def _unflat(self, t, like):
        h, w = self.spatial
        return tf.reshape(t, [-1, h, w, self.filters])


def splitting_solver(solver, alpha, activation):
    """Resolves `solver`, giving a splitting solver named by string the layer's alpha."""
    if isinstance(solver, str) and solver in ("peaceman_rachford", "forward_backward"):
        solver = solvers_lib.get({"class_name": solver, "config": {"alpha": alpha}})
    else:
        solver = solvers_lib.get(solver)
    a = getattr(solver, "alpha", None)
    if a is not None and not activation.supports(a):
        raise ValueError(
            f"The activation {activation.name!r} has a closed-form prox_alpha only for "
            f"alpha = 1, and the solver {solver.name!r} uses alpha = {a}. Use relu, "
            f"leaky_relu, soft_threshold or identity, or alpha=1.0. Received: alpha={a!r}"
        )
    return solver


class OperatorFamily(EquilibriumFamily):
    """The layers of operator cells (monDEQ, LBEN): splitting solvers given the layer's
    `alpha`, the forward-backward bound and its warning."""

    def __init__(self, cell_arguments, solver, alpha, **kwargs):
        solver = splitting_solver(solver, alpha, prox_lib.get(cell_arguments["activation"]))
        super().__init__(cell_arguments, solver=solver, **kwargs)
        self.alpha = getattr(self.solver, "alpha", float(alpha))

    def implicit_weight(self):
        """The operator `W` of `z = sigma(W z + U x + b)` (a matrix for dense layers)."""
        return self.cell.implicit_weight()

    def forward_backward_bound(self):
        """The largest `alpha` for which forward-backward splitting provably converges, `2 m / ||I - W||_2^2`."""
        return float(2.0 * self.cell.m / self.cell.operator().identity_minus_norm() ** 2)

    def build(self, input_shape):
        super().build(input_shape)
        # Checked here too: `fit` and other compiled callers never run the eager check.
        self._check_forward_backward(when=" (at build)")

    def _check_forward_backward(self, when=""):
        """Warns when forward-backward's `alpha` exceeds the bound of the current
        weights (once per bound value: a build followed by a call on the same
        weights warns once)."""
        if not isinstance(self.solver, ForwardBackward):
            return
        bound = self.forward_backward_bound()
        if self.solver.alpha > bound and bound != getattr(self, "_warned_bound", None):
            self._warned_bound = bound
            warnings.warn(
                f"Forward-backward splitting with alpha={self.solver.alpha} exceeds its "
                f"convergence bound 2m/||I - W||^2 = {bound:.3g}{when}; it may diverge. Use "
                "alpha <= the bound or solver='peaceman_rachford'.",
                UserWarning,
                stacklevel=3,
            )

    def call(self, inputs, initial_state=None):
        if tf.executing_eagerly() and self.built:
            self._check_forward_backward()
        return super().call(inputs, initial_state)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
