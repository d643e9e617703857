"""Training dynamics of equilibrium models: conserved quantities, gradient descent and
gradient flow (Dandapanthula & Ramdas, "Gradient flow for deep equilibrium
single-index models", arXiv 2511.16976).

The linear DEQ `z = z A + x U + c`, output `z V` (row vectors), computes
`x U (I - A)^{-1} V`. Write `M = I - A` and `G` for the loss's gradient with
respect to the end-to-end map `P = U M^{-1} V`. Gradient flow moves
`dU/dt = -G V^T M^{-T}` and `dM/dt = -dA/dt = M^{-T} U^T G V^T M^{-T}`, so

    d/dt (U^T U + M^T M) = -M^{-1} V G^T U - U^T G V^T M^{-T}
                           + M^{-1} V G^T U + U^T G V^T M^{-T} = 0:

the matrix `Q = U^T U + c^T c + (I - A)^T (I - A)` is conserved whatever the
loss, the data and the readout `V` (the bias `c` is a row of `U` for a
constant input 1). For one unit and no readout, `Q = ||w||^2 + (1 - b)^2`:
the parameters `(w, b)` stay on a sphere around the singular point
`(0, 1)` where `I - A` is not invertible, which keeps the fixed-point
equation well-conditioned for all time. The same holds for a single-index
model whose link is applied to the linear equilibrium, `sigma(x w / (1 - b))`
(its output depends on `(w, b)` only through `w / (1 - b)`); it does not hold
for `y = sigma(<w, x> + b y)` with a nonlinear `sigma` (see
`SingleIndexDEQ`).

Gradient descent with step `eta` leaves the sphere: since the gradient is
orthogonal to `(w, b) - (0, 1)` (that is the conservation law),

    Q_{k+1} - Q_k = eta^2 ||grad R(theta_k)||^2 >= 0

exactly for the model with parameters `(w, b)`: the distance to the singular
point never decreases and grows by `O(eta^2)` per step.

The drivers move a list of variables under a loss `loss_fn() -> scalar`
that reads them; `model_loss` makes both from a Keras model and data.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import validation


def conserved_quantity(recurrent_kernel, kernel, bias=None):
    """`Q = U^T U + c^T c + (I - A)^T (I - A)`, `[units, units]`, for the
    linear DEQ `z = z A + x U + c` (row vectors; a `LinearCell`'s
    `recurrent_kernel`, `kernel` and `bias`). For one unit:
    `||w||^2 + c^2 + (1 - b)^2` as a `[1, 1]` tensor.

    >>> import numpy as np
    >>> round(float(conserved_quantity(np.array([[0.068]]), np.array([[0.024]]))[0, 0]), 12)  # 0.024^2 + 0.932^2
    0.8692
    """
    a = tf.convert_to_tensor(recurrent_kernel)
    u = tf.cast(tf.convert_to_tensor(kernel), a.dtype)
    if a.shape.rank == 0:
        a = tf.reshape(a, [1, 1])
    m = tf.eye(tf.shape(a)[0], dtype=a.dtype) - a
    q = tf.matmul(u, u, transpose_a=True) + tf.matmul(m, m, transpose_a=True)
    if bias is not None:
        c = tf.reshape(tf.cast(bias, a.dtype), [1, -1])
        q = q + tf.matmul(c, c, transpose_a=True)
    return q


def layer_quantity(layer):
    """`conserved_quantity` of a `LinearDEQ` (or `LinearCell`) at its current weights."""
    cell = getattr(layer, "cell", layer)
    return conserved_quantity(cell.recurrent_kernel, cell.kernel, getattr(cell, "bias", None))


def model_loss(model, loss, x, y):
    """`(loss_fn, variables)` for `gradient_descent`/`gradient_flow`: the mean of
    `loss(y, model(x))` at the model's current weights, and its trainable
    variables (which those functions move)."""
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    return (lambda: tf.reduce_mean(loss(y, model(x)))), list(model.trainable_variables)


def _check_variables(variables):
    variables = list(variables)
    if not variables or not all(isinstance(v, (tf.Variable, keras.Variable)) for v in variables):
        raise ValueError("`variables` must be a non-empty list of variables (e.g. model.trainable_variables). "
                         f"Received: variables={variables!r}")
    return variables


def _evaluate(loss_fn, variables, record):
    with tf.GradientTape() as tape:
        value = loss_fn()
    grads = tape.gradient(value, variables)
    if any(g is None for g in grads):
        raise ValueError("The loss does not depend on every variable (a gradient is None). Received: "
                         f"variables {[v.name for v, g in zip(variables, grads) if g is None]} without gradient")
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, value.dtype))) for g in grads]))
    extra = {} if record is None else {k: tf.convert_to_tensor(v) for k, v in record(variables).items()}
    return value, norm, grads, extra


def _append(history, value, norm, params, extra):
    """One recorded point: the loss, the gradient's norm, the parameters'
    values (variables or arrays) and the recorded extras."""
    history["loss"].append(value.numpy())
    history["gradient_norm"].append(norm.numpy())
    for k, v in enumerate(params):
        history["params"][k].append(np.array(v))
    for key, v in extra.items():
        history.setdefault(key, []).append(v.numpy())


def gradient_descent(loss_fn, variables, learning_rate, steps, record=None):
    """Plain gradient descent `theta <- theta - eta grad loss(theta)` on `variables`, recorded.

    Args:
        loss_fn: `loss_fn() -> scalar`, reading `variables` (`model_loss`
            makes one from a model and data).
        variables: list of variables, moved in place.
        learning_rate: `eta > 0`.
        steps: int >= 0.
        record: optional `record(variables) -> dict` of tensors to keep at
            every step (e.g. `lambda v: {"Q": conserved_quantity(v[1], v[0])}`).

    Returns:
        dict of numpy arrays with a leading axis of `steps + 1` (the start and
        every step): `"loss"`, `"gradient_norm"` (`||grad||` at that point),
        `"params"` (a list, one array per variable) and each recorded key.

    Example: the authors' scalar run (Dandapanthula & Ramdas), on `LinearDEQ(1)`.

    >>> import numpy as np, keras, keras_implicit as ki
    >>> x = np.random.default_rng(0).uniform(0, 1, (1000, 1))
    >>> model = keras.Sequential([keras.Input((1,), dtype="float64"),
    ...                           ki.layers.LinearDEQ(1, use_bias=False, dtype="float64")])
    >>> _ = model.layers[0].cell.kernel.assign([[0.024]]), model.layers[0].cell.recurrent_kernel.assign([[0.068]])
    >>> loss_fn, variables = model_loss(model, keras.losses.mean_squared_error, x, 2 * x)
    >>> h = gradient_descent(loss_fn, variables, 0.01, 200)
    >>> [round(float(p[-1][0, 0]), 3) for p in h["params"]], bool(h["loss"][-1] < 1e-20)
    ([0.84, 0.58], True)
    """
    eta = validation.number(learning_rate, "learning_rate")
    steps = validation.integer(steps, "steps", minimum=0)
    variables = _check_variables(variables)

    @tf.function(autograph=False)
    def step():
        value, norm, grads, extra = _evaluate(loss_fn, variables, record)
        for v, g in zip(variables, grads):
            v.assign_sub(tf.constant(eta, g.dtype) * g)
        return value, norm, extra

    history = {"loss": [], "gradient_norm": [], "params": [[] for _ in variables]}
    snapshot = [np.array(v.numpy()) for v in variables]
    for k in range(steps + 1):
        if k < steps:
            value, norm, extra = step()
        else:
            value, norm, _, extra = tf.function(lambda: _evaluate(loss_fn, variables, record), autograph=False)()
        _append(history, value, norm, snapshot, extra)  # the point the step started from
        snapshot = [np.array(v.numpy()) for v in variables]
        if not np.isfinite(history["loss"][-1]):
            raise FloatingPointError(f"gradient descent diverged at step {k}: loss {history['loss'][-1]}. "
                                     f"Received: learning_rate={eta}")
    return _stack(history)


def gradient_flow(loss_fn, variables, times, rtol=1e-10, atol=1e-12, record=None):
    """Gradient flow `d theta / dt = -grad loss(theta)` from the variables'
    current values, integrated by Dormand-Prince (`tfp.math.ode.DormandPrince`,
    adaptive steps to `rtol`, `atol`) and reported at `times` (increasing,
    from 0). The variables end at the last time's values.

    Returns the same dict as `gradient_descent`, with a leading axis over
    `times` (and `"times"`).
    """
    import tensorflow_probability as tfp  # deferred: tfp takes seconds to import

    variables = _check_variables(variables)
    dtype = tf.as_dtype(variables[0].dtype)
    times = np.asarray(times, dtype=dtype.as_numpy_dtype)
    if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) < 0) or times[0] < 0:
        raise ValueError(f"`times` must be increasing and >= 0. Received: times={times!r}")
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]

    def assign(y):
        for v, part, s in zip(variables, tf.split(y, sizes), shapes):
            v.assign(tf.reshape(tf.cast(part, v.dtype), s))

    def velocity(t, y):
        assign(y)
        with tf.GradientTape() as tape:
            value = loss_fn()
        return -tf.concat([tf.reshape(tf.cast(g, dtype), [-1]) for g in tape.gradient(value, variables)], 0)

    y0 = tf.concat([tf.reshape(tf.cast(v, dtype), [-1]) for v in variables], 0)
    solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol)
    states = tf.function(lambda y0: solver.solve(velocity, 0.0, y0, solution_times=times).states,
                         autograph=False)(y0)
    history = {"times": list(times), "loss": [], "gradient_norm": [], "params": [[] for _ in variables]}
    for y in tf.unstack(states):
        assign(y)
        value, norm, _, extra = _evaluate(loss_fn, variables, record)
        _append(history, value, norm, variables, extra)
    return _stack(history)


def _stack(history):
    out = {k: np.asarray(v) for k, v in history.items() if k != "params"}
    out["params"] = [np.asarray(p) for p in history["params"]]
    return out


def linear_rate(risk, skip=0):
    """The per-step contraction factor of a linearly converging `risk`
    sequence: `exp(slope)` of a least-squares line through `log(risk)` (after
    `skip` steps, over the finite positive values)."""
    risk = np.asarray(risk, dtype="float64")[skip:]
    keep = np.isfinite(risk) & (risk > 0)
    steps = np.arange(len(risk))[keep]
    slope = np.polyfit(steps, np.log(risk[keep]), 1)[0]
    return float(np.exp(slope))


__all__ = ["conserved_quantity", "model_loss", "gradient_descent", "gradient_flow", "layer_quantity",
           "linear_rate"]
