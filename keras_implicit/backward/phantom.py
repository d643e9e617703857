"""Phantom gradients: backpropagation through a few damped steps from z*."""

import tensorflow as tf

from keras_implicit.backward.base import BackwardMode
from keras_implicit import validation


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
        z_star, info = spec.solve_without_gradient(problem.bind(*args), z0)
        return _damped_steps(problem, z_star, args, self.steps, self.damping), info

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
        z_star, info = spec.solve_without_gradient(problem.bind(*args), z0)
        return _damped_steps(problem, z_star, args, 1, 1.0), info
