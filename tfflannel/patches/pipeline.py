"""tf.data patch pipeline over the masked-image cache (TensorFlow-specific).

cache shards -> decode PNG -> seeded, stateless lung-centre sampling ->
one vectorised `tf.image.crop_and_resize` call per batch (boxes + box indices,
zero padding across borders) -> optional flip / +-5 degree rotation. No Python
loop runs per patch anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import tensorflow as tf

from tfflannel import CLASS_NAMES
from tfflannel.segmentation.cache import FEATURE_SPEC

_CLASS_TABLE = tf.constant(CLASS_NAMES)


def cache_files(workdir):
    files = sorted(str(p) for p in (Path(workdir) / "cache").glob("shard-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"{Path(workdir) / 'cache'}: no cache shards; run `segment --data {workdir}` first")
    return files


def partition_predicate(role, fold):
    """Which records belong to a partition of fold `fold`: train, valid (the fold) or test."""
    def keep(example):
        if role == "test":
            return tf.equal(example["split"], "test")
        in_fold = tf.logical_and(tf.equal(example["split"], "train"), tf.equal(example["fold"], fold))
        if role == "valid":
            return in_fold
        if role == "train":
            return tf.logical_and(tf.equal(example["split"], "train"), tf.logical_not(in_fold))
        if role == "all":
            return tf.constant(True)
        raise ValueError(f"role must be train, valid, test or all. Received: {role!r}.")
    return keep


def decode_example(example):
    """Parsed record -> dict(image (H, W, 1) uint8, mask (H, W) uint8, label int32, image_id, seed_key int64)."""
    image = tf.io.decode_png(example["image_png"], channels=1)
    mask = tf.io.decode_png(example["mask_png"], channels=1)[..., 0]
    label = tf.cast(tf.argmax(tf.cast(tf.equal(_CLASS_TABLE, example["label"]), tf.int32)), tf.int32)
    return {"image": image, "mask": mask, "label": label, "image_id": example["image_id"],
            "seed_key": tf.strings.to_hash_bucket_fast(example["image_id"], 2**31 - 1)}


def read_records(workdir, role, fold):
    dataset = tf.data.TFRecordDataset(cache_files(workdir))
    dataset = dataset.map(lambda raw: tf.io.parse_single_example(raw, FEATURE_SPEC))
    return dataset.filter(partition_predicate(role, fold))


def sample_centres(mask, k, seed):
    """(k, 2) int32 lung-pixel centres drawn jointly with a stateless RNG; image centre if no lung."""
    coords = tf.cast(tf.where(mask > 0), tf.int32)
    count = tf.shape(coords)[0]
    index = tf.random.stateless_uniform([k], seed=seed, minval=0, maxval=tf.maximum(count, 1), dtype=tf.int32)
    centre = tf.stack([tf.shape(mask)[0] // 2, tf.shape(mask)[1] // 2])
    return tf.cond(count > 0, lambda: tf.gather(coords, index), lambda: tf.tile(centre[None], [k, 1]))


def crop_patches(images, centres, size):
    """Cut every centre's patch of every image in one `crop_and_resize` call.

    Args:
        images: (B, H, W, 1) tensor.
        centres: (B, K, 2) int32 (row, col).
        size: int. Patch side.

    Returns:
        (B * K, size, size, 1) float32, zero where a patch leaves the image; patch
        (b, k) is row b * K + k.
    """
    shape = tf.shape(images)
    height, width = tf.cast(shape[1] - 1, tf.float32), tf.cast(shape[2] - 1, tf.float32)
    batch, k = tf.shape(centres)[0], tf.shape(centres)[1]
    flat = tf.cast(tf.reshape(centres, [-1, 2]), tf.float32)
    top = flat[:, 0] - float(size // 2)
    left = flat[:, 1] - float(size // 2)
    boxes = tf.stack([top / height, left / width, (top + size - 1) / height, (left + size - 1) / width], axis=1)
    box_indices = tf.repeat(tf.range(batch), k)
    # Nearest sampling at exact pixel positions: a crop, never a resize; outside the image -> 0.
    return tf.image.crop_and_resize(images, boxes, box_indices, [size, size],
                                    method="nearest", extrapolation_value=0.0)


def augment_patches(patches, seed, max_degrees=5.0):
    """Random horizontal flip and rotation (+-max_degrees, zero fill) of each patch, stateless."""
    count = tf.shape(patches)[0]
    flip_seed, angle_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    flips = tf.random.stateless_uniform([count], flip_seed) < 0.5
    patches = tf.where(flips[:, None, None, None], tf.reverse(patches, axis=[2]), patches)
    angles = tf.random.stateless_uniform([count], angle_seed, -max_degrees, max_degrees) * (math.pi / 180.0)
    size = tf.cast(tf.shape(patches)[1], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    centre = (size - 1.0) / 2.0
    # Output pixel (x, y) samples input at R^-1 about the centre (ImageProjectiveTransformV3 convention).
    a0, a1 = cos, -sin
    a2 = centre - cos * centre + sin * centre
    b0, b1 = sin, cos
    b2 = centre - sin * centre - cos * centre
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=patches, transforms=transforms, output_shape=tf.shape(patches)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def evaluation_dataset(workdir, role, fold, k, size, seed=0, images_per_batch=4):
    """Batches of (B * K patches, labels (B,), image_ids (B,)) with fixed, seeded centres per image."""
    def add_centres(item):
        item["centres"] = sample_centres(item["mask"], k, tf.stack([tf.cast(seed, tf.int64), item["seed_key"]]))
        return item

    dataset = read_records(workdir, role, fold).map(decode_example, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(add_centres, num_parallel_calls=tf.data.AUTOTUNE).batch(images_per_batch)
    dataset = dataset.map(lambda b: (crop_patches(b["image"], b["centres"], size), b["label"], b["image_id"]),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def training_steps(workdir, fold, batch_size, patches_per_image=1, drop_remainder=False):
    """Batches per epoch of `training_dataset` (the fold's training records counted once).

    Raises:
        ValueError: the fold has no training images in the cache.
    """
    count = int(read_records(workdir, "train", fold).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if count == 0:
        raise ValueError(f"{Path(workdir) / 'cache'}: fold {fold} has no training images")
    images_per_batch = max(1, batch_size // patches_per_image)
    return count // images_per_batch if drop_remainder else -(-count // images_per_batch)


def training_dataset(workdir, fold, size, batch_size, patches_per_image=1, seed=0, augment=True,
                     shuffle_buffer=2048, drop_remainder=False, first_epoch=0, epochs=1):
    """Shuffled batches of (patches, labels) for epochs `first_epoch`..`epochs - 1`, one after the other.

    Each epoch's image order, patch centres and augmentation are drawn from `epoch_seed(seed, epoch)`,
    so epoch e is the same whether the run got there in one go or resumed after a kill. Each image
    gives `patches_per_image` patches per epoch; `batch_size` counts patches; an epoch has
    `training_steps(...)` batches.
    """
    from tfflannel.resume import epoch_seed
    from tfflannel.tf_epochs import chain_epochs

    images_per_batch = max(1, batch_size // patches_per_image)
    records = read_records(workdir, "train", fold).map(decode_example, num_parallel_calls=tf.data.AUTOTUNE)

    def one_epoch(epoch):
        key = epoch_seed(seed, epoch)
        shuffled = records.shuffle(shuffle_buffer, seed=key, reshuffle_each_iteration=False)

        def add_centres(item):
            item["centres"] = sample_centres(item["mask"], patches_per_image,
                                             tf.stack([tf.constant(key, tf.int64), item["seed_key"]]))
            return item

        batches = shuffled.map(add_centres, num_parallel_calls=tf.data.AUTOTUNE)
        batches = batches.batch(images_per_batch, drop_remainder=drop_remainder).enumerate()

        def to_patches(index, batch):
            patches = crop_patches(batch["image"], batch["centres"], size)
            if augment:
                patches = augment_patches(patches, tf.stack([tf.constant(key, tf.int64), index]))
            return patches, tf.repeat(batch["label"], patches_per_image)

        return batches.map(to_patches, num_parallel_calls=tf.data.AUTOTUNE)

    return chain_epochs(one_epoch, first_epoch, epochs)
