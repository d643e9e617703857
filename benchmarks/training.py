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
