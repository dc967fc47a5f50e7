"""The bundled real sample: paths to its classification folder and segmentation pairs."""

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
CLS_DIR = SAMPLE_DIR / "cls"
SEG_DIR = SAMPLE_DIR / "seg"
