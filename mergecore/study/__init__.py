"""The GLUE study (issue 9): LoRA experts on the offline MiniLM base, trained on real GLUE files, and the merge table."""
