"""The Python API: prepare, train, load a run, evaluate it and recommend for an ad-hoc history."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mirec.config import RunConfig, load_config
from mirec.data.dataset import PreparedDataset, load_dataset
from mirec.utils import resolve_device

BUNDLED = "amazon-grocery"
# Datasets that share another's presets (the ComiRec-format split of Grocery is the same log).
PRESET_ALIASES = {"amazon-grocery-comirec": "amazon-grocery"}


def resolve_data(data: str | Path) -> Path:
    """A prepared folder, or the name of the bundled dataset (prepared once into the user cache)."""
    path = Path(data)
    if (path / "meta.json").exists():
        return path
    if str(data) == BUNDLED:
        from mirec.data.prepare import bundled_dataset
        from mirec.utils import exclusive_lock

        cache = Path.home() / ".cache" / "mirec" / "prepared" / BUNDLED
        if not (cache / "meta.json").exists():
            # several processes (bench --jobs) may ask at once: the first prepares, the others wait for it
            with exclusive_lock(cache.parent / ".bundled.lock", f"bundled dataset cache {cache}", wait=True):
                if not (cache / "meta.json").exists():
                    bundled_dataset(cache)
        return cache
    if path.exists():
        raise FileNotFoundError(f"{path}: not a prepared dataset (no meta.json); run `mirec prepare` first")
    raise FileNotFoundError(f"{data}: no such prepared folder (the bundled dataset is called {BUNDLED!r})")


def train(
    data: str | Path,
    model: str,
    output: str | Path,
    *,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on a prepared dataset into the run folder ``output`` (new or empty; ``resume`` continues
    its checkpoint, ``overwrite`` replaces an earlier run); returns the metrics.json dict."""
    from mirec.training.trainer import train_run

    data_dir = resolve_data(data)
    dataset = load_dataset(data_dir)
    preset = preset_name(dataset)
    config = load_config(config_file, model=model, dataset=preset, overrides=overrides)
    return train_run(dataset, config, output, resume=resume, overwrite=overwrite, progress=progress,
                     preset=f"{preset}/{model}")


def preset_name(dataset: PreparedDataset) -> str:
    """The preset folder for a dataset: the dataset's name (``mirec prepare --name``, else the output folder's
    name) when a preset folder of that name exists (aliases included), else 'default'."""
    from mirec.config import preset_datasets

    name = str(dataset.meta.get("name", ""))
    name = PRESET_ALIASES.get(name, name)
    return name if name in preset_datasets() else "default"


@dataclass
class Recommender:
    """A trained run: the model, its dataset and config."""

    model: torch.nn.Module
    dataset: PreparedDataset
    config: RunConfig
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _serving: Any = field(default=None, repr=False)

    def evaluate(self, split: str = "test", dump_recs: str | Path | None = None, **eval_overrides: Any) -> dict:
        from dataclasses import replace

        from mirec.eval.evaluator import evaluate

        if "topk" in eval_overrides and "early_stop_metric" not in eval_overrides:
            # the stop metric is training's; at evaluation it only has to name a computed cut-off
            eval_overrides["early_stop_metric"] = f"recall@{max(eval_overrides['topk'])}"
        eval_config = replace(self.config.eval, **eval_overrides)
        return evaluate(
            self.model,
            self.dataset,
            split,
            eval_config,
            maxlen=self.config.model.maxlen,
            device=self.device,
            dump_path=dump_recs,
        )

    def recommend(
        self,
        items: list[str],
        timestamps: list[int] | None = None,
        n: int = 50,
        exclude_history: bool = False,
        diversity_lambda: float = 0.0,
    ) -> dict[str, Any]:
        """Top-n original item ids for a history of original ids (oldest first); unknown ids are reported.
        Served by :class:`mirec.serving.ServingModel` (built on the first call, then reused)."""
        from mirec.serving.model import RecommendRequest, UnknownItemsError

        request = RecommendRequest([str(i) for i in items], None if timestamps is None else list(timestamps), n,
                                   exclude_history, diversity_lambda)
        try:
            (result,) = self.serving().recommend([request])
        except UnknownItemsError:
            raise ValueError(f"none of the given items is known to this model: {[str(i) for i in items][:10]}") from None
        return {"recommendations": result.items, "scores": result.scores, "interests": result.interests,
                "unknown_items": result.unknown_items}

    def serving(self):
        """The run's :class:`mirec.serving.ServingModel` (exact search), built once."""
        if self._serving is None:
            from mirec.serving.model import ServingModel

            self._serving = ServingModel.of_run(self.model, self.dataset, self.config, source=str(self.run_dir))
        return self._serving


def load(run_dir: str | Path, device: str = "auto", data: str | Path | None = None) -> Recommender:
    """Load a finished (or interrupted: its best weights) run folder; ``data`` points at its prepared dataset
    when that has moved (by default it is found relative to the run folder, then by its absolute path)."""
    from mirec.runs import load_run

    torch_device = resolve_device(device)
    model, dataset, config = load_run(run_dir, device=torch_device, data=data)
    model.eval()
    return Recommender(model=model, dataset=dataset, config=config, run_dir=Path(run_dir), device=torch_device)
