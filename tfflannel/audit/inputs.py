"""Score base learners on counterfactual inputs: `normal`, `lungs_only`, `lungs_removed` (TensorFlow-specific).

Every input is made by the film pipeline (`tfflannel.film_pipeline`): the segmenter and the view settings
give each film its masked view and lung mask (`segmentation.view_maker.view_maker`, the code `segment` caches
with), then

- a patch learner sees K patches at the fixed, seeded evaluation centres of that mask
  (`evaluation_centres`) cut from the view under each condition (`masked_view(..., condition=...)`):
  `normal` is its `lungs_only` view, and `lungs_removed` uses the same K centres;
- a global learner sees `global_view(film, resize, crop, mask, condition)`.

Per learner and condition: (N, C) mean probabilities, vote fractions and (N, D) penultimate features (the
input of the `head_logits` layer, averaged over a film's patches), and where the learner looks
(`lung_attention`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfflannel.film_pipeline import (
    CONDITIONS,
    aggregate_scores,
    apply_condition,
    crop_patches,
    evaluation_centres,
    global_view,
    global_view_mask,
    unmasked_view,
)

MAX_ROWS = 256
"""Inputs (patches or crops) per model call."""


def feature_model(model):
    """The learner as `input -> (probabilities, penultimate features)` (the input of its `head_logits` layer)."""
    return keras.Model(model.inputs, [model.output, model.get_layer("head_logits").input])


def learner_inputs(film, view, info, condition, k, seed, settings):
    """The learner's input batch for one film under one condition, and the lung mask of each input pixel.

    Args:
        film: (H, W) uint8 array.
        view: dict. The film's masked view (`ViewMaker.views`): `image` (the lungs-only view), `mask`.
        info: RunInfo. The learner's run.yaml (kind, input_size, resize).
        condition: str. One of `CONDITIONS`; a patch learner's `normal` is its `lungs_only` view.
        k: int. Patches per film (patch learners).
        seed: int. Patch seed (`inference.seed`).
        settings: ViewSettings. The view the learner was trained on.

    Returns:
        tuple: `(inputs (P, S, S, 1) float32, masks (P, S, S) float32)`, P = K for a patch learner, 1 otherwise.
    """
    size = int(info.input_size)
    mask = tf.constant(view["mask"])
    if info.kind == "global":
        resize = int(info.resize)
        image = global_view(tf.constant(film), resize, size, mask, condition)
        return image[None], tf.cast(global_view_mask(mask, resize, size), tf.float32)[None]
    if condition == "lungs_removed":
        image = apply_condition(unmasked_view(tf.constant(film), settings), mask, condition)
    else:
        image = tf.constant(view["image"])
    centres = evaluation_centres(mask, k, seed)[None]
    patches = crop_patches(image[None, ..., None], centres, size)
    masks = crop_patches(tf.cast(mask, tf.float32)[None, ..., None], centres, size)[..., 0]
    return patches, masks


def lung_attention_shares(model, info, inputs, masks, predicted):
    """Where a learner looks: per film, the share of its attention inside the lung mask.

    A global learner: the positive Grad-CAM mass of the predicted class (`explain.gradcam.gradcam` at the
    backbone's last conv layer) inside the mask over its total (NaN when a map is all zero); one Grad-CAM call
    per predicted class. A patch learner: the share of its patch pixels inside the mask.

    Args:
        model: keras.Model. The learner.
        info: RunInfo.
        inputs: list of (P, S, S, 1) float32 arrays, each film's `normal` input.
        masks: list of (P, S, S) float32 arrays, the lung mask of each input pixel.
        predicted: (N,) int. The predicted class of each film.

    Returns:
        (N,) float array in [0, 1] (NaN where undefined).
    """
    shares = np.full(len(masks), np.nan)
    if info.kind != "global":
        return np.array([float(np.mean(m)) for m in masks])
    from tfflannel.explain.gradcam import gradcam
    from tfflannel.models.backbones import backbone_config

    layer = backbone_config(info.backbone).last_conv
    for target in sorted(set(int(c) for c in predicted)):
        chosen = np.flatnonzero(np.asarray(predicted) == target)
        cams = gradcam(model, np.concatenate([inputs[i] for i in chosen]), target, layer)
        for index, cam in zip(chosen, cams, strict=True):
            total = cam.sum()
            shares[index] = (cam * masks[index][0]).sum() / total if total > 0 else np.nan
    return shares


def score_films(model, info, films, views, k, seed, settings, conditions=CONDITIONS, attention=True):
    """Scores, features and attention of one learner on films under each condition.

    Args:
        model: keras.Model. A base learner (`learners.infer.read_run`).
        info: RunInfo. Its run.yaml.
        films: list of (H, W) uint8 arrays.
        views: list of dicts. Their masked views (`ViewMaker.views`), in the same order.
        k: int. Patches per film for a patch learner.
        seed: int. Patch seed.
        settings: ViewSettings. The view the learner was trained on.
        conditions: sequence of str. Defaults to `CONDITIONS`.
        attention: bool. Compute `lung_attention` (Grad-CAM for global learners). Defaults to `True`.

    Returns:
        dict: {condition: {"probs": (N, C), "votes": (N, C), "features": (N, D)}} and `"attention"`: (N,)
        float array (NaN where not computed).
    """
    scorer = feature_model(model)
    out = {condition: {"probs": [], "votes": [], "features": []} for condition in conditions}
    first_inputs, first_masks = [], []
    for condition in conditions:
        batches = [learner_inputs(film, view, info, condition, k, seed, settings)
                   for film, view in zip(films, views, strict=True)]
        if not batches:
            continue
        per_film = int(batches[0][0].shape[0])
        stacked = tf.concat([inputs for inputs, _ in batches], axis=0)
        parts = [scorer(stacked[start:start + MAX_ROWS], training=False) for start in range(0, len(stacked), MAX_ROWS)]
        probabilities = tf.reshape(tf.concat([p for p, _ in parts], axis=0), [len(films), per_film, -1])
        features = np.concatenate([np.asarray(f, float) for _, f in parts])
        votes, means = aggregate_scores(probabilities)
        out[condition]["probs"] += list(means.numpy())
        out[condition]["votes"] += list(votes.numpy())
        out[condition]["features"] += list(features.reshape(len(films), per_film, -1).mean(axis=1))
        if condition == conditions[0]:
            first_inputs = [inputs.numpy() for inputs, _ in batches]
            first_masks = [masks.numpy() for _, masks in batches]
    result = {condition: {name: np.asarray(values, float) for name, values in parts.items()}
              for condition, parts in out.items()}
    predicted = np.argmax(result[conditions[0]]["probs"], axis=1) if films else np.zeros(0, int)
    result["attention"] = lung_attention_shares(model, info, first_inputs, first_masks, predicted) if attention \
        else np.full(len(films), np.nan)
    return result
