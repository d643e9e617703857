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
        return (hist, hist, tf.zeros_like(z), tf.zeros_like(z))

    @staticmethod
    def _apply(us, vs, x):
        """H x with H = -I + sum u_i v_i^T."""
        return -x + tf.einsum("bmn,bm->bn", us, tf.einsum("bmn,bn->bm", vs, x))

    @staticmethod
    def _apply_t(us, vs, x):
        """H^T x."""
        return -x + tf.einsum("bmn,bm->bn", vs, tf.einsum("bmn,bn->bm", us, x))

    def step(self, F, z, state, k):
        us, vs, z_prev, g_prev = state
        dtype = z.dtype
        fz = F(z)
        g = fz - z
        # Rank-one update from the previous step (none at k = 0).
        dz = z - z_prev
        dg = g - g_prev
        h_dg = self._apply(us, vs, dg)
        denom = tf.reduce_sum(dz * h_dg, axis=1, keepdims=True)
        eps = tf.constant(1e-12 if dtype == tf.float64 else 1e-7, dtype)
        scale = tf.sqrt(tf.reduce_sum(dz * dz, axis=1, keepdims=True)) * tf.sqrt(
            tf.reduce_sum(h_dg * h_dg, axis=1, keepdims=True)
        )
        use = (k > 0) & (tf.abs(denom) > eps * scale) & tf.math.is_finite(denom)
        safe = tf.where(use, denom, tf.ones_like(denom))
        u = tf.where(use, (dz - h_dg) / safe, tf.zeros_like(dz))
        v = tf.where(use, self._apply_t(us, vs, dz), tf.zeros_like(dz))
        # Write into the ring buffer only for samples whose update is usable;
        # the others keep the pair stored in that slot.
        slot = tf.math.floormod(tf.maximum(k - 1, 0), self.memory)
        sel = tf.cast(tf.one_hot(slot, self.memory, dtype=dtype), tf.bool)
        write = sel[None, :, None] & use[:, :, None]
        # When the memory is full, restart from H = -I (clear every pair)
        # rather than drop the oldest one: dropping a pair breaks the secant
        # conditions of the later ones and stalls the method near convergence.
        restart = (slot == 0) & (k > 1) & use[:, :, None]
        us = tf.where(restart, tf.zeros_like(us), us)
        vs = tf.where(restart, tf.zeros_like(vs), vs)
        us = tf.where(write, u[:, None, :], us)
        vs = tf.where(write, v[:, None, :], vs)
        step = -self._apply(us, vs, g)
        # Safeguard: a step that is not finite or absurdly long compared with
        # the residual (a near-breakdown update at the rounding floor) is
        # replaced by the plain iteration step.
        step_norm = tf.sqrt(tf.reduce_sum(step * step, axis=1, keepdims=True))
        g_norm = tf.sqrt(tf.reduce_sum(g * g, axis=1, keepdims=True))
        ok = tf.math.is_finite(step_norm) & (step_norm <= self.max_step_ratio * g_norm + eps)
        z_next = tf.where(ok, z + step, fz)
        return z_next, (us, vs, z, g), z, g, fz

    def get_config(self):
        return {"memory": self.memory}
