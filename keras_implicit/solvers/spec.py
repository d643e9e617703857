"""`SolveSpec`: how a fixed point is reached (solver and stopping rule)."""

from dataclasses import dataclass

import tensorflow as tf

from keras_implicit.solvers.base import Solver, solve

try:  # Internal but long-stable: stop every active tape / ask whether any records.
    from tensorflow.python.eager.record import could_possibly_record, stop_recording
except ImportError:  # pragma: no cover
    import contextlib

    stop_recording = contextlib.nullcontext

    def could_possibly_record():
        return True


@dataclass(frozen=True)
class SolveSpec:
    """How a fixed point is reached: solver and stopping rule.

    `solve(problem, z0)` runs the driver on a bound problem (or a plain map);
    the solver takes from the problem the form it `requires`.
    """

    solver: Solver
    tol: float
    max_iter: int
    stop_mode: str = "abs"
    jit_loop: bool = True

    def solve(self, problem, z0):
        """The driver's loop from `z0`; compiled with XLA when allowed and no
        tape records (a recorded loop may be differentiated)."""
        return solve(
            problem, z0, self.solver, self.tol, self.max_iter, self.stop_mode,
            jit_loop=self.jit_loop and not could_possibly_record(),
        )

    def solve_without_gradient(self, problem, z0):
        """Solves without recording on any gradient tape (saves eager memory)
        and so may compile the loop with XLA."""
        with stop_recording():
            z, info = self.solve(problem, z0)
        return tf.nest.map_structure(tf.stop_gradient, z), info
