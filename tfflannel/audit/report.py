"""audit.json, audit.md and the audit's figures, each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfflannel import CLASS_NAMES, DISCLAIMER
from tfflannel.film_pipeline import CONDITIONS
from tfflannel.utils import atomic_path, write_text_atomic


def _number(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _probe_text(probe, note):
    if probe is None:
        return f"n/a ({note})" if note else "n/a"
    return f"{probe['auc']:.3f} [{_number(probe['ci_low'])}, {_number(probe['ci_high'])}] (n={probe['n']})"


def rule_text(rule):
    """The verdict rule in words, with the thresholds used."""
    return (f"A class is a **shortcut class** when its F1 on `lungs_removed` input is at least {rule['kept_share']:g} "
            f"of its F1 on `normal` input while its `normal` F1 is at least {rule['min_gain']:g} above the F1 of "
            "always predicting that class (2p / (1 + p) for its prevalence p among the films audited) "
            "(config `audit.kept_share`, `audit.min_gain`). A learner has `shortcut: true` when it has one.")


def plot_conditions(result, path):
    """Macro-F1 of each learner (and the ensemble) per condition, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(result["learners"]) + ([result["ensemble"]] if result["ensemble"] else [])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(entries) + 2), 3.6))
    width = 0.8 / len(CONDITIONS)
    for offset, condition in enumerate(CONDITIONS):
        values = [entry["conditions"][condition]["macro_f1"] for entry in entries]
        ax.bar(np.arange(len(entries)) + offset * width, values, width, label=condition)
    ax.set_xticks(np.arange(len(entries)) + width * (len(CONDITIONS) - 1) / 2)
    ax.set_xticklabels([entry["run"] for entry in entries], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("macro-F1 (test)")
    ax.legend(fontsize=8)
    ax.set_title(f"Counterfactual inputs\n{DISCLAIMER}", fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def format_audit(result):
    """audit.md: the conditions, attention, probes, verdicts, strata and the rule."""
    lines = ["# Does it look at the lungs? Shortcut and confound audit", "", f"> {DISCLAIMER}", "",
             f"Partition: `{result['partition']}`, {result['n']} films; patches K={result['k']}, "
             f"seed {result['seed']}. "
             "Inputs: `normal` (what the learner was trained on), `lungs_only` (zero outside the lung mask; for a "
             "patch learner that is its normal input), `lungs_removed` (the lungs set to zero, the rest kept; a "
             "patch learner uses the same K patch centres as for `normal`).", "",
             "## Rule", "", rule_text(result["rule"]), "",
             "## Learners", "",
             "| run | mode | macro-F1 normal | lungs_only | lungs_removed | lung attention | source probe AUC "
             "[95% CI] | shortcut classes |", "|---|---|---|---|---|---|---|---|"]
    for entry in result["learners"]:
        c = entry["conditions"]
        lines.append(f"| {entry['run']} | {entry['mode']} | {c['normal']['macro_f1']:.3f} | "
                     f"{c['lungs_only']['macro_f1']:.3f} | {c['lungs_removed']['macro_f1']:.3f} | "
                     f"{_number(entry['lung_attention'])} | "
                     f"{_probe_text(entry['source_probe'], entry['probe_notes'].get('source'))} | "
                     f"{', '.join(entry['shortcut_classes']) or 'none'} |")
    if result["ensemble"]:
        c = result["ensemble"]["conditions"]
        lines += ["", f"Ensemble `{result['ensemble']['run']}` (fed its learners' scores on each condition): macro-F1 "
                  f"normal {c['normal']['macro_f1']:.3f}, lungs_only {c['lungs_only']['macro_f1']:.3f}, "
                  f"lungs_removed {c['lungs_removed']['macro_f1']:.3f}."]
    lines += ["", "![conditions](plots/audit_conditions.png)", "", "## Per-class F1 by condition", "",
              "| run | condition | " + " | ".join(CLASS_NAMES) + " |", "|" + "---|" * (len(CLASS_NAMES) + 2)]
    for entry in result["learners"] + ([result["ensemble"]] if result["ensemble"] else []):
        for condition in CONDITIONS:
            f1 = entry["conditions"][condition]["f1"]
            lines.append(f"| {entry['run']} | {condition} | " + " | ".join(f"{f1[n]:.3f}" for n in CLASS_NAMES) + " |")
    lines += ["", "## What the features carry", "",
              "Logistic regression on the penultimate features, patient-grouped cross-validation, ROC AUC with a "
              "patient-bootstrap 95% interval (0.5: the attribute cannot be read off the features).", "",
              "| run | source | view | age group |", "|---|---|---|---|"]
    for entry in result["learners"]:
        notes = entry["probe_notes"]
        lines.append(f"| {entry['run']} | {_probe_text(entry['source_probe'], notes.get('source'))} | "
                     f"{_probe_text(entry['view_probe'], notes.get('view'))} | "
                     f"{_probe_text(entry['age_group_probe'], notes.get('age_group'))} |")
    lines += ["", "## Strata (normal input)", "", "| run | by | value | n | macro-F1 | accuracy | class counts |",
              "|---|---|---|---|---|---|---|"]
    for row in result["strata"]:
        counts = ", ".join(f"{name} {count}" for name, count in row["counts"].items() if count)
        lines.append(f"| {row['run']} | {row['by']} | {row['value']} | {row['n']} | {row['macro_f1']:.3f} | "
                     f"{row['accuracy']:.3f} | {counts} |")
    single = result["single_source_classes"]
    if single:
        lines += ["", "**Confound.** " + "; ".join(f"every `{name}` film comes from `{source}`"
                                                   for name, source in single.items())
                  + ": for these classes source and class cannot be told apart in this data."]
    return "\n".join(lines) + "\n"


def finite(value):
    """`value` with every NaN or infinite float (nested in dicts and lists) replaced by `None` (JSON null)."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_audit(result, out_dir):
    """Write OUT/audit.json, OUT/audit.md and OUT/plots/audit_conditions.png atomically; returns audit.md's path."""
    result = finite(result)
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    plot_conditions(result, out_dir / "plots" / "audit_conditions.png")
    write_text_atomic(out_dir / "audit.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_text_atomic(out_dir / "audit.md", format_audit(result))
    return out_dir / "audit.md"


def append_audit_section(report_md, audit_md, title=None):
    """Append audit.md as a `##` section of an evaluation report.md, atomically; a rerun replaces that section.

    Args:
        report_md: str or Path. The report to extend.
        audit_md: str or Path. The audit's Markdown (`audit_runs` writes it).
        title: str or None. Told after the heading, e.g. `audit_f2`, so several audits (one per fold) each keep
            their own section. Defaults to `None` (one audit).

    Returns:
        Path. `report_md`.
    """
    report_md, audit_md = Path(report_md), Path(audit_md)
    text = report_md.read_text()
    first, _, rest = audit_md.read_text().partition("\n")
    heading = "#" + first + (f" ({title})" if title else "")      # audit.md's own title, one level down
    marker = "\n" + heading + "\n"
    if marker in text:
        start = text.index(marker)
        following = text.find("\n## Does it look at the lungs?", start + len(marker))
        text = text[:start] + (text[following:] if following != -1 else "")
    body = heading + "\n" + "\n".join(("#" + line) if line.startswith("## ") else line for line in rest.splitlines())
    write_text_atomic(report_md, text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n")
    return report_md
