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

The steps live in one module each: `preprocess` (1, 2), `components` and `masks` (3), `view` (4) and
`patches` (5, 6); every public name is importable from `tfflannel.film_pipeline`, where callers import it.
"""

from tfflannel.film_pipeline.components import (
    clean_lung_mask,
    fill_holes,
    keep_largest_components,
    label_components,
)
from tfflannel.film_pipeline.masks import (
    film_mask,
    flip_average,
    flip_disagreement,
    lung_mask,
    lung_masks,
    mask_confidence,
    segment_quality,
    upsample_nearest,
)
from tfflannel.film_pipeline.patches import (
    aggregate_scores,
    crop_patches,
    evaluation_centres,
    lung_bbox,
    sample_centres,
)
from tfflannel.film_pipeline.preprocess import equalize_gamma_tf, letterbox, segmenter_input, to_uint8
from tfflannel.film_pipeline.view import (
    CONDITIONS,
    CONFIDENCE_QC_OFF,
    ViewSettings,
    apply_condition,
    global_view,
    global_view_mask,
    masked_view,
    unmasked_view,
)

__all__ = [
    "CONDITIONS", "CONFIDENCE_QC_OFF", "ViewSettings", "aggregate_scores", "apply_condition", "clean_lung_mask",
    "crop_patches", "equalize_gamma_tf", "evaluation_centres", "fill_holes", "film_mask", "flip_average",
    "flip_disagreement", "global_view", "global_view_mask", "keep_largest_components", "label_components",
    "letterbox", "lung_bbox", "lung_mask", "lung_masks", "mask_confidence", "masked_view", "sample_centres",
    "segment_quality", "segmenter_input", "to_uint8", "unmasked_view", "upsample_nearest",
]
