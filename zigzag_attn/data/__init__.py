"""Calibration and evaluation data: shipped public-domain text and synthetic passkey prompts."""

from .passkey import IGNORE, Sample, passkey_samples
from .texts import SPLITS, load_text

__all__ = ["IGNORE", "SPLITS", "Sample", "load_text", "passkey_samples"]
