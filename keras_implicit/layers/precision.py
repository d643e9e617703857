"""Which layers compute in float32 under a mixed-precision policy."""

import keras

HALF = ("float16", "bfloat16")


def float32_under_half(needs_float32, dtype):
    """The dtype policy a layer runs under: `dtype` (None: the global policy),
    or `"float32"` where that policy computes in half precision and the layer
    `needs_float32`.

    Layers whose computation has no half-precision form (resolvents, FFTs,
    SVDs, matrix inverses and solves have no float16 kernels) or whose
    guarantee would not survive it (a Lipschitz bound, a solve tolerance
    below float16's resolution of 1e-3) keep float32 there: Keras' advice
    for numerically sensitive layers. Their output is then float32; the
    layers around them keep the mixed policy.
    """
    if not needs_float32:
        return dtype
    policy = keras.config.dtype_policy() if dtype is None else keras.dtype_policies.get(dtype)
    return "float32" if policy.compute_dtype in HALF else dtype
