"""Operator-splitting solvers for `z = prox(W z + b)` (monotone operator networks)."""


from keras_implicit.solvers.base import Solver
from keras_implicit import validation


def check_alpha(alpha):
    validation.number(alpha, "alpha")
    return float(alpha)


class PeacemanRachford(Solver):
    """Peaceman-Rachford splitting (Winston & Kolter 2020, Alg. 2).

    For `0 in (I - W) z - b + df(z)` (whose solution is `z = prox_f(W z + b)`),
    with `V = (I + alpha (I - W))^{-1}` computed once per solve, starting
    from `u = z0` (zeros by default, as in the paper) and `z = prox_alpha(u)`:

        u_half = 2 z - u
        z_half = V (u_half + alpha b)
        u      = 2 z_half - u_half
        z      = prox_alpha(u)

    Converges for every `alpha > 0` when `I - W >= m I` with `m > 0`. The
    residual is `||z_half - z|| = ||u_new - u|| / 2`, the residual of the
    fixed-point map on `u`, made relative to `||z_new||` in `stop_mode="rel"`.
    The paper's code measures `||z_new - z||` instead; that can fall below
    `tol` while `u` still moves where the prox is flat (relu's negative
    side), and then stops at a wrong point: we measured it with alpha = 10
    from random starts. Both agree at the solution. Needs a cell that
    provides `splitting(x)` (e.g. `MonotoneDense`'s).

    Args:
        alpha: float > 0, default 1.0.
    """

    name = "peaceman_rachford"
    requires = "splitting"
    compile_loop = False  # a few large ops per step (FFTs, matmuls): little to fuse

    def __init__(self, alpha=1.0):
        self.alpha = check_alpha(alpha)

    def init(self, F, z):
        F.prepare(self.alpha)
        return (z,)

    def step(self, F, z, state, k):
        (u,) = state
        problem = F  # a `Splitting`
        # z = prox(u) by construction; computing it from u (rather than taking
        # the driver's z) keeps a start z0 that is not prox(u0) consistent.
        z = problem.prox(u)
        u_half = 2.0 * z - u
        z_half = problem.resolvent(u_half)
        u = 2.0 * z_half - u_half
        z_new = problem.prox(u)
        # z_half - z = (u_new - u) / 2 is the residual of the fixed-point map on
        # u at z = prox(u); it vanishes only at the solution. (z_new - z alone
        # can vanish while u still moves inside relu's flat region.)
        return z_new, (u,), z, z_half - z, z

    def get_config(self):
        return {"alpha": self.alpha}


class ForwardBackward(Solver):
    """Forward-backward splitting (Winston & Kolter 2020, Alg. 1).

        z = prox_alpha((1 - alpha) z + alpha (W z + b))

    Converges when `alpha <= 2 m / L^2` with `L = ||I - W||_2`; above that it
    may diverge (the status then says so). Needs a cell that provides
    `splitting(x)`.

    Args:
        alpha: float > 0, default 0.1.
    """

    name = "forward_backward"
    requires = "splitting"
    compile_loop = False

    def __init__(self, alpha=0.1):
        self.alpha = check_alpha(alpha)

    def init(self, F, z):
        F.prepare(self.alpha)
        return ()

    def step(self, F, z, state, k):
        z_new = F.prox((1.0 - self.alpha) * z + self.alpha * F.affine(z))
        return z_new, state, z_new, z_new - z, z_new

    def get_config(self):
        return {"alpha": self.alpha}
