"""The FPI_NN and FPI_GD models of Jeon, Lee & Choi (arXiv 2002.02868).

Both find `x*` with `x* = g(x*, y)` for an input `y` with the forward FPI
layer (`ForwardFPI`), and get their gradients from the backward FPI layer's
adjoint `c = (dg/dx)^T c + dL/dx*` (the `Implicit` backward):

* FPI_NN (`FPINetwork`): `g(x, y) = sigmoid(fc2(relu(fc1([y; x]))))`, a small
  network iterated to its fixed point; the output is `x*` (in `(0, 1)`).
* FPI_GD (`FPIGradientDescent`): `g(x, y) = x - eta grad_x E(x, y)`, one
  gradient step on a learnable energy, so `x*` is a stationary point of
  `E(., y)`; the output is `sigmoid(x*)`. The default energy is
  `E(x, y) = mean_k relu(W [y; sigmoid(x)] + b)_k^2`. The cell takes a
  gradient, so training differentiates gradients through the implicit
  backward (Hessian-vector products in the adjoint), which `Implicit`
  supports exactly.
"""

import keras
import tensorflow as tf

from keras_implicit.autodiff import GradientOf
from keras_implicit.layers.family import EquilibriumFamily
from keras_implicit.layers.precision import float32_under_half
from keras_implicit import validation


@keras.saving.register_keras_serializable(package="keras_implicit")
class FPINetworkCell(keras.layers.Layer):
    """`g(x, y) = sigmoid(relu([y, x] W1 + b1) W2 + b2)`, the FPI_NN update.

    Args:
        units: size of `x` (the state and the output).
        hidden: width of the hidden layer, default 128.
    """

    def __init__(self, units, hidden=128, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = validation.integer(units, "units")
        self.hidden = validation.integer(hidden, "hidden")
        self.state_size = units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, z_shape, y_shape=None):
        validation.features(y_shape, "FPINetwork", "y")
        init = self.kernel_initializer
        self.kernel1 = self.add_weight(name="kernel1", shape=(y_shape[-1] + self.units, self.hidden),
                                       initializer=init)
        self.bias1 = self.add_weight(name="bias1", shape=(self.hidden,), initializer="zeros")
        self.kernel2 = self.add_weight(name="kernel2", shape=(self.hidden, self.units), initializer=init)
        self.bias2 = self.add_weight(name="bias2", shape=(self.units,), initializer="zeros")

    def call(self, z, y):
        h = tf.nn.relu(tf.matmul(tf.concat([y, z], axis=-1), self.kernel1) + self.bias1)
        return tf.sigmoid(tf.matmul(h, self.kernel2) + self.bias2)

    def compute_output_shape(self, z_shape, y_shape=None):
        return tuple(z_shape)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "hidden": self.hidden,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class ReLUEnergy(keras.layers.Layer):
    """`E(x, y) = mean_k relu(W [y; sigmoid(x)] + b)_k^2 + (l2 / 2) |x|^2`, one value per sample.

    The energy of FPI_GD (Jeon et al., Sec. 4) with an optional quadratic
    term. Without it (`l2=0`, the paper's form) `E` depends on `x` only
    through `sigmoid(x)`, so its infimum may lie at infinity or on a flat
    region (all terms zero), where gradient descent drifts or stops anywhere;
    `l2 > 0` gives every `y` a finite minimizer and makes the fixed point
    well posed. Any Keras layer called as `energy(x, y)` that returns
    `[batch]` or `[batch, 1]` can replace it.

    Args:
        hidden: number of terms `k`, default 128.
        l2: float >= 0, weight of `|x|^2 / 2`, default 0.
    """

    def __init__(self, hidden=128, l2=0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.hidden = validation.integer(hidden, "hidden")
        validation.number(l2, "l2", low_open=False)
        self.l2 = float(l2)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, x_shape, y_shape=None):
        validation.features(y_shape, "ReLUEnergy", "y")
        self.kernel = self.add_weight(name="kernel", shape=(y_shape[-1] + x_shape[-1], self.hidden),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.hidden,), initializer="zeros")

    def call(self, x, y):
        pre = tf.matmul(tf.concat([y, tf.sigmoid(x)], axis=-1), self.kernel) + self.bias
        energy = tf.reduce_mean(tf.square(tf.nn.relu(pre)), axis=-1)
        if self.l2:
            energy += 0.5 * self.l2 * tf.reduce_sum(tf.square(x), axis=-1)
        return energy

    def compute_output_shape(self, x_shape, y_shape=None):
        return (x_shape[0],)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "l2": self.l2,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class EnergyDescentCell(keras.layers.Layer):
    """`g(x, y) = x - step_size * grad_x E(x, y)`, the FPI_GD update.

    Args:
        units: size of `x`.
        energy: a Keras layer `energy(x, y) -> [batch]` (or `[batch, 1]`);
            default `ReLUEnergy(hidden)`.
        step_size: `eta > 0`, default 1.0.
        hidden: width of the default energy.
    """

    # Its step is a gradient of the energy: in half precision the descent
    # stalls far from the fixed point (outputs 0.2-0.9 off float32's).
    needs_float32 = True

    def __init__(self, units, energy=None, step_size=1.0, hidden=128, **kwargs):
        super().__init__(**kwargs)
        self.units = validation.integer(units, "units")
        self.state_size = units
        validation.number(step_size, "step_size")
        self.step_size = float(step_size)
        self.hidden = hidden
        if isinstance(energy, dict):
            energy = keras.saving.deserialize_keras_object(energy)
        if energy is None:
            energy = ReLUEnergy(hidden, name="energy", dtype=kwargs.get("dtype"))
        if not isinstance(energy, keras.layers.Layer):
            raise ValueError(
                f"`energy` must be a Keras layer called as energy(x, y). Received: energy={energy!r}"
            )
        self.energy = energy
        self._grad = GradientOf(self._energy)

    def _energy(self, x, y):
        return self.energy(x, y)

    def build(self, z_shape, y_shape=None):
        validation.features(y_shape, "FPIGradientDescent", "y")
        # One scalar per sample, checked on a batch of two.
        probe = self.energy(tf.zeros((2, self.units), self.compute_dtype),
                            tf.zeros((2, y_shape[-1]), self.compute_dtype))
        shape = tuple(probe.shape)
        if shape not in ((2,), (2, 1)):
            raise ValueError(
                "The energy must return one scalar per sample, shape (batch,) or (batch, 1). "
                f"Received: energy output shape {shape} for a batch of 2"
            )

    def gradient(self, z, y):
        """`grad_x E(x, y)` at `x = z`."""
        return self._grad(z, y)

    def call(self, z, y):
        return z - self.step_size * self.gradient(z, y)

    def compute_output_shape(self, z_shape, y_shape=None):
        return tuple(z_shape)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "step_size": self.step_size, "hidden": self.hidden,
                "energy": keras.saving.serialize_keras_object(self.energy)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class FPINetwork(EquilibriumFamily):
    """FPI_NN: the fixed point `x* = sigmoid(fc2(relu(fc1([y; x*]))))` of a small network.

    Args:
        units: size of the output `x*`.
        hidden: hidden width of the update network, default 128.
        solver: default "anderson"; tol (default 1e-4), max_iter (default
            50), stop_mode (default "rel"); these and the other solve
            settings (`backward`, ...) as `ForwardFPI`.

    Call arguments:
        inputs: `y`, shape `(batch, features)`.
        initial_state: optional `x0`, shape `(batch, units)` (default zeros).

    Example:

    >>> import keras, keras_implicit as ki
    >>> y = keras.Input((300,))
    >>> probs = ki.layers.FPINetwork(20, hidden=64)(y)     # multi-label probabilities
    >>> keras.Model(y, probs).output_shape
    (None, 20)

    Reference: Jeon, Lee & Choi, "Differentiable forward and backward
    fixed-point iteration layers", arXiv 2002.02868.
    """

    cell_class = FPINetworkCell
    cell_name = "fpi_network_cell"

    def __init__(self, units, hidden=128, solver="anderson", tol=1e-4, max_iter=50, stop_mode="rel", **kwargs):
        super().__init__(dict(units=units, hidden=hidden), solver=solver, tol=tol, max_iter=max_iter,
                         stop_mode=stop_mode, **kwargs)


@keras.saving.register_keras_serializable(package="keras_implicit")
class FPIGradientDescent(EquilibriumFamily):
    """FPI_GD: `sigmoid(x*)` with `x* = x* - step_size grad_x E(x*, y)`, a stationary point of `E(., y)`.

    Args:
        units: size of `x`.
        energy: a Keras layer `energy(x, y) -> [batch]`; default
            `ReLUEnergy(hidden)`, `mean_k relu(W [y; sigmoid(x)] + b)_k^2`.
        hidden: width of the default energy, default 128.
        l2: weight of the default energy's `|x|^2 / 2` term, default 0
            (see `ReLUEnergy`).
        step_size: `eta > 0`, default 1.0 (for a convex energy, plain
            iteration converges when `eta < 2 / L`, `L` the Lipschitz
            constant of `grad_x E`).
        output_activation: applied to `x*`, default "sigmoid" (the paper's);
            None returns `x*`.
        solver, backward, tol, max_iter, stop_mode: as `FPINetwork`.

    Example:

    >>> import keras, keras_implicit as ki
    >>> y = keras.Input((64,))
    >>> clean = ki.layers.FPIGradientDescent(64, hidden=128)(y)   # a denoiser
    >>> keras.Model(y, clean).output_shape
    (None, 64)
    """

    cell_class = EnergyDescentCell
    cell_name = "energy_descent_cell"

    def __init__(self, units, energy=None, hidden=128, step_size=1.0, l2=0.0, output_activation="sigmoid",
                 solver="anderson", tol=1e-4, max_iter=50, stop_mode="rel", **kwargs):
        if energy is None:  # in the layer's dtype (float32 under a mixed policy)
            kwargs["dtype"] = float32_under_half(EnergyDescentCell.needs_float32, kwargs.get("dtype"))
            energy = ReLUEnergy(hidden, l2=l2, name="energy", dtype=kwargs["dtype"])
        super().__init__(dict(units=units, energy=energy, step_size=step_size, hidden=hidden), solver=solver,
                         tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)
        self.output_activation = keras.activations.get(output_activation)

    def readout(self, z):
        return self.output_activation(z)

    def get_config(self):
        return {**super().get_config(),
                "output_activation": keras.activations.serialize(self.output_activation)}


__all__ = ["EnergyDescentCell", "FPIGradientDescent", "FPINetwork", "FPINetworkCell", "ReLUEnergy"]
