"""Imaging: NIfTI input/output, the digital phantom, and maps from volumes."""
