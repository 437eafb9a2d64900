"""mergecore/cli."""
