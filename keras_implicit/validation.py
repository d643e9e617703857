"""Construction-time checks of hyperparameters, with Keras-style messages.

Each check returns the validated (normalized) value or raises `ValueError`
ending with `Received: name=value`.
"""


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(value, name, minimum=1, maximum=None):
    """An int in `[minimum, maximum]` (default: a positive int)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        what = "a positive integer" if minimum == 1 and maximum is None else (
            f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]")
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return value


def number(value, name, low=0.0, high=None, low_open=True, high_open=False):
    """A float in the interval `(low, high]` (ends open or closed as asked;
    `high=None` for no upper end). The default is a positive number."""
    ok = _is_number(value) and value == value
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
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and check(v) for v in pair)):
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return tuple(pair)
