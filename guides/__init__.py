"""Stock amortized guides q(z | x); imported as ``pyro_vae.guides``."""

from pyro_vae.guides.adgm import AuxiliaryNormal
from pyro_vae.guides.amortized import AmortizedDelta, AmortizedNormal
from pyro_vae.guides.auto import AutoAmortizedNormal
from pyro_vae.guides.conditional import ConditionalNormal
from pyro_vae.guides.hierarchical import TopDownGuide

__all__ = [
    "AmortizedDelta",
    "AmortizedNormal",
    "AutoAmortizedNormal",
    "AuxiliaryNormal",
    "ConditionalNormal",
    "TopDownGuide",
]
