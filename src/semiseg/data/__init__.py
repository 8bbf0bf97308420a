"""Reading users' data: case discovery (BraTS 2021/2023, nnU-Net v2 raw), NIfTI I/O, label schemes,
and the synthetic phantom."""
