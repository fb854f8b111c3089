"""Datasets, image decoding and transforms."""
