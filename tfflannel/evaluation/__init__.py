"""Evaluation stage: per-class and macro metrics, Table 3 over folds, plots and the report."""
