"""Activation data: stores on disk, shuffled batch streams, toy data with known ground truth."""
