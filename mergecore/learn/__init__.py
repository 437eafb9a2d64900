"""mergecore/learn."""
