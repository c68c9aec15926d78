"""The training loop of ComiRec/PIMI ``train.py``: sampled softmax + Adam, validate every ``eval_every`` steps,
keep the best model on valid Recall@50, stop after ``patience`` evaluations without improvement.

Faithful points (docs/models.md 2.4, 3.1, 6): batches as ComiRec's DataIterator (``TrainSampler``); loss =
TF ``sampled_softmax_loss`` with 10 x batch unique log-uniform negatives over the table (ids 0..n_items),
log Q subtracted, accidental hits removed; early stopping as ComiRec (``recall > best`` resets the counter,
stop once ``trials > patience``). Additions: a wall-clock budget, a final evaluation of the last partial
interval when stopped by ``max_steps``/``max_minutes``, and exact resumption from ``checkpoints/``.

The run folder's rules (refuse a non-empty folder unless resuming or overwriting, one process per folder,
resume only with a matching config and dataset) are :mod:`mirec.runs`'; a Trainer holds the folder's lock
from its construction until :meth:`Trainer.fit` returns (or :meth:`Trainer.close`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mirec.config import RunConfig, save_config
from mirec.data.batching import TrainSampler
from mirec.data.dataset import PreparedDataset, load_dataset
from mirec.eval.evaluator import check_cutoffs
from mirec.eval.evaluator import evaluate as evaluate_split
from mirec.eval.merge import calibrate, calibration_summary
from mirec.runs import (
    build_model,
    check_resume,
    check_run_folder,
    claim_run_folder,
    clean_stale_files,
    latest_checkpoint,
    run_lock,
    write_data_json,
)
from mirec.tensors import save_tensors
from mirec.training.checkpoint import TrainState, restore_training_state, save_checkpoint
from mirec.training.distributed import Distributed, TrainingStep, data_parallel, rank_random_state
from mirec.training.hooks import EvaluationCallback, EvaluationHook, TrainerHook
from mirec.training.losses import TrainingLoss
from mirec.training.policies import EarlyStopping, RunningMeans, Schedule
from mirec.training.recorder import RunRecorder, run_summary
from mirec.training.tracking import Trackers
from mirec.utils import atomic_write_text, resolve_device, seed_everything

# evaluate(model, dataset, split, eval_config, *, maxlen, device, max_users) -> metric dict (the evaluator's)
EvaluateFn = Callable[..., dict[str, Any]]


def _jsonable(value: Any) -> Any:
    """Numpy/torch scalars -> Python numbers, recursively (for history.jsonl / metrics.json)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def adam_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, beta2: float = 0.999) -> torch.optim.Adam:
    """Adam (ComiRec/PIMI: tf.train.AdamOptimizer); the fused kernel when the device supports it (same
    update rule; about 8x faster than the per-tensor loop on CPU for a full item table)."""
    params = [p for p in model.parameters() if p.requires_grad]
    options = {"lr": lr, "weight_decay": weight_decay, "betas": (0.9, beta2)}
    try:
        return torch.optim.Adam(params, fused=True, **options)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, **options)


def zero_grads(optimizer: torch.optim.Optimizer, kept: list[torch.nn.Parameter]) -> None:
    """``zero_grad(set_to_none=True)``, except that the kept dense buffers are zeroed in place."""
    buffers = [p.grad for p in kept]
    optimizer.zero_grad(set_to_none=True)
    for parameter, buffer in zip(kept, buffers, strict=True):
        parameter.grad = buffer.zero_() if buffer is not None else torch.zeros_like(parameter)


class _StopRequested(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM (never mid-step, so the checkpoint is consistent)."""


class StopSignal:
    """While active (a ``with`` block in the main thread), the first SIGINT or SIGTERM only sets ``requested``:
    the loop stops at the next step boundary. A second SIGINT interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignal:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def training_parts(model: Any, dataset: PreparedDataset, config: RunConfig, device: torch.device, dist: Any) -> tuple:
    """(optimizer, kept gradient buffers, batch sampler, negatives' generator, loss, the step module, DDP-wrapped
    under torchrun): what a run trains with, seeded from ``train.seed`` (each rank its own stream)."""
    tc = config.train
    optimizer = adam_optimizer(model, tc.lr, tc.weight_decay, tc.adam_beta2)
    # the kept row-gradient buffer is written outside autograd, where DDP's all-reduce would not see it
    keep = tc.sparse_item_grad and device.type == "cpu" and not dist.active
    kept = model.keep_item_grad_buffer() if keep else []
    sampler = TrainSampler(
        dataset.train,
        config.model.maxlen,
        tc.batch_size,
        dist.seed(tc.seed),
        tc.min_cut,
        last_window=tc.window == "last",
    )
    generator = torch.Generator().manual_seed(dist.seed(tc.seed))  # negatives (CPU), checkpointed
    loss = TrainingLoss(tc, model, dataset.n_id_items, generator)  # train.loss, chosen once
    step: torch.nn.Module = TrainingStep(model, loss)
    if dist.active:
        step = data_parallel(step, device, model.may_skip_parameters)
    return optimizer, kept, sampler, generator, loss, step


class Trainer:
    """One training run of ``config`` on a prepared dataset, writing the run folder ``run_dir``."""

    def __init__(
        self,
        data: str | Path | PreparedDataset,
        config: RunConfig,
        run_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
        resume: bool = False,
        overwrite: bool = False,
        evaluate: EvaluateFn = evaluate_split,
        on_evaluation: EvaluationHook | None = None,
        test: bool = True,
        hooks: Sequence[TrainerHook] = (),
        init_from: str | Path | None = None,
    ):
        self.run_dir = Path(run_dir)
        if init_from is not None and resume:
            raise ValueError("--init-from starts a new run from another run's weights; --resume continues this one")
        self.init_from = init_from
        self.dist = Distributed.from_env()  # rank 0 of 1 unless launched by torchrun
        self.evaluate_fn = evaluate
        self.hooks = [*hooks, *([EvaluationCallback(on_evaluation)] if on_evaluation else [])]
        self.test = test  # False (tuning): the test split is never evaluated
        self._lock = contextlib.ExitStack()
        if self.dist.main:  # rank 0 alone owns the run folder
            self._lock.enter_context(run_lock(self.run_dir))  # first: a second process fails before any work
        try:
            self._setup(data, config, device, progress, resume, overwrite)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder's lock (fit does it when it returns or fails)."""
        self._lock.close()

    def _setup(
        self,
        data: str | Path | PreparedDataset,
        config: RunConfig,
        device: str | torch.device | None,
        progress: bool,
        resume: bool,
        overwrite: bool,
    ) -> None:
        main = self.dist.main
        # a resumed run's folder first gets back a checkpoint a crash left moved aside (a rename, nothing removed)
        stale = clean_stale_files(self.run_dir) if main and resume and self.run_dir.is_dir() else []
        earlier_run = check_run_folder(self.run_dir, resume=resume, overwrite=overwrite) if main else []
        tc = config.train  # choices and ranges were checked when the config was built (mirec.config)
        self.config = config
        self.dataset = data if isinstance(data, PreparedDataset) else load_dataset(data)
        check_cutoffs(config.eval, self.dataset.n_items)
        self.resume_changes = check_resume(self.run_dir, config, self.dataset) if resume and main else []
        self.device = device if isinstance(device, torch.device) else resolve_device(device or tc.device)
        self.device = self.dist.device(self.device)
        self._own_group = self.dist.active and not torch.distributed.is_initialized()
        self.dist.start(self.device)
        self.progress = progress
        self.resume = resume
        seed_everything(tc.seed)
        self.model = build_model(config, self.dataset, self._resume_graph_path())
        self.init_record = None
        if self.init_from is not None:  # before the optimiser is built: it starts fresh over these weights
            from mirec.training.warm_start import warm_start

            self.init_record = warm_start(self.model, self.dataset, config, self.init_from)
        self.model.to(self.device)
        self.optimizer, self.kept_grads, self.sampler, self.generator, self.loss, self.step_module = training_parts(
            self.model, self.dataset, config, self.device, self.dist
        )
        self.state = TrainState()
        self.schedule = Schedule.of(tc)
        self.early_stopping = EarlyStopping(tc.patience)
        self.best_state: dict[str, torch.Tensor] | None = None
        self._stop_signal = StopSignal()
        trackers = Trackers(tc.log_to, tc.tracking_uri, tc.tracking_experiment)
        self.recorder = RunRecorder(self.run_dir, main, trackers, progress)
        # every check above could still fail: only now is an earlier run's folder touched
        self.folder_notes = claim_run_folder(self.run_dir, earlier_run, resume, stale) if main else []

    # ------------------------------------------------------------------ pieces
    def _resume_graph_path(self) -> Path | None:
        """A resumed run reloads its saved global context graph instead of rebuilding it."""
        path = self.run_dir / "graph.safetensors"
        return path if self.resume and latest_checkpoint(self.run_dir) is not None and path.exists() else None

    def train_step(self) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """One optimiser step on a fresh batch; returns the detached loss and the model's named terms."""
        batch = self.sampler.sample().to(self.device)
        loss, terms = self.step_module(batch)
        zero_grads(self.optimizer, self.kept_grads)
        loss.backward()
        self.optimizer.step()
        self.model.on_step_end(self.state.step + 1)
        return loss.detach(), terms

    def evaluate(self, split: str, max_users: int | None = None, eval_config: Any = None) -> dict[str, float]:
        self.model.eval()
        try:
            with torch.no_grad():
                result = self.evaluate_fn(
                    self.model,
                    self.dataset,
                    split,
                    eval_config or self.config.eval,
                    maxlen=self.config.model.maxlen,
                    device=self.device,
                    max_users=max_users,
                    **self.dist.evaluation_shard(),
                )
        finally:
            self.model.train()
        return _jsonable(result)

    def _state_copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def _validate(self, interval: RunningMeans) -> None:
        """Valid evaluation, then the early-stopping policy; the best weights are kept and written."""
        st, tc = self.state, self.config.train
        start = time.perf_counter()
        metrics = self.evaluate("valid", max_users=tc.eval_users or None)
        st.eval_seconds += time.perf_counter() - start
        key = self.config.eval.early_stop_metric
        if key not in metrics:
            raise KeyError(f"eval.early_stop_metric = {key!r} is not among the evaluator's keys {sorted(metrics)}")
        improved = self.early_stopping.update(st, float(metrics[key]))
        reasons = [hook.on_evaluation(self, st.step, metrics) for hook in self.hooks]
        st.stop_reason = st.stop_reason or next((r for r in reasons if r), "")
        if improved:
            self.best_state = self._state_copy()
            if self.dist.main:
                save_tensors(self.run_dir / "model.safetensors", self.best_state)
        st.last_eval_step = st.step
        self.recorder.evaluation(st, metrics, key, improved, interval, self.early_stopping.patience)

    def _validation_status(self) -> dict[str, str]:
        return self.early_stopping.status(self.state, self.config.eval.early_stop_metric, len(self.recorder.history))

    def save_checkpoint(self) -> None:
        self.state.sampler_state = self.sampler.state()
        if self.dist.active:  # every rank's random states, written by rank 0
            self.state.rank_states = self.dist.gather_json(rank_random_state(self.sampler.state(), self.generator))
            if not self.dist.main:
                return
        save_checkpoint(
            self.run_dir,
            model_state=self.model.state_dict(),
            best_state=self.best_state,
            optimizer=self.optimizer,
            negative_generator=self.generator,
            state=self.state,
        )

    def restore_checkpoint(self) -> bool:
        """Load the run folder's latest checkpoint; False when there is none."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        self.state, self.best_state = restore_training_state(
            path, self.model, self.optimizer, self.sampler, self.generator, self.dist
        )
        self.recorder.restore_history(self.state.step)
        return True

    # ------------------------------------------------------------------ run
    def fit(self) -> dict[str, Any]:
        """Train (or continue: the folder's checkpoint was found when the Trainer was built), then evaluate the
        best weights on valid and test; returns metrics.json."""
        try:
            return self._fit(self.resume and self.restore_checkpoint())
        finally:
            self.close()
            if self._own_group:
                self.dist.stop()

    def _fit(self, resumed: bool) -> dict[str, Any]:
        if resumed and self.state.stop_reason in ("max_steps", "max_minutes", "interrupted"):
            self.state.stop_reason = ""  # the limits are re-checked against the (maybe raised) config
        self.recorder.open(append=resumed)
        try:
            self.recorder.start(self.folder_notes, self.state.step if resumed else None, self.resume_changes)
            if self.dist.main:
                save_config(self.config, self.run_dir / "config.toml")
                write_data_json(self.run_dir, self.dataset)
                if self.init_record is not None:
                    atomic_write_text(self.run_dir / "init.json", json.dumps(self.init_record, indent=2))
            self.recorder.start_trackers(self.config.to_dict(), resumed)
            if self.model.global_context is not None and not resumed and self.dist.main:
                self.model.global_context.save(self.run_dir / "graph.safetensors")
            parameters = sum(p.numel() for p in self.model.parameters())
            self.recorder.info(f"model {self.config.model.name} on {self.device}; {parameters} parameters")
            if self.loss.kind != self.config.train.loss:
                self.recorder.info(
                    f"loss: the full softmax ({self.dataset.n_id_items} items <= train.full_softmax_max_items)"
                )
            self._loop()
            return self._finish()
        finally:
            self.recorder.close()

    def _loop(self) -> None:
        with self._stop_signal:
            self._loop_steps()

    def _loop_steps(self) -> None:
        st, tc, schedule = self.state, self.config.train, self.schedule
        self.model.train()
        session_start, elapsed_before = time.perf_counter(), st.elapsed_seconds
        bar = self.recorder.progress_bar(tc.max_steps, st.step, self.config.model.name)
        interval = RunningMeans(self.device, st.interval_loss_sum, st.interval_steps)  # since the last evaluation
        logged = RunningMeans(self.device)  # since the last log line
        log_start, log_train_seconds = time.perf_counter(), st.train_seconds

        def checkpoint() -> None:
            """The resume state of this step, with the loss of the steps since the last evaluation."""
            st.elapsed_seconds = elapsed_before + time.perf_counter() - session_start
            st.interval_loss_sum, st.interval_steps = float(interval.loss), interval.steps
            self.save_checkpoint()

        try:
            try:
                while not st.stop_reason:
                    requested = self._stop_signal.requested
                    st.elapsed_seconds = elapsed_before + time.perf_counter() - session_start
                    requested, limit = self.dist.agree_to_stop(requested, schedule.limit_reached(st))
                    if requested:
                        raise _StopRequested
                    st.stop_reason = limit
                    if st.stop_reason:
                        break
                    start = time.perf_counter()
                    loss, terms = self.train_step()
                    st.step += 1
                    interval.add(loss, terms)
                    logged.add(loss, terms)
                    st.train_seconds += time.perf_counter() - start
                    bar.update(1)
                    if st.step % tc.log_every == 0:
                        self.recorder.training(
                            bar,
                            st,
                            logged,
                            tc.batch_size,
                            log_start,
                            st.train_seconds - log_train_seconds,
                            self._validation_status(),
                        )
                        logged.reset()
                        log_start, log_train_seconds = time.perf_counter(), st.train_seconds
                    evaluated = schedule.evaluates(st.step)
                    if evaluated:
                        self._validate(interval)
                        bar.set_postfix(**self._validation_status())
                        self.recorder.update_total(bar, st, tc, self.early_stopping.patience)
                        interval.reset()
                    if schedule.checkpoints(st.step, evaluated):
                        checkpoint()
            except _StopRequested:
                # Ctrl-C / SIGTERM, acted on between two whole steps: checkpoint this step, then stop non-zero;
                # --resume continues exactly as if never interrupted.
                st.stop_reason = "interrupted"
                checkpoint()
                self.recorder.info(f"interrupted at step {st.step}; checkpoint written, continue with --resume")
                raise KeyboardInterrupt from None
            if st.last_eval_step != st.step or self.best_state is None:  # the last partial interval
                self._validate(interval)
            interval.reset()
            checkpoint()
        finally:
            bar.close()
        self.recorder.info(f"stopped at step {st.step} ({st.stop_reason}); best step {st.best_step}")

    def _calibrate(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Post-training calibration on valid (:func:`mirec.eval.merge.calibrate`); a changed config is written."""
        config, valid, record = calibrate(self.config, lambda ec: self.evaluate("valid", eval_config=ec))
        if record is not None:
            self.config = config
            if self.dist.main:
                save_config(config, self.run_dir / "config.toml")
            self.recorder.info(calibration_summary(record))
        return valid, record or {}

    def _finish(self) -> dict[str, Any]:
        assert self.best_state is not None
        self.model.load_state_dict(self.best_state)
        if self.dist.main:
            save_tensors(self.run_dir / "model.safetensors", self.best_state)
        valid, calibration = self._calibrate()
        test = self.evaluate("test") if self.test else None
        metrics = {
            "valid": valid,
            **calibration,
            **({"test": test} if test is not None else {}),
            "train": run_summary(self.state, self.config.train, self.device),
        }
        for hook in self.hooks:
            hook.on_fit_end(self, metrics)
        self.recorder.finish(metrics)
        return metrics


def train_run(
    data_dir_or_dataset: str | Path | PreparedDataset,
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    preset: str | None = None,
    evaluate: EvaluateFn = evaluate_split,
    on_evaluation: EvaluationHook | None = None,
    test: bool = True,
    hooks: Sequence[TrainerHook] = (),
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (a new or empty folder; ``resume`` continues its checkpoint,
    ``overwrite`` replaces an earlier run); returns metrics.json. ``evaluate`` scores a split (the ComiRec
    protocol's evaluator unless given); ``on_evaluation(step, valid metrics)`` may return a stop reason (a
    tuner's pruning); ``test=False`` never evaluates the test split (tuning). ``init_from``: a finished run whose
    weights this new run starts from (:mod:`mirec.training.warm_start`)."""
    trainer = Trainer(
        data_dir_or_dataset,
        config,
        run_dir,
        device=device,
        progress=progress,
        resume=resume,
        overwrite=overwrite,
        evaluate=evaluate,
        on_evaluation=on_evaluation,
        test=test,
        hooks=hooks,
        init_from=init_from,
    )
    if preset:
        trainer.folder_notes.append(f"presets: {preset} (mirec config show --data ... --model ... prints them)")
    return trainer.fit()


__all__ = ["Trainer", "train_run", "StopSignal"]
