"""Networks: the MONAI diffusion UNet with decoder feature hooks, and the segmentation U-Net."""
