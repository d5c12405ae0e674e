"""Backbones and feature extraction: dataset images -> cached features file (SPEC §2)."""
