"""The Python API: prepare, train, load a run, evaluate it and recommend for an ad-hoc history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirec.config import EvalConfig, RunConfig, dataset_preset, load_config
from mirec.utils import resolve_device

if TYPE_CHECKING:  # torch and the data arrays load only when a model or a dataset is used
    import torch

    from mirec.data.dataset import PreparedDataset

BUNDLED = "amazon-grocery"


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
    data_dir = resolve_data(data)
    preset = preset_of(data_dir)
    # the config is built and checked before torch, the dataset or the model is loaded
    config = load_config(config_file, model=model, dataset=preset, overrides=overrides)
    from mirec.training.trainer import train_run

    return train_run(
        data_dir,  # loaded by the trainer once it holds the run folder's lock
        config,
        output,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        preset=f"{preset}/{model}",
    )


def preset_of(data_dir: str | Path) -> str:
    """The preset folder for a prepared dataset: its name (``mirec prepare --name``, else the output folder's
    name) when settings of that name exist (aliases included), else 'default'. Reads only meta.json."""
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    return dataset_preset(str(meta.get("name", "")))


@dataclass
class Recommender:
    """A trained run: the model, its dataset and config."""

    model: torch.nn.Module
    dataset: PreparedDataset
    config: RunConfig
    run_dir: Path
    device: torch.device | None = None
    _serving: Any = field(default=None, repr=False)

    def eval_config(self, **eval_overrides: Any) -> EvalConfig:
        """The run's evaluation settings with ``eval_overrides`` applied."""
        from dataclasses import replace

        if "topk" in eval_overrides and "early_stop_metric" not in eval_overrides:
            # the stop metric is training's; at evaluation it only has to name a computed cut-off
            eval_overrides["early_stop_metric"] = f"recall@{max(eval_overrides['topk'])}"
        return replace(self.config.eval, **eval_overrides)

    def evaluate(self, split: str = "test", dump_recs: str | Path | None = None, **eval_overrides: Any) -> dict:
        from mirec.eval.evaluator import evaluate

        return evaluate(
            self.model,
            self.dataset,
            split,
            self.eval_config(**eval_overrides),
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

        request = RecommendRequest(
            [str(i) for i in items],
            None if timestamps is None else list(timestamps),
            n,
            exclude_history,
            diversity_lambda,
        )
        try:
            (result,) = self.serving().recommend([request])
        except UnknownItemsError:
            raise ValueError(
                f"none of the given items is known to this model: {[str(i) for i in items][:10]}"
            ) from None
        return {
            "recommendations": result.items,
            "scores": result.scores,
            "interests": result.interests,
            "unknown_items": result.unknown_items,
        }

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
    from mirec.serving.bundle import is_bundle

    if is_bundle(run_dir):
        source = json.loads((Path(run_dir) / "manifest.json").read_text()).get("source_run")
        raise ValueError(
            f"{run_dir}: a bundle holds no dataset to evaluate on; evaluate the run folder it was exported from"
            + (f" ({source})" if source else "")
            + " (mirec recommend and mirec serve take the bundle)"
        )
    torch_device = resolve_device(device)
    model, dataset, config = load_run(run_dir, device=torch_device, data=data)
    model.eval()
    return Recommender(model=model, dataset=dataset, config=config, run_dir=Path(run_dir), device=torch_device)
