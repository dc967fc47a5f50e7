"""`evaluate`: metrics.csv, table3.{csv,md}, plots and report.md for base-learner and ensemble runs."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from tfflannel import CLASS_NAMES, DISCLAIMER  # noqa: E402
from tfflannel.evaluation.metrics import classification_metrics, format_mean_std, metrics_rows, table3, table3_markdown  # noqa: E402
from tfflannel.utils import atomic_path, write_csv_atomic, write_text_atomic  # noqa: E402

METRIC_COLUMNS = ("run", "fold", "class", "precision", "recall", "f1", "support")


def load_run_predictions(run_dir, role="test"):
    """(name, fold, workdir, image_ids, labels, scores) of a run's predictions; scores = the prob_* columns."""
    from tfflannel.predictions import read_predictions
    from tfflannel.run_info import load_run_info

    info = load_run_info(run_dir)
    table = read_predictions(run_dir, role)
    return info.display_name, info.fold, str(info.workdir_path(run_dir)), table.image_ids, table.labels, table.probs


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(matrix, title, path):
    """Draw a confusion matrix with its counts and save it as a PNG (atomically).

    Args:
        matrix: array-like. (4, 4) counts, rows true class, columns predicted class, in `CLASS_NAMES` order.
        title: str. Plot title.
        path: str or Path. Output PNG.

    Returns:
        `path`.
    """
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASS_NAMES)), [c.replace("_", "\n") for c in CLASS_NAMES], fontsize=7)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def plot_curves(labels, scores, title, path):
    """Per-class and micro-averaged PR and ROC curves; scores used as they are (no second softmax)."""
    one_hot = np.eye(len(CLASS_NAMES))[labels]
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(10, 4.2))
    for index, name in enumerate([*CLASS_NAMES, "micro"]):
        truth = one_hot.ravel() if name == "micro" else one_hot[:, index]
        score = scores.ravel() if name == "micro" else scores[:, index]
        if truth.sum() == 0 or truth.sum() == len(truth):
            continue  # a curve needs both positives and negatives
        precision, recall, _ = precision_recall_curve(truth, score)
        fpr, tpr, _ = roc_curve(truth, score)
        style = {"linestyle": "--", "color": "black"} if name == "micro" else {}
        ax_pr.plot(recall, precision, label=f"{name} AP={average_precision_score(truth, score):.3f}", **style)
        ax_roc.plot(fpr, tpr, label=f"{name} AUC={auc(fpr, tpr):.3f}", **style)
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"PR: {title}")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax_roc.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    for ax in (ax_pr, ax_roc):
        ax.legend(fontsize=7)
        ax.title.set_fontsize(8)
    return _save(fig, path)


def plot_f1_bars(table, path):
    """Draw grouped bars of F1 per class and macro, one bar per run, with the std over folds as error bars.

    Args:
        table: list of dict. Table-3 rows (`run`, `class`, `f1_mean`, `f1_std`), as `table3` returns; a missing
            row is drawn as 0 and a NaN std (one fold) as no error bar.
        path: str or Path. Output PNG.

    Returns:
        `path`.
    """
    runs = list(dict.fromkeys(row["run"] for row in table))
    classes = [*CLASS_NAMES, "macro"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(classes)), 4))
    width = 0.8 / max(len(runs), 1)
    for index, run in enumerate(runs):
        values = [next((r["f1_mean"] for r in table if r["run"] == run and r["class"] == c), 0.0) for c in classes]
        errors = [next((0.0 if np.isnan(r["f1_std"]) else r["f1_std"]
                        for r in table if r["run"] == run and r["class"] == c), 0.0)
                  for c in classes]
        ax.bar(np.arange(len(classes)) + index * width, values, width, yerr=errors, label=run)
    ax.set_xticks(np.arange(len(classes)) + width * (len(runs) - 1) / 2, classes, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 (mean over folds)")
    ax.legend(fontsize=7)
    return _save(fig, path)


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


def evaluate_runs(run_dirs, out_dir, role="test"):
    """Evaluate every run on its `role` predictions and write the report; returns the Table-3 rows.

    Writes `metrics.csv` (per run, fold and class), `table3.csv` / `table3.md` (F1 mean and std over folds),
    `runs.json`, plots under `plots/` (confusion summed over folds, PR/ROC curves of the pooled folds, F1 bars)
    and `report.md` (with per-source metrics when the manifest has several sources).

    Args:
        run_dirs: list of str or Path. Base-learner or ensemble run directories with `predictions/<role>.csv`.
        out_dir: str or Path. Report directory, created if needed.
        role: str. The partition evaluated. Defaults to `"test"`.

    Returns:
        list of dict: the Table-3 rows (`run`, `class`, `f1_mean`, `f1_std`, `folds`).
    """
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    metric_rows, per_run, pooled, source_rows, summaries = [], {}, collections.defaultdict(list), [], []
    workdir = None
    for run_dir in run_dirs:
        name, fold, workdir_of_run, ids, labels, scores = load_run_predictions(run_dir, role)
        workdir = workdir or workdir_of_run
        metrics = classification_metrics(labels, scores)
        metric_rows += metrics_rows(name, fold, metrics)
        per_run[(name, fold)] = metrics
        pooled[name].append((labels, scores, ids))
        summaries.append({"run": name, "fold": fold, "dir": str(run_dir), "accuracy": metrics["accuracy"],
                          "macro_f1": metrics["macro_f1"], "confusion": metrics["confusion"]})
    write_csv_atomic(out_dir / "metrics.csv", metric_rows, METRIC_COLUMNS)
    table = table3(metric_rows)
    write_csv_atomic(out_dir / "table3.csv", table, ("run", "class", "f1_mean", "f1_std", "folds"))
    markdown = table3_markdown(table)
    write_text_atomic(out_dir / "table3.md", markdown + "\n")
    write_text_atomic(out_dir / "runs.json", json.dumps(summaries, indent=2) + "\n")

    data_text, sources, multi_source = _data_section(workdir) if workdir and Path(workdir, "manifest.csv").exists() \
        else ("(manifest not found)", {}, False)
    plots = []
    for name, parts in pooled.items():
        labels = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        confusion = np.sum([per_run[key]["confusion"] for key in per_run if key[0] == name], axis=0)
        plots.append((name, plot_confusion(confusion, f"{name} (summed over folds)",
                                           out_dir / "plots" / f"confusion_{_slug(name)}.png"),
                      plot_curves(labels, scores, name, out_dir / "plots" / f"curves_{_slug(name)}.png")))
        if multi_source:
            ids = [i for p in parts for i in p[2]]
            for source in sorted({sources.get(i, "?") for i in ids}):
                keep = np.array([sources.get(i, "?") == source for i in ids])
                m = classification_metrics(labels[keep], scores[keep])
                source_rows.append(f"| {name} | {source} | {keep.sum()} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} |")
    bars = plot_f1_bars(table, out_dir / "plots" / "f1_by_class.png")

    report = [
        "# tfflannel evaluation report", "", f"> {DISCLAIMER}", "",
        f"Partition evaluated: `{role}`. Per-class F1 is one-vs-rest on the numeric argmax of the scores; "
        "mean (std) over folds, std with ddof=1 (n/a for one fold).", "",
        "## Data", "", data_text, "",
        "## Table 3: F1 per class and macro-F1", "", markdown, "",
        f"![F1 by class](plots/{bars.name})", "",
    ]
    if source_rows:
        report += ["## Per source", "", "| model | source | images | accuracy | macro-F1 |", "|---|---|---|---|---|",
                   *source_rows, ""]
    report += ["## Per model", ""]
    for name, confusion_path, curves_path in plots:
        accs = [s["accuracy"] for s in summaries if s["run"] == name]
        spread = np.std(accs, ddof=1) if len(accs) > 1 else float("nan")
        report += [f"### {name}", "", f"accuracy {format_mean_std(np.mean(accs), spread)}", "",
                   f"![confusion](plots/{confusion_path.name}) ![curves](plots/{curves_path.name})", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(report))
    return table
