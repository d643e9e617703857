"""Backpropagation through the solver's iterations."""

import dataclasses

from keras_implicit.backward.base import BackwardMode


class Unrolled(BackwardMode):
    """Differentiates straight through the forward iterations.

    Exact for the computation that ran (including early stopping and
    best-iterate selection), and the reference the other modes are tested
    against. Memory grows with the number of iterations, since every iterate
    is kept for the backward pass.
    """

    name = "unrolled"
    exact = True

    def apply(self, problem, z0, args, spec, callback=None):
        # Gradients flow through this loop: it must not be a nested XLA function.
        return dataclasses.replace(spec, jit_loop=False).solve(problem.bind(*args), z0)
