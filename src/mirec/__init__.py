"""mirec: multi-interest sequential recommendation (GIMIRec, GemiRec and faithful baselines).

Python API::

    import mirec
    mirec.prepare(["log.tsv"], "csv", "prepared/")        # -> PrepareReport
    mirec.train("prepared/", "gimirec", "runs/gimirec")    # -> metrics dict
    rec = mirec.load("runs/gimirec")                       # a run folder, or a bundle (after `mirec export`)
    rec.evaluate("test"); rec.recommend(["item-a", "item-b"], n=50)
    rec.recommend([["item-a"], ["item-c", "item-d"]], n=20)  # a batch: one forward pass for all

No subpackage shares a name with an API function (the trainer lives in ``mirec.training``), so importing
one never replaces ``mirec.train`` / ``mirec.load`` / ``mirec.prepare`` with a module.
"""

from typing import Any

from mirec.version import __version__

__all__ = ["load", "train", "prepare", "load_dataset", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import mirec` stays cheap (no torch import) until an API function is used.
    if name in ("load", "train"):
        from mirec import api

        return getattr(api, name)
    if name == "prepare":
        from mirec.data.prepare import prepare

        return prepare
    if name == "load_dataset":
        from mirec.data.dataset import load_dataset

        return load_dataset
    raise AttributeError(f"module 'mirec' has no attribute {name!r}")
