"""`evaluate`: metrics.csv, table3.{csv,md}, plots and report.md for base-learner and ensemble runs."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from tfflannel import CLASS_NAMES, DISCLAIMER
from tfflannel.evaluation.calibration import apply_temperature, calibration_metrics, expected_calibration_error
from tfflannel.evaluation.intervals import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    classification_intervals,
    patient_groups,
)
from tfflannel.evaluation.metrics import classification_metrics, metrics_rows, table3, table3_markdown
from tfflannel.evaluation.plots import plot_confusion, plot_curves, plot_f1_bars
from tfflannel.evaluation.reliability import CALIBRATION_COLUMNS, calibration_markdown, plot_reliability
from tfflannel.utils import write_csv_atomic, write_text_atomic

METRIC_COLUMNS = ("run", "fold", "class", "precision", "recall", "f1", "support", "ci_low", "ci_high")
TABLE3_COLUMNS = ("run", "class", "f1_mean", "f1_std", "folds", "ci_low", "ci_high")


def load_run_predictions(run_dir, role="test"):
    """(name, fold, workdir, image_ids, labels, scores) of a run's predictions; scores = the prob_* columns."""
    from tfflannel.predictions import read_predictions
    from tfflannel.run_info import load_run_info

    info = load_run_info(run_dir)
    table = read_predictions(run_dir, role)
    return info.display_name, info.fold, str(info.workdir_path(run_dir)), table.image_ids, table.labels, table.probs


def _slug(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")[:80]


def display_path(path):
    """`path` as a report shows it: normalised (no `..`), relative to the working directory when inside it.

    Args:
        path: str or Path. Possibly relative with `..` parts (a run.yaml `workdir` joined to its run directory).

    Returns:
        str. E.g. `work/manifest.csv`, or the absolute path of a file outside the working directory.
    """
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _data_section(workdir):
    from tfflannel.data.manifest import load_manifest

    rows = load_manifest(workdir)
    counts = collections.Counter((r["source"], r["label"]) for r in rows)
    sources = sorted({r["source"] for r in rows})
    lines = ["| source | " + " | ".join(CLASS_NAMES) + " | total |", "|" + "---|" * (len(CLASS_NAMES) + 2)]
    for source in sources:
        values = [counts[(source, c)] for c in CLASS_NAMES]
        lines.append(f"| {source} | " + " | ".join(map(str, values)) + f" | {sum(values)} |")
    text = (f"Manifest `{display_path(Path(workdir) / 'manifest.csv')}`: {len(rows)} images, "
            f"{len({r['patient_id'] for r in rows})} patients, "
            f"{sum(r['split'] == 'test' for r in rows)} in the test set.\n\n"
            + "\n".join(lines))
    if len(sources) > 1:
        text += ("\n\n**Source confound.** COVID-19 images come from the adult COVID chest X-ray collection while most "
                 "other images are paediatric Kaggle films: a model can separate classes by source and age cues. "
                 "Per-source results are below; do not read these numbers as diagnostic accuracy.")
    return text, {r["image_id"]: r["source"] for r in rows}, len(sources) > 1


def _load_run(run_dir, role):
    """One run's predictions with the temperature it is served with and each film's patient group."""
    from tfflannel.ensemble.calibration import run_temperature

    name, fold, workdir, ids, labels, scores = load_run_predictions(run_dir, role)
    temperature = run_temperature(run_dir)
    groups, group_note = patient_groups(workdir, ids)
    probabilities = apply_temperature(scores, temperature.temperature) if temperature.fitted else scores
    return {"name": name, "fold": fold, "workdir": workdir, "ids": list(ids), "labels": labels, "scores": scores,
            "probabilities": probabilities, "groups": groups, "temperature": temperature, "group_note": group_note}


def _pool(parts, key):
    return np.concatenate([p[key] for p in parts]) if key != "ids" and key != "groups" else \
        [item for p in parts for item in p[key]]


def _calibration_row(name, parts):
    labels, probabilities = _pool(parts, "labels"), _pool(parts, "probabilities")
    row = {"run": name, **calibration_metrics(labels, probabilities),
           "temperature": ";".join(f"{p['temperature'].temperature:.4g}" for p in parts),
           "ece_before": expected_calibration_error(labels, _pool(parts, "scores")), "folds": len(parts)}
    return row


def _score_runs(run_dirs, role, n_resamples, seed):
    """Each run's metrics with their patient-bootstrap intervals.

    Returns:
        (metric rows, {(name, fold): metrics}, {name: [loaded runs]} in run order, runs.json summaries).
    """
    metric_rows, per_run, pooled, summaries = [], {}, collections.defaultdict(list), []
    for run_dir in run_dirs:
        part = _load_run(run_dir, role)
        name, fold = part["name"], part["fold"]
        metrics = classification_metrics(part["labels"], part["scores"])
        intervals = classification_intervals(part["labels"], part["scores"], part["groups"], n_resamples, seed)
        metric_rows += metrics_rows(name, fold, metrics, intervals)
        per_run[(name, fold)] = metrics
        pooled[name].append(part)
        summaries.append({"run": name, "fold": fold, "dir": str(run_dir), "accuracy": metrics["accuracy"],
                          "accuracy_ci": list(intervals["accuracy"]), "macro_f1": metrics["macro_f1"],
                          "macro_f1_ci": list(intervals["macro_f1"]), "confusion": metrics["confusion"],
                          "temperature": part["temperature"].temperature,
                          "temperature_note": part["temperature"].note})
    return metric_rows, per_run, pooled, summaries


def _model_plots_and_sources(out_dir, pooled, per_run, sources):
    """Each model's confusion, curves and reliability plots, and its per-source rows of the report.

    Args:
        out_dir: Path. The report directory (plots go to `plots/`).
        pooled: dict. {name: [loaded runs]}.
        per_run: dict. {(name, fold): metrics}.
        sources: dict or None. {image_id: source} when the manifest has several sources, else None.

    Returns:
        (list of (name, confusion path, curves path, reliability path), list of Markdown table rows).
    """
    plots, source_rows = [], []
    for name, parts in pooled.items():
        labels, scores, ids = _pool(parts, "labels"), _pool(parts, "scores"), _pool(parts, "ids")
        fitted = any(p["temperature"].fitted for p in parts)
        confusion = np.sum([per_run[key]["confusion"] for key in per_run if key[0] == name], axis=0)
        plots.append((name, plot_confusion(confusion, f"{name} (summed over folds)",
                                           out_dir / "plots" / f"confusion_{_slug(name)}.png"),
                      plot_curves(labels, scores, name, out_dir / "plots" / f"curves_{_slug(name)}.png"),
                      plot_reliability(labels, _pool(parts, "probabilities"), f"reliability: {name}",
                                       out_dir / "plots" / f"reliability_{_slug(name)}.png",
                                       before=scores if fitted else None)))
        if sources is not None:
            for source in sorted({sources.get(i, "?") for i in ids}):
                keep = np.array([sources.get(i, "?") == source for i in ids])
                m = classification_metrics(labels[keep], scores[keep])
                source_rows.append(f"| {name} | {source} | {keep.sum()} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} |")
    return plots, source_rows


def evaluate_runs(run_dirs, out_dir, role="test", n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
    """Evaluate every run on its `role` predictions and write the report; returns the Table-3 rows.

    Writes `metrics.csv` (per run, fold and class, with the patient-bootstrap 95 % interval of each F1, the
    macro-F1 and the accuracy), `table3.csv` / `table3.md` (F1 mean and std over folds, the interval of the
    folds' pooled predictions), `calibration.csv` (ECE, classwise ECE, Brier, NLL of the probabilities each run
    serves: an ensemble's after its temperature), `runs.json`, plots under `plots/` (confusion summed over folds,
    PR/ROC curves and a reliability diagram of the pooled folds, F1 bars) and `report.md` (with per-source
    metrics when the manifest has several sources).

    Args:
        run_dirs: list of str or Path. Base-learner or ensemble run directories with `predictions/<role>.csv`.
        out_dir: str or Path. Report directory, created if needed.
        role: str. The partition evaluated. Defaults to `"test"`.
        n_resamples: int. Patient-bootstrap resamples. Defaults to `2000`.
        seed: int. Seed of the resamples. Defaults to `0`.

    Returns:
        list of dict: the Table-3 rows (`run`, `class`, `f1_mean`, `f1_std`, `folds`, `ci_low`, `ci_high`).
    """
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    metric_rows, per_run, pooled, summaries = _score_runs(run_dirs, role, n_resamples, seed)
    pooled_intervals = {name: classification_intervals(_pool(parts, "labels"), _pool(parts, "scores"),
                                                       _pool(parts, "groups"), n_resamples, seed)
                        for name, parts in pooled.items()}
    write_csv_atomic(out_dir / "metrics.csv", metric_rows, METRIC_COLUMNS)
    table = table3(metric_rows, pooled_intervals)
    write_csv_atomic(out_dir / "table3.csv", table, TABLE3_COLUMNS)
    markdown = table3_markdown(table)
    write_text_atomic(out_dir / "table3.md", markdown + "\n")
    calibration_rows = [_calibration_row(name, parts) for name, parts in pooled.items()]
    write_csv_atomic(out_dir / "calibration.csv", calibration_rows, CALIBRATION_COLUMNS)
    bootstrap = {"n_resamples": int(n_resamples), "seed": int(seed), "level": BOOTSTRAP_LEVEL, "unit": "group_id"}
    write_text_atomic(out_dir / "runs.json", json.dumps({"bootstrap": bootstrap, "runs": summaries}, indent=2) + "\n")

    workdir = next(iter(pooled.values()))[0]["workdir"] if pooled else None
    data_text, sources, multi_source = _data_section(workdir) if workdir and Path(workdir, "manifest.csv").exists() \
        else ("(manifest not found)", {}, False)
    plots, source_rows = _model_plots_and_sources(out_dir, pooled, per_run, sources if multi_source else None)
    bars = plot_f1_bars(table, out_dir / "plots" / "f1_by_class.png")
    write_text_atomic(out_dir / "report.md", "\n".join(_report_lines(
        role, data_text, markdown, bars, source_rows, plots, pooled, pooled_intervals, calibration_rows, bootstrap)))
    for audit_md in sorted(out_dir.glob("audit*/audit.md")):        # audits made before (reproduce: one per fold)
        from tfflannel.audit.report import append_audit_section

        append_audit_section(out_dir / "report.md", audit_md, audit_md.parent.name)
    return table


def _report_lines(role, data_text, markdown, bars, source_rows, plots, pooled, intervals, calibration_rows,
                  bootstrap):
    several = any(len(parts) > 1 for parts in pooled.values())
    group_notes = sorted({p["group_note"] for parts in pooled.values() for p in parts if p["group_note"]})
    report = [
        "# tfflannel evaluation report", "", f"> {DISCLAIMER}", "",
        f"Partition evaluated: `{role}`. Per-class F1 is one-vs-rest on the numeric argmax of the scores; "
        "mean (std) over folds, std with ddof=1 (shown for several folds only).", "",
        f"**Intervals.** In brackets: the 95 % patient-bootstrap percentile interval ({bootstrap['n_resamples']} "
        f"resamples of the test partition's patients (`group_id`) with replacement, seed {bootstrap['seed']}; a "
        "resample keeps every film of a drawn patient). A class absent from a resample and never predicted there "
        "counts F1 0 (scikit-learn's `zero_division=0`, as the point estimate). "
        + ("With several folds the interval is computed on the pooled test predictions of each fold's run (a "
           "patient's films from every fold are drawn together), around the pooled F1, not the mean over folds. "
           if several else "")
        + "The interval reflects the sampling of test patients only, not the data's source confound.", "",
        *(f"- {note}" for note in group_notes), *([""] if group_notes else []),
        "## Data", "", data_text, "",
        "## Table 3: F1 per class, macro-F1 and accuracy", "", markdown, "",
        f"![F1 by class](plots/{bars.name})", "",
    ]
    if source_rows:
        report += ["## Per source", "", "| model | source | images | accuracy | macro-F1 |", "|---|---|---|---|---|",
                   *source_rows, ""]
    notes = {name: [p["temperature"].note for p in parts] for name, parts in pooled.items()}
    report += ["## Calibration", "",
               "Of the probabilities each run serves (an ensemble's after its temperature T, fitted by "
               "`train-ensemble` on validation films only; `ECE before T` is of its raw probabilities). ECE: 15 "
               "equal-width bins of the top-label probability, `sum_b (n_b / N) |acc_b - conf_b|`; classwise ECE: "
               "the same on each class's probability, averaged over the classes; Brier: `mean sum_c (p_c - y_c)^2` "
               "(0 to 2); NLL: mean `-log p_true`. Several folds: pooled test predictions, each fold's run with "
               "its own T (listed). Temperature scaling does not change the argmax, so F1 and accuracy are the "
               "same before and after.", "",
               *calibration_markdown(calibration_rows, notes), ""]
    report += ["## Per model", ""]
    for name, confusion_path, curves_path, reliability_path in plots:
        low, high = intervals[name]["accuracy"]
        accuracy = classification_metrics(_pool(pooled[name], "labels"), _pool(pooled[name], "scores"))["accuracy"]
        folds = len(pooled[name])
        report += [f"### {name}", "",
                   f"accuracy {accuracy:.3f} [{low:.3f}, {high:.3f}]" + (f" (pooled over {folds} folds)" if folds > 1
                                                                         else ""), "",
                   f"![confusion](plots/{confusion_path.name}) ![curves](plots/{curves_path.name}) "
                   f"![reliability](plots/{reliability_path.name})", ""]
    return report
