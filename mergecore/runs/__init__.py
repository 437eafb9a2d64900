"""mergecore/runs."""
