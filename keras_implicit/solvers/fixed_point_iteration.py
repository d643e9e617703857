"""Plain (Krasnoselskii-Mann) fixed-point iteration."""


from keras_implicit import validation
from keras_implicit.solvers.base import Solver


def check_damping(damping):
    return validation.number(damping, "damping", high=1.0)  # (0, 1], numpy numbers too


class FixedPointIteration(Solver):
    """Damped fixed-point iteration `z <- (1 - damping) z + damping f(z)`.

    With `damping=1` this is Picard iteration; it converges for every
    contraction. Smaller damping (Krasnoselskii-Mann) converges for
    nonexpansive maps too, more slowly.

    Args:
        damping: float in (0, 1], default 1.0.

    Example:

    >>> import tensorflow as tf, keras_implicit as ki
    >>> z, info = ki.fixed_point(lambda z: tf.cos(z), tf.zeros([1, 1]),
    ...                          solver=ki.solvers.FixedPointIteration(), max_iter=100)
    >>> round(float(z[0, 0]), 3)
    0.739
    """

    name = "fixed_point"
    compile_loop = False  # its step is the cell itself: nothing for XLA to fuse

    def __init__(self, damping=1.0):
        self.damping = check_damping(damping)

    def init(self, F, z):
        return ()

    def step(self, F, z, state, k):
        fz = F(z)
        diff = fz - z
        if self.damping == 1.0:
            z_next = fz
        else:
            z_next = z + self.damping * diff
        return z_next, state, z, diff, fz

    def get_config(self):
        return {"damping": self.damping}
