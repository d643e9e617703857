"""Base class of the backward modes, and the forward settings they receive."""

from dataclasses import dataclass

import tensorflow as tf

from keras_implicit.solvers import Solver, solve

try:  # Internal but long-stable: stop every active tape / ask whether any records.
    from tensorflow.python.eager.record import could_possibly_record, stop_recording
except ImportError:  # pragma: no cover
    import contextlib

    stop_recording = contextlib.nullcontext

    def could_possibly_record():
        return True


@dataclass(frozen=True)
class SolveSpec:
    """How a fixed point is reached: solver and stopping rule."""

    solver: Solver
    tol: float
    max_iter: int
    stop_mode: str = "abs"
    jit_loop: bool = True

    def run(self, f, z0, args=()):
        """Solves `z = f(z, *args)` from `z0`; returns `(z, SolverInfo)`.

        A solver that needs the problem's structure (operator splitting) gets
        it from `f.splitting_problem(*args)`.
        """
        structure = None
        if getattr(self.solver, "needs_structure", False):
            structure = self.structure_of(f, "splitting_problem", *args)
            try:  # the backward pass of the same call may reuse its resolvent
                f.last_problem = structure
            except AttributeError:
                pass
        return self.loop(lambda z: f(z, *args), z0, structure)

    def structure_of(self, f, method, *args):
        """`f.<method>(*args)`: the structure a splitting solver works on."""
        builder = getattr(f, method, None)
        if builder is None:
            raise ValueError(
                f"The solver {self.solver.name!r} works on the structure z = prox(W z + b) "
                f"and needs a cell that provides `{method}` (e.g. MonotoneDense's); use "
                "'anderson', 'broyden' or 'fixed_point' (or Implicit(solver='anderson')) "
                f"for a general cell. Received: solver={self.solver!r}, f={f!r}"
            )
        return builder(*args)

    def loop(self, f, z0, structure=None):
        """The driver's loop on `z = f(z)`; compiled with XLA when allowed and
        no tape records (a recorded loop may be differentiated)."""
        return solve(
            f, z0, self.solver, self.tol, self.max_iter, self.stop_mode,
            structure=structure, jit_loop=self.jit_loop and not could_possibly_record(),
        )

    def run_without_gradient(self, f, z0, args=()):
        """Solves without recording on any gradient tape (saves eager memory)
        and so may compile the loop with XLA."""
        with stop_recording():
            z, info = self.run(f, z0, args)
        return tf.nest.map_structure(tf.stop_gradient, z), info


class BackwardMode:
    """How the gradient of a fixed point is computed.

    `apply(f, z0, args, spec, callback)` returns `(z_star, info)` where
    `z_star` carries the mode's gradient with respect to `args` and to the
    variables `f` reads. A backward mode never knows which solver the forward
    pass used; it only receives the `SolveSpec`.
    """

    name = None
    # Whether the mode's gradient is the exact gradient of the fixed point.
    exact = False

    def apply(self, f, z0, args, spec, callback=None):
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
