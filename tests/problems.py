"""A shared catalogue of fixed-point problems with known solutions (float64)."""

import numpy as np
import tensorflow as tf

DOTTIE = 0.7390851332151607  # the fixed point of cos


def _orthogonal(n, rng):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q


def linear(batch=4, n=5, scale=0.8, seed=0):
    """z = z A + b with ||A||_2 = scale: z* = b (I - A)^{-1}."""
    rng = np.random.default_rng(seed)
    a = scale * _orthogonal(n, rng)
    b = rng.standard_normal((batch, n))
    exact = b @ np.linalg.inv(np.eye(n) - a)
    a_t = tf.constant(a)

    def f(z, b):
        return tf.matmul(z, a_t) + b

    return f, tf.zeros([batch, n], tf.float64), (tf.constant(b),), exact


def cosine(batch=3, n=2):
    """z = cos(z), elementwise: z* = 0.739085..."""
    return (lambda z: tf.cos(z)), tf.zeros([batch, n], tf.float64), (), np.full((batch, n), DOTTIE)


def network(batch=4, n=6, d=3, scale=0.6, seed=1):
    """z = tanh(z W + x U + c) with ||W||_2 = scale; reference by 400 numpy iterations."""
    rng = np.random.default_rng(seed)
    w = scale * _orthogonal(n, rng)
    u = rng.standard_normal((d, n))
    c = rng.standard_normal(n) * 0.1
    x = rng.standard_normal((batch, d))
    z = np.zeros((batch, n))
    for _ in range(400):  # contraction 0.6^400: exact in float64
        z = np.tanh(z @ w + x @ u + c)
    tw, tu, tc = tf.constant(w), tf.constant(u), tf.constant(c)

    def f(z, x):
        return tf.tanh(tf.matmul(z, tw) + tf.matmul(x, tu) + tc)

    return f, tf.zeros([batch, n], tf.float64), (tf.constant(x),), z


def nested(batch=3, seed=2):
    """(p, q) with p of shape [2, 3], q of shape [6]:
    p = 0.5 reshape(q) + a,  q = 0.25 flatten(p) + b  (closed form)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, 2, 3))
    b = rng.standard_normal((batch, 6))
    p = (a.reshape(batch, 6) + 0.5 * b) / (1 - 0.125)
    q = 0.25 * p + b

    def f(state, a, b):
        p, q = state
        return (0.5 * tf.reshape(q, [-1, 2, 3]) + a, 0.25 * tf.reshape(p, [-1, 6]) + b)

    z0 = (tf.zeros([batch, 2, 3], tf.float64), tf.zeros([batch, 6], tf.float64))
    return f, z0, (tf.constant(a), tf.constant(b)), (p.reshape(batch, 2, 3), q)


CATALOGUE = {"linear": linear, "cos": cosine, "network": network, "nested": nested}
