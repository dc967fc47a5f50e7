"""The shortcut and confound audit: does a learner look at the lungs, or at the film's source?

`tfflannel.audit.run.audit_runs` is the entry point (CLI `audit`, `reproduce`, `demo`); docs/evaluation.md
describes the conditions, the probe, the rule and audit.json's schema.
"""
