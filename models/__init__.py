"""Stock Pyro models p(z) p(x | z); imported as ``pyro_vae.models``."""

from pyro_vae.models.adgm import AuxiliaryDGM
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.models.vae import VAE
from pyro_vae.models.vampprior import VampPriorVAE

__all__ = ["VAE", "AuxiliaryDGM", "ConditionalVAE", "HierarchicalVAE", "VampPriorVAE"]
