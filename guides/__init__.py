"""Stock amortized guides q(z | x); imported as ``pyro_vae.guides``."""

from pyro_vae.guides.amortized import AmortizedDelta, AmortizedNormal

__all__ = ["AmortizedDelta", "AmortizedNormal"]
