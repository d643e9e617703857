"""Offline data sets: sklearn's bundled digits and MNIST-1D built locally.

Nothing here downloads: digits ship with scikit-learn, and MNIST-1D is
generated with `mnist1d.data.make_dataset` (its `get_dataset` would download).
"""

import numpy as np

DATASETS = ("digits", "mnist1d")


def _standardize(x_tr, x_te):
    """Standardize with the training statistics; constant features keep scale 1
    (as sklearn's StandardScaler), so a test value there cannot explode."""
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = np.where(std < 1e-8, 1.0, std)
    return (x_tr - mean) / std, (x_te - mean) / std


def load_digits(test_size=0.2, random_state=0, standardize=True, dtype="float32"):
    """sklearn's 8x8 digits: stratified split, standardized with train statistics.

    Returns:
        `(x_train, y_train), (x_test, y_test)` with `x` of shape `[n, 64]` and
        integer labels in 0..9.
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    data = _load()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=test_size, stratify=data.target, random_state=random_state
    )
    if standardize:
        x_tr, x_te = _standardize(x_tr, x_te)
    return (x_tr.astype(dtype), y_tr.astype("int64")), (x_te.astype(dtype), y_te.astype("int64"))


def load_mnist1d(num_samples=5000, seed=0, standardize=True, dtype="float32"):
    """MNIST-1D (Greydanus 2020), generated offline; 40-dimensional signals, 10 classes.

    Returns:
        `(x_train, y_train), (x_test, y_test)` (the generator's own 80/20 split).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
    x_tr, y_tr, x_te, y_te = data["x"], data["y"], data["x_test"], data["y_test"]
    if standardize:
        x_tr, x_te = _standardize(x_tr, x_te)
    return (x_tr.astype(dtype), np.asarray(y_tr).astype("int64")), (
        x_te.astype(dtype),
        np.asarray(y_te).astype("int64"),
    )


def load(name, **kwargs):
    """Loads a data set by name (`"digits"` or `"mnist1d"`)."""
    if name == "digits":
        return load_digits(**kwargs)
    if name == "mnist1d":
        return load_mnist1d(**kwargs)
    raise ValueError(f"Unknown data set; expected one of {DATASETS}. Received: name={name!r}")
