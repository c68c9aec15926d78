"""mirec: multi-interest sequential recommendation (GIMIRec, GemiRec and faithful baselines)."""

__version__ = "0.1.0"
