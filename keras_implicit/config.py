"""Process-wide settings (like `keras.config`).

`jit_loops_enabled()` / `set_jit_loops(enabled)`: whether solver loops may be
compiled with XLA as nested functions inside non-XLA graphs (each layer's and
`fixed_point`'s `jit_loop=True`, the default). XLA fuses the solvers' many
small per-iteration ops (3-4x faster Anderson and Broyden iterations on CPU)
but compiles once per input shape: about 0.8 s on a 2-core CPU for a small
Anderson loop, paid by every new layer and every new batch size in eager
calls. Turn it off for a process where compile latency matters more than
iteration speed (short notebooks, a test suite) or where XLA is unavailable;
the results agree to rounding (tested per layer family in `tests/test_xla.py`).
The environment variable `KERAS_IMPLICIT_JIT_LOOPS=0` sets the initial
value. The setting is read when a solve is traced: eager layer calls follow
it at once, graphs traced before a change (a compiled model's train step)
keep the setting they were traced with. A model compiled with
`jit_compile=True` is compiled whole by XLA whatever this says.

Example:

>>> import keras_implicit as ki
>>> ki.config.set_jit_loops(False)
>>> ki.config.jit_loops_enabled()
False
>>> ki.config.set_jit_loops(True)
"""

import os

_ENV = "KERAS_IMPLICIT_JIT_LOOPS"


def _from_env():
    value = os.environ.get(_ENV, "1").strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise ValueError(f"{_ENV} must be 0, 1, true or false. Received: {_ENV}={os.environ[_ENV]!r}")
    return value in ("1", "true")


_jit_loops = _from_env()


def jit_loops_enabled():
    """Whether solver loops with `jit_loop=True` are compiled with XLA."""
    return _jit_loops


def set_jit_loops(enabled):
    """Allows (True, the default) or forbids (False) XLA-compiled solver loops
    in this process; see the module docstring."""
    global _jit_loops
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool. Received: enabled={enabled!r}")
    _jit_loops = enabled
