"""Typed run configuration: dataclasses loaded from TOML presets and overridden with ``--set key=value``.

A run config has four sections: ``[model]`` (a model-specific dataclass chosen by ``model.name``),
``[graph]`` (global context extraction, GIMIRec section 4.2), ``[train]`` and ``[eval]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from mirec.eval.metrics import METRICS

PRESET_ROOT = Path(__file__).parent / "configs"
# Datasets that share another's presets (the ComiRec-format split of Grocery is the same log).
PRESET_ALIASES = {"amazon-grocery-comirec": "amazon-grocery"}
# Named recipes: a model plus options, usable wherever a model name is (train, bench, config show).
# The most accurate configurations measured (README "Which model to use"; docs/results.md 12d, 12e, 16f): on Grocery
# "gemirec-over-sa+gc", on Beauty and Yelp-B it and "comirec-sa+gc" are level (GIMIRec level with them too when
# both train to 12,000 steps).
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "comirec-sa+gc": ("comirec-sa", ("model.global_context=true",)),
    "pimi+gc": ("pimi", ("model.global_context=true",)),
    # GemiRec's generated interests beside ComiRec-SA + gc, kept apart by the diversity term, the base's list share
    # chosen on valid: the highest valid recall@50 of the designs measured, on all three sets (docs/results.md 16f)
    "gemirec-over-sa+gc": (
        "gemirec",
        (
            "model.base=comirec-sa",
            "model.global_context=true",
            "model.generated_diversity=1.0",
            "eval.base_share_grid=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]",
        ),
    ),
}
TRACKERS = ("tensorboard", "mlflow")  # train.log_to
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


# lambda * (items picked per category) must stay finite next to the scores; far below this the greedy is already
# a pure category round-robin
MAX_DIVERSITY_LAMBDA = 1e6


class ConfigError(ValueError):
    pass


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


class CheckedConfig:
    """Checks a config section when it is built (from TOML, ``--set`` or in code): every ``Literal`` field
    against its choices, then the section's own ranges and cross-field rules in :meth:`check`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            annotation = hints[f.name]
            if typing.get_origin(annotation) is Literal:
                value, choices = getattr(self, f.name), typing.get_args(annotation)
                if value not in choices:
                    raise ConfigError(f"{self.section}.{f.name} = {value!r}; expected one of {list(choices)}")
        self.check()

    def check(self) -> None:
        """Ranges and cross-field rules; raise :class:`ConfigError` via :meth:`require`."""

    def require(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ConfigError(f"{self.section}.{name} = {getattr(self, name)!r}; must be {rule}")


@dataclass(frozen=True)
class ModelConfig(CheckedConfig):
    """Options shared by every model; each model extends it with its own dataclass."""

    section: ClassVar[str] = "model"
    name: str = "dnn"
    embedding_dim: int = 64
    num_interests: int = 4
    maxlen: int = 20
    # Replace the item-embedding lookup by E_global = A E_item (GIMIRec's transplantable GCE).
    global_context: bool = False
    # Training readout over the K interests, label-aware attention pow(scores, p) (MIND Eq. 7): inf = the hard
    # argmax of ComiRec's code (every multi-interest model's default); 1 = ComiRec's hard_readout=False
    readout_power: float = math.inf

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
        for f in dataclasses.fields(self):  # every model's dropout-like rate is a probability
            if "dropout" in f.name and isinstance(getattr(self, f.name), float):
                self.require(0.0 <= getattr(self, f.name) < 1.0, f.name, "in [0, 1)")


@dataclass(frozen=True)
class GraphConfig(CheckedConfig):
    """Global context extraction (GIMIRec Eq. 1-7); used when the model asks for a global context."""

    l_time: float = 64.0  # days; pairs further apart are dropped (Eq. 1)
    a: float = 0.5  # interval weight (Eq. 2): p = a (L_time - dt) / L_time + b
    b: float = 0.5
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
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 1_000_000
    eval_every: int = 1000
    patience: int = 10  # evaluations without a better valid Recall@50
    max_minutes: float = 0.0  # 0 = no wall-clock budget
    loss: Literal["sampled", "full", "inbatch"] = "sampled"
    num_negatives_factor: int = 10  # sampled softmax draws factor * batch_size unique ids (TF default use)
    # True: negatives drawn from ids 1..n_items only (TF/ComiRec draw padding 0 too)
    sampler_exclude_padding: bool = False
    negative_sampler: Literal["log_uniform", "uniform"] = "log_uniform"  # TF/ComiRec | REMI's default
    negatives_unique: bool = True  # TF unique=True; REMI: False (1,280 draws with replacement)
    remove_accidental_hits: bool = True  # TF default; REMI: False
    # CPU: each item-table lookup adds its row gradients into one kept dense buffer (index_add_; same Adam update,
    # less memory traffic than a zero-filled [n_items, d] gradient per lookup); False = torch's dense backward
    sparse_item_grad: bool = True
    min_cut: int = 4  # ComiRec draws the cut position k uniformly in [4, len-1]
    seed: int = 19
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 0  # 0 = at every evaluation
    log_every: int = 100
    eval_users: int = 0  # 0 = all valid users during training evaluations
    # mirrors of the run in experiment trackers (mirec.training.tracking): "", "tensorboard", "mlflow" or both,
    # comma-separated; the run folder stays the source of truth and a failing tracker never stops training
    log_to: str = ""
    tracking_uri: str = ""  # MLflow store: "" = $MLFLOW_TRACKING_URI, else sqlite:///<output folder>/mlflow.db
    tracking_experiment: str = ""  # MLflow experiment name; "" = "mirec"

    def check(self) -> None:
        for name in ("batch_size", "eval_every", "log_every", "num_negatives_factor", "min_cut"):
            self.require(getattr(self, name) >= 1, name, ">= 1")
        for name in ("max_steps", "patience", "checkpoint_every", "eval_users", "weight_decay", "max_minutes"):
            self.require(getattr(self, name) >= 0, name, ">= 0")
        self.require(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        self.require(bool(DEVICE_PATTERN.match(self.device)), "device", "auto, cpu, cuda, cuda:N or mps")
        trackers = [part.strip() for part in self.log_to.split(",") if part.strip() not in ("", "none")]
        self.require(set(trackers) <= set(TRACKERS), "log_to", f"a comma-separated subset of {list(TRACKERS)}")


@dataclass(frozen=True)
class EvalConfig(CheckedConfig):
    section: ClassVar[str] = "eval"
    topk: list[int] = field(default_factory=lambda: [20, 50])
    backend: Literal["torch", "faiss"] = "torch"  # identical rankings; faiss is faster on CPU for big catalogues
    exclude_history: bool = False  # ComiRec keeps history items in the ranking
    diversity_lambda: float = 0.0
    # share of the final top-N reserved for the best items of the interests a model generates rather than extracts
    # (GemiRec over a base); the rest is the max-score merge over all interests; 0 = that merge alone [OURS]
    generated_share: float = 0.0
    # the same for the base's (extracted) interests: a cap on what the generated ones take; 1 = the base's own list
    # (its ranking, not its collapse figures); chosen per dataset on the valid split (docs/results.md 16f) [OURS]
    base_share: float = 0.0
    # non-empty: after training, eval.base_share is chosen from these on the valid split (early_stop_metric; the
    # first best wins) and written to the run's config.toml, so evaluate, bundles and the service use it [OURS]
    base_share_grid: list[float] = field(default_factory=list)
    batch_size: int = 1024
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


# ---------------------------------------------------------------- model options
# One dataclass per model, here rather than in the model files so that a config is built and checked without
# importing torch or any model (a misspelled choice fails before anything is loaded); the model classes name
# theirs as ``config_class``. Each field's comment says where its default comes from (docs/models.md).


@dataclass(frozen=True)
class DNNConfig(ModelConfig):
    name: str = "dnn"
    init: Literal["glorot", "kaiming"] = "glorot"  # TF reference | (REMI: kaiming_normal_ on every weight)
    dense_bias: bool = True  # REMI: False


@dataclass(frozen=True)
class GRU4RecConfig(ModelConfig):
    name: str = "gru4rec"
    gru_layers: int = 1  # ComiRec: one GRUCell; REMI: --layers (train.py default 1; GRU4Rec.__init__ default 3)
    gru_hidden: int = 0  # 0 = embedding_dim (ComiRec); REMI: 2 * embedding_dim
    gru_bias: bool = True  # REMI: False
    embedding_dropout: float = 0.0  # REMI: --dropout on the input item vectors (train.py default 0.2)
    output_dense: bool = False  # REMI: Linear(gru_hidden, d) on the last state; needed when gru_hidden != d


@dataclass(frozen=True)
class MINDConfig(ModelConfig):
    name: str = "mind"
    relu_layer: bool = True  # ComiRec Model_MIND default; train.py turns it off for Taobao
    routing_iterations: int = 3  # MIND: "repeated three times"
    routing_init_std: float = 1.0  # b_ij ~ TruncatedNormal(0, std^2); MIND chose sigma = 1
    stop_gradient: bool = True  # ComiRec CapsuleNetwork.stop_grad
    dynamic_interests: bool = False  # MIND Eq. 9 (off in ComiRec's MIND)


@dataclass(frozen=True)
class ComiRecDRConfig(ModelConfig):
    name: str = "comirec-dr"
    relu_layer: bool = False  # Model_ComiRec_DR default
    routing_iterations: int = 3
    stop_gradient: bool = True  # ComiRec CapsuleNetwork.stop_grad


@dataclass(frozen=True)
class ComiRecSAConfig(ModelConfig):
    name: str = "comirec-sa"
    add_pos: bool = True  # Model_ComiRec_SA default: position embedding in the attention input
    init: Literal["glorot", "kaiming"] = "glorot"  # TF reference | (PyTorch ports: kaiming_normal_ on every weight)
    position_init_scale: float = 1.0  # multiplies the position table's init (TF Glorot: 1; std 0.15 vs items' 0.015)


@dataclass(frozen=True)
class PIMIConfig(ModelConfig):
    name: str = "pimi"
    time_span: int = 64  # days; T_ij = min(|t_i - t_j|, time_span) (PIMI_Rec --time_span, README: 64)
    num_heads: int = 4  # star-graph attention heads (PIMI_Rec multihead_attention default)
    num_layers: int = 3  # star-graph rounds (PIMI_Rec ``for i in range(3)``)
    dropout: float = 0.1  # attention-weight dropout, training only
    # Deviation (off = reference): mask padded item rows out of the central node's attention.
    mask_center: bool = False
    star_activation: Literal["relu", "none"] = "relu"  # PIMI_Rec model.py: tf.nn.relu after each attention


@dataclass(frozen=True)
class GIMIRecConfig(ModelConfig):
    """L_rec is ``maxlen`` (20 Amazon, 50 Taobao-Buy); time_span is L_time, keep it equal to graph.l_time."""

    name: str = "gimirec"
    num_interests: int = 4
    time_span: int = 64  # L_time in days (Eq. 8; Table 2: 64 Amazon, 7 Taobao-Buy)
    num_layers: int = 3  # L_layer (Figure 4: 3 is best)
    num_heads: int = 4  # paper silent: PIMI_Rec's 4 heads
    dropout: float = 0.1  # section 4.6; applied, as PIMI_Rec, to the attention weights
    # Paper silent (Eq. 12 has no position term): off. On = add PIMI's learned position table to E_hyb.
    position_embedding: bool = False
    # Deviation (off = PIMI_Rec behaviour): mask padded item rows out of the central node's attention.
    mask_center: bool = False
    # Activation after each star-graph attention: Eq. 17 and 19 have none; "relu" is PIMI_Rec's code.
    star_activation: Literal["relu", "none"] = "relu"
    # Values the interest attention S2 is applied to: "aggregated" = the star-graph output E (Eq. 21, the paper);
    # "embedding" = the E_global rows, as PIMI_Rec applies its attention to the raw item vectors (a deviation).
    interest_values: Literal["aggregated", "embedding"] = "aggregated"
    # Weight of E_time in Eq. 12 (E_hyb = time_scale * E_time + E_global): 1 = the paper; 0 = no time-interval
    # representation (an ablation); below 1 offsets E_time's ~27x larger norm at initialisation [OURS]
    time_scale: float = 1.0
    # GIMIRec always extracts its global context (E_global, Eq. 7): shown true, whatever an older config.toml says
    global_context: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_context", True)  # before the checks: a frozen config is built once
        super().__post_init__()
        self.require(math.isfinite(self.time_scale) and self.time_scale >= 0, "time_scale", "a finite number >= 0")

    def check_with(self, run: RunConfig) -> None:
        super().check_with(run)
        # Eq. 1 and Eq. 8 use one L_time: the graph's pair window and the interval embedding's clip
        if run.graph.use_threshold and float(self.time_span) != float(run.graph.l_time):
            raise ConfigError(
                f"model.time_span = {self.time_span} and graph.l_time = {run.graph.l_time} must be equal "
                "(both are GIMIRec's L_time); set both, e.g. --set model.time_span=7 --set graph.l_time=7"
            )


@dataclass(frozen=True)
class GemiRecConfig(ModelConfig):
    name: str = "gemirec"
    # Framework-level use [PAPER: "a framework-level refinement"]: "none" = our standalone design; a model name
    # = that model extracts K interests from the history (with its default options, over this model's item
    # table and global context) and the generated interests are served beside them (K + K vectors) [OURS]
    base: Literal["none", "comirec-sa", "comirec-dr", "mind", "pimi", "gimirec"] = "none"
    # False (with a base): no dictionary, generator or retrieval module; the model is exactly its base
    generative: bool = True
    # IDMM: residual quantizer over sg[item embeddings] [SECONDARY: RQ, C levels, concat form]
    idmm_levels: int = 2  # C [OURS: not published]
    idmm_codes: int = 64  # M per level [OURS: suited to ~10k-item catalogues]
    idmm_code_dim: int = 32  # per-level code width; interest embedding = C * code_dim [OURS]
    # z_enc: mlp | linear | identity (identity needs code_dim == embedding_dim) [OURS]
    idmm_encoder: Literal["mlp", "linear", "identity"] = "mlp"
    idmm_update: Literal["ema", "grad"] = "ema"  # codebook updates [OURS]
    idmm_decay: float = 0.99  # EMA decay [OURS]
    idmm_beta: float = 0.25  # commitment weight [OURS: VQ-VAE default]
    idmm_kmeans_iters: int = 10  # Lloyd iterations of the first-batch k-means init [OURS]
    idmm_dead_threshold: float = 1.0  # EMA usage below which a code is re-seeded; 0 = never [OURS]
    idmm_recon_weight: float = 1.0  # RQ-VAE decoder reconstruction of sg[v]; 0 = no decoder [OURS]
    # sg[v] rescaled to norm sqrt(D) before z_enc (and as the decoder's target) [OURS]; "none" lets the small
    # Glorot-scale table collapse level 1 onto one code (docs/results.md section 10)
    idmm_input_norm: Literal["none", "l2"] = "l2"
    # extra catalogue items drawn uniformly per step for the IDMM update (0 = batch items only) [OURS]
    idmm_uniform_items: int = 0
    maintenance_every: int = 1000  # steps between catalogue item->interest re-assignments; 0 = only first use
    # re-assign the catalogue at the first eval forward after training steps [OURS]
    refresh_on_eval: bool = True
    # MIPDM: causal Transformer predicting the next item's code tuple level by level [SECONDARY: GPT]
    mipdm_layers: int = 2  # [OURS: the third party's reproduction uses 6]
    mipdm_heads: int = 2
    mipdm_dropout: float = 0.1
    mipdm_input: Literal["item+code", "item", "code"] = "item+code"  # what each history position feeds [OURS]
    mipdm_all_positions: bool = False  # CE at every position (GPT style) instead of the last only [OURS]
    beam_width: int = 16  # serving beam over levels; >= num_interests [OURS]
    # the K served tuples are the best ones with pairwise-distinct first-level codes, not the K best overall,
    # which mostly share their first code (near-duplicate interests; docs/results.md section 10) [OURS]
    beam_distinct_prefix: bool = True
    # > 0 (with beam_distinct_prefix): the K served tuples are chosen among the first-code candidates by maximal
    # marginal relevance, log p minus this weight (nats) times the largest cosine of the tuple's interest
    # embedding to those already chosen; the best distinct first codes are often neighbouring codes
    # (docs/results.md 16e: at serving it cost recall) [OURS]
    beam_diversity: float = 0.0
    # MIRM: u_m = f(u_seq, e_m) [SECONDARY: fuses the user embedding with the quantized interest]
    # on the concatenation | gated sum | the code alone (no user vector: the K generated interests differ only as
    # their tuples do; on Yelp-B no less alike than "mlp"'s and lower on valid, docs/results.md 16d) [OURS]
    mirm_fusion: Literal["mlp", "gated", "code"] = "mlp"
    # share of training rows whose user vector is built from the target's own tuple (teacher forcing); the rest
    # use the hard readout over the K generated interests [OURS]; 0 is best measured (docs/results.md section 10)
    mirm_teacher_prob: float = 0.0
    # weight of a penalty on the mean pairwise cosine of the K generated interests (per user), added to the
    # training loss; 0 = none. Against the near-duplicate generated interests of docs/results.md 16d; 1.0 spreads
    # them and raises novel recall, valid recall@50 lower or level (16e), so 0 stays the default [OURS]
    generated_diversity: float = 0.0
    # u_seq from the MIPDM transformer (shared) or from a separate one [OURS]
    user_encoder: Literal["shared", "separate"] = "shared"
    # total loss = retrieval + lambda_mipdm * CE + lambda_idmm * IDMM loss [OURS: lambdas not published]
    lambda_mipdm: float = 1.0
    lambda_idmm: float = 1.0
    # With a base [OURS]: "base" = only the base's own loss reaches the shared item table (the base trains
    # exactly as alone), the generator reads sg[item vectors] and the generated interests' readout is scored
    # against a detached table; "all" = every loss trains the table and the training user vector is one readout
    # over the base's and the generated interests. "base" chosen on valid recall@50 (docs/results.md 16c:
    # +15% / +20% over "all" on Grocery over ComiRec-SA / +gc). No effect without a base.
    item_table_gradient: Literal["all", "base"] = "base"

    def serves_generated_interests(self) -> bool:
        return self.base != "none" and self.generative

    def check(self) -> None:
        super().check()
        self.require(self.generative or self.base != "none", "generative", "true without a base (model.base)")
        self.require(0.0 <= self.mirm_teacher_prob <= 1.0, "mirm_teacher_prob", "in [0, 1]")
        self.require(self.generated_diversity >= 0.0, "generated_diversity", ">= 0")
        self.require(self.beam_diversity >= 0.0, "beam_diversity", ">= 0")
        if self.beam_diversity > 0.0:  # it chooses among the best tuples of distinct first codes
            self.require(self.beam_distinct_prefix, "beam_distinct_prefix", "true when beam_diversity > 0")
        self.require(
            self.idmm_codes**self.idmm_levels >= self.num_interests,
            "idmm_codes",
            f"such that idmm_codes^idmm_levels >= num_interests ({self.num_interests}) interest tuples",
        )
        if self.beam_distinct_prefix:
            self.require(
                self.idmm_codes >= self.num_interests,
                "idmm_codes",
                f">= num_interests ({self.num_interests}) for beam_distinct_prefix (distinct first-level codes)",
            )
        self.require(self.beam_width >= self.num_interests, "beam_width", f">= num_interests ({self.num_interests})")
        self.require(
            self.mipdm_heads >= 1 and self.embedding_dim % self.mipdm_heads == 0,
            "mipdm_heads",
            f"a divisor of embedding_dim ({self.embedding_dim})",
        )


# model name -> its options; mirec.models maps the same names to the model classes (a test keeps them in step)
MODEL_CONFIGS: dict[str, type[ModelConfig]] = {
    cls.name: cls
    for cls in (
        DNNConfig,
        GRU4RecConfig,
        MINDConfig,
        ComiRecDRConfig,
        ComiRecSAConfig,
        PIMIConfig,
        GIMIRecConfig,
        GemiRecConfig,
    )
}


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

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """A new config with ``{"section.key": value}`` changed, built and checked as a loaded one (configs are
        frozen: this is how code changes one)."""
        sections: dict[str, dict[str, Any]] = {}
        for dotted, value in values.items():
            section, _, key = dotted.partition(".")
            if section not in ("model", "graph", "train", "eval") or not key:
                raise ConfigError(f"{dotted}: expected SECTION.KEY with SECTION model, graph, train or eval")
            sections.setdefault(section, {})[key] = value
        changed = {name: dataclasses.replace(getattr(self, name), **kv) for name, kv in sections.items()}
        return dataclasses.replace(self, **changed)


def describe_options(model_config: type[ModelConfig]) -> dict[str, dict[str, Any]]:
    """Every option of a model's run config: ``{"model.x": {"default": ..., "type": ..., "choices": [...]}}``."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in (("model", model_config), ("graph", GraphConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        hints = typing.get_type_hints(cls)
        defaults = dataclasses.asdict(cls())
        for f in dataclasses.fields(cls):
            annotation = hints[f.name]
            entry: dict[str, Any] = {"default": defaults[f.name]}
            if typing.get_origin(annotation) is Literal:
                entry["choices"] = list(typing.get_args(annotation))
            else:
                entry["type"] = getattr(annotation, "__name__", str(annotation))
            out[f"{section}.{f.name}"] = entry
    return out


def _model_config_class(name: str) -> type[ModelConfig]:
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"model.name = {name!r}; expected one of {list(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert a TOML value to the dataclass field's annotated type."""
    origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"[{section}]: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    unknown = set(data) - {"model", "graph", "train", "eval"}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}")
    model_values = dict(data.get("model", {}))
    model_cls = _model_config_class(model_values.get("name", ModelConfig.name))
    return RunConfig(
        model=_build(model_cls, model_values, "model"),
        graph=_build(GraphConfig, data.get("graph", {}), "graph"),
        train=_build(TrainConfig, data.get("train", {}), "train"),
        eval=_build(EvalConfig, data.get("eval", {}), "eval"),
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.005`` -> (["train", "lr"], 0.005); values are TOML literals, bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides; a bare ``key`` is resolved when exactly one section has it."""
    sections = {
        "model": {f.name for f in dataclasses.fields(_model_config_class(data.get("model", {}).get("name", "dnn")))},
        "graph": {f.name for f in dataclasses.fields(GraphConfig)},
        "train": {f.name for f in dataclasses.fields(TrainConfig)},
        "eval": {f.name for f in dataclasses.fields(EvalConfig)},
    }
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            owners = [s for s, names in sections.items() if path[0] in names]
            if len(owners) != 1:
                raise ConfigError(f"--set {text}: option {path[0]!r} is {'ambiguous' if owners else 'unknown'}")
            path = [owners[0], path[0]]
        if len(path) != 2 or path[0] not in sections:
            raise ConfigError(f"--set {text}: expected section.key with section in {sorted(sections)}")
        data.setdefault(path[0], {})[path[1]] = value
    return data


def preset_layers(dataset: str, model: str) -> list[Path]:
    """The preset files of a (dataset, model) pair, in the order they apply (RecBole's layering): the model's
    defaults (the paper's values, ``configs/models/``), the dataset's settings (batch size, maxlen, evaluation
    cadence, graph values; ``configs/datasets/``), then a per-pair override only where a paper gives one
    (``configs/pairs/<dataset>/``). Missing layers are skipped."""
    layers = [
        PRESET_ROOT / "models" / f"{model}.toml",
        PRESET_ROOT / "datasets" / f"{dataset}.toml",
        PRESET_ROOT / "pairs" / dataset / f"{model}.toml",
    ]
    return [path for path in layers if path.exists()]


def preset_datasets() -> list[str]:
    """Dataset names that have settings of their own (others use ``default``)."""
    return sorted(p.stem for p in (PRESET_ROOT / "datasets").glob("*.toml"))


def dataset_preset(name: str) -> str:
    """The preset folder of a prepared dataset called ``name`` (``mirec prepare --name``): itself, or the dataset
    it is an alias of, when settings of that name exist; else ``default``."""
    name = PRESET_ALIASES.get(name, name)
    return name if name in preset_datasets() else "default"


def load_config(
    path: str | Path | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Build a RunConfig from (in order) the preset layers of (dataset, model), a TOML file, and overrides.
    ``model`` may name a recipe (:data:`RECIPES`): its model's presets, then the recipe's options."""
    if model in RECIPES:
        model, recipe = RECIPES[model]
        overrides = [*recipe, *(overrides or [])]
    data: dict[str, Any] = {}
    if dataset and model:
        for layer in preset_layers(dataset, model):
            data = _merge(data, tomllib.loads(layer.read_text()))
    if path is not None:
        try:
            data = _merge(data, tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if model:
        data.setdefault("model", {})["name"] = model
    return from_dict(apply_overrides(data, list(overrides or [])))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def save_config(config: RunConfig, path: str | Path) -> None:
    from mirec.utils import atomic_write_text

    atomic_write_text(path, to_toml(config.to_dict()))


def toml_literal(value: Any, separator: str = ", ") -> str:
    """A TOML literal of a str, int, float, bool or list of those (``separator`` between list items)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + separator.join(toml_literal(v, separator) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML literal")


def to_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for our flat sections (str, int, float, bool, lists of those)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_literal(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
