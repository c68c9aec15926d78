"""The Python API: prepare, train, load a run, evaluate it and recommend for an ad-hoc history."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirec.config import EvalConfig, RunConfig, dataset_preset, load_config
from mirec.data.registry import BUNDLED
from mirec.utils import resolve_device

if TYPE_CHECKING:  # torch and the data arrays load only when a model or a dataset is used
    import torch

    from mirec.data.dataset import PreparedDataset


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
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model`` on a prepared dataset into the run folder ``output`` (new or empty; ``resume`` continues
    its checkpoint, ``overwrite`` replaces an earlier run; ``init_from`` starts from another run's weights, item
    rows remapped by original id); returns the metrics.json dict."""
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
        init_from=init_from,
    )


def preset_of(data_dir: str | Path) -> str:
    """The preset folder for a prepared dataset: its name (``mirec prepare --name``, else the output folder's
    name) when settings of that name exist (aliases included), else 'default'. Reads only meta.json."""
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    return dataset_preset(str(meta.get("name", "")))


@dataclass
class Recommender:
    """The one user-facing type: a serving model (model, config, item ids, index) and, for a run folder, its
    dataset, so that it can also be evaluated. Built by :func:`load` from a run folder or a bundle."""

    serving_model: Any  # mirec.serving.ServingModel
    dataset: PreparedDataset | None = None
    run_dir: Path | None = None
    device: torch.device | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.serving_model.model

    @property
    def config(self) -> RunConfig:
        return self.serving_model.config

    def serving(self) -> Any:
        """The :class:`mirec.serving.ServingModel` behind this recommender (the service and batch scoring take it)."""
        return self.serving_model

    def eval_config(self, **eval_overrides: Any) -> EvalConfig:
        """The run's evaluation settings with ``eval_overrides`` applied."""
        from dataclasses import replace

        if "topk" in eval_overrides and "early_stop_metric" not in eval_overrides:
            # the stop metric is training's; at evaluation it only has to name a computed cut-off
            eval_overrides["early_stop_metric"] = f"recall@{max(eval_overrides['topk'])}"
        return replace(self.config.eval, **eval_overrides)

    def evaluate(self, split: str = "test", dump_recs: str | Path | None = None, **eval_overrides: Any) -> dict:
        """The ComiRec protocol's metrics on a split of the run's dataset (a bundle needs ``load(path, data=)``)."""
        from mirec.eval.evaluator import evaluate

        if self.dataset is None:
            source = self.serving_model.manifest.get("source_run")
            raise ValueError(
                "a bundle holds no dataset to evaluate on; evaluate the run folder it was exported from"
                + (f" ({source})" if source else "")
                + " (mirec recommend and mirec serve take the bundle)"
            )
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
        items: list[str] | list[list[str]],
        timestamps: list[int] | list[list[int]] | None = None,
        n: int = 50,
        exclude_history: bool = False,
        diversity_lambda: float = 0.0,
    ) -> dict[str, Any] | list[dict[str, Any] | None]:
        """Top-n original item ids for one history of original ids (oldest first), or for a list of histories
        (one forward pass and one search for all; a history with no known item gets None). Unknown ids are
        reported in ``unknown_items``."""
        from mirec.serving.model import RecommendRequest, UnknownItemsError

        single = not items or isinstance(items[0], str)
        histories = [items] if single else items
        stamps = [timestamps] if single else (timestamps or [None] * len(histories))
        requests = [
            RecommendRequest([str(i) for i in h], None if t is None else list(t), n, exclude_history, diversity_lambda)
            for h, t in zip(histories, stamps, strict=True)
        ]
        try:
            results = self.serving_model.recommend(requests, skip_unknown=not single)
        except UnknownItemsError:
            raise ValueError(
                f"none of the given items is known to this model: {[str(i) for i in items][:10]}"
            ) from None
        answers = [None if r is None else _answer(r) for r in results]
        return answers[0] if single else answers


def _answer(result: Any) -> dict[str, Any]:
    return {
        "recommendations": result.items,
        "scores": result.scores,
        "interests": result.interests,
        "unknown_items": result.unknown_items,
    }


def load(path: str | Path, device: str = "auto", data: str | Path | None = None) -> Recommender:
    """A run folder (finished, or interrupted: its best weights) or a bundle, as a :class:`Recommender`.
    ``data``: the run's prepared dataset where it has moved (by default found relative to the run folder, then
    by its absolute path), or the dataset a bundle is evaluated on."""
    from mirec.serving.bundle import is_bundle, load_bundle

    torch_device = resolve_device(device)
    if is_bundle(path):
        dataset = None
        if data is not None:
            from mirec.data.dataset import load_dataset

            dataset = load_dataset(resolve_data(data))
        return Recommender(load_bundle(path, torch_device), dataset, None, torch_device)
    from mirec.runs import load_run
    from mirec.serving.model import ServingModel

    model, dataset, config = load_run(path, device=torch_device, data=data)
    model.eval()
    serving = ServingModel.of_run(model, dataset, config, source=str(Path(path).resolve()))
    return Recommender(serving, dataset, Path(path), torch_device)
