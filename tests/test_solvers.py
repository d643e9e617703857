import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import solvers
from tests import problems

SOLVERS = {
    "fixed_point": solvers.FixedPointIteration(),
    "fixed_point_damped": solvers.FixedPointIteration(damping=0.7),
    "anderson": solvers.Anderson(),
    "anderson_damped": solvers.Anderson(memory=3, damping=0.8),
    "anderson_linalg_solve": solvers.Anderson(memory=8, unrolled_solve=False),
    "broyden": solvers.Broyden(),
}


def _run(problem, solver, mode="eager", tol=1e-10, max_iter=300):
    f, z0, args, exact = problems.CATALOGUE[problem]()

    def solve(z0, args):
        return solvers.solve(lambda z: f(z, *args), z0, solver, tol=tol, max_iter=max_iter)

    if mode == "graph":
        solve = tf.function(solve)
    elif mode == "jit":
        solve = tf.function(solve, jit_compile=True)
    z, info = solve(z0, args)
    return f, args, z, info, exact


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("problem", sorted(problems.CATALOGUE))
def test_catalogue(problem, solver):
    f, args, z, info, exact = _run(problem, SOLVERS[solver])
    for got, want in zip(tf.nest.flatten(z), tf.nest.flatten(exact)):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
    assert int(info.status) == ki.CONVERGED
    assert bool(tf.reduce_all(info.converged))
    assert float(tf.reduce_max(info.residual)) <= 1e-10
    # The reported residual is the true residual of the returned iterate.
    fz = f(z, *args)
    true_res = np.sqrt(
        sum(np.sum(np.reshape((a - b).numpy(), (a.shape[0], -1)) ** 2, 1) for a, b in zip(tf.nest.flatten(fz), tf.nest.flatten(z)))
    )
    np.testing.assert_allclose(true_res, info.residual.numpy(), rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden"])
def test_graph_and_xla_agree_with_eager(solver):
    _, _, z_e, info_e, _ = _run("network", SOLVERS[solver], "eager")
    _, _, z_g, info_g, _ = _run("network", SOLVERS[solver], "graph")
    _, _, z_j, info_j, _ = _run("network", SOLVERS[solver], "jit")
    np.testing.assert_allclose(z_g.numpy(), z_e.numpy(), atol=1e-12)
    np.testing.assert_allclose(z_j.numpy(), z_e.numpy(), atol=1e-12)
    assert int(info_e.iterations) == int(info_g.iterations) == int(info_j.iterations)


def test_acceleration_beats_plain_iteration():
    its = {k: int(_run("network", SOLVERS[k])[3].iterations) for k in ("fixed_point", "anderson", "broyden")}
    assert its["anderson"] < its["fixed_point"] and its["broyden"] < its["fixed_point"], its


def test_info_fields_and_trace():
    _, _, _, info, _ = _run("linear", SOLVERS["fixed_point"], max_iter=200)
    k = int(info.iterations)
    assert info.trace.shape == (200,) and info.residual.shape == (4,) and info.converged.shape == (4,)
    assert info.iterations.dtype == tf.int32 and info.status.dtype == tf.int32
    trace = info.trace.numpy()
    # Linear convergence with rate 0.8: the trace decreases and is padded with its last value.
    assert np.all(np.diff(trace[:k]) < 0)
    assert np.all(trace[k:] == trace[k - 1])
    assert trace[k - 1] <= 1e-10 < trace[k - 2]


def test_stops_per_sample_tolerance_and_returns_best_iterate():
    # Sample 0 is already at its fixed point; sample 1 needs many iterations.
    f = lambda z: 0.9 * z + tf.constant([[0.0], [1.0]], tf.float64)  # noqa: E731
    z, info = solvers.solve(f, tf.zeros([2, 1], tf.float64), SOLVERS["fixed_point"], tol=1e-3, max_iter=500)
    assert info.converged.numpy().all()
    assert float(z[0, 0]) == 0.0
    assert abs(float(z[1, 0]) - 10.0) < 1e-2


def test_relative_stop_mode():
    f, z0, args, exact = problems.linear()
    big = (args[0] * 1e6,)
    z, info = solvers.solve(lambda z: f(z, *big), z0, SOLVERS["anderson"], tol=1e-8, stop_mode="rel")
    assert int(info.status) == ki.CONVERGED
    np.testing.assert_allclose(z.numpy(), exact * 1e6, rtol=1e-6)
    # the absolute residual is far above tol, the relative one below it
    assert float(tf.reduce_max(info.residual)) <= 1e-8


def test_max_iter_reached_is_reported():
    f, z0, args, _ = problems.linear(scale=0.99)
    z, info = solvers.solve(lambda z: f(z, *args), z0, SOLVERS["fixed_point"], tol=1e-12, max_iter=5)
    assert int(info.iterations) == 5
    assert int(info.status) == ki.MAX_ITER_REACHED
    assert not info.converged.numpy().any()


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden"])
def test_non_finite_inputs_are_guarded(solver):
    x = np.random.randn(3, 4)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    w = tf.constant(np.random.randn(4, 4) * 0.1)
    f = lambda z, x: tf.tanh(z @ w) + x  # noqa: E731
    z, info = solvers.solve(lambda z: f(z, tf.constant(x)), tf.zeros([3, 4], tf.float64), SOLVERS[solver], tol=1e-8, max_iter=1000)
    assert int(info.status) == ki.NON_FINITE
    # stops as soon as the finite sample converged, far below max_iter: no hang
    assert int(info.iterations) < 100
    assert info.converged.numpy().tolist() == [True, False, False]
    assert np.isfinite(z.numpy()).all()  # the last finite iterate is returned


def test_anderson_survives_degenerate_history():
    # f constant: every residual after the first is zero -> singular Gram matrix.
    f = lambda z: tf.ones_like(z) * 3.0  # noqa: E731
    z, info = solvers.solve(f, tf.zeros([2, 3], tf.float64), solvers.Anderson(ridge=1e-12), tol=1e-12, max_iter=10)
    np.testing.assert_allclose(z.numpy(), 3.0)
    assert int(info.status) == ki.CONVERGED


@pytest.mark.parametrize("memory", [3, 8, 10])
def test_anderson_small_solve_by_elimination_or_linalg_gives_the_same_iterates(memory):
    f, z0, args, _ = problems.CATALOGUE["network"]()
    runs = [solvers.solve(lambda z: f(z, *args), z0, solvers.Anderson(memory=memory, unrolled_solve=u),
                          tol=1e-12, max_iter=200) for u in (True, False)]
    (za, ia), (zb, ib) = runs
    assert int(ia.iterations) == int(ib.iterations) > memory
    np.testing.assert_allclose(za.numpy(), zb.numpy(), atol=1e-13)
    np.testing.assert_allclose(ia.trace.numpy(), ib.trace.numpy(), rtol=1e-6, atol=1e-11)  # near 1e-13 the Gram matrix is ill-conditioned
    with pytest.raises(ValueError, match="unrolled_solve=1"):
        solvers.Anderson(unrolled_solve=1)


def test_registry_round_trip():
    for name in ("fixed_point", "anderson", "broyden"):
        s = solvers.get(name)
        assert s.name == name
        assert solvers.deserialize(solvers.serialize(s)) == s
    for s in (solvers.Anderson(memory=7, ridge=1e-3, damping=0.5), solvers.Anderson(unrolled_solve=False)):
        assert solvers.get(solvers.serialize(s)) == s
    assert solvers.get(s) is s


def test_rel_sq_stop_mode_is_jeon_lee_choi_rule():
    # ||f(z) - z||^2 / (1e-6 + ||z||^2) <= tol, measured at the returned iterate
    z0 = tf.constant([[0.0], [1.0], [-2.0]], tf.float64)
    z, info = ki.fixed_point(tf.cos, z0, solver="fixed_point", tol=1e-12, max_iter=500, stop_mode="rel_sq")
    ratio = (tf.cos(z) - z)[:, 0] ** 2 / (1e-6 + z[:, 0] ** 2)
    np.testing.assert_allclose(info.residual, ratio, rtol=1e-9)
    assert int(info.status) == ki.CONVERGED and np.all(ratio.numpy() <= 1e-12)
    _, short = ki.fixed_point(tf.cos, z0, solver="fixed_point", tol=1e-12, max_iter=int(info.iterations) - 1,
                              stop_mode="rel_sq", on_failure="ignore")
    assert int(short.status) == ki.MAX_ITER_REACHED
