"""Whole-image pipeline for the original-FLANNEL global learners (TensorFlow-specific).

Unmasked film from the manifest -> letterboxed to `resize` (`film_pipeline.letterbox`: pad, no stretch)
-> random crop + flip for training, centre crop for evaluation (`film_pipeline.global_view`, which the
export runs too). Training epochs are drawn from `epoch_seed(seed, epoch)`, so a resumed run sees the
same data as an uninterrupted one.
"""

from __future__ import annotations

import tensorflow as tf

from tfflannel import CLASS_NAMES
from tfflannel.data.io import read_image
from tfflannel.film_pipeline import global_view, letterbox, to_uint8
from tfflannel.patches.pipeline import partition_rows as manifest_partition  # noqa: F401  (one partition rule)


def _read(path):
    return read_image(path.decode() if isinstance(path, bytes) else path)[0]


def _base_dataset(rows, shuffle_seed=None):
    """Decoded (film (H, W) uint8, label, image_id); with `shuffle_seed`, the files are shuffled before decoding."""
    paths = [r["path"] for r in rows]
    labels = [CLASS_NAMES.index(r["label"]) for r in rows]
    ids = [r["image_id"] for r in rows]
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels, ids))
    if shuffle_seed is not None:      # shuffle names, not decoded films
        dataset = dataset.shuffle(max(1, len(rows)), seed=shuffle_seed, reshuffle_each_iteration=False)

    def load(path, label, image_id):
        film = tf.ensure_shape(tf.numpy_function(_read, [path], tf.uint8), (None, None))
        return film, tf.cast(label, tf.int32), image_id

    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def global_training_dataset(rows, resize, crop, batch_size, seed=0, drop_remainder=False, first_epoch=0, epochs=1):
    """Random-crop + flip batches of (images float32 (B, crop, crop, 1), labels) for epochs `first_epoch`..`epochs - 1`.

    Epoch e's order, crops and flips are drawn from `epoch_seed(seed, e)` (the same after a resume);
    an epoch has `ceil(len(rows) / batch_size)` batches (floor with `drop_remainder`).

    Args:
        rows: list of dict. Manifest rows of the training partition.
        resize: int. Side of the letterboxed film the crop is taken from.
        crop: int. Side of the crop (the backbone's input size).
        batch_size: int. Images per batch.
        seed: int. Run seed. Defaults to `0`.
        drop_remainder: bool. Drop a last, smaller batch (multi-replica training). Defaults to `False`.
        first_epoch: int. First epoch to produce (a resumed run starts later). Defaults to `0`.
        epochs: int. One past the last epoch to produce. Defaults to `1`.

    Returns:
        tf.data.Dataset of (float32 (B, crop, crop, 1) images, int32 (B,) labels).
    """
    from tfflannel.resume import epoch_seed
    from tfflannel.tf_epochs import chain_epochs

    def one_epoch(epoch):
        key = epoch_seed(seed, epoch)
        shuffled = _base_dataset(rows, shuffle_seed=key).enumerate()

        def augment(index, item):
            film, label, _ = item
            image = to_uint8(letterbox(film[..., None], resize))
            seed_pair = tf.stack([tf.constant(key, tf.int64), index])
            image = tf.image.stateless_random_crop(image, (crop, crop, 1), seed=seed_pair)
            image = tf.image.stateless_random_flip_left_right(image, seed=seed_pair + 1)
            return tf.cast(image, tf.float32), label

        return shuffled.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size,
                                                                               drop_remainder=drop_remainder)

    return chain_epochs(one_epoch, first_epoch, epochs)


def global_evaluation_dataset(rows, resize, crop, images_per_batch=8):
    """Centre-crop batches of (images (B, crop, crop, 1), labels, image_ids): K = 1 per image."""
    def centre(film, label, image_id):
        return tf.ensure_shape(global_view(film, resize, crop), (crop, crop, 1)), label, image_id

    return _base_dataset(rows).map(centre).batch(images_per_batch).prefetch(tf.data.AUTOTUNE)
