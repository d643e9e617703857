"""Limited-memory ("good") Broyden's method with fixed-shape history."""

import tensorflow as tf

from keras_implicit.solvers.anderson import check_memory
from keras_implicit.solvers.base import Solver


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
        return (hist, hist, zeros, zeros, zeros)

    @staticmethod
    def _apply(us, vs, x):
        """H x with H = -I + sum u_i v_i^T."""
        return -x + tf.linalg.matvec(us, tf.linalg.matvec(vs, x), transpose_a=True)

    @staticmethod
    def _apply_t(us, vs, x):
        """H^T x."""
        return -x + tf.linalg.matvec(vs, tf.linalg.matvec(us, x), transpose_a=True)

    def step(self, F, z, state, k):
        # hg_prev = H g_prev with the current H (the one the previous step used).
        us, vs, z_prev, g_prev, hg_prev = state
        dtype = z.dtype
        fz = F(z)
        g = fz - z
        hg = self._apply(us, vs, g)
        # Rank-one update from the previous step (none at k = 0):
        # H dg = H g - H g_prev costs no further products.
        dz = z - z_prev
        h_dg = hg - hg_prev
        denom = tf.reduce_sum(dz * h_dg, axis=1, keepdims=True)
        eps = tf.constant(1e-12 if dtype == tf.float64 else 1e-7, dtype)
        scale = tf.norm(dz, axis=1, keepdims=True) * tf.norm(h_dg, axis=1, keepdims=True)
        use = (k > 0) & (tf.abs(denom) > eps * scale) & tf.math.is_finite(denom)
        safe = tf.where(use, denom, tf.ones_like(denom))
        u = tf.where(use, (dz - h_dg) / safe, tf.zeros_like(dz))
        v = tf.where(use, self._apply_t(us, vs, dz), tf.zeros_like(dz))
        # Write into slot (k - 1) mod memory for samples whose update is usable.
        # When the memory is full, restart from H = -I (clear every pair)
        # rather than drop the oldest one: dropping a pair breaks the secant
        # conditions of the later ones and stalls the method near convergence.
        slot = tf.math.floormod(tf.maximum(k - 1, 0), self.memory)
        sel = tf.reshape(tf.equal(tf.range(self.memory), slot), [1, self.memory, 1])
        use3 = use[:, :, None]
        restart = (slot == 0) & (k > 1) & use3
        us = tf.where(sel & use3, u[:, None, :], tf.where(restart, tf.zeros_like(us), us))
        vs = tf.where(sel & use3, v[:, None, :], tf.where(restart, tf.zeros_like(vs), vs))
        # H_new g = H_old g + u (v . g), or -g + u (v . g) after a restart.
        vg = tf.reduce_sum(v * g, axis=1, keepdims=True)
        hg = tf.where(restart[:, 0, :], -g, hg) + u * vg
        step = -hg
        # Safeguard: a step that is not finite or absurdly long compared with
        # the residual (a near-breakdown update at the rounding floor) is
        # replaced by the plain iteration step.
        step_norm = tf.norm(step, axis=1, keepdims=True)
        g_norm = tf.norm(g, axis=1, keepdims=True)
        ok = tf.math.is_finite(step_norm) & (step_norm <= self.max_step_ratio * g_norm + eps)
        z_next = tf.where(ok, z + step, fz)
        return z_next, (us, vs, z, g, hg), z, g, fz

    def get_config(self):
        return {"memory": self.memory}
