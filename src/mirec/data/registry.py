"""Named datasets of the papers: official sources, expected raw files, format and where to put them offline.

Raw files are looked up, in order, in ``$MIREC_DATA/<name>/`` and ``~/.cache/mirec/raw/<name>/``; the bundled
amazon-grocery ships with the package. A missing file gives a message saying what to download and where to put it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUNDLED = "amazon-grocery"  # the dataset that ships with the package (src/mirec/datasets/)
AMAZON_2014_URL = "http://jmcauley.ucsd.edu/data/amazon/"
TAOBAO_URL = "https://tianchi.aliyun.com/dataset/649"
AMAZON_CITATION = (
    "R. He, J. McAuley. Ups and Downs: Modeling the Visual Evolution of Fashion Trends with One-Class "
    "Collaborative Filtering. WWW 2016; J. McAuley, C. Targett, Q. Shi, A. van den Hengel. Image-based "
    "Recommendations on Styles and Substitutes. SIGIR 2015."
)
TAOBAO_CITATION = (
    "H. Zhu et al. Learning Tree-based Deep Model for Recommender Systems. KDD 2018 (Tianchi UserBehavior)."
)
HYBRID_CATEGORIES = (
    "Electronics",
    "Clothing_Shoes_and_Jewelry",
    "CDs_and_Vinyl",
    "Tools_and_Home_Improvement",
    "Grocery_and_Gourmet_Food",
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str
    files: tuple[str, ...]  # expected raw file names (a ".gz" suffix is optional when found)
    url: str
    description: str
    citation: str = ""
    reader_options: dict[str, Any] = field(default_factory=dict)
    bundled: bool = False


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "amazon-books",
            "amazon-reviews",
            ("reviews_Books_5.json.gz",),
            AMAZON_2014_URL,
            "Amazon 2014 Books 5-core reviews (ComiRec/PIMI/GIMIRec 'Amazon Books')",
            AMAZON_CITATION,
        ),
        DatasetSpec(
            "amazon-hybrid",
            "amazon-reviews",
            tuple(f"reviews_{c}_5.json.gz" for c in HYBRID_CATEGORIES),
            AMAZON_2014_URL,
            "Amazon 2014 5-core reviews of five categories merged (GIMIRec 'Amazon-Hybrid'); the category "
            "of each item is its file's category",
            AMAZON_CITATION,
            reader_options={"category": True},
        ),
        DatasetSpec(
            "taobao",
            "taobao",
            ("UserBehavior.csv",),
            TAOBAO_URL,
            "Tianchi Taobao UserBehavior, 'pv' rows (ComiRec/PIMI preprocessing)",
            TAOBAO_CITATION,
            reader_options={"behaviors": ["pv"]},
        ),
        DatasetSpec(
            "taobao-buy",
            "taobao",
            ("UserBehavior.csv",),
            TAOBAO_URL,
            "Tianchi Taobao UserBehavior, 'buy' rows (GIMIRec 'Taobao-Buy')",
            TAOBAO_CITATION,
            reader_options={"behaviors": ["buy"]},
        ),
        DatasetSpec(
            BUNDLED,
            "csv",
            (f"{BUNDLED}.tsv.gz",),
            AMAZON_2014_URL,
            "Amazon 2014 Grocery and Gourmet Food 5-core as redistributed by ReChorus (bundled)",
            AMAZON_CITATION,
            bundled=True,
        ),
        DatasetSpec(
            "amazon-grocery-comirec",
            "comirec",
            ("grocery_train.txt.gz", "grocery_valid.txt.gz", "grocery_test.txt.gz", "grocery_item_cate.txt.gz"),
            AMAZON_2014_URL,
            "amazon-grocery in ComiRec's pre-split file format (user split kept as is)",
            AMAZON_CITATION,
        ),
        DatasetSpec(
            "amazon-beauty",
            "csv",
            ("interactions.tsv.gz",),
            AMAZON_2014_URL,
            "Amazon 2014 Beauty 5-core as redistributed by TiCoSeRec",
            AMAZON_CITATION,
        ),
        DatasetSpec(
            "yelp-b",
            "csv",
            ("interactions.tsv.gz",),
            "https://www.yelp.com/dataset",
            "Yelp 2019 slice as redistributed by TiCoSeRec",
            "Yelp Open Dataset.",
        ),
    )
}


def bundled_path() -> Path:
    """The bundled Amazon 2014 Grocery and Gourmet Food 5-core log (see src/mirec/datasets/README.md)."""
    return Path(__file__).resolve().parent.parent / "datasets" / f"{BUNDLED}.tsv.gz"


def raw_dirs(name: str) -> list[Path]:
    """Folders searched for a dataset's raw files, in order."""
    dirs = []
    if os.environ.get("MIREC_DATA"):
        dirs.append(Path(os.environ["MIREC_DATA"]).expanduser() / name)
    dirs.append(Path("~/.cache/mirec/raw").expanduser() / name)
    return dirs


def _find(folder: Path, file_name: str) -> Path | None:
    stem = file_name[:-3] if file_name.endswith(".gz") else file_name
    for candidate in (file_name, stem, stem + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def resolve(name: str) -> tuple[list[Path], str, dict[str, Any]]:
    """(files, format, reader_options) of a named dataset; raises FileNotFoundError saying where to put them."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    if spec.bundled:
        return [bundled_path()], spec.format, dict(spec.reader_options)
    dirs = raw_dirs(name)
    for folder in dirs:
        found = [_find(folder, f) for f in spec.files]
        if all(p is not None for p in found):
            return [p for p in found if p is not None], spec.format, dict(spec.reader_options)
    wanted = ", ".join(spec.files)
    places = " or ".join(str(d) for d in dirs[:2])
    raise FileNotFoundError(
        f"dataset {name!r} ({spec.description}) needs {wanted} (gzipped or not). Download from {spec.url} and "
        f"put the file(s) in {places} (set $MIREC_DATA to choose the root), then run "
        f"`mirec prepare {name}` again."
    )


def describe() -> dict[str, dict[str, Any]]:
    """The registry as plain data (for `mirec datasets`): source, files, format and offline folders."""
    out = {}
    for name, spec in DATASETS.items():
        out[name] = {
            "description": spec.description,
            "format": spec.format,
            "files": list(spec.files),
            "source": spec.url,
            "place_files_in": [str(p) for p in raw_dirs(name)][:2],
            "bundled": spec.bundled,
            "citation": spec.citation,
        }
    return out
