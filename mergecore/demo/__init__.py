"""Demo data and helpers for mergecore."""
