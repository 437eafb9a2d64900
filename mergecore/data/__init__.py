"""mergecore/data."""
