"""mergecore/export."""
