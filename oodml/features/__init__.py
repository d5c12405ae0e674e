"""Backbones and feature extraction: dataset images -> cached features file (docs/formats.md)."""
