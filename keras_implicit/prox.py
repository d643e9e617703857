"""Activations as proximal operators.

An elementwise activation `sigma` that is monotone and 1-Lipschitz is the
proximal operator of a convex function `f`: `sigma = prox_f = (I + df)^{-1}`
(Winston & Kolter 2020, Prop. 1). Operator-splitting solvers need the scaled
version `prox_{alpha f} = (I + alpha df)^{-1}` and, for the backward pass, the
(Clarke) derivative of `sigma` expressed through its output `z = sigma(v)`.

| activation         | f                                   | prox_alpha          | alpha |
|--------------------|-------------------------------------|---------------------|-------|
| `relu`             | indicator of z >= 0                 | relu                | any   |
| `soft_threshold`   | lam |z|                             | soft-threshold at alpha lam | any |
| `leaky_relu`       | (1/a - 1) z^2 / 2 for z < 0        | v, or v / (1 + alpha (1/a - 1)) for v < 0 | any |
| `identity`         | 0                                   | identity            | any   |
| `tanh`             | ((1+z) log(1+z) + (1-z) log(1-z)) / 2 - z^2 / 2 on [-1, 1] | tanh | 1 only |
| `sigmoid`          | z log z + (1-z) log(1-z) - z^2 / 2 on [0, 1] | sigmoid      | 1 only |

`value(z)` evaluates `f` elementwise (`inf` outside its domain): for
`sigma = prox_f`, `v = z + f'(z)`, so `f' = sigma^{-1} - id` (`artanh(z) - z`
for tanh, `logit(z) - z` for sigmoid), integrated.

So Peaceman-Rachford or forward-backward with `alpha != 1` need one of the
first four; with `alpha = 1` any listed activation works.
"""

import tensorflow as tf

from keras_implicit.registry import Configurable, Registry
from keras_implicit import validation


class Prox(Configurable):
    """An activation seen as a proximal operator."""

    any_alpha = True

    def __call__(self, v):
        """The activation itself, `prox_1`."""
        return self.prox(v, 1.0)

    def prox(self, v, alpha):
        raise NotImplementedError

    def derivative(self, z):
        """d sigma / dv at the point whose output is `z` (a Clarke element)."""
        raise NotImplementedError

    def value(self, z):
        """The convex function `f` with `prox_f = sigma`, elementwise (`inf` off its domain)."""
        raise NotImplementedError

    def supports(self, alpha):
        return self.any_alpha or float(alpha) == 1.0


class ReLU(Prox):
    """`relu`, the prox of the indicator of the nonnegative orthant (any alpha)."""

    name = "relu"

    def prox(self, v, alpha):
        return tf.nn.relu(v)

    def derivative(self, z):
        return tf.cast(z > 0, z.dtype)

    def value(self, z):
        return tf.where(z >= 0, tf.zeros_like(z), tf.fill(tf.shape(z), tf.constant(float("inf"), z.dtype)))


class SoftThreshold(Prox):
    """Soft-thresholding, the prox of `lam |z|`: `sign(v) max(|v| - alpha lam, 0)`."""

    name = "soft_threshold"

    def __init__(self, lam=0.1):
        validation.number(lam, "lam", low_open=False)
        self.lam = float(lam)

    def prox(self, v, alpha):
        return tf.sign(v) * tf.nn.relu(tf.abs(v) - alpha * self.lam)

    def derivative(self, z):
        return tf.cast(tf.not_equal(z, 0), z.dtype)

    def value(self, z):
        return self.lam * tf.abs(z)

    def get_config(self):
        return {"lam": self.lam}


class LeakyReLU(Prox):
    """Leaky ReLU with slope `a` in (0, 1] for v < 0, the prox of `(1/a - 1) min(z, 0)^2 / 2`."""

    name = "leaky_relu"

    def __init__(self, negative_slope=0.1):
        self.negative_slope = validation.number(negative_slope, "negative_slope", high=1.0)

    def prox(self, v, alpha):
        scale = 1.0 / (1.0 + alpha * (1.0 / self.negative_slope - 1.0))
        return tf.where(v >= 0, v, scale * v)

    def derivative(self, z):
        return tf.where(z >= 0, tf.ones_like(z), self.negative_slope * tf.ones_like(z))

    def value(self, z):
        return 0.5 * (1.0 / self.negative_slope - 1.0) * tf.square(tf.minimum(z, 0.0))

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class Identity(Prox):
    """The identity, the prox of 0 (a linear equilibrium model)."""

    name = "identity"

    def prox(self, v, alpha):
        return v

    def derivative(self, z):
        return tf.ones_like(z)

    def value(self, z):
        return tf.zeros_like(z)


class Tanh(Prox):
    """`tanh`: its prox is known in closed form only for alpha = 1."""

    name = "tanh"
    any_alpha = False

    def prox(self, v, alpha):
        return tf.tanh(v)

    def derivative(self, z):
        return 1.0 - tf.square(z)

    def value(self, z):
        inside = 0.5 * (tf.math.xlogy(1.0 + z, 1.0 + z) + tf.math.xlogy(1.0 - z, 1.0 - z)) - 0.5 * tf.square(z)
        return _outside_is_inf(inside, tf.abs(z) <= 1.0)


class Sigmoid(Prox):
    """`sigmoid`: its prox is known in closed form only for alpha = 1."""

    name = "sigmoid"
    any_alpha = False

    def prox(self, v, alpha):
        return tf.sigmoid(v)

    def derivative(self, z):
        return z * (1.0 - z)

    def value(self, z):
        inside = tf.math.xlogy(z, z) + tf.math.xlogy(1.0 - z, 1.0 - z) - 0.5 * tf.square(z)
        return _outside_is_inf(inside, (z >= 0.0) & (z <= 1.0))


def _outside_is_inf(values, inside):
    return tf.where(inside, values, tf.fill(tf.shape(values), tf.constant(float("inf"), values.dtype)))


get, serialize, deserialize, register = Registry(
    "activation", Prox, (ReLU, SoftThreshold, LeakyReLU, Identity, Tanh, Sigmoid)).functions()
