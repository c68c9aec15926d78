"""Draw study 20e's figure from 20e-tradeoff.csv (each row's figures copied from the study table its source names).

python docs/experiments/20e-tradeoff.py   # needs mirec[plot]; writes docs/img/S20_tradeoff_splits.png
"""

from pathlib import Path

from mirec.experiments.plots import plot_tradeoff_summaries, read_tradeoff_table

here = Path(__file__).parent
panels = read_tradeoff_table(here / "20e-tradeoff.csv")
plot_tradeoff_summaries(
    panels,
    here.parent / "img" / "S20_tradeoff_splits.png",
    title="test recall@50 against novel-interest recall@50 (means over seeds; bars: std where the study kept it)",
)
