"""CLCA (arXiv 2501.00243): the ``clca`` plug-in (Cross-Layer Cache + CLR token + CLA/IFA head)
and its intermediate-feature baselines (``h2t``, ``vqt``)."""

from . import baselines, heads, plugin  # noqa: F401  (plugin and baselines register themselves)
from .plugin import CLCAConfig, apply_clca, clca_recovery, flush_sizes  # noqa: F401
