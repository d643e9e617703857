"""Phantom gradients: backpropagation through a few damped steps from z*."""

import tensorflow as tf

from keras_implicit.backward.base import BackwardMode
from keras_implicit import validation


def _solve_then_step(problem, z0, args, spec, steps, damping):
    """`(z*, the damped steps from z*, info)`: the solve without gradient, then
    `steps` recorded steps."""
    z_star, info = spec.solve_without_gradient(problem.bind(*args), z0)
    return z_star, _damped_steps(problem, z_star, args, steps, damping), info


def _damped_steps(f, z, args, steps, damping):
    for _ in range(steps):
        fz = f(z, *args)
        if damping == 1.0:
            z = fz
        else:
            z = tf.nest.map_structure(lambda a, b: (1.0 - damping) * a + damping * b, z, fz)
    return z


class Phantom(BackwardMode):
    """k-step phantom gradient (Geng et al., NeurIPS 2021).

    The forward solve runs without gradient; then, from `z*` (held constant),
    `steps` damped iterations `z <- (1 - damping) z + damping f(z, x)` are
    taken with gradient, and their result is the output. Its gradient is the
    truncated Neumann series of the implicit one,

        dL/dx = (df/dx)^T sum_{i<k} damping (I - damping (I - J))^{T i} dL/dz,

    with `J = df/dz` (evaluated along the k steps, which equals `J(z*)` when
    `z*` is exact). Cheap and memory-flat, but approximate.

    Args:
        steps: int >= 1, default 5.
        damping: float in (0, 1], default 0.5.

    Reference: Geng, Zhang, Bai, Wang & Lin, "On training implicit models",
    NeurIPS 2021.
    """

    name = "phantom"

    def __init__(self, steps=5, damping=0.5):
        self.steps = validation.integer(steps, "steps")
        self.damping = validation.number(damping, "damping", high=1.0)

    def apply(self, problem, z0, args, spec, callback=None):
        _, stepped, info = _solve_then_step(problem, z0, args, spec, self.steps, self.damping)
        return stepped, info

    def get_config(self):
        return {"steps": self.steps, "damping": self.damping}


class JacobianFree(BackwardMode):
    """Jacobian-free backpropagation (Fung et al., AAAI 2022).

    Output `f(z*, x)` with `z*` held constant, so the gradient is
    `(df/dx)^T dL/dz` (the Neumann series of the implicit gradient cut at
    order 0). Equal to `Phantom(steps=1, damping=1.0)`.

    Reference: Fung, Heaton, Li, McKenzie, Osher & Yin, "JFB: Jacobian-free
    backpropagation for implicit networks", AAAI 2022.
    """

    name = "jacobian_free"

    def apply(self, problem, z0, args, spec, callback=None):
        _, stepped, info = _solve_then_step(problem, z0, args, spec, 1, 1.0)
        return stepped, info


class Neumann(BackwardMode):
    """The implicit gradient's Neumann series, cut after `terms` terms (optionally damped).

    The exact adjoint is `(I - J^T)^{-1} dL/dz = sum_{i>=0} (J^T)^i dL/dz`
    (`J = df/dz` at `z*`, the series converging when the spectral radius of
    `J` is below 1). This mode outputs `z*` itself (the forward value is
    untouched) and gives it the gradient

        dL/dtheta = (df/dtheta)^T damping sum_{i<terms} (I - damping (I - J))^{T i} dL/dz,

    computed by backpropagating through `terms` damped steps
    `z <- (1 - damping) z + damping f(z, x)` from `z*` (which stay at `z*`
    when `z*` is exact). In the scalar case `f = a z + ...` the adjoint's
    factor, in place of the exact `1 / (1 - a)`, is

    * `terms=1`: `1` (Jacobian-free backpropagation, `JacobianFree`);
    * `terms=2`: `1 + a`; `terms=3`: `1 + a + a^2`; in general
      `(1 - a^k) / (1 - a)`;
    * damped: `damping sum_{i<k} (1 - damping (1 - a))^i`
      `= (1 - (1 - damping (1 - a))^k) / (1 - a)`.

    An even number of terms has the factor `1 + a + ... + a^{k-1}`, which
    vanishes at `a = -1`: gradient descent can stall there on a point that is
    not a minimizer (see `keras_implicit.dynamics` and
    `examples/single_index_dynamics.py`); odd orders keep a positive factor.

    Args:
        terms: int >= 1, the number of series terms (default 2).
        damping: float in (0, 1], default 1 (the plain series).

    Example:

    >>> import tensorflow as tf, keras_implicit as ki
    >>> a, x = tf.constant(0.5, tf.float64), tf.constant([[1.0]], tf.float64)
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     z, _ = ki.fixed_point(lambda z, x: a * z + x, tf.zeros_like(x), x,
    ...                           backward=Neumann(terms=3), tol=1e-12)
    >>> float(tape.gradient(z, x)[0, 0])  # 1 + a + a^2 (exact: 1 / (1 - a) = 2)
    1.75
    """

    name = "neumann"

    def __init__(self, terms=2, damping=1.0):
        self.terms = validation.integer(terms, "terms")
        self.damping = validation.number(damping, "damping", high=1.0)

    def apply(self, problem, z0, args, spec, callback=None):
        z_star, stepped, info = _solve_then_step(problem, z0, args, spec, self.terms, self.damping)
        # the value z*, the gradient of the steps
        return tf.nest.map_structure(lambda z, s: z + (s - tf.stop_gradient(s)), z_star, stepped), info

    def get_config(self):
        return {"terms": self.terms, "damping": self.damping}
