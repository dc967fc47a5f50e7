"""Data stage: image decoding, source readers, manifest and patient-grouped splits."""
