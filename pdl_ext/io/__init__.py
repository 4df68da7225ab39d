"""Weights on disk: safe loading and atomic saving of state dicts, and the code-free reader of the
MDF authors' pickled discriminators."""
