"""Class-id masks -> colour images: sigma_core's rendering (sigma-predict draws with the same), used by the node."""
from sigma_core.mask_rendering import colorize, lookup_palette, overlay

__all__ = ["colorize", "lookup_palette", "overlay"]
