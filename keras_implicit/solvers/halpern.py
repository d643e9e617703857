"""Halpern's anchored iteration."""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers.base import Solver

ANCHORS = ("initial", "problem")


class Halpern(Solver):
    """Halpern's anchored iteration `z_{k+1} = b_k a + (1 - b_k) f(z_k)`, `b_k = beta / (k + 2)`.

    For a nonexpansive map `f` whose fixed-point set is not a single point
    (e.g. `z -> sigma(W z + b)` with `||W||_2 = 1`, or a rank-deficient
    problem), plain iteration returns whichever fixed point its path leads
    to, or circles forever (a rotation); Halpern's iteration converges to the
    fixed point nearest the anchor `a`, the projection of `a` onto the
    fixed-point set (Halpern 1967; Wittmann 1992), with `||f(z_k) - z_k|| =
    O(1/k)` for `beta = 1` (Lieder 2021). The anchor's pull decays like
    `1/k`, so tight tolerances need many iterations.

    Args:
        anchor: `"initial"` (default): the initial iterate `z0`;
            `"problem"`: the problem's own anchor (a cell's `anchor(x)`
            method, e.g. the input injection of an optimization-induced
            layer).
        beta: float in (0, 1], the anchor weight's scale, default 1.0
            (`b_k = 1/(k + 2)`, the optimal schedule).

    Example:

    >>> import tensorflow as tf, keras_implicit as ki
    >>> rot = tf.constant([[0.0, -1.0], [1.0, 0.0]])  # no fixed point but 0
    >>> z, info = ki.fixed_point(lambda z: z @ rot, tf.ones([1, 2]),
    ...                          solver=ki.solvers.Halpern(), tol=1e-3, max_iter=5000)
    >>> bool(tf.reduce_max(tf.abs(z)) < 1e-2)
    True
    """

    name = "halpern"
    compile_loop = False  # one blend per step: nothing for XLA to fuse

    def __init__(self, anchor="initial", beta=1.0):
        self.anchor = validation.one_of(anchor, "anchor", ANCHORS)
        self.beta = validation.number(beta, "beta", 0.0, 1.0)

    def init(self, F, z):
        return (z if self.anchor == "initial" else F.anchor(),)

    def step(self, F, z, state, k):
        (a,) = state
        fz = F(z)
        b = self.beta / tf.cast(k + 2, z.dtype)
        return b * a + (1.0 - b) * fz, state, z, fz - z, fz

    def get_config(self):
        return {"anchor": self.anchor, "beta": self.beta}
