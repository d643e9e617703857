"""Certified robustness from Lipschitz bounds, and empirical Lipschitz lower bounds.

A classifier whose logits are `gamma`-Lipschitz in the 2-norm keeps its
prediction within radius `(top1 - top2) / (sqrt(2) gamma)` of an input: the
margin between two logits is `sqrt(2) gamma`-Lipschitz, since
`|(e_i - e_j)^T dy| <= sqrt(2) |dy|`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras_implicit import validation


def certified_radius(logits, lipschitz):
    """Per-sample certified 2-norm radius `(top1 - top2) / (sqrt(2) gamma)`.

    Example:

    >>> import numpy as np
    >>> certified_radius(np.array([[3.0, 1.0, 0.0]]), lipschitz=1.0).round(4).tolist()
    [1.4142]
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"`logits` must have shape (batch, classes >= 2). Received: logits.shape={logits.shape}")
    gamma = validation.number(lipschitz, "lipschitz")
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) / (np.sqrt(2.0) * gamma)


def certified_accuracy(model, x, y, eps, lipschitz, batch_size=256, require_converged=True):
    """Fraction of samples classified correctly with certified radius `> eps`.

    The bound holds for the exact equilibrium only: with `require_converged`
    (default) a sample counts as certified only if every equilibrium layer of
    `model` (a `ForwardFPI` family layer, or a functional/Sequential model
    holding them) converged on it, checked by solving each layer again on
    its input. Other callables cannot be inspected and are taken as they are.

    Args:
        model: callable returning logits.
        x, y: inputs and integer labels.
        eps: a radius or a list of radii (2-norm, in the input's units).
        lipschitz: a certified Lipschitz bound of `model` (e.g. the `gamma`
            of a `LipschitzDense` output layer).
        batch_size: samples per call.
        require_converged: count unconverged samples as uncertified.

    Returns:
        A float, or an array with one entry per `eps`.
    """
    eps_arr = np.atleast_1d(np.asarray(eps, np.float64))
    if not np.all(eps_arr >= 0):  # NaN too
        raise ValueError(f"`eps` must be >= 0. Received: eps={eps!r}")
    if len(x) == 0:
        raise ValueError(f"`x` must hold at least one sample. Received: x.shape={tuple(np.shape(x))}")
    logits = _predict(model, x, batch_size)
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != logits.shape[0]:
        raise ValueError(f"`x` and `y` must have the same length. Received: {logits.shape[0]} and {y.shape[0]}")
    radius = certified_radius(logits, lipschitz)
    correct = np.argmax(logits, axis=1) == y
    if require_converged:
        correct &= converged_samples(model, x, batch_size)
    acc = np.array([np.mean(correct & (radius > e)) for e in eps_arr])
    return float(acc[0]) if np.ndim(eps) == 0 else acc


def converged_samples(model, x, batch_size=256):
    """`[n]` bool: whether every equilibrium layer of `model` converged on each
    sample (all True for a model without any, or one that cannot be
    inspected: not a layer, nor a functional or Sequential model)."""
    from keras_implicit.layers.fpi import ForwardFPI

    n = len(x)
    if isinstance(model, ForwardFPI):
        layers, probe = [model], None
    elif isinstance(model, keras.Sequential) or (isinstance(model, keras.Model)
                                                  and getattr(model, "_is_graph_network", False)):
        layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                  if isinstance(layer, ForwardFPI)]
        try:
            probe = keras.Model(model.inputs, [layer.input for layer in layers]) if layers else None
        except Exception as error:  # e.g. a layer inside a nested model
            raise ValueError("certified_accuracy could not reach the inputs of the model's equilibrium layers "
                             "to check that they converged (pass require_converged=False to skip the check). "
                             f"Received: model={model.name!r} ({error})") from error
    else:
        return np.ones(n, bool)
    ok = np.ones(n, bool)
    for i in range(0, n, batch_size):
        xb = tf.convert_to_tensor(x[i:i + batch_size])
        inputs = [xb] if probe is None else probe(xb)
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for layer, inp in zip(layers, inputs):
            _, info = layer.solve(inp)
            ok[i:i + batch_size] &= info.converged.numpy()
    return ok


def _predict(model, x, batch_size):
    out = [np.asarray(model(tf.convert_to_tensor(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float64)


def empirical_lipschitz(model, x, steps=200, pairs=64, learning_rate=0.01, init_scale=0.1, seed=0,
                        verbose=False):
    """A lower bound on the Lipschitz constant of `model` by gradient ascent.

    Starts from `pairs` pairs `(x_i, x_i + delta_i)` (inputs drawn from
    `x`, `delta_i ~ N(0, init_scale^2)`), then maximizes
    `log |f(a) - f(b)| - log |a - b|` over both points of every pair with
    Adam for `steps` steps. Every evaluated ratio is a valid lower bound;
    the largest one seen is returned.

    Args:
        model: a callable (Keras model or layer) on batches like `x`.
        x: example inputs, `[N, ...]`.
        steps, pairs, learning_rate, init_scale, seed: the search.
        verbose: print the best ratio every 50 steps.

    Returns:
        float, `max |f(a) - f(b)| / |a - b|` over the search.
    """
    for name, value in (("steps", steps), ("pairs", pairs)):
        validation.integer(value, name)
    validation.number(learning_rate, "learning_rate")
    validation.number(init_scale, "init_scale")
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError("`x` must be a non-empty batch of inputs, `[N, ...]` with N >= 1. "
                         f"Received: x with shape {x.shape}")
    # the inputs' float dtype (a float64 check needs float64 inputs)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=pairs)
    a0 = x[idx].astype(dtype)
    b0 = a0 + init_scale * rng.standard_normal(a0.shape).astype(dtype)
    a = tf.Variable(a0)
    b = tf.Variable(b0)
    opt = keras.optimizers.Adam(learning_rate)
    axes = list(range(1, a0.ndim))

    def ratios():
        # both points of every pair in one batch: one solve per step, not two
        fab = tf.cast(tf.reshape(model(tf.concat([a, b], 0)), [2 * pairs, -1]), a.dtype)
        num = tf.norm(fab[:pairs] - fab[pairs:], axis=1)
        den = tf.sqrt(tf.reduce_sum(tf.square(a - b), axis=axes))
        return num / den

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            r = ratios()
            loss = -tf.reduce_sum(tf.math.log(r + 1e-12))
        grads = tape.gradient(loss, [a, b])
        # A pair whose points meet has no defined ratio: it stops moving.
        grads = [tf.where(tf.math.is_finite(g), g, tf.zeros_like(g)) for g in grads]
        opt.apply_gradients(zip(grads, [a, b]))
        return tf.reduce_max(tf.where(tf.math.is_finite(r), r, tf.zeros_like(r)))

    best = 0.0
    for k in range(steps):
        best = max(best, float(step()))
        if verbose and (k + 1) % 50 == 0:
            print(f"empirical_lipschitz: step {k + 1}/{steps}, best ratio {best:.4g}")
    final = ratios().numpy()
    return max(best, float(np.max(final[np.isfinite(final)], initial=0.0)))


__all__ = ["certified_accuracy", "certified_radius", "empirical_lipschitz"]
