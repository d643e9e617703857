"""Limited-memory ("good") Broyden's method with fixed-shape history."""

import tensorflow as tf

from keras_implicit.solvers.anderson import check_memory
from keras_implicit.solvers.base import Solver, row_sum


class Broyden(Solver):
    """Quasi-Newton root finding on `g(z) = f(z) - z` with a low-rank inverse Jacobian.

    The inverse Jacobian estimate is `H = -I + sum_i u_i v_i^T`, starting at
    `-I` (so the first step is plain iteration). Each step is
    `z_next = z - H g(z)`; after it, with `dz = z_next - z` and
    `dg = g(z_next) - g(z)`, Broyden's "good" update of the inverse,

        H <- H + (dz - H dg) (dz^T H) / (dz^T H dg),

    is stored as one more pair `u = (dz - H dg) / (dz^T H dg)`, `v = H^T dz`.
    The history holds `memory` pairs in fixed-shape buffers (for XLA); when it
    is full the method restarts from `H = -I`. Updates with a vanishing
    or non-finite denominator are skipped, and a non-finite step, or one
    longer than `1e4 ||g(z)||` (a near-breakdown update at the rounding
    floor), falls back to plain iteration for that sample.

    Args:
        memory: int >= 1, number of rank-one updates kept, default 10.

    Reference: Broyden, "A class of methods for solving nonlinear
    simultaneous equations", Math. Comp. 1965; Bai, Kolter & Koltun, "Deep
    equilibrium models", NeurIPS 2019.
    """

    name = "broyden"
    # Longest accepted quasi-Newton step, relative to the residual norm.
    max_step_ratio = 1e4

    def __init__(self, memory=10):
        self.memory = check_memory(memory)

    def init(self, F, z):
        batch, n = tf.shape(z)[0], tf.shape(z)[1]
        hist = tf.zeros(tf.stack([batch, self.memory, n]), z.dtype)
        zeros = tf.zeros_like(z)
        # `count` valid pairs; a restart only resets it (no buffer clearing).
        return (hist, hist, tf.constant(0, tf.int32), zeros, zeros, zeros)

    # The products with the `[batch, memory, n]` history are written as
    # broadcast multiplies and sums rather than batched matrix-vector
    # products: XLA on CPU fuses the former and runs the latter as one small
    # matrix call per sample (measured 1.2x faster per iteration here); the
    # sums over `n` go through `row_sum` (a GEMV, see there).
    @staticmethod
    def _apply(us, vs, mask, x):
        """H x with H = -I + sum_{i < count} u_i v_i^T."""
        coef = row_sum(vs * x[:, None, :])[..., 0] * mask
        return -x + tf.reduce_sum(us * coef[:, :, None], axis=1)

    @staticmethod
    def _apply_t(us, vs, mask, x):
        """H^T x."""
        coef = row_sum(us * x[:, None, :])[..., 0] * mask
        return -x + tf.reduce_sum(vs * coef[:, :, None], axis=1)

    def step(self, F, z, state, k):
        # hg_prev = H g_prev with the current H (the one the previous step used).
        us, vs, count, z_prev, g_prev, hg_prev = state
        dtype = z.dtype
        mask = tf.cast(tf.range(self.memory) < count, dtype)[None, :]
        fz = F(z)
        g = fz - z
        hg = self._apply(us, vs, mask, g)
        # Rank-one update from the previous step (none at k = 0):
        # H dg = H g - H g_prev costs no further products.
        dz = z - z_prev
        h_dg = hg - hg_prev
        denom = row_sum(dz * h_dg)
        eps = tf.constant(1e-12 if dtype == tf.float64 else 1e-7, dtype)
        # |dz . H dg| > eps ||dz|| ||H dg||, in squares.
        scale_sq = row_sum(dz * dz) * row_sum(h_dg * h_dg)
        use = (k > 0) & (tf.square(denom) > tf.square(eps) * scale_sq) & tf.math.is_finite(denom)
        safe = tf.where(use, denom, tf.ones_like(denom))
        u = tf.where(use, (dz - h_dg) / safe, tf.zeros_like(dz))
        v = tf.where(use, self._apply_t(us, vs, mask, dz), tf.zeros_like(dz))
        # When the memory is full, restart from H = -I (drop every pair)
        # rather than drop the oldest one: dropping a pair breaks the secant
        # conditions of the later ones and stalls the method near convergence.
        # A sample that skips its update stores a zero pair (a no-op).
        restart = count >= self.memory
        slot = tf.where(restart, 0, count)
        sel = tf.reshape(tf.equal(tf.range(self.memory), slot), [1, self.memory, 1])
        us = tf.where(sel, u[:, None, :], us)
        vs = tf.where(sel, v[:, None, :], vs)
        count = tf.where(k > 0, slot + 1, 0)
        # H_new g = H_old g + u (v . g), or -g + u (v . g) after a restart.
        vg = row_sum(v * g)
        hg = tf.where(restart, -g, hg) + u * vg
        # Safeguard: a step that is not finite or absurdly long compared with
        # the residual (a near-breakdown update at the rounding floor) is
        # replaced by the plain iteration step.
        step_sq = row_sum(hg * hg)
        ok = tf.math.is_finite(step_sq) & (
            step_sq <= self.max_step_ratio**2 * row_sum(g * g) + tf.square(eps)
        )
        z_next = tf.where(ok, z - hg, fz)
        return z_next, (us, vs, count, z, g, hg), z, g, fz

    def get_config(self):
        return {"memory": self.memory}
