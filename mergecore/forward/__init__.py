"""mergecore/forward."""
