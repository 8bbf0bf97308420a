"""Inference: any trained method applied to whole cases, written back in the input's geometry."""
