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
from tfflannel.data.manifest import partition_rows  # noqa: F401  (re-exported: one partition rule)
from tfflannel.errors import InputError
from tfflannel.film_pipeline import crop_patches, evaluation_centres, sample_centres  # noqa: F401  (re-exported)
from tfflannel.segmentation.cache import cache_shards
from tfflannel.segmentation.view_records import FEATURE_SPEC


def decode_example(example):
    """Parsed record -> dict(image (H, W, 1) uint8, mask (H, W) uint8, label int32, image_id, seed_key int64)."""
    image = tf.io.decode_png(example["image_png"], channels=1)
    mask = tf.io.decode_png(example["mask_png"], channels=1)[..., 0]
    return {"image": image, "mask": mask, "label": tf.cast(example["label"], tf.int32), "image_id": example["image_id"],
            "seed_key": tf.strings.to_hash_bucket_fast(example["image_id"], 2**31 - 1)}


def read_records(workdir, role, fold):
    """Parsed cache records of a partition; which images and their labels come from manifest.csv, not the cache.

    Only the shards `cache/index.csv` lists are read, after checking that every image of the manifest is
    in the cache with the file it was made from (see `segmentation.cache.cache_shards`).
    """
    from tfflannel.data.manifest import load_manifest

    rows = load_manifest(workdir)
    files = cache_shards(workdir, rows)
    chosen = partition_rows(rows, role, fold)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant([r["image_id"] for r in chosen] or [""], tf.string),
                                            tf.constant([CLASS_NAMES.index(r["label"]) for r in chosen] or [-1],
                                                        tf.int64)), default_value=-1)

    def parse(raw):
        example = tf.io.parse_single_example(raw, FEATURE_SPEC)
        example["label"] = table.lookup(example["image_id"])
        return example

    return tf.data.TFRecordDataset(files).map(parse).filter(lambda example: example["label"] >= 0)


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
        item["centres"] = evaluation_centres(item["mask"], k, seed)
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
        raise InputError(f"{Path(workdir) / 'cache'}: fold {fold} has no training images")
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
