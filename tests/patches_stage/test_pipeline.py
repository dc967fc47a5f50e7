"""Lung-centred patches: centres inside the lung, zero-padded borders, fixed evaluation patches."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import aggregate_patch_scores, crop_patch, sample_patch_centres
from tfflannel.patches.pipeline import (
    augment_patches,
    crop_patches,
    decode_example,
    evaluation_dataset,
    read_records,
    sample_centres,
    training_dataset,
    training_steps,
)


@pytest.fixture(scope="module")
def decoded(sample_workdir):
    items = [decode_example(e) for e in read_records(sample_workdir, "all", 1).take(6)]
    return [{k: v.numpy() if hasattr(v, "numpy") else v for k, v in item.items()} for item in items]


def test_every_centre_is_a_lung_pixel_on_real_masks(decoded):
    for index, item in enumerate(decoded):
        centres = sample_centres(tf.constant(item["mask"]), 200, tf.constant([7, index], tf.int64)).numpy()
        assert centres.shape == (200, 2)
        assert np.all(item["mask"][centres[:, 0], centres[:, 1]] > 0), "100 % of centres inside the lung"


def test_numpy_reference_sampler_is_joint():
    mask = np.zeros((50, 50), np.uint8)
    mask[5, 40] = 1
    mask[40, 5] = 1   # independent row/col draws would also give (5, 5) and (40, 40)
    centres = sample_patch_centres(mask, 500, np.random.default_rng(0))
    assert {tuple(c) for c in centres} == {(5, 40), (40, 5)}


def test_border_patches_equal_zero_padded_crops_on_real_images(decoded):
    image = decoded[0]["image"]
    centres = np.array([[[0, 0], [1023, 1023], [10, 512], [512, 1015], [500, 400]]], np.int32)
    patches = crop_patches(tf.constant(image[None]), tf.constant(centres), 224).numpy()
    for patch, centre in zip(patches, centres[0], strict=True):
        expected = crop_patch(image, centre, 224).astype(np.float32)
        np.testing.assert_array_equal(patch, expected)
    assert patches[0][:112].sum() == 0 and patches[0][:, :112].sum() == 0, "outside the image is zero, not stretched"


def test_one_crop_call_serves_a_whole_batch(decoded):
    images = np.stack([item["image"] for item in decoded[:3]])
    centres = np.random.default_rng(1).integers(0, 1024, (3, 4, 2)).astype(np.int32)
    patches = crop_patches(tf.constant(images), tf.constant(centres), 64).numpy()
    assert patches.shape == (12, 64, 64, 1)
    np.testing.assert_array_equal(patches[2 * 4 + 3], crop_patch(images[2], centres[2, 3], 64))


def test_evaluation_patches_are_identical_across_runs_and_depend_on_seed(sample_workdir):
    def collect(seed):
        dataset = evaluation_dataset(sample_workdir, "valid", 1, 5, 64, seed)
        return [(p.numpy(), ids.numpy().tolist()) for p, _, ids in dataset]

    first, second, other = collect(0), collect(0), collect(1)
    assert len(first) > 0
    for (a, ids_a), (b, ids_b) in zip(first, second, strict=True):
        assert ids_a == ids_b
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True))


def test_training_batches_shapes_labels_and_fresh_patches(sample_workdir):
    dataset = training_dataset(sample_workdir, 1, 64, batch_size=4, patches_per_image=2, seed=0)
    batches = list(dataset.take(2))
    patches, labels = batches[0]
    assert patches.shape == (4, 64, 64, 1) and labels.shape == (4,)
    assert labels.numpy()[0] == labels.numpy()[1], "two patches of one image share its label"
    steps = training_steps(sample_workdir, 1, batch_size=4, patches_per_image=2)
    two = [p.numpy() for p, _ in training_dataset(sample_workdir, 1, 64, batch_size=4, patches_per_image=2, seed=0,
                                                   epochs=2)]
    assert len(two) == 2 * steps
    epoch_a, epoch_b = two[:steps], two[steps:]
    assert sum(len(p) for p in epoch_a) == sum(len(p) for p in epoch_b)
    assert not all(np.array_equal(a, b) for a, b in zip(epoch_a, epoch_b, strict=False)), "fresh patches each epoch"
    # Epoch 1 alone (a run resumed after epoch 0) is exactly the second epoch of the uninterrupted stream.
    resumed = [p.numpy() for p, _ in training_dataset(sample_workdir, 1, 64, batch_size=4, patches_per_image=2,
                                                       seed=0, first_epoch=1, epochs=2)]
    assert len(resumed) == steps
    for a, b in zip(resumed, epoch_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_augmentation_flips_and_rotates_but_keeps_range():
    patch = np.zeros((1, 32, 32, 1), np.float32)
    patch[0, 8:24, 4:10] = 200.0
    out = augment_patches(tf.constant(np.repeat(patch, 16, axis=0)), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == (16, 32, 32, 1) and out.min() >= 0.0 and out.max() <= 200.0 + 1e-3
    assert any(out[i, 8:24, 22:28].mean() > 100 for i in range(16)), "some patches are flipped"


def test_aggregate_vote_and_mean():
    probs = np.array([[[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1]]])
    votes, means = aggregate_patch_scores(probs)
    np.testing.assert_allclose(votes[0], [2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(means[0], probs[0].mean(axis=0))
