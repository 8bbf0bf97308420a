"""Preprocessing: canonical orientation, cropping, normalisation, slicing, the on-disk cache and
patient-level splits."""
