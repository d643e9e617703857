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
    The history is a ring buffer of `memory` pairs: the oldest pair is
    overwritten, which keeps shapes fixed for XLA. Updates with a vanishing
    or non-finite denominator are skipped, and a non-finite step falls back
    to plain iteration for that sample.

    Args:
        memory: int >= 1, number of rank-one updates kept, default 10.

    Reference: Broyden, "A class of methods for solving nonlinear
    simultaneous equations", Math. Comp. 1965; Bai, Kolter & Koltun, "Deep
    equilibrium models", NeurIPS 2019.
    """

    name = "broyden"

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
        us = tf.where(write, u[:, None, :], us)
        vs = tf.where(write, v[:, None, :], vs)
        step = -self._apply(us, vs, g)
        z_next = z + step
        ok = tf.reduce_all(tf.math.is_finite(z_next), axis=1, keepdims=True)
        z_next = tf.where(ok, z_next, fz)
        return z_next, (us, vs, z, g), z, g, fz

    def get_config(self):
        return {"memory": self.memory}
