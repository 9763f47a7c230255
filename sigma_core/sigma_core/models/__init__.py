"""The Sigma network: VMamba encoder (vmamba), fusion blocks (fusion), decoder (decoder), assembly (sigma)."""
from .sigma import Sigma, build_sigma, variant_names

__all__ = ["Sigma", "build_sigma", "variant_names"]
