"""Backpropagation through the solver's iterations."""

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

    def apply(self, f, z0, args, spec, callback=None):
        return spec.run(f, z0, args)
