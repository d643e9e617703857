"""Base class of the backward modes."""

from keras_implicit.registry import Configurable


class BackwardMode(Configurable):
    """How the gradient of a fixed point is computed.

    `apply(problem, z0, args, spec, callback)` returns `(z_star, info)` where
    `z_star` carries the mode's gradient with respect to `args` and to the
    variables the problem's map reads. `problem` is a `solvers.Problem`,
    `spec` a `solvers.SolveSpec`; the forward solve is `spec.solve(
    problem.bind(*args), z0)`. A backward mode never knows which solver ran.
    """

    # Whether the mode's gradient is the exact gradient of the fixed point.
    exact = False

    def apply(self, problem, z0, args, spec, callback=None):
        raise NotImplementedError

