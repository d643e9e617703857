"""Shared checks: finite differences for the gradient tests (float64), XLA functions in a graph."""

import numpy as np


def assert_close_directional(fd, analytic, what=""):
    """A central difference against the analytic directional derivative (rel. 1e-6)."""
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (what, fd, analytic)


def check_input_fd(loss_of, x, grad, rng, h=1e-6):
    """`loss_of(x)` differenced along one random direction of `x` against `grad`."""
    d = rng.standard_normal(x.shape)
    fd = (float(loss_of(x + h * d)) - float(loss_of(x - h * d))) / (2 * h)
    assert_close_directional(fd, float(np.sum(grad.numpy() * d)), "input")


def check_variables_fd(variables, grads, loss_of, rng, h=1e-6, jointly=False):
    """`loss_of()` differenced along random directions of the variables: one
    direction per variable, or (`jointly=True`) one direction in all of them."""
    groups = [list(zip(variables, grads))] if jointly else [[vg] for vg in zip(variables, grads)]
    for group in groups:
        dirs = [rng.standard_normal(v.shape) for v, _ in group]
        base = [v.numpy() for v, _ in group]
        vals = []
        for sign in (1, -1):
            for (v, _), b, d in zip(group, base, dirs):
                v.assign(b + sign * h * d)
            vals.append(float(loss_of()))
        for (v, _), b in zip(group, base):
            v.assign(b)
        fd = (vals[0] - vals[1]) / (2 * h)
        analytic = sum(float(np.sum(g.numpy() * d)) for (_, g), d in zip(group, dirs))
        assert_close_directional(fd, analytic, [v.name for v, _ in group])


def xla_functions(concrete):
    """Names of the functions a concrete function's graph marks for XLA compilation."""
    lib = concrete.graph.as_graph_def().library
    return [f.signature.name for f in lib.function if f.attr.get("_XlaMustCompile") and f.attr["_XlaMustCompile"].b]
