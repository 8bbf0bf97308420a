"""The methods, each a small module registered by name on the shared loop:

* ``ddpm``: DDPM pretraining on unlabelled slices (``semiseg pretrain``),
* ``supervised``: the U-Net baseline,
* ``ddpm-pixel``: MLP ensembles on diffusion decoder features (Baranchuk et al.),
* ``ddpm-finetune``: the pretrained noise predictor fine-tuned into a segmenter (Alshenoudy et al.),
* ``mean-teacher``: the EMA-teacher consistency baseline,
* ``embedmatch``: uncertainty-gated pseudo-labels with embedding matching (Xie et al.).
"""

from semiseg.methods import ddpm, ddpm_finetune, ddpm_pixel, embedmatch, mean_teacher, supervised  # noqa: F401  (registration)
from semiseg.methods.base import METHODS, Method, get_method, register

__all__ = ["METHODS", "Method", "get_method", "register"]
