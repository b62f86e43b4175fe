"""fgir's own backbones; importing this package registers them (in fgir's and timm's registry)."""

from . import lrnet, shallow, vitfs  # noqa: F401
