"""Train the shipped lung segmenter: measure on held-out patients, then retrain on all pairs.

With `--cv K` the recipe is measured by patient-grouped K-fold cross-validation instead of one
split: `--pairs` may be given several times (sources are de-duplicated by image sha256, patients
linked across duplicates); --out then holds fold-1..K/, cv.json (JI and Dice per fold, mean (std),
with and without clean-up and flip TTA), cv.md and cv_worst.png (the 8 worst held-out masks).
`--table DIR [DIR ...]` prints the CV figures of several such --out folders as one Markdown table.

Backend-agnostic (plain Keras): on a GPU host without TensorFlow run it with
`KERAS_BACKEND=jax`. Writes, under --out:
  measure/  train-seg run on 80 % of the patients + eval.json (post-processed masks
            scored at the ground truth's own resolution, patients never seen in training)
  final/    the same recipe on every pair, plus lung_segmenter.json + weights to ship

The command that produced the shipped tfflannel/weights/ (an `fcdn_small` at 128x128; the
options' defaults, fcdn67 at 256x256 for 150 epochs, describe a larger model that was not shipped):
  python tools/train_segmenter.py --pairs ../shared/data/cxr-seg --model fcdn_small \
      --input-size 128 --epochs 60 --learning-rate 1e-3 --batch-size 4 --out runs/segmenter --stage both
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfflannel.config import load_config  # noqa: E402
from tfflannel.segmentation.inference import Segmenter, evaluate_segmenter  # noqa: E402
from tfflannel.segmentation.readers import read_pairs, split_pairs  # noqa: E402
from tfflannel.segmentation.train import build_segmenter, train_segmenter  # noqa: E402


def write_pairs_csv(pairs, path):
    """Write pairs as a CSV that `evaluate-seg --pairs` reads (absolute paths).

    Args:
        pairs: sequence of segmentation pairs (`tfflannel.segmentation.readers` records with
            `image`, `masks["lung"]` and `patient_id`).
        path: str or `pathlib.Path`. Output CSV, columns `image`, `mask`, `patient_id`.
    """
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "patient_id"])
        for pair in pairs:
            writer.writerow([str(Path(pair.image).resolve()), str(Path(pair.masks["lung"]).resolve()), pair.patient_id])


def main():
    """Parse the options, run the `measure` and/or `final` stages under --out and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", action="append", help="folder or CSV of image/mask pairs (repeatable)")
    parser.add_argument("--cv", type=int, default=0, metavar="K", help="patient-grouped K-fold cross-validation")
    parser.add_argument("--table", nargs="+", metavar="DIR", help="print the CV table of these --out folders")
    parser.add_argument("--model", default="fcdn67")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=["measure", "final", "both"], default="both")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop each training run after this long")
    parser.add_argument("--out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    if args.table:
        from tfflannel.segmentation.cross_validation import format_cv_table

        print(format_cv_table([(Path(d).name, json.loads((Path(d) / "cv.json").read_text())) for d in args.table]))
        return
    if not args.pairs or not args.out:
        parser.error("--pairs and --out are required")

    overrides = [f"segmentation.model={args.model}", f"segmentation.epochs={args.epochs}",
                 f"segmentation.batch_size={args.batch_size}", f"segmentation.learning_rate={args.learning_rate}",
                 f"segmentation.input_size={args.input_size}", f"segmentation.seed={args.seed}", *args.overrides]
    pairs = [pair for source in args.pairs for pair in read_pairs(source)]
    out = Path(args.out)
    if args.cv:
        from tfflannel.segmentation.cross_validation import cross_validate, format_cv_table

        config = load_config(overrides=overrides)
        result = cross_validate(config, pairs, out, folds=args.cv)
        table = format_cv_table([(out.name, result)])
        (out / "cv.md").write_text(table + "\n")
        print(table)
        return
    limit = args.max_minutes * 60 if args.max_minutes else None
    summary = {"pairs": len(pairs), "model": args.model, "epochs": args.epochs, "learning_rate": args.learning_rate,
               "batch_size": args.batch_size}
    if args.stage in ("measure", "both"):
        config = load_config(overrides=overrides + ["segmentation.validation_share=0.2"])
        started = time.time()
        metrics = train_segmenter(config, pairs, out / "measure", progress=True, time_limit_s=limit)
        _, valid = split_pairs(pairs, 0.2, args.seed)
        write_pairs_csv(valid, out / "measure" / "validation_pairs.csv")
        import keras

        model = keras.saving.load_model(out / "measure" / "model.keras", compile=False)
        evaluation = evaluate_segmenter(Segmenter(model, args.input_size, "lung"), valid, progress=False)
        (out / "measure" / "eval.json").write_text(json.dumps(evaluation, indent=2))
        summary["measure"] = dict(metrics, seconds=round(time.time() - started, 1),
                                  jaccard_mean=evaluation["jaccard_mean"], dice_mean=evaluation["dice_mean"],
                                  validation_images=evaluation["images"])
        print(json.dumps(summary["measure"], indent=2), flush=True)
    if args.stage in ("final", "both"):
        config = load_config(overrides=overrides + ["segmentation.validation_share=0"])
        started = time.time()
        metrics = train_segmenter(config, pairs, out / "final", progress=True, time_limit_s=limit)
        import keras

        trained = keras.saving.load_model(out / "final" / "model.keras", compile=False)
        model = build_segmenter(config)
        model.set_weights(trained.get_weights())
        weights_name = f"lung_{args.model}.weights.h5"
        model.save_weights(out / "final" / weights_name)
        descriptor = {
            "preset": args.model, "input_size": args.input_size, "classes": "lung", "weights": weights_name,
            "description": f"FC-DenseNet ({args.model}) lung segmenter trained on {len(pairs)} radiologist-masked CXRs",
            "training": {k: summary[k] for k in ("pairs", "epochs", "learning_rate", "batch_size")},
            "validation": summary.get("measure"),
        }
        (out / "final" / "lung_segmenter.json").write_text(json.dumps(descriptor, indent=2))
        summary["final"] = dict(metrics, seconds=round(time.time() - started, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
