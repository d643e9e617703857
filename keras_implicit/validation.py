"""Construction-time checks of hyperparameters, with Keras-style messages.

Each check returns the validated (normalized) value or raises `ValueError`
ending with `Received: name=value`.
"""

import numbers

import numpy as np


def is_number(value):
    """A real number, numpy's too, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value):
    """An integer, numpy's too (np.int64(5) is a numbers.Integral), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def integer(value, name, minimum=1, maximum=None, odd=False):
    """An int in `[minimum, maximum]` (default: a positive int), odd if asked."""
    ok = is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    if not ok or (odd and value % 2 == 0):
        what = "a positive integer" if minimum == 1 and maximum is None else (
            f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]")
        what += " and odd" if odd else ""
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return int(value)


def integers(values, name):
    """A non-empty list or tuple of positive ints, as a tuple."""
    if not (isinstance(values, (tuple, list)) and values and all(is_int(v) and v >= 1 for v in values)):
        raise ValueError(f"`{name}` must be a non-empty list of positive ints. Received: {name}={values!r}")
    return tuple(values)


def number(value, name, low=0.0, high=None, low_open=True, high_open=False):
    """A float in the interval `(low, high]` (ends open or closed as asked;
    `high=None` for no upper end). The default is a positive number."""
    ok = is_number(value) and value == value
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if high is None:
            what = "a positive number" if (low == 0 and low_open) else (
                f"a number {'>' if low_open else '>='} {low:g}")
        else:
            what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return float(value)


def one_of(value, name, options):
    """`value` if it is one of `options`."""
    if value not in options:
        raise ValueError(f"`{name}` must be one of {tuple(options)}. Received: {name}={value!r}")
    return value


def int_pair(value, name, check=lambda v: v >= 1, what="an int or a pair of ints"):
    """An int (used for both entries) or a pair of ints, each passing `check`."""
    pair = (value, value) if is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_int(v) and check(v) for v in pair)):
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return tuple(pair)


def features(shape, layer, name="x"):
    """`shape` is `(batch, features)` with known features."""
    if shape is None or len(shape) != 2 or shape[-1] is None:
        raise ValueError(f"{layer} expects inputs of shape (batch, features). "
                         f"Received: {name}.shape={None if shape is None else tuple(shape)}")


def image(shape, layer, name="x"):
    """`shape` is `(batch, height, width, channels)` with all but the batch known."""
    if len(shape) != 4 or None in tuple(shape[1:]):
        raise ValueError(f"{layer} expects images (batch, height, width, channels) with known "
                         f"height, width and channels. Received: {name}.shape={tuple(shape)}")
