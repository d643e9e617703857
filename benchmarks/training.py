"""What the model benchmarks share: one compiled training step of a Keras classifier."""

import keras
import tensorflow as tf


def train_step(model, jit):
    """`step(x, y) -> loss`: SGD (lr 1e-3) on sparse cross-entropy of the logits, as one
    `tf.function` (`jit_compile=jit`)."""
    opt = keras.optimizers.SGD(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt.build(model.trainable_variables)

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    return step


def mean_of(metric):
    """The running mean of a Keras `Mean` metric as a float (the layers' backward
    metrics return a dict from `result()`, empty when nothing was measured)."""
    return float(tf.math.divide_no_nan(metric.total, metric.count))
