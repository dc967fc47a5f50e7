"""TensorFlow-specific parts of segmentation training: the tf.data pipeline and TensorBoard images."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfflannel.segmentation.augment import augment_pair


def make_training_dataset(images, labels, batch_size, seed=0, augment=True, flip=True, first_epoch=0, epochs=1,
                          strength="standard"):
    """Shuffled, augmented, batched tf.data pipeline over in-memory arrays for epochs `first_epoch`..`epochs - 1`.

    Epoch e's order and augmentation derive from `epoch_seed(seed, e)` (the same after a resume); an
    epoch has `ceil(len(images) / batch_size)` batches; `strength` is `augment_pair`'s.
    """
    from tfflannel.resume import epoch_seed
    from tfflannel.tf_epochs import chain_epochs

    size = images.shape[1]
    slices = tf.data.Dataset.from_tensor_slices((np.arange(len(images)), images, labels))

    def augment_numpy(index, image, label, key):
        rng = np.random.default_rng([int(key), int(index)])
        return augment_pair(image, label, rng, flip=flip, strength=strength)

    def finish(image, label):
        image = tf.ensure_shape(image, (size, size, 1))
        label = tf.cast(tf.ensure_shape(label, (size, size)), tf.int32)
        return image, label

    def one_epoch(epoch):
        key = epoch_seed(seed, epoch)
        dataset = slices.shuffle(len(images), seed=key, reshuffle_each_iteration=False)
        if augment:
            dataset = dataset.map(
                lambda index, image, label: tf.numpy_function(
                    augment_numpy, [index, image, label, tf.constant(key, tf.int64)], [tf.float32, tf.uint8]),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            dataset = dataset.map(lambda index, image, label: (image, label))
        return dataset.map(finish).batch(batch_size)

    return chain_epochs(one_epoch, first_epoch, epochs)


class MaskImageLogger(keras.callbacks.Callback):
    """Writes a few validation images with predicted and true lung masks to TensorBoard each epoch.

    Args:
        log_dir: str or Path. TensorBoard log directory.
        images: (N, S, S, 1) float32 pre-processed images.
        labels: (N, S, S) uint8 label maps.
        classes: str. Segmentation class set.
        predict_masks: callable(model, images, classes) -> (N, S, S) uint8 lung masks.
    """

    def __init__(self, log_dir, images, labels, classes, predict_masks):
        super().__init__()
        from tfflannel.models.fc_densenet import lung_class_indices

        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "masks"))
        self.images, self.lung = images, np.isin(labels, lung_class_indices(classes))
        self.classes, self.predict_masks = classes, predict_masks

    def on_epoch_end(self, epoch, logs=None):
        """Writes one "image | predicted | true" panel per stored image at step `epoch`.

        Args:
            epoch: int. Zero-based epoch index, used as the TensorBoard step.
            logs: dict or None. Epoch logs (unused). Defaults to `None`.
        """
        predicted = self.predict_masks(self.model, self.images, self.classes).astype(np.float32)
        panel = np.concatenate([self.images[..., 0], predicted, self.lung.astype(np.float32)], axis=2)[..., None]
        with self.writer.as_default():
            tf.summary.image("image | predicted | true", panel, step=epoch, max_outputs=len(panel))
