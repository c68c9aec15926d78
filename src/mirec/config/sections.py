"""The run config's sections: ``[model]`` (shared options; each model extends them), ``[graph]`` (GIMIRec's global
context), ``[train]``, ``[eval]``, and :class:`RunConfig` holding one of each."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mirec.config.checked import CheckedConfig, ConfigError
from mirec.eval.metrics import METRICS

TRACKERS = ("tensorboard", "mlflow")  # train.log_to
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


# lambda * (items picked per category) must stay finite next to the scores; far below this the greedy is already
# a pure category round-robin
MAX_DIVERSITY_LAMBDA = 1e6


def check_diversity_lambda(value: Any, what: str = "diversity_lambda") -> float:
    """``value`` as a float in [0, MAX_DIVERSITY_LAMBDA]; a one-line ``ValueError`` otherwise (inf, NaN, bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_DIVERSITY_LAMBDA:
        raise ValueError(f"{what} = {value!r}: a finite number in 0..{MAX_DIVERSITY_LAMBDA:g}")
    return float(value)


def check_list_shares(config: EvalConfig, serves_generated: bool, model_name: str) -> None:
    """eval.generated_share / eval.base_share reserve slots for generated or for extracted interests: a model must
    serve both kinds (config and evaluate)."""
    for key in ("generated_share", "base_share", "base_share_grid"):
        share = getattr(config, key)
        if share and not serves_generated:
            raise ConfigError(
                f"eval.{key} = {share} needs a model that serves generated interests "
                f"(gemirec with model.base set); model {model_name!r} has none"
            )


@dataclass(frozen=True)
class ModelConfig(CheckedConfig):
    """Options shared by every model; each model extends it with its own dataclass."""

    section: ClassVar[str] = "model"
    model_path: ClassVar[str] = ""  # "module:Class" of the model these options build
    can_be_base: ClassVar[bool] = False  # GemiRec over this model (model.base) is allowed
    name: str = "dnn"  # the model (mirec models lists them)
    embedding_dim: int = 64  # d, the item and interest vector width (ComiRec: 64)
    num_interests: int = 4  # K interest vectors per user (ComiRec: 4)
    maxlen: int = 20  # the last maxlen history items are read (ComiRec: 20 Amazon, 50 Taobao)
    # Replace the item-embedding lookup by E_global = A E_item (GIMIRec's transplantable GCE).
    global_context: bool = False
    # Training readout over the K interests, label-aware attention pow(scores, p) (MIND Eq. 7): inf = the hard
    # argmax of ComiRec's code (every multi-interest model's default); 1 = ComiRec's hard_readout=False
    readout_power: float = math.inf
    # Item side features pooled into every item vector with its id embedding (MIND section 3.1); names of the
    # prepared dataset's features (mirec prepare --items FILE --item-feature NAME:KIND); [] = ids only
    item_features: list[str] = field(default_factory=list)
    # With item_features: false = the item vector is its features' alone (no id embedding)
    item_id_embedding: bool = True
    # With item_features: in training, drop each item lookup's id part with this probability (DropoutNet), so
    # that items scored by features alone (cold, new) are ranked on the warm items' scale
    item_id_dropout: float = 0.0

    def check_with(self, run: RunConfig) -> None:
        """Rules across sections (e.g. GIMIRec's L_time in [model] and [graph]); a model extends it."""
        check_list_shares(run.eval, self.serves_generated_interests(), self.name)

    def serves_generated_interests(self) -> bool:
        """True where some served interests are generated rather than extracted (GemiRec over a base)."""
        return False

    def check(self) -> None:
        for name in ("embedding_dim", "num_interests", "maxlen"):
            self.require(getattr(self, name) >= 1, name, ">= 1")
        power = self.readout_power
        self.require(
            (math.isinf(power) and power > 0) or (power >= 0 and float(power).is_integer()),
            "readout_power",
            "inf (hard readout) or a non-negative integer",
        )
        self.require(
            self.item_id_embedding or bool(self.item_features),
            "item_id_embedding",
            "true unless model.item_features names at least one feature",
        )
        self.require(len(set(self.item_features)) == len(self.item_features), "item_features", "without repeats")
        for f in dataclasses.fields(self):  # every model's dropout-like rate is a probability
            if "dropout" in f.name and isinstance(getattr(self, f.name), float):
                self.require(0.0 <= getattr(self, f.name) < 1.0, f.name, "in [0, 1)")


@dataclass(frozen=True)
class GraphConfig(CheckedConfig):
    """Global context extraction (GIMIRec Eq. 1-7); used when the model asks for a global context."""

    l_time: float = 64.0  # days; pairs further apart are dropped (Eq. 1)
    a: float = 0.5  # interval weight (Eq. 2): p = a (L_time - dt) / L_time + b
    b: float = 0.5  # interval offset (Eq. 2): p = a (L_time - dt) / L_time + b
    hop_weights: list[float] = field(default_factory=lambda: [5.0, 2.5, 1.0])  # alpha, beta, gamma (Eq. 5)
    count_pairs: bool = True  # False = GIMIRec-IN: q = 1 for a present pair
    use_threshold: bool = True  # False = GIMIRec-INT: no L_time threshold
    self_pairs: bool = True  # keep <i, i> pairs (same item n and n+k), as Eq. 1-4 do; False drops them
    # who builds A: this process (numpy/scipy) or a Spark job (mirec.graph.spark; pip install "mirec[spark]")
    engine: Literal["embedded", "spark"] = "embedded"
    spark_master: str = "local[2]"  # with engine = "spark": local[N], spark://HOST:PORT, yarn, ...
    section: ClassVar[str] = "graph"

    def check(self) -> None:
        self.require(self.l_time > 0, "l_time", "> 0 (days)")
        self.require(self.a >= 0, "a", ">= 0 (a pair's weight p must not fall below b)")
        self.require(self.b >= 0, "b", ">= 0")
        self.require(self.a + self.b > 0, "b", "> 0 when a = 0 (every pair would weigh 0)")
        self.require(len(self.hop_weights) >= 1, "hop_weights", "a non-empty list (one weight per hop)")
        self.require(all(w >= 0 for w in self.hop_weights), "hop_weights", "weights >= 0")


@dataclass(frozen=True)
class TrainConfig(CheckedConfig):
    section: ClassVar[str] = "train"
    batch_size: int = 128  # training sequences per step (ComiRec: 128)
    lr: float = 1e-3  # Adam learning rate (ComiRec: 0.001)
    weight_decay: float = 0.0  # Adam's L2 weight decay (ComiRec: none)
    adam_beta2: float = 0.999  # Adam's second-moment decay (TF/torch default; SASRec.pytorch and RecTools: 0.98)
    max_steps: int = 1_000_000  # step cap (ComiRec: 1,000,000; early stopping ends runs long before)
    eval_every: int = 1000  # steps between valid evaluations (ComiRec: test_iter 1000)
    patience: int = 10  # evaluations without a better valid Recall@50
    max_minutes: float = 0.0  # 0 = no wall-clock budget
    # TF sampled softmax (ComiRec) | full softmax | in-batch | gSASRec's gBCE over the sampled negatives
    loss: Literal["sampled", "full", "inbatch", "gbce"] = "sampled"
    # N > 0: a "sampled" run trains with the full softmax when its catalogue has at most N items (0 = never)
    full_softmax_max_items: int = 0
    gbce_t: float = 0.75  # gBCE calibration t in [0, 1] (gSASRec's default 0.75; 0 = plain BCE)
    num_negatives_factor: int = 10  # sampled softmax draws factor * batch_size unique ids (TF default use)
    # True: negatives drawn from ids 1..n_items only (TF/ComiRec draw padding 0 too)
    sampler_exclude_padding: bool = False
    negative_sampler: Literal["log_uniform", "uniform"] = "log_uniform"  # TF/ComiRec | REMI's default
    negatives_unique: bool = True  # TF unique=True; REMI: False (1,280 draws with replacement)
    # REMI's interest-aware hard negatives: sampled negatives reweighted by exp(beta * logit) (0 = off; needs sampled)
    hard_negative_beta: float = 0.0
    remove_accidental_hits: bool = True  # TF default; REMI: False
    # 0: the sampled/gbce negatives are shared by the batch (TF/ComiRec) | N: each training row draws its own N
    # with replacement (RecTools' CatalogUniformSampler, the eSASRec benchmark's SASRec + sampled softmax)
    row_negatives: int = 0
    # CPU: each item-table lookup adds its row gradients into one kept dense buffer (index_add_; same Adam update,
    # less memory traffic than a zero-filled [n_items, d] gradient per lookup); False = torch's dense backward
    sparse_item_grad: bool = True
    min_cut: int = 4  # ComiRec draws the cut position k uniformly in [4, len-1]
    # random_cut: ComiRec's windows (a cut drawn per sample) | last: each sequence's latest window (SASRec's)
    window: Literal["random_cut", "last"] = "random_cut"
    seed: int = 19  # fixes initialisation, batches and negatives (ComiRec's seed)
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 0  # 0 = at every evaluation
    log_every: int = 100  # steps between train.log lines (mean loss, samples/s)
    eval_users: int = 0  # 0 = all valid users during training evaluations
    # mirrors of the run in experiment trackers (mirec.training.tracking): "", "tensorboard", "mlflow" or both,
    # comma-separated; the run folder stays the source of truth and a failing tracker never stops training
    log_to: str = ""
    tracking_uri: str = ""  # MLflow store: "" = $MLFLOW_TRACKING_URI, else sqlite:///<output folder>/mlflow.db
    tracking_experiment: str = ""  # MLflow experiment name; "" = "mirec"

    def check(self) -> None:
        for name in ("batch_size", "eval_every", "log_every", "num_negatives_factor", "min_cut"):
            self.require(getattr(self, name) >= 1, name, ">= 1")
        non_negative = ("max_steps", "patience", "row_negatives", "checkpoint_every", "eval_users", "weight_decay")
        non_negative += ("full_softmax_max_items", "max_minutes")
        for name in non_negative:
            self.require(getattr(self, name) >= 0, name, ">= 0")
        self.require(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        self.require(0 <= self.adam_beta2 < 1, "adam_beta2", "in [0, 1)")
        self.require(bool(DEVICE_PATTERN.match(self.device)), "device", "auto, cpu, cuda, cuda:N or mps")
        beta = self.hard_negative_beta
        self.require(math.isfinite(beta), "hard_negative_beta", "a finite number")
        self.require(beta == 0 or self.loss == "sampled", "hard_negative_beta", "0 unless train.loss = 'sampled'")
        # REMI's reweighting exists only inside the sampled softmax: it must not silently vanish with the switch
        self.require(
            self.full_softmax_max_items == 0 or beta == 0, "full_softmax_max_items", "0 with train.hard_negative_beta"
        )
        self.require(0 <= self.gbce_t <= 1, "gbce_t", "in [0, 1]")
        sampled = self.loss in ("sampled", "gbce")
        self.require(self.row_negatives == 0 or sampled, "row_negatives", "0 unless train.loss is sampled or gbce")
        self.require(self.row_negatives == 0 or beta == 0, "row_negatives", "0 with train.hard_negative_beta != 0")
        trackers = [part.strip() for part in self.log_to.split(",") if part.strip() not in ("", "none")]
        self.require(set(trackers) <= set(TRACKERS), "log_to", f"a comma-separated subset of {list(TRACKERS)}")


@dataclass(frozen=True)
class EvalConfig(CheckedConfig):
    section: ClassVar[str] = "eval"
    topk: list[int] = field(default_factory=lambda: [20, 50])  # cut-offs N of every metric (ComiRec: 20, 50)
    backend: Literal["torch", "faiss"] = "torch"  # identical rankings; faiss is faster on CPU for big catalogues
    exclude_history: bool = False  # ComiRec keeps history items in the ranking
    diversity_lambda: float = 0.0  # ComiRec's category-diversity weight in the merge of the K lists; 0 = max merge
    # share of the final top-N reserved for the best items of the interests a model generates rather than extracts
    # (GemiRec over a base); the rest is the max-score merge over all interests; 0 = that merge alone [OURS]
    generated_share: float = 0.0
    # the same for the base's (extracted) interests: a cap on what the generated ones take; 1 = the base's own list
    # (its ranking, not its collapse figures); chosen per dataset on the valid split (docs/models.md 5.3) [OURS]
    base_share: float = 0.0
    # non-empty: after training, eval.base_share is chosen from these on the valid split (early_stop_metric; the
    # first best wins) and written to the run's config.toml, so evaluate, bundles and the service use it [OURS]
    base_share_grid: list[float] = field(default_factory=list)
    batch_size: int = 1024  # users per evaluation forward pass and search
    # model-free item interest clusters (mirec.data.interests) for novel_recall@N and interest_coverage@N; 0 = off
    interest_clusters: int = 64
    # METRIC@N with METRIC a registered metric (mirec.eval.metrics) and N in topk; "" = recall at the largest
    # cut-off (ComiRec: @50)
    early_stop_metric: str = ""

    def check(self) -> None:
        self.require(
            len(self.topk) >= 1 and all(k >= 1 for k in self.topk), "topk", "a non-empty list of cut-offs >= 1"
        )
        object.__setattr__(self, "early_stop_metric", self.early_stop_metric or f"recall@{max(self.topk)}")
        self.require(self.batch_size >= 1, "batch_size", ">= 1")
        self.require(
            0 <= self.diversity_lambda <= MAX_DIVERSITY_LAMBDA, "diversity_lambda", f"in 0..{MAX_DIVERSITY_LAMBDA:g}"
        )
        self.require(0.0 <= self.generated_share <= 1.0, "generated_share", "in [0, 1]")
        self.require(0.0 <= self.base_share <= 1.0, "base_share", "in [0, 1]")
        for key in ("generated_share", "base_share"):
            self.require(getattr(self, key) == 0 or self.diversity_lambda == 0, key, "0 with diversity_lambda > 0")
        self.require(self.generated_share == 0 or self.base_share == 0, "base_share", "0 with generated_share > 0")
        self.require(all(0.0 <= x <= 1.0 for x in self.base_share_grid), "base_share_grid", "shares in [0, 1]")
        self.require(
            not self.base_share_grid or self.generated_share == 0, "base_share_grid", "empty with generated_share > 0"
        )
        # the grid's choice becomes eval.base_share, which diversity_lambda > 0 excludes
        self.require(
            not self.base_share_grid or self.diversity_lambda == 0, "base_share_grid", "empty with diversity_lambda > 0"
        )
        self.require(self.interest_clusters >= 0, "interest_clusters", ">= 0 (0 = no novel-interest metrics)")
        metric, _, cut = self.early_stop_metric.partition("@")
        valid = metric in METRICS and cut.isdigit() and int(cut) in self.topk
        self.require(
            valid, "early_stop_metric", f"METRIC@N with METRIC in {list(METRICS)} and N in eval.topk {self.topk}"
        )


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self.model.check_with(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def _section_and_key(dotted: str) -> tuple[str, str]:
        section, _, key = dotted.partition(".")
        if section not in ("model", "graph", "train", "eval") or not key:
            raise ConfigError(f"{dotted}: expected SECTION.KEY with SECTION model, graph, train or eval")
        return section, key

    def value(self, dotted: str) -> Any:
        """The value of ``"section.key"``: what :meth:`with_values` would change."""
        section, key = self._section_and_key(dotted)
        return getattr(getattr(self, section), key)

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """A new config with ``{"section.key": value}`` changed, built and checked as a loaded one (configs are
        frozen: this is how code changes one)."""
        sections: dict[str, dict[str, Any]] = {}
        for dotted, value in values.items():
            section, key = self._section_and_key(dotted)
            sections.setdefault(section, {})[key] = value
        changed = {name: dataclasses.replace(getattr(self, name), **kv) for name, kv in sections.items()}
        return dataclasses.replace(self, **changed)
