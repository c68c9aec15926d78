"""GemiRec: Interest Quantization and Generation for Multi-Interest Recommendation (Wu et al., arXiv 2510.14626).

Only the abstract and a partial method paragraph are public (docs/models.md section 5), so this package builds
our labelled design of its three modules, one file each: :mod:`.dictionary` (IDMM, the quantized interest
dictionary), :mod:`.generator` (MIPDM, the generative model of the next interest) and :mod:`.retrieval` (MIRM,
one retrieval query per generated interest); :mod:`.model` joins them into the mirec model contract.
Labels in the code: [PAPER] abstract, [SECONDARY] third-party reviews, [OURS] our interpretation (each a
config switch in :class:`mirec.config.GemiRecConfig`).
"""

from mirec.models.gemirec.model import GemiRec

__all__ = ["GemiRec"]
