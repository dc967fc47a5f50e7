"""Train the shipped lung segmenter: measure the recipe by patient-grouped CV, then retrain on all pairs.

Backend-agnostic (plain Keras): on a GPU host without TensorFlow run it with
`KERAS_BACKEND=jax`. `--pairs` may be given several times: sources are de-duplicated
by image sha256 and patients linked across duplicates. Writes, under --out:
  cv/     --cv K folds (fold-1..K/: a train-seg run on the other folds' patients + scores.json),
          cv.json (JI and Dice per fold, mean (std), with and without the clean-up and flip TTA;
          the 8 worst films), cv.md, cv_worst.png (their masks: truth green, prediction red)
  final/  the same recipe on every pair, plus lung_segmenter.json + weights to ship; the
          descriptor turns flip TTA on when it raised the CV Jaccard index
`--table DIR [DIR ...]` prints the CV figures of several --out folders as one Markdown table, then each folder's
Jaccard index (clean + flip) fold by fold against the first's: the rule for shipping a new segmenter is "higher
on every fold".

The recipe is a config file (`--recipe`, default the shipped one, `tfflannel/configs/segmenter_shipped.yaml`);
`--model`, `--epochs`, ... and `--set segmentation.KEY=VALUE` override single values of it.

The command that produced the shipped tfflannel/weights/ is in tfflannel/weights/README.md.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfflannel.config import load_config, packaged_config  # noqa: E402
from tfflannel.segmentation.cross_validation import (  # noqa: E402
    RECIPE_KEYS,
    compare_folds,
    cross_validate,
    deduplicate_pairs,
    format_cv_table,
)
from tfflannel.segmentation.descriptor import (  # noqa: E402
    DESCRIPTOR_FILE,
    SegmenterDescriptor,
    write_segmenter_descriptor,
)
from tfflannel.segmentation.readers import read_pairs  # noqa: E402
from tfflannel.segmentation.train import build_segmenter, train_segmenter  # noqa: E402


def train_final(config, pairs, out, cross_validation=None, time_limit_s=None):
    """Train the recipe on every pair into `out` and write the shippable weights and descriptor.

    Args:
        config: ExperimentConfig.
        pairs: list of SegPair (already de-duplicated).
        out: Path.
        cross_validation: dict or None. `cv.json` of the same recipe; sets `flip_tta` and is recorded.
        time_limit_s: float or None.

    Returns:
        SegmenterDescriptor. The descriptor written to `out/lung_segmenter.json`.
    """
    import keras

    seg = config.segmentation
    fold_config = dataclasses.replace(config, segmentation=dataclasses.replace(seg, validation_share=0.0))
    metrics = train_segmenter(fold_config, pairs, out, progress=True, time_limit_s=time_limit_s)
    trained = keras.saving.load_model(out / "model.keras", compile=False)
    model = build_segmenter(config)
    model.set_weights(trained.get_weights())
    weights_name = f"lung_{seg.model}_{seg.input_size}.weights.h5"
    model.save_weights(out / weights_name)
    flip_tta, cv_record = False, None
    if cross_validation:
        summary = cross_validation["summary"]
        flip_tta = summary["clean+flip"]["jaccard_mean"] > summary["clean"]["jaccard_mean"]
        chosen = summary["clean+flip" if flip_tta else "clean"]
        cv_record = {
            "folds": cross_validation["folds"], "pairs": cross_validation["pairs"],
            "patients": cross_validation["patients"], "variant": "clean+flip" if flip_tta else "clean",
            **{k: round(chosen[k], 4) for k in ("jaccard_mean", "jaccard_std", "dice_mean", "dice_std")},
        }
    descriptor = SegmenterDescriptor(
        preset=seg.model, input_size=seg.input_size, classes=seg.classes, weights=weights_name, flip_tta=flip_tta,
        description=f"FC-DenseNet ({seg.model}, {seg.input_size} px) lung segmenter trained on {len(pairs)} "
                    "radiologist-masked CXRs",
        training={**{k: getattr(seg, k) for k in RECIPE_KEYS}, "pairs": len(pairs),
                  "seconds": metrics.get("train_seconds")},
        cross_validation=cv_record)
    write_segmenter_descriptor(out / DESCRIPTOR_FILE, descriptor)
    return descriptor


def main():
    """Parse the options, run the `measure` and/or `final` stages under --out and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", action="append", help="folder or CSV of image/mask pairs (repeatable)")
    parser.add_argument("--cv", type=int, default=5, metavar="K", help="patient-grouped K-fold cross-validation")
    parser.add_argument("--table", nargs="+", metavar="DIR", help="print the CV table of these --out folders")
    parser.add_argument("--recipe", help="config file of the recipe  [default: the shipped segmenter's, "
                        "tfflannel/configs/segmenter_shipped.yaml]")
    for flag, kind in (("--model", str), ("--epochs", int), ("--batch-size", int), ("--learning-rate", float),
                       ("--input-size", int), ("--loss", str), ("--seed", int)):
        parser.add_argument(flag, type=kind, help=f"override segmentation.{flag[2:].replace('-', '_')} of --recipe")
    parser.add_argument("--stage", choices=["cv", "final", "both"], default="both")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop each training run after this long")
    parser.add_argument("--out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    if args.table:
        results = []
        for folder in map(Path, args.table):
            found = [p for p in (folder / "cv.json", folder / "cv" / "cv.json") if p.is_file()]
            if not found:
                parser.error(f"{folder}: no cv.json or cv/cv.json (has its cross-validation finished?)")
            results.append((folder.name, json.loads(found[0].read_text())))
        print(format_cv_table(results))
        for name, result in results[1:]:
            compared = compare_folds(results[0][1], result)
            print(f"{name} against {results[0][0]} (JI, clean+flip): higher on {compared['higher']} of "
                  f"{compared['folds']} folds, by " + ", ".join(f"{d:+.4f}" for d in compared["deltas"]))
        return
    if not args.pairs or not args.out:
        parser.error("--pairs and --out are required")

    flags = ("model", "epochs", "batch_size", "learning_rate", "input_size", "loss", "seed")
    overrides = [f"segmentation.{key}={getattr(args, key)}" for key in flags if getattr(args, key) is not None]
    recipe = args.recipe or packaged_config("segmenter_shipped.yaml")
    pairs, dropped = deduplicate_pairs([pair for source in args.pairs for pair in read_pairs(source)])
    print(f"{len(pairs)} pairs of {len({p.patient_id for p in pairs})} patients ({dropped} duplicates dropped)")
    out = Path(args.out)
    config = load_config(recipe, [*overrides, *args.overrides])
    result = None
    if args.stage in ("cv", "both"):
        result = cross_validate(config, pairs, out / "cv", folds=args.cv)
        table = format_cv_table([(out.name, result)])
        (out / "cv" / "cv.md").write_text(table + "\n")
        print(table)
    if args.stage in ("final", "both"):
        if result is None and (out / "cv" / "cv.json").is_file():
            result = json.loads((out / "cv" / "cv.json").read_text())
        descriptor = train_final(config, pairs, out / "final", result,
                                 args.max_minutes * 60 if args.max_minutes else None)
        print(json.dumps(descriptor.as_dict(), indent=2))


if __name__ == "__main__":
    main()
