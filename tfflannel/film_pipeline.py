"""Film -> lung mask -> masked image -> patches -> scores: the one implementation, in TensorFlow ops.

`segment` (the cache), `predict-base` (through the cache), `predict --runs`, `explain`, `evaluate-seg`,
`train-seg`'s Jaccard and the SavedModel export all call these functions, so what is served is what was
evaluated. The chain, per film:

1. `equalize_gamma_tf`: histogram equalisation + gamma 0.5 (the original's pre-processing).
2. `segmenter_input`: letterbox (pad bottom/right to a square, then resize) to the segmenter's size.
3. the segmenter; `lung_mask`: argmax -> lung classes -> `clean_lung_mask` at the segmenter's resolution
   (8-connected components by label propagation -> the two largest -> holes filled).
4. `masked_view`: lung-fraction QC (a failing film keeps its whole image) -> the letterboxed 1024x1024
   image (from the equalised film by default, `patches.input`) times the mask, both uint8.
5. `evaluation_centres` + `crop_patches`: K lung-centred patches at fixed, seeded positions.
6. `aggregate_scores`: per-learner vote fractions and mean probabilities; the ensemble takes them.

TensorFlow-specific by design; `models/` stays plain Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

PATCH_INPUTS = ("equalized", "raw")


@dataclass(frozen=True)
class ViewSettings:
    """What turns a film and its square lung mask into the cached / served 1024x1024 view.

    Args:
        size: int. Side of the masked view. Defaults to `1024`.
        min_lung_fraction: float. QC lower bound on the lung share of the film. Defaults to `0.08`.
        max_lung_fraction: float. QC upper bound. Defaults to `0.65`.
        input: str. `equalized` (histogram equalisation + gamma, as the original fed its learners) or `raw`
            (the grey film). Defaults to `"equalized"`.
    """

    size: int = 1024
    min_lung_fraction: float = 0.08
    max_lung_fraction: float = 0.65
    input: str = "equalized"

    def __post_init__(self):
        if self.input not in PATCH_INPUTS:
            raise ValueError(f"patches.input must be one of {list(PATCH_INPUTS)}. Received: {self.input!r}.")

    @classmethod
    def from_config(cls, config):
        """From an `ExperimentConfig` (segmentation.cache_size, the QC bounds and patches.input)."""
        seg = config.segmentation
        return cls(seg.cache_size, seg.min_lung_fraction, seg.max_lung_fraction, config.patches.input)


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
    lut = tf.cast(lut, tf.float32)
    lut = tf.where(span > 0, tf.pow(lut / 255.0, gamma) * 255.0, tf.zeros_like(lut))
    return tf.gather(lut, levels)


def letterbox(image, size, method="bilinear"):
    """Pad (H, W, C) bottom/right to a square, then resize to (size, size, C), never stretching.

    Bilinear with antialiasing (an area-like filter when shrinking) for images, `nearest` for masks.

    Returns:
        (size, size, C) float32.
    """
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    square = tf.pad(image, [[0, side - height], [0, side - width], [0, 0]])
    return tf.image.resize(square, [size, size], method=method, antialias=method != "nearest")


def to_uint8(image):
    """Round and clip a float tensor to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def segmenter_input(film, size):
    """(H, W) integer film -> (size, size, 1) float32 in [0, 1]: equalised, gamma, letterboxed."""
    return tf.clip_by_value(letterbox(equalize_gamma_tf(film)[..., None], size), 0.0, 255.0) / 255.0


def _max_pool(x, size=3):
    return tf.nn.max_pool2d(x[None, ..., None], size, 1, "SAME")[0, ..., 0]


def label_components(mask, steps=8):
    """8-connected component labels of an (H, W) mask by iterative label propagation (max-pooling).

    Every foreground pixel starts with its own id (raster index + 1); a 3x3 max-pool restricted to the
    foreground spreads the largest id over each component until nothing changes (`steps` pools per loop
    test). Exact for masks of up to 2**24 pixels (float32 ids).

    Returns:
        (H, W) int32: 0 for background, one id per component.
    """
    foreground = tf.cast(tf.cast(mask, tf.bool), tf.float32)
    count = tf.size(foreground)
    ids = tf.reshape(tf.range(1, count + 1, dtype=tf.int32), tf.shape(foreground))
    labels = tf.cast(ids, tf.float32) * foreground

    def body(labels, _):
        new = labels
        for _ in range(steps):
            new = _max_pool(new) * foreground
        return new, tf.reduce_any(tf.not_equal(new, labels))

    labels, _ = tf.while_loop(lambda labels, changed: changed, body, [labels, tf.constant(True)])
    return tf.cast(labels, tf.int32)


def keep_largest_components(mask, n=2):
    """Keep the `n` largest 8-connected components of an (H, W) mask (ties: the first in raster order).

    Returns:
        (H, W) bool.
    """
    labels = label_components(mask)
    unique, index = tf.unique(tf.reshape(labels, [-1]))
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(index), index, tf.size(unique))
    sizes = tf.where(tf.equal(unique, 0), -1, sizes)
    top = tf.math.top_k(sizes, k=tf.minimum(n, tf.size(unique))).indices
    keep = tf.gather(unique, top)
    keep = tf.boolean_mask(keep, keep > 0)
    return tf.reduce_any(tf.equal(labels[..., None], keep), axis=-1) & (labels > 0)


def _dilate_cross(x):
    padded = tf.pad(x, [[1, 1], [1, 1]])
    return tf.reduce_max(tf.stack([x, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]),
                         axis=0)


def fill_holes(mask, steps=8):
    """Fill the background regions of an (H, W) mask not 4-connected to the border (as SciPy's default).

    Returns:
        (H, W) bool.
    """
    background = tf.cast(tf.logical_not(tf.cast(mask, tf.bool)), tf.float32)
    height, width = tf.shape(background)[0], tf.shape(background)[1]
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    border = tf.cast((rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1), tf.float32)
    outside = background * border

    def body(outside, _):
        new = outside
        for _ in range(steps):
            new = _dilate_cross(new) * background
        return new, tf.reduce_any(tf.not_equal(new, outside))

    outside, _ = tf.while_loop(lambda outside, changed: changed, body, [outside, tf.constant(True)])
    return tf.equal(outside, 0.0)


def clean_lung_mask(mask, components=2):
    """The two largest components, then holes filled: the mask every stage uses. (H, W) -> (H, W) bool."""
    return fill_holes(keep_largest_components(mask, components))


def lung_mask(probabilities, lung_classes):
    """Segmenter output (S, S, C) -> cleaned (S, S) bool lung mask (union of the lung classes)."""
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    lung = tf.reduce_any(tf.equal(predicted[..., None], tf.constant(list(lung_classes), tf.int32)), axis=-1)
    return clean_lung_mask(lung)


def film_mask(square_mask, height, width):
    """A mask on the letterboxed square -> (height, width) uint8 at the film's resolution (nearest)."""
    side = tf.maximum(height, width)
    full = tf.image.resize(tf.cast(square_mask, tf.uint8)[..., None], [side, side], method="nearest")
    return full[:height, :width, 0]


def masked_view(film, square_mask, settings, equalized=None):
    """QC the lung mask and build the masked, letterboxed view the learners see.

    Args:
        film: (H, W) integer tensor, the decoded film.
        square_mask: (S, S) bool, the cleaned mask on the segmenter's letterboxed square.
        settings: ViewSettings.
        equalized: optional (H, W) float32 `equalize_gamma_tf(film)`, when already computed.

    Returns:
        dict: `image` (size, size) uint8 masked view, `mask` (size, size) uint8 in {0, 1} (the whole film
        where QC failed), `lung_fraction` float32 (lung share of the film's area at the view's
        resolution), `mask_ok` bool.
    """
    size = settings.size
    height, width = tf.shape(film)[0], tf.shape(film)[1]
    side = tf.cast(tf.maximum(height, width), tf.float32)
    content_h = tf.cast(tf.round(tf.cast(height, tf.float32) * size / side), tf.int32)
    content_w = tf.cast(tf.round(tf.cast(width, tf.float32) * size / side), tf.int32)
    content = tf.cast((tf.range(size)[:, None] < content_h) & (tf.range(size)[None, :] < content_w), tf.uint8)
    big = tf.cast(tf.image.resize(tf.cast(square_mask, tf.uint8)[..., None], [size, size], method="nearest")[..., 0],
                  tf.uint8) * content
    fraction = tf.reduce_sum(tf.cast(big, tf.float32)) / tf.cast(tf.maximum(content_h * content_w, 1), tf.float32)
    ok = (fraction >= settings.min_lung_fraction) & (fraction <= settings.max_lung_fraction)
    mask = tf.where(ok, big, content)
    if settings.input == "equalized":
        source = equalize_gamma_tf(film) if equalized is None else equalized
    else:
        source = tf.cast(film, tf.float32)
    image = to_uint8(letterbox(source[..., None], size)[..., 0]) * mask
    return {"image": image, "mask": mask, "lung_fraction": fraction, "mask_ok": ok}


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


def global_view(film, resize, crop):
    """The original-FLANNEL learner's evaluation input: raw film letterboxed to `resize`, centre `crop`.

    Returns:
        (crop, crop, 1) float32 (uint8 values).
    """
    offset = (resize - crop) // 2
    image = to_uint8(letterbox(film[..., None], resize))
    return tf.cast(image[offset:offset + crop, offset:offset + crop], tf.float32)


def aggregate_scores(probabilities):
    """(B, K, C) patch probabilities -> (vote fractions (B, C), mean probabilities (B, C)), float32."""
    probabilities = tf.cast(probabilities, tf.float32)
    classes = tf.shape(probabilities)[-1]
    votes = tf.reduce_mean(tf.one_hot(tf.argmax(probabilities, axis=-1), classes, dtype=tf.float32), axis=1)
    return votes, tf.reduce_mean(probabilities, axis=1)
