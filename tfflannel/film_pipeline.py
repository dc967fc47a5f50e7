"""Film -> lung mask -> masked image -> patches -> scores: the one implementation, in TensorFlow ops.

`segment` (the cache), `predict-base` (through the cache), `predict --runs`, `explain`, `evaluate-seg`,
`train-seg`'s Jaccard and the SavedModel export all call these functions, so what is served is what was
evaluated. The chain, per film:

1. `equalize_gamma_tf`: histogram equalisation + gamma 0.5 (the original's pre-processing).
2. `segmenter_input`: letterbox (pad bottom/right to a square, then resize) to the segmenter's size.
3. the segmenter; `lung_mask`: argmax -> lung classes -> `clean_lung_mask` at the segmenter's resolution
   (8-connected components by label propagation -> the two largest -> holes filled); `segment_quality`
   also gives each mask its confidence and flip disagreement from the output on the film and on its mirror.
4. `masked_view`: lung-fraction (and, if set, mask-confidence) QC (a failing film keeps its whole image) ->
   the letterboxed 1024x1024 image (from the equalised film by default, `patches.input`) times the mask,
   both uint8.
5. `evaluation_centres` + `crop_patches`: K lung-centred patches at fixed, seeded positions.
6. `aggregate_scores`: per-learner vote fractions and mean probabilities; the ensemble takes them.

TensorFlow-specific by design; `models/` stays plain Keras.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import tensorflow as tf

from tfflannel.config import PATCH_INPUTS
from tfflannel.errors import InputError

CONDITIONS = ("normal", "lungs_only", "lungs_removed")
"""What a learner is shown (`apply_condition`): its usual input, only the lungs, or everything but the lungs."""
# Mask-confidence QC bounds at which they check nothing: off by default, and then not part of a cache key.
CONFIDENCE_QC_OFF = {"min_mask_confidence": 0.0, "max_flip_disagreement": 1.0}


@dataclass(frozen=True)
class ViewSettings:
    """What turns a film and its square lung mask into the cached / served 1024x1024 view.

    Args:
        size: int. Side of the masked view. Defaults to `1024`.
        min_lung_fraction: float. QC lower bound on the lung share of the film. Defaults to `0.08`.
        max_lung_fraction: float. QC upper bound. Defaults to `0.65`.
        input: str. `equalized` (histogram equalisation + gamma, as the original fed its learners) or `raw`
            (the grey film). Defaults to `"equalized"`.
        min_mask_confidence: float. QC lower bound on the mask confidence (`mask_confidence`); `0` checks
            nothing. Defaults to `0.0`.
        max_flip_disagreement: float. QC upper bound on the flip disagreement (`flip_disagreement`); `1` checks
            nothing. Defaults to `1.0`.
    """

    size: int = 1024
    min_lung_fraction: float = 0.08
    max_lung_fraction: float = 0.65
    input: str = "equalized"
    min_mask_confidence: float = 0.0
    max_flip_disagreement: float = 1.0

    def __post_init__(self):
        if self.input not in PATCH_INPUTS:
            raise InputError(f"patches.input must be one of {list(PATCH_INPUTS)}. Received: {self.input!r}.")
        for name in CONFIDENCE_QC_OFF:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"segmentation.{name} must be in [0, 1]. Received: {getattr(self, name)!r}.")

    @classmethod
    def from_config(cls, config):
        """From an `ExperimentConfig` (segmentation.cache_size, the QC bounds and patches.input)."""
        seg = config.segmentation
        return cls(seg.cache_size, seg.min_lung_fraction, seg.max_lung_fraction, config.patches.input,
                   seg.min_mask_confidence, seg.max_flip_disagreement)

    def key(self):
        """The settings as a dict for a cache key: the mask-confidence bounds only where they check something.

        So caches and runs made before those bounds existed, or with them off, keep their key.
        """
        fields = asdict(self)
        return {name: value for name, value in fields.items()
                if CONFIDENCE_QC_OFF.get(name, object()) != value}


def equalize_gamma_tf(image, gamma=0.5):
    """Histogram equalisation then gamma, as the original `pre_processing` (tested against it).

    The CDF of the grey levels from the image minimum to its maximum is rescaled linearly to [0, 255]
    (levels below the minimum map to 0), then raised to `gamma`.

    Args:
        image: (H, W) integer tensor (uint8 or uint16).
        gamma: float. Defaults to `0.5`.

    Returns:
        (H, W) float32 tensor in [0, 255].
    """
    levels = tf.cast(image, tf.int32)
    flat = tf.reshape(levels, [-1])
    hist = tf.math.bincount(flat, minlength=tf.reduce_max(flat) + 1, dtype=tf.float64)
    cdf = tf.cumsum(hist)
    low = tf.gather(cdf, tf.reduce_min(flat))
    high = cdf[-1]
    valid = (cdf >= low) & (cdf > 0)
    span = high - low
    lut = tf.where(valid, (cdf - low) * 255.0 / tf.maximum(span, 1e-12), 0.0)
    # The table is computed in float64 (Grappler turns pow(x, 0.5) into sqrt in graphs, not eagerly): one float32
    # table whichever way the function runs.
    lut = tf.where(span > 0, tf.pow(tf.cast(tf.cast(lut, tf.float32), tf.float64) / 255.0, gamma) * 255.0,
                   tf.zeros_like(lut))
    return tf.gather(tf.cast(lut, tf.float32), levels)


def letterbox(image, size, method="linear"):
    """Pad (H, W, C) bottom/right to a square, then resize to (size, size, C), never stretching.

    `linear` (images): area averaging when shrinking (OpenCV's INTER_AREA), bilinear when enlarging;
    `nearest` for masks and label maps.

    Returns:
        (size, size, C) float32.
    """
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    square = tf.pad(image, [[0, side - height], [0, side - width], [0, 0]])
    if method == "nearest":
        return tf.image.resize(square, [size, size], method="nearest")
    return tf.cond(side > size, lambda: tf.image.resize(square, [size, size], method="area"),
                   lambda: tf.image.resize(square, [size, size], method="bilinear"))


def to_uint8(image):
    """Round and clip a float tensor to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def segmenter_input(film, size):
    """(H, W) integer film -> (size, size, 1) float32 in [0, 1]: equalised, gamma, letterboxed."""
    return tf.clip_by_value(letterbox(equalize_gamma_tf(film)[..., None], size), 0.0, 255.0) / 255.0


def _as_batch(mask):
    """(H, W) or (B, H, W) -> ((B, H, W) float32 {0, 1}, whether a batch dimension was given)."""
    mask = tf.cast(tf.cast(mask, tf.bool), tf.float32)
    return (mask, True) if mask.shape.rank == 3 else (mask[None], False)


def _max_pool(x):
    return tf.nn.max_pool2d(x[..., None], 3, 1, "SAME")[..., 0]


def _run_max(values, inside):
    """Spread the maximum of `values` over every horizontal run of `inside` pixels in (B, H, W) at once.

    A run (4-connected pixels of one row) gets one id by a cumulative sum over its start pixels; one
    segment max per run then replaces many single-pixel propagation steps.
    """
    previous = tf.pad(inside, [[0, 0], [0, 0], [1, 0]])[:, :, :-1]
    starts = inside & tf.logical_not(previous)
    run = tf.reshape(tf.cumsum(tf.reshape(tf.cast(starts, tf.int32), [-1])), tf.shape(inside))
    run = tf.where(inside, run, 0)
    maxima = tf.math.unsorted_segment_max(tf.reshape(values, [-1]), tf.reshape(run, [-1]), tf.size(run) + 1)
    return tf.where(inside, tf.gather(maxima, run), values)


def _propagate(values, inside, diagonal):
    """Iterate row-run, column-run (and, with `diagonal`, 3x3) max propagation inside `inside` to a fixed point."""
    inside_t = tf.transpose(inside, [0, 2, 1])
    weight = tf.cast(inside, values.dtype)

    def body(values, _):
        new = _run_max(values, inside)
        new = tf.transpose(_run_max(tf.transpose(new, [0, 2, 1]), inside_t), [0, 2, 1])
        if diagonal:
            new = _max_pool(new) * weight
        return new, tf.reduce_any(tf.not_equal(new, values))

    values, _ = tf.while_loop(lambda values, changed: changed, body, [values, tf.constant(True)])
    return values


def label_components(mask):
    """8-connected component labels of (H, W) or (B, H, W) masks by iterative label propagation.

    Every foreground pixel starts with its own id (raster index + 1); the largest id spreads over each
    component, along whole row and column runs and through 3x3 max-pooling (the diagonal neighbours), until
    nothing changes. Exact for up to 2**24 pixels in all (float32 ids); batched masks share one loop.

    Returns:
        int32 of the mask's shape: 0 for background, one id per component.
    """
    foreground, batched = _as_batch(mask)
    ids = tf.reshape(tf.range(1, tf.size(foreground) + 1, dtype=tf.int32), tf.shape(foreground))
    labels = _propagate(tf.cast(ids, tf.float32) * foreground, foreground > 0, diagonal=True)
    labels = tf.cast(labels, tf.int32)
    return labels if batched else labels[0]


def keep_largest_components(mask, n=2):
    """Keep the `n` largest 8-connected components of (H, W) or (B, H, W) masks.

    Ties are broken towards the component whose last pixel in raster order comes first (its label).

    Returns:
        bool of the mask's shape.
    """
    foreground, batched = _as_batch(mask)
    labels = label_components(foreground)
    count, pixels = tf.shape(labels)[0], tf.size(labels[0])
    flat = tf.reshape(labels, [-1])
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(flat), flat, count * pixels + 1)
    sizes = tf.reshape(sizes[1:], [count, pixels])               # label id - 1 = global raster index
    top = tf.math.top_k(sizes, k=tf.minimum(n, pixels))
    ids = top.indices + 1 + tf.range(count)[:, None] * pixels
    ids = tf.where(top.values > 0, ids, -1)
    kept = tf.reduce_any(tf.equal(labels[..., None], ids[:, None, None, :]), axis=-1)
    return kept if batched else kept[0]


def fill_holes(mask):
    """Fill the background regions of (H, W) or (B, H, W) masks not 4-connected to the border (as SciPy).

    Returns:
        bool of the mask's shape.
    """
    foreground, batched = _as_batch(mask)
    background = 1.0 - foreground
    height, width = tf.shape(background)[1], tf.shape(background)[2]
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    border = tf.cast((rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1), tf.float32)
    outside = _propagate(background * border, background > 0, diagonal=False)
    filled = tf.equal(outside, 0.0)
    return filled if batched else filled[0]


def clean_lung_mask(mask, components=2):
    """The two largest components, then holes filled: the mask every stage uses. (B,) H, W -> bool."""
    return fill_holes(keep_largest_components(mask, components))


def flip_average(probabilities, flipped_probabilities):
    """Horizontal-flip test-time augmentation: the mean of the segmenter's output on a batch and on its mirror.

    Args:
        probabilities: (B, S, S, C) float tensor, the output on the inputs.
        flipped_probabilities: (B, S, S, C) float tensor, the output on the inputs mirrored left-right
            (not yet mirrored back).

    Returns:
        (B, S, S, C) float tensor.
    """
    return (tf.convert_to_tensor(probabilities) + tf.reverse(flipped_probabilities, axis=[2])) / 2.0


def lung_masks(probabilities, lung_classes, clean=True):
    """Segmenter output (B, S, S, C) -> cleaned (B, S, S) bool lung masks (union of the lung classes).

    Args:
        probabilities: (B, S, S, C) float tensor.
        lung_classes: sequence of int. Class indices that are lung.
        clean: bool. Keep the two largest components and fill holes (`clean_lung_mask`), as every stage does;
            `False` only to measure what the clean-up changes. Defaults to `True`.
    """
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    lung = tf.reduce_any(tf.equal(predicted[..., None], tf.constant(list(lung_classes), tf.int32)), axis=-1)
    return clean_lung_mask(lung) if clean else lung


def mask_confidence(probabilities, masks):
    """Mean max-probability of the segmenter's output inside each mask (0 for an empty mask).

    Args:
        probabilities: (B, S, S, C) float tensor, the output the masks were made from.
        masks: (B, S, S) bool or {0, 1} tensor.

    Returns:
        (B,) float32: the mean over the mask's pixels of max_c probabilities[..., c].
    """
    top = tf.reduce_max(tf.cast(probabilities, tf.float32), axis=-1)
    inside = tf.cast(tf.cast(masks, tf.bool), tf.float32)
    count = tf.reduce_sum(inside, axis=[1, 2])
    return tf.where(count > 0, tf.reduce_sum(top * inside, axis=[1, 2]) / tf.maximum(count, 1.0), 0.0)


def flip_disagreement(masks, other_masks):
    """Share of the union of two masks where they differ: |A xor B| / |A or B| = 1 - Jaccard(A, B); 0 if both empty.

    Args:
        masks: (B, S, S) bool or {0, 1} tensor.
        other_masks: (B, S, S) bool or {0, 1} tensor.

    Returns:
        (B,) float32 in [0, 1].
    """
    a, b = tf.cast(masks, tf.bool), tf.cast(other_masks, tf.bool)
    union = tf.reduce_sum(tf.cast(a | b, tf.float32), axis=[1, 2])
    differ = tf.reduce_sum(tf.cast(tf.math.logical_xor(a, b), tf.float32), axis=[1, 2])
    return tf.where(union > 0, differ / tf.maximum(union, 1.0), 0.0)


def segment_quality(probabilities, flipped_probabilities, lung_classes, flip_tta=False):
    """Lung masks and how sure the segmenter is of them, from its output on the films and on their mirrors.

    The one implementation `segment` (the cache) and the SavedModel export call. The masks are those every
    stage uses: `lung_masks` of the flip-averaged output (`flip_average`) with `flip_tta`, else of
    `probabilities`. Per film:

    - `mask_confidence`: `mask_confidence` of that output inside that mask (at the segmenter's resolution).
    - `flip_disagreement`: `flip_disagreement` of the argmax lung mask of `probabilities` and that of
      `flipped_probabilities` mirrored back, both before the clean-up: 1 - Jaccard of what the segmenter sees in
      a film and in its mirror (stray blobs count: they are its doubt too, and cleaning two more masks per film
      would cost more than the segmenter itself).

    The two passes are those flip TTA needs, so with `flip_tta` the numbers cost no extra model call.

    Args:
        probabilities: (B, S, S, C) float tensor, the segmenter's output on the inputs.
        flipped_probabilities: (B, S, S, C) float tensor, its output on the inputs mirrored left-right (not
            mirrored back).
        lung_classes: sequence of int. Class indices that are lung.
        flip_tta: bool. Masks from the flip-averaged output. Defaults to `False`.

    Returns:
        dict: `masks` (B, S, S) bool, `mask_confidence` (B,) float32, `flip_disagreement` (B,) float32.
    """
    probabilities = tf.cast(probabilities, tf.float32)
    flipped_probabilities = tf.cast(flipped_probabilities, tf.float32)
    used = flip_average(probabilities, flipped_probabilities) if flip_tta else probabilities
    masks = lung_masks(used, lung_classes)
    film = lung_masks(probabilities, lung_classes, clean=False)
    mirror = lung_masks(tf.reverse(flipped_probabilities, axis=[2]), lung_classes, clean=False)
    return {"masks": masks, "mask_confidence": mask_confidence(used, masks),
            "flip_disagreement": flip_disagreement(film, mirror)}


def lung_mask(probabilities, lung_classes):
    """One film's segmenter output (S, S, C) -> cleaned (S, S) bool lung mask (`lung_masks` of a batch of one)."""
    return lung_masks(probabilities[None], lung_classes)[0]


def film_mask(square_mask, height, width):
    """A mask on the letterboxed square -> (height, width) uint8 at the film's resolution (nearest)."""
    side = tf.maximum(height, width)
    full = tf.image.resize(tf.cast(square_mask, tf.uint8)[..., None], [side, side], method="nearest")
    return full[:height, :width, 0]


def upsample_nearest(mask, size):
    """(S, S) -> (size, size) nearest neighbour; a block repeat when `size` is a multiple of S (same result, faster)."""
    side = tf.shape(mask)[0]
    return tf.cond(tf.equal(size % side, 0),
                   lambda: tf.repeat(tf.repeat(mask, size // side, axis=0), size // side, axis=1),
                   lambda: tf.image.resize(mask[..., None], [size, size], method="nearest")[..., 0])


def masked_view(film, square_mask, settings, equalized=None, confidence=None, disagreement=None,
                condition="lungs_only"):
    """QC the lung mask and build the masked, letterboxed view the learners see.

    The lung fraction is measured on the segmenter's square (the mask's own resolution) over the film's
    part of it; a film outside the QC bounds keeps its whole image (mask = the film's area). Where
    `settings` sets them, the mask confidence must also be >= `min_mask_confidence` and the flip
    disagreement <= `max_flip_disagreement` (`segment_quality`).

    Args:
        film: (H, W) integer tensor, the decoded film.
        square_mask: (S, S) bool, the cleaned mask on the segmenter's letterboxed square.
        settings: ViewSettings.
        equalized: optional (H, W) float32 `equalize_gamma_tf(film)`, when already computed.
        confidence: optional float32 scalar, the mask's `mask_confidence`. Needed if the settings bound it.
        disagreement: optional float32 scalar, the mask's `flip_disagreement`. Needed if the settings bound it.
        condition: str. `lungs_only` (the view the patch learners see), `lungs_removed` (everything but the lungs,
            for the shortcut audit) or `normal` (no mask applied). Defaults to `"lungs_only"`.

    Returns:
        dict: `image` (size, size) uint8 masked view, `mask` (size, size) uint8 in {0, 1}, `lung_fraction`
        float32, `mask_ok` bool.

    Raises:
        ValueError: the settings bound the confidence or disagreement and it was not given.
    """
    height, width = tf.shape(film)[0], tf.shape(film)[1]
    side = tf.cast(tf.maximum(height, width), tf.float32)
    seg_size = tf.shape(square_mask)[0]
    content_h = tf.cast(tf.round(tf.cast(height * seg_size, tf.float32) / side), tf.int32)
    content_w = tf.cast(tf.round(tf.cast(width * seg_size, tf.float32) / side), tf.int32)
    content = (tf.range(seg_size)[:, None] < content_h) & (tf.range(seg_size)[None, :] < content_w)
    lung = tf.cast(square_mask, tf.bool) & content
    fraction = tf.reduce_sum(tf.cast(lung, tf.float32)) / tf.cast(tf.maximum(content_h * content_w, 1), tf.float32)
    ok = (fraction >= settings.min_lung_fraction) & (fraction <= settings.max_lung_fraction)
    for value, name in ((confidence, "min_mask_confidence"), (disagreement, "max_flip_disagreement")):
        bound = getattr(settings, name)
        if bound == CONFIDENCE_QC_OFF[name]:
            continue
        if value is None:
            raise ValueError(f"masked_view: settings.{name}={bound} needs the mask's {name[4:]}; pass it")
        value = tf.cast(value, tf.float32)
        ok = ok & (value >= bound if name.startswith("min") else value <= bound)
    small = tf.cast(tf.where(ok, lung, content), tf.uint8)
    mask = upsample_nearest(small, settings.size)
    image = apply_condition(unmasked_view(film, settings, equalized), mask, condition)
    return {"image": image, "mask": mask, "lung_fraction": fraction, "mask_ok": ok}


def unmasked_view(film, settings, equalized=None):
    """The letterboxed (size, size) uint8 view of a film before the lung mask (equalised or raw per `settings`).

    Args:
        film: (H, W) integer tensor.
        settings: ViewSettings.
        equalized: optional (H, W) float32 `equalize_gamma_tf(film)`, when already computed.
    """
    if settings.input == "equalized":
        source = equalize_gamma_tf(film) if equalized is None else equalized
    else:
        source = tf.cast(film, tf.float32)
    return to_uint8(letterbox(source[..., None], settings.size)[..., 0])


def apply_condition(image, mask, condition):
    """An image under one of `CONDITIONS`: as is, zero outside the lung mask, or zero inside it.

    Args:
        image: (..., H, W[, 1]) tensor.
        mask: {0, 1} or bool tensor of the image's shape (or broadcastable to it): the lungs.
        condition: str. `normal`, `lungs_only` or `lungs_removed`.

    Returns:
        Tensor of the image's shape and dtype.

    Raises:
        ValueError: an unknown condition.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {list(CONDITIONS)}. Received: {condition!r}.")
    if condition == "normal":
        return image
    lung = tf.cast(tf.cast(mask, tf.bool), image.dtype)
    return image * (lung if condition == "lungs_only" else 1 - lung)


def lung_bbox(mask):
    """(ymin, xmin, ymax, xmax) int64 of an (H, W) mask's foreground, exclusive max; zeros if empty."""
    rows = tf.where(tf.reduce_any(mask > 0, axis=1))[:, 0]
    cols = tf.where(tf.reduce_any(mask > 0, axis=0))[:, 0]
    return tf.cond(tf.size(rows) > 0,
                   lambda: tf.stack([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]),
                   lambda: tf.zeros([4], tf.int64))


def sample_centres(mask, k, seed):
    """(k, 2) int32 lung-pixel centres drawn jointly with a stateless RNG; image centre if no lung."""
    coords = tf.cast(tf.where(mask > 0), tf.int32)
    count = tf.shape(coords)[0]
    index = tf.random.stateless_uniform([k], seed=seed, minval=0, maxval=tf.maximum(count, 1), dtype=tf.int32)
    centre = tf.stack([tf.shape(mask)[0] // 2, tf.shape(mask)[1] // 2])
    return tf.cond(count > 0, lambda: tf.gather(coords, index), lambda: tf.tile(centre[None], [k, 1]))


def evaluation_centres(mask, k, seed):
    """The fixed evaluation patch centres of one view: a function of (mask, K, seed) only.

    Used by predict-base's tf.data pipeline, training's validation, `explain` and the export, so the same
    seed gives the same positions everywhere.

    Args:
        mask: (H, W) view mask.
        k: int. Number of patches.
        seed: int or int64 scalar tensor. `inference.seed`.

    Returns:
        (k, 2) int32 (row, col).
    """
    return sample_centres(mask, k, tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]))


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
    return tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, box_indices, [size, size],
                                    method="nearest", extrapolation_value=0.0)


def global_view(film, resize, crop, square_mask=None, condition="normal"):
    """The original-FLANNEL learner's evaluation input: raw film letterboxed to `resize`, centre `crop`.

    Args:
        film: (H, W) integer tensor.
        resize: int. Side of the letterboxed film.
        crop: int. Side of the centre crop.
        square_mask: optional (S, S) lung mask on the film's letterboxed square (a masked view's `mask`), needed
            for a `condition` other than `normal`; resized (nearest) to `resize`.
        condition: str. One of `CONDITIONS` (`apply_condition`). Defaults to `"normal"`.

    Returns:
        (crop, crop, 1) float32 (uint8 values).
    """
    offset = (resize - crop) // 2
    image = to_uint8(letterbox(film[..., None], resize))
    if condition != "normal":
        lung = letterbox(tf.cast(square_mask, tf.uint8)[..., None], resize, "nearest")
        image = apply_condition(image, lung, condition)
    return tf.cast(image[offset:offset + crop, offset:offset + crop], tf.float32)


def global_view_mask(square_mask, resize, crop):
    """The lung mask of `global_view`'s crop: (crop, crop) uint8 from a mask on the letterboxed square."""
    offset = (resize - crop) // 2
    lung = to_uint8(letterbox(tf.cast(square_mask, tf.uint8)[..., None], resize, "nearest"))
    return lung[offset:offset + crop, offset:offset + crop, 0]


def aggregate_scores(probabilities):
    """(B, K, C) patch probabilities -> (vote fractions (B, C), mean probabilities (B, C)), float32."""
    probabilities = tf.cast(probabilities, tf.float32)
    classes = tf.shape(probabilities)[-1]
    votes = tf.reduce_mean(tf.one_hot(tf.argmax(probabilities, axis=-1), classes, dtype=tf.float32), axis=1)
    return votes, tf.reduce_mean(probabilities, axis=1)
