"""Whole-image pipeline for the original-FLANNEL global learners (TensorFlow-specific).

Unmasked image from the manifest -> letterboxed to `resize` (pad, no stretch)
-> random crop + flip for training, centre crop for evaluation.
"""

from __future__ import annotations

import tensorflow as tf

from tfflannel import CLASS_NAMES
from tfflannel.data.io import read_image
from tfflannel.segmentation.cache import fit_to_square


def manifest_partition(rows, role, fold):
    """Rows of a fold's train / valid partition or the test set."""
    fold = str(fold)
    if role == "test":
        return [r for r in rows if r["split"] == "test"]
    if role == "valid":
        return [r for r in rows if r["split"] == "train" and r["fold"] == fold]
    if role == "train":
        return [r for r in rows if r["split"] == "train" and r["fold"] != fold]
    if role == "all":
        return list(rows)
    raise ValueError(f"role must be train, valid, test or all. Received: {role!r}.")


def load_resized(path, size):
    """Decode any supported image file and letterbox it to (size, size, 1) uint8."""
    image, _ = read_image(path.decode() if isinstance(path, bytes) else path)
    return fit_to_square(image, int(size))[..., None]


def _base_dataset(rows, resize, shuffle_seed=None):
    """Decoded, letterboxed (image, label, image_id); with `shuffle_seed`, the files are shuffled before decoding."""
    paths = [r["path"] for r in rows]
    labels = [CLASS_NAMES.index(r["label"]) for r in rows]
    ids = [r["image_id"] for r in rows]
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels, ids))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(max(1, len(rows)), seed=shuffle_seed, reshuffle_each_iteration=False)

    def load(path, label, image_id):
        image = tf.numpy_function(lambda p: load_resized(p, resize), [path], tf.uint8)
        return tf.ensure_shape(image, (resize, resize, 1)), tf.cast(label, tf.int32), image_id

    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def global_training_dataset(rows, resize, crop, batch_size, seed=0, drop_remainder=False, first_epoch=0, epochs=1):
    """Random-crop + flip batches of (images float32 (B, crop, crop, 1), labels) for epochs `first_epoch`..`epochs - 1`.

    Epoch e's order, crops and flips are drawn from `epoch_seed(seed, e)` (the same after a resume);
    an epoch has `ceil(len(rows) / batch_size)` batches (floor with `drop_remainder`).
    """
    from tfflannel.resume import epoch_seed
    from tfflannel.tf_epochs import chain_epochs

    def one_epoch(epoch):
        key = epoch_seed(seed, epoch)
        shuffled = _base_dataset(rows, resize, shuffle_seed=key).enumerate()

        def augment(index, item):
            image, label, _ = item
            seed_pair = tf.stack([tf.constant(key, tf.int64), index])
            image = tf.image.stateless_random_crop(image, (crop, crop, 1), seed=seed_pair)
            image = tf.image.stateless_random_flip_left_right(image, seed=seed_pair + 1)
            return tf.cast(image, tf.float32), label

        return shuffled.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size,
                                                                               drop_remainder=drop_remainder)

    return chain_epochs(one_epoch, first_epoch, epochs)


def global_evaluation_dataset(rows, resize, crop, images_per_batch=8):
    """Centre-crop batches of (images (B, crop, crop, 1), labels, image_ids): K = 1 per image."""
    offset = (resize - crop) // 2

    def centre(image, label, image_id):
        return tf.cast(image[offset:offset + crop, offset:offset + crop], tf.float32), label, image_id

    return _base_dataset(rows, resize).map(centre).batch(images_per_batch).prefetch(tf.data.AUTOTUNE)
