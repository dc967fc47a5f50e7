"""Whole-image pipeline for the original-FLANNEL global learners (TensorFlow-specific).

Unmasked film from the manifest -> letterboxed to `resize` (`film_pipeline.letterbox`: pad, no stretch)
-> random crop + flip for training, centre crop for evaluation (`film_pipeline.global_view`, which the
export runs too).
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
    paths = [r["path"] for r in rows]
    labels = [CLASS_NAMES.index(r["label"]) for r in rows]
    ids = [r["image_id"] for r in rows]
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels, ids))
    if shuffle_seed is not None:      # shuffle names, not decoded films
        dataset = dataset.shuffle(max(1, len(rows)), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(path, label, image_id):
        film = tf.ensure_shape(tf.numpy_function(_read, [path], tf.uint8), (None, None))
        return film, tf.cast(label, tf.int32), image_id

    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def global_training_dataset(rows, resize, crop, batch_size, seed=0, drop_remainder=False):
    """Shuffled (every epoch) random-crop + flip batches of (images float32 (B, crop, crop, 1), labels)."""
    dataset = _base_dataset(rows, shuffle_seed=seed)
    draws = tf.data.Dataset.random(seed=seed)

    def augment(item, draw):
        film, label, _ = item
        image = to_uint8(letterbox(film[..., None], resize))
        seed_pair = tf.stack([draw, tf.constant(seed, tf.int64)])
        image = tf.image.stateless_random_crop(image, (crop, crop, 1), seed=seed_pair)
        image = tf.image.stateless_random_flip_left_right(image, seed=seed_pair + 1)
        return tf.cast(image, tf.float32), label

    dataset = tf.data.Dataset.zip((dataset, draws)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def global_evaluation_dataset(rows, resize, crop, images_per_batch=8):
    """Centre-crop batches of (images (B, crop, crop, 1), labels, image_ids): K = 1 per image."""
    def centre(film, label, image_id):
        return tf.ensure_shape(global_view(film, resize, crop), (crop, crop, 1)), label, image_id

    return _base_dataset(rows).map(centre).batch(images_per_batch).prefetch(tf.data.AUTOTUNE)
