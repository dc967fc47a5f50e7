"""TensorFlow-specific parts of segmentation training: the tf.data pipeline and TensorBoard images."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfflannel.segmentation.augment import augment_pair


def make_training_dataset(images, labels, batch_size, seed=0, augment=True, flip=True):
    """Shuffled (every epoch), augmented, batched, prefetched tf.data pipeline over in-memory arrays."""
    size = images.shape[1]
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(images)), images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)

    def augment_numpy(index, image, label, draw):
        rng = np.random.default_rng([seed, int(index), int(draw)])
        return augment_pair(image, label, rng, flip=flip)

    if augment:
        counter = tf.data.Dataset.counter()
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda item, draw: tf.numpy_function(augment_numpy, [item[0], item[1], item[2], draw], [tf.float32, tf.uint8]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = dataset.map(lambda index, image, label: (image, label))

    def finish(image, label):
        image = tf.ensure_shape(image, (size, size, 1))
        label = tf.cast(tf.ensure_shape(label, (size, size)), tf.int32)
        return image, label

    return dataset.map(finish).batch(batch_size).prefetch(tf.data.AUTOTUNE)


class MaskImageLogger(keras.callbacks.Callback):
    """Writes a few validation images with predicted and true lung masks to TensorBoard each epoch."""

    def __init__(self, log_dir, images, labels, classes):
        super().__init__()
        from tfflannel.models.fc_densenet import lung_class_indices

        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "masks"))
        self.images, self.lung = images, np.isin(labels, lung_class_indices(classes))
        self.classes = classes

    def on_epoch_end(self, epoch, logs=None):
        from tfflannel.segmentation.train import predict_lung_masks

        predicted = predict_lung_masks(self.model, self.images, self.classes).astype(np.float32)
        panel = np.concatenate([self.images[..., 0], predicted, self.lung.astype(np.float32)], axis=2)[..., None]
        with self.writer.as_default():
            tf.summary.image("image | predicted | true", panel, step=epoch, max_outputs=len(panel))
