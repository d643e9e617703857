"""Base class of the backward modes."""


class BackwardMode:
    """How the gradient of a fixed point is computed.

    `apply(problem, z0, args, spec, callback)` returns `(z_star, info)` where
    `z_star` carries the mode's gradient with respect to `args` and to the
    variables the problem's map reads. `problem` is a `solvers.Problem`,
    `spec` a `solvers.SolveSpec`; the forward solve is `spec.solve(
    problem.bind(*args), z0)`. A backward mode never knows which solver ran.
    """

    name = None
    # Whether the mode's gradient is the exact gradient of the fixed point.
    exact = False

    def apply(self, problem, z0, args, spec, callback=None):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
