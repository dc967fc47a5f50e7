"""Grad-CAM (Selvaraju et al. 2017) with tf-keras-vis, and the patch-based "probabilistic Grad-CAM".

The probabilistic Grad-CAM of Oh, Park & Ye (IEEE TMI 2020) is a Grad-CAM per patch for the predicted class,
placed back at the patch position, averaged over the K patches covering each pixel, and masked to the lungs.

tf-keras-vis 0.8.7 works with Keras 3 here because our backbones are built flat on the model's
input, so the target conv layer is reachable by name (`BackboneConfig.last_conv`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfflannel import CLASS_NAMES


def gradcam(model, inputs, class_index, layer_name):
    """Unnormalised Grad-CAM maps for `class_index` at `layer_name`, upsampled to the input size.

    tf-keras-vis computes the CAM with the output activation replaced by linear (scores are logits), applies
    ReLU and upsamples bilinearly to the input size; `normalize_cam=False`, so the maps are NOT scaled to
    [0, 1]: they are non-negative with no upper bound, in the units of the class score. Keeping the raw
    scale lets `patch_gradcam` average maps of different patches before normalising once.

    Args:
        model: keras.Model. Classifier with softmax output; it is cloned, not modified.
        inputs: array-like. (N, H, W, C) model inputs, cast to float32.
        class_index: int. Output class whose score is explained.
        layer_name: str. Name of the convolutional layer whose activations and gradients are used.

    Returns:
        np.ndarray. (N, H, W) float64 maps, >= 0 (ReLU), unbounded above.
    """
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    explainer = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    inputs = np.asarray(inputs, np.float32)
    maps = explainer(CategoricalScore([int(class_index)] * len(inputs)), inputs, penultimate_layer=layer_name,
                     normalize_cam=False)
    maps = np.maximum(np.asarray(maps, np.float64), 0.0)
    return maps


def patch_gradcam(model, patches, centres, mask, class_index, layer_name):
    """Probabilistic Grad-CAM of K patches (K, S, S, 1) cut at `centres` of an image with lung `mask` (H, W).

    Returns an (H, W) map in [0, 1], 0 outside the lungs.
    """
    maps = gradcam(model, patches, class_index, layer_name)
    size = int(np.shape(patches)[1])
    height, width = np.shape(mask)
    total = np.zeros((height + size, width + size))
    count = np.zeros_like(total)
    pad = size // 2  # the canvas has `pad` extra pixels on top/left, so a patch starting at row - pad lands at row
    for (row, col), cam in zip(centres, maps, strict=True):
        total[int(row):int(row) + size, int(col):int(col) + size] += cam
        count[int(row):int(row) + size, int(col):int(col) + size] += 1
    average = (total / np.maximum(count, 1))[pad:pad + height, pad:pad + width]
    average = average * (np.asarray(mask) > 0)
    peak = average.max()
    return average / peak if peak > 0 else average


def explain_image(image, run_dir, class_name=None, k=32, seed=0, segmenter=None, view=None):
    """Explain one (H, W) uint8 image with the trained run in `run_dir` (see `explain_with_run`).

    The segmenter and view are first checked against those the run was trained on
    (`serving.checks.check_runs_match`), as `predict` and `export` do; K and the seed may differ from
    `predict-base`'s (the map shows the patches drawn here).

    Args:
        image: (H, W) uint8 film.
        run_dir: str or Path. A train-patch or train-global run.
        class_name: str or None. Class to explain; None: the predicted one. Defaults to `None`.
        k: int. Patches (patched runs). Defaults to `32`.
        seed: int. Patch seed. Defaults to `0`.
        segmenter: `segmentation.inference.Segmenter`. Defaults to the shipped one.
        view: `film_pipeline.ViewSettings`. Defaults to `ViewSettings()`.

    Returns:
        dict, as `explain_with_run`.

    Raises:
        InputError: an ensemble run, or a segmenter or view other than the run's.
    """
    from tfflannel.learners.infer import read_run
    from tfflannel.segmentation.inference import load_segmenter
    from tfflannel.serving.checks import check_runs_match

    model, info = read_run(run_dir)
    segmenter = segmenter or load_segmenter()
    check_runs_match(segmenter, [run_dir], [info], k=k, seed=seed, view=view, scores=False)
    return explain_with_run(image, model, info, class_name, k, seed, segmenter, view)


def explain_with_run(image, model, info, class_name, k, seed, segmenter, view=None):
    """Explain one (H, W) uint8 image with a loaded run (model and run.yaml info) and segmenter.

    The view, the patch positions and the global crop are the film pipeline's (`tfflannel.film_pipeline`), so
    the patches explained are those `predict-base` and the export classify for the same K and seed.

    Args:
        image: (H, W) uint8 film.
        model: keras.Model. The base learner.
        info: dict. Its run.yaml (kind, backbone, input_size, resize for global runs).
        class_name: str or None. Class to explain; None: the predicted one.
        k: int. Patches (patched runs).
        seed: int. Patch seed (`inference.seed`).
        segmenter: `segmentation.inference.Segmenter`.
        view: `film_pipeline.ViewSettings`. Defaults to `ViewSettings()`.

    Returns:
        dict with `image` (the image the map refers to), `mask`, `heatmap` (same size, [0, 1], zero outside the
        lungs), `probabilities` (dict), `target` (class explained), `centres` ((K, 2) patch centres, patched runs).
    """
    from tfflannel.film_pipeline import crop_patches, evaluation_centres, film_mask, global_view, letterbox
    from tfflannel.models.backbones import backbone_config
    from tfflannel.serving.pipeline import InferencePipeline

    size = int(info["input_size"])
    layer = backbone_config(info["backbone"]).last_conv
    film = tf.constant(image)
    pipeline = InferencePipeline(segmenter, [(model, info)], k=k, seed=seed, view=view)
    images, masks, _, ok = pipeline.views(lambda index: film, 1)
    masked, mask = images[0].numpy(), masks[0].numpy()
    centres = None
    if info["kind"] == "global":
        resize = int(info["resize"])
        offset = (resize - size) // 2
        view_image = global_view(film, resize, size).numpy()
        lung = letterbox(film_mask(mask, image.shape[0], image.shape[1])[..., None], resize,
                         "nearest").numpy()[offset:offset + size, offset:offset + size, 0]
        probabilities = np.asarray(model(view_image[None], training=False))[0]
        target = CLASS_NAMES.index(class_name) if class_name else int(np.argmax(probabilities))
        heatmap = gradcam(model, view_image[None], target, layer)[0]
        heatmap = heatmap * (lung > 0)
        heatmap = heatmap / heatmap.max() if heatmap.max() > 0 else heatmap
        shown, shown_mask = view_image[..., 0].astype(np.uint8), lung
    else:
        centres = evaluation_centres(tf.constant(mask), k, seed).numpy()
        patches = crop_patches(tf.constant(masked[None, ..., None]), tf.constant(centres[None], tf.int32), size)
        probabilities = np.asarray(model(patches, training=False)).mean(axis=0)
        target = CLASS_NAMES.index(class_name) if class_name else int(np.argmax(probabilities))
        heatmap = patch_gradcam(model, patches.numpy(), centres, mask, target, layer)
        shown, shown_mask = masked, mask
    return {"image": shown, "mask": shown_mask, "heatmap": heatmap, "target": CLASS_NAMES[target], "centres": centres,
            "probabilities": {c: float(p) for c, p in zip(CLASS_NAMES, probabilities, strict=True)}}


def save_explanation(result, path):
    """PNG: the image, the image with the lung outline, and the heat map overlay, titled with the probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfflannel import DISCLAIMER
    from tfflannel.utils import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(result["image"], cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(result["image"], cmap="gray")
    axes[1].contour(result["mask"], levels=[0.5], colors="lime", linewidths=0.8)
    axes[1].set_title("lung mask")
    axes[2].imshow(result["image"], cmap="gray")
    axes[2].imshow(result["heatmap"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[2].set_title(f"Grad-CAM: {result['target']}")
    for ax in axes:
        ax.axis("off")
    probs = ", ".join(f"{c} {p:.2f}" for c, p in result["probabilities"].items())
    fig.suptitle(f"{probs}\n{DISCLAIMER}", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
