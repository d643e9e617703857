"""Joint inference and input optimization (JIIO; Gurumurthy, Bai, Manchester &
Kolter, NeurIPS 2021).

The problem, for each sample independently:

    min_x  l(x, z)   subject to   z = f(z, x)

(latent optimization of a DEQ decoder, inverse problems, adversarial
perturbations). With the Lagrangian `L = l(x, z) + mu^T (f(z, x) - z)` its
KKT conditions are

    z  = f(z, x)                                  (the equilibrium)
    mu = d_z l + (d_z f)^T mu                     (the adjoint equation)
    0  = d_x l + (d_x f)^T mu                     (stationarity in x)

and, for `x` constrained to a convex set `C` with projection `P`, the last
one becomes `x = P(x - a g)`, `g = d_x l + (d_x f)^T mu`. Instead of an
outer gradient loop that solves the DEQ and its adjoint at every step
(`nested_input_optimization`), JIIO iterates one map on the stacked state
`(z, x, mu)`,

    z  <- z  + alpha_z  (f(z, x) - z)
    mu <- mu + alpha_mu (d_z l + (d_z f)^T mu - mu)
    x  <- P(x - alpha_x g)        (or g / ||g|| with `normalize_step=True`)

one evaluation of `f` and one vector-Jacobian product per iteration, whose
fixed points are exactly the KKT points, and accelerates it with Anderson (or
any solver of `keras_implicit.solvers`) on the stacked state. The authors'
schedule lowers `alpha_x` after a number of iterations (`switch`); here the
solve then restarts from where it is, with the new step (Anderson's history
restarts too).
"""

import time

import tensorflow as tf

from keras_implicit import info as info_lib
from keras_implicit import solvers as solvers_lib
from keras_implicit import validation
from keras_implicit.fixed_point import check_on_failure, fixed_point, report_failure
from keras_implicit.solvers.base import check_tol_and_max_iter


def _flat_norm(tensors):
    """Per-sample 2-norm over every tensor of a nested structure, shape `[batch]`."""
    parts = [tf.reduce_sum(tf.reshape(tf.square(t), [tf.shape(t)[0], -1]), axis=1) for t in tf.nest.flatten(tensors)]
    return tf.sqrt(tf.add_n(parts))


def _per_sample_scale(tensors, scale):
    """Each sample's tensors times `scale[i]`."""
    return tf.nest.map_structure(lambda t: t * tf.reshape(scale, [-1] + [1] * (t.shape.rank - 1)), tensors)


def l2_ball(radius, center=None):
    """The projection onto `{x : ||x - center||_2 <= radius}` per sample (all
    axes but the batch axis), for adversarial perturbations.

    >>> import tensorflow as tf
    >>> project = l2_ball(1.0)
    >>> project(tf.constant([[3.0, 4.0], [0.3, 0.4]], tf.float64)).numpy().round(3).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
    """
    radius = validation.number(radius, "radius")

    def project(x):
        c = tf.zeros_like(x) if center is None else tf.cast(center, x.dtype)
        d = x - c
        norm = _flat_norm(d)
        shrink = tf.minimum(tf.ones_like(norm), radius / tf.maximum(norm, tf.constant(1e-30, norm.dtype)))
        return c + _per_sample_scale(d, shrink)

    return project


class _Terms:
    """`f(z, x)`, the loss and the Lagrangian's gradients at `(z, x, mu)`, with
    the shape checks of the user's callables."""

    def __init__(self, f, loss, projection):
        self.f, self.loss = f, loss
        self.projection = projection if projection is not None else (lambda x: x)

    def __call__(self, z, x, mu):
        flat_z, flat_x = tf.nest.flatten(z), tf.nest.flatten(x)
        with tf.GradientTape() as tape:
            tape.watch(flat_z + flat_x)
            fz = self.f(z, x)
            value = self.loss(x, z)
        value = tf.convert_to_tensor(value)
        batch = flat_z[0].shape[0]
        if value.shape.rank != 1 or (batch is not None and value.shape[0] not in (None, batch)):
            raise ValueError("`loss(x, z)` must return one value per sample, shape [batch]. Received: a loss of "
                             f"shape {tuple(value.shape)} for a batch of {batch}")
        tf.nest.assert_same_structure(fz, z)
        grads = tape.gradient([value] + tf.nest.flatten(fz), flat_z + flat_x,
                              output_gradients=[tf.ones_like(value)] + tf.nest.flatten(mu),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        gz = tf.nest.pack_sequence_as(z, grads[:len(flat_z)])
        gx = tf.nest.pack_sequence_as(x, grads[len(flat_z):])
        return fz, value, gz, gx

    def project(self, x):
        out = self.projection(x)
        shapes = [t.shape for t in tf.nest.flatten(out)]
        if shapes != [t.shape for t in tf.nest.flatten(x)]:
            raise ValueError("`projection` must return x's shape. Received: "
                             f"shapes {[tuple(s) for s in shapes]} for x of shapes "
                             f"{[tuple(t.shape) for t in tf.nest.flatten(x)]}")
        return out

    def kkt(self, z, x, mu, alpha_x):
        """The three KKT residuals per sample, `[batch, 3]`: `||f(z, x) - z||`,
        the gradient mapping `||x - P(x - alpha_x g)|| / alpha_x` (`||g||`
        without a projection) and `||d_z l + (d_z f)^T mu - mu||`."""
        fz, _, gz, gx = self(z, x, mu)
        sub = lambda a, b: tf.nest.map_structure(tf.subtract, a, b)  # noqa: E731
        step = self.project(tf.nest.map_structure(lambda t, g: t - alpha_x * g, x, gx))
        return tf.stack([_flat_norm(sub(fz, z)), _flat_norm(sub(x, step)) / alpha_x, _flat_norm(sub(gz, mu))],
                        axis=1)


def check_steps(alpha_z, alpha_mu, alpha_x, switch):
    """The validated step settings `(alpha_z, alpha_mu, alpha_x, switch)` of `solve`
    (`ValueError` naming the argument and the received value otherwise)."""
    alpha_z = validation.number(alpha_z, "alpha_z", high=1.0)
    alpha_mu = validation.number(alpha_mu, "alpha_mu", high=1.0)
    alpha_x = validation.number(alpha_x, "alpha_x")
    if switch is not None:
        ok = isinstance(switch, (tuple, list)) and len(switch) == 2
        if ok:
            try:
                validation.integer(switch[0], "switch")
                validation.number(switch[1], "switch")
            except ValueError:
                ok = False
        if not ok:
            raise ValueError("`switch` must be None or (iteration, alpha_x after it), a positive int and a "
                             f"positive number. Received: switch={switch!r}")
        switch = (int(switch[0]), float(switch[1]))
    return alpha_z, alpha_mu, alpha_x, switch


def solve(f, loss, z0, x0, mu0=None, alpha_z=0.8, alpha_mu=0.6, alpha_x=0.1, switch=None, projection=None,
          normalize_step=False, solver="anderson", tol=1e-6, max_iter=200, on_failure="warn", jit_loop=True):
    """JIIO: `min_x l(x, z)` subject to `z = f(z, x)`, per sample, as one fixed point.

    See the module docstring for the iteration. Its residual (the stacked
    map's `||F(v) - v||` per sample) is driven below `tol`; the three KKT
    residuals at the returned point are reported in `info.block_residuals`.

    Args:
        f: `f(z, x) -> z`, the equilibrium map (a cell, or any callable;
            `z` and `x` may be nested structures of `[batch, ...]` tensors).
        loss: `loss(x, z) -> [batch]`, one value per sample.
        z0, x0: starting points (`x0` also fixes x's shape and dtype).
        mu0: starting multiplier (default zeros, shaped as `z0`).
        alpha_z, alpha_mu: in (0, 1], the relaxation of the z and mu updates
            (the authors' 0.8 and 0.6).
        alpha_x: > 0, the step on x.
        switch: None, or `(iteration, alpha_x_after)`: after that many
            iterations the solve restarts from its iterate with the new step.
        projection: None, or `P(x) -> x` onto a convex set (e.g. `l2_ball`).
        normalize_step: step along `g / ||g||` per sample (the authors'
            adversarial setting; its fixed points are the boundary KKT points).
        solver: a solver of `keras_implicit.solvers` for the stacked map
            (default Anderson).
        tol, max_iter: stop when every sample's stacked residual is `<= tol`,
            or after `max_iter` iterations in all (both stages).
        on_failure: "warn" (default), "raise" or "ignore", as `fixed_point`.
        jit_loop: compile the loop with XLA in graph mode (as `fixed_point`).

    Returns:
        `(x, z, mu, info)`: each sample's best iterate (no gradient flows
        through them; `x` projected once more, so that it lies in the set
        although Anderson's iterates are affine combinations) and a `SolverInfo` whose `iterations` counts the
        evaluations of `f` (each with one vector-Jacobian product),
        `residual`, `converged`, `trace` and `status` those of the stacked
        map, and `block_residuals` the KKT residuals `[batch, 3]` (see
        `kkt_residuals`).

    Example: the `x` nearest to 1 whose equilibrium of `z = z / 2 + x` is 3.

    >>> import tensorflow as tf
    >>> f = lambda z, x: 0.5 * z + x
    >>> loss = lambda x, z: tf.reduce_sum((z - 3.0) ** 2 + 0.1 * (x - 1.0) ** 2, axis=1)
    >>> x, z, mu, info = solve(f, loss, tf.zeros([1, 1]), tf.zeros([1, 1]), tol=1e-8)
    >>> round(float(x[0, 0]), 4), round(float(z[0, 0]), 4)
    (1.4878, 2.9756)
    """
    alpha_z, alpha_mu, alpha_x, switch = check_steps(alpha_z, alpha_mu, alpha_x, switch)
    check_tol_and_max_iter(tol, max_iter, "abs")
    check_on_failure(on_failure)
    solver = solvers_lib.get(solver)
    terms = _Terms(f, loss, projection)
    z0 = tf.nest.map_structure(tf.convert_to_tensor, z0)
    x0 = tf.nest.map_structure(tf.convert_to_tensor, x0)
    mu0 = tf.nest.map_structure(tf.zeros_like, z0) if mu0 is None else tf.nest.map_structure(
        tf.convert_to_tensor, mu0)
    x0 = terms.project(x0)

    def joint_map(alpha):
        def step(state):
            z, x, mu = state
            fz, _, gz, gx = terms(z, x, mu)
            if normalize_step:
                gx = _normalized(gx)
            z_new = tf.nest.map_structure(lambda a, b: a + alpha_z * (b - a), z, fz)
            mu_new = tf.nest.map_structure(lambda a, b: a + alpha_mu * (b - a), mu, gz)
            x_new = terms.project(tf.nest.map_structure(lambda a, g: a - alpha * g, x, gx))
            return z_new, x_new, mu_new
        return step

    stages = [(alpha_x, max_iter)] if switch is None or switch[0] >= max_iter else [
        (alpha_x, switch[0]), (switch[1], max_iter - switch[0])]
    state, infos = (z0, x0, mu0), []
    for alpha, iterations in stages:
        state, info = solvers_lib.solve(joint_map(alpha), state, solver, tol=float(tol), max_iter=int(iterations),
                                        jit_loop=bool(jit_loop))
        infos.append(info)
    z, x, mu = tf.nest.map_structure(tf.stop_gradient, state)
    # Anderson's iterate is an affine (not convex) combination of projected points: it
    # may leave the set by a little, so the returned x is projected once more.
    x = terms.project(x)
    last = infos[-1]
    info = info_lib.SolverInfo(
        iterations=tf.add_n([i.iterations for i in infos]),
        residual=last.residual, converged=last.converged,
        trace=tf.concat([i.trace for i in infos], axis=0), status=last.status,
        block_residuals=terms.kkt(z, x, mu, stages[-1][0]))
    report_failure(info, on_failure, "JIIO solve")
    return x, z, mu, info


def _normalized(g):
    """`g / ||g||` per sample (0 where `g` is 0)."""
    norm = _flat_norm(g)
    return _per_sample_scale(g, 1.0 / tf.maximum(norm, tf.constant(1e-30, norm.dtype)))


def kkt_residuals(f, loss, z, x, mu, alpha_x=1.0, projection=None):
    """`[batch, 3]`: `||f(z, x) - z||`, `||x - P(x - alpha_x g)|| / alpha_x`
    (`||d_x l + (d_x f)^T mu||` without a projection) and
    `||d_z l + (d_z f)^T mu - mu||` per sample."""
    return _Terms(f, loss, projection).kkt(z, x, mu, validation.number(alpha_x, "alpha_x"))


def nested_input_optimization(f, loss, z0, x0, alpha_x=0.1, steps=100, projection=None, normalize_step=False,
                              x_tol=1e-6, solver="anderson", tol=1e-8, max_iter=100, stop_at=None):
    """The baseline JIIO replaces: projected gradient descent on `x`, each step
    a full DEQ solve and its implicit (adjoint) gradient.

    `x <- P(x - alpha_x d/dx l(x, z*(x)))` until every sample's gradient
    mapping is below `x_tol`, the batch's mean objective is at most
    `stop_at` (when given), or `steps` steps; each solve starts from the
    previous step's equilibrium.

    Returns:
        `(x, z, stats)`: `stats` a dict with `steps` (gradient steps taken),
        `cell_evaluations` (forward and adjoint iterations, summed),
        `gradient_mapping` (per sample, at the returned `x`), and per
        evaluated point (`steps + 1` of them): `objective` (the batch's mean
        `l(x, z*(x))`), `evaluations` (cumulative cell evaluations) and
        `seconds` (wall time of that point's solve and gradient; the first
        one includes tracing the compiled step).
    """
    alpha_x = validation.number(alpha_x, "alpha_x")
    steps = validation.integer(steps, "steps", minimum=0)
    if stop_at is not None:
        stop_at = validation.number(stop_at, "stop_at", low=-float("inf"), high=float("inf"), high_open=True)
    terms = _Terms(f, loss, projection)
    z = tf.nest.map_structure(tf.convert_to_tensor, z0)
    x = terms.project(tf.nest.map_structure(tf.convert_to_tensor, x0))

    def gradient(x, z):
        """The DEQ solved from `z`, the loss's gradient in x through it, the gradient
        mapping, and the forward and adjoint iterations."""
        adjoint = []
        flat_x = tf.nest.flatten(x)
        with tf.GradientTape() as tape:
            tape.watch(flat_x)
            z, info = fixed_point(f, z, x, solver=solver, tol=tol, max_iter=max_iter, on_failure="ignore",
                                  backward_callback=adjoint.append, check_captures=False)
            values = loss(x, z)
            value = tf.reduce_sum(values)
        g = tf.nest.pack_sequence_as(x, tape.gradient(value, flat_x,
                                                      unconnected_gradients=tf.UnconnectedGradients.ZERO))
        plain = terms.project(tf.nest.map_structure(lambda a, s: a - alpha_x * s, x, g))
        mapping = _flat_norm(tf.nest.map_structure(tf.subtract, x, plain)) / alpha_x
        return (tf.nest.map_structure(tf.stop_gradient, z), g, mapping, info.iterations + adjoint[0].iterations,
                tf.reduce_mean(values))

    gradient = tf.function(gradient, autograph=False)  # one trace; each step runs compiled
    evaluations, taken = 0, 0
    history = {"objective": [], "evaluations": [], "seconds": []}
    while True:
        start = time.perf_counter()
        z, g, mapping, iterations, objective = gradient(x, z)
        evaluations += int(iterations)
        history["seconds"].append(time.perf_counter() - start)
        history["objective"].append(float(objective))
        history["evaluations"].append(evaluations)
        if (taken == steps or float(tf.reduce_max(mapping)) <= x_tol
                or (stop_at is not None and history["objective"][-1] <= stop_at)):
            break
        if normalize_step:
            g = _normalized(g)
        x = terms.project(tf.nest.map_structure(lambda a, s: a - alpha_x * s, x, g))
        taken += 1
    return x, z, {"steps": taken, "cell_evaluations": evaluations, "gradient_mapping": mapping, **history}


__all__ = ["check_steps", "kkt_residuals", "l2_ball", "nested_input_optimization", "solve"]
