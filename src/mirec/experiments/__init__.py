"""Experiments over many runs: ``mirec bench`` grids (:mod:`.grid`, specs in ``grids/``) and their figures
(:mod:`.plots`)."""
