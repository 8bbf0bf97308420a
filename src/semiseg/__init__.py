"""semiseg: label-efficient medical image segmentation.

Two published semi-supervised methods (diffusion representations, embedding matching) and the
baselines they are judged against, behind one data layer, one training loop, one predict path
and one evaluation.
"""

__version__ = "0.1.0"

from semiseg.errors import SemisegInputError

__all__ = ["SemisegInputError", "__version__"]
