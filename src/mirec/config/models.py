"""Each model's options, and the one model registry: an options class names its model (``model_path``), so the
model zoo, the config loader and GemiRec's base choices all read :data:`MODEL_CONFIGS`."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mirec.config.checked import ConfigError
from mirec.config.sections import EvalConfig, GraphConfig, ModelConfig, RunConfig, TrainConfig

# ---------------------------------------------------------------- model options
# One dataclass per model, here rather than in the model files so that a config is built and checked without
# importing torch or any model (a misspelled choice fails before anything is loaded); the model classes name
# theirs as ``config_class``. Each field's comment says where its default comes from (docs/models.md).


@dataclass(frozen=True)
class DNNConfig(ModelConfig):
    name: str = "dnn"
    model_path: ClassVar[str] = "mirec.models.dnn:YouTubeDNN"
    init: Literal["glorot", "kaiming"] = "glorot"  # TF reference | (REMI: kaiming_normal_ on every weight)
    dense_bias: bool = True  # REMI: False


@dataclass(frozen=True)
class GRU4RecConfig(ModelConfig):
    name: str = "gru4rec"
    model_path: ClassVar[str] = "mirec.models.gru4rec:GRU4Rec"
    gru_layers: int = 1  # ComiRec: one GRUCell; REMI: --layers (train.py default 1; GRU4Rec.__init__ default 3)
    gru_hidden: int = 0  # 0 = embedding_dim (ComiRec); REMI: 2 * embedding_dim
    gru_bias: bool = True  # REMI: False
    embedding_dropout: float = 0.0  # REMI: --dropout on the input item vectors (train.py default 0.2)
    output_dense: bool = False  # REMI: Linear(gru_hidden, d) on the last state; needed when gru_hidden != d


@dataclass(frozen=True)
class MINDConfig(ModelConfig):
    name: str = "mind"
    model_path: ClassVar[str] = "mirec.models.mind:MIND"
    can_be_base: ClassVar[bool] = True
    relu_layer: bool = True  # ComiRec Model_MIND default; train.py turns it off for Taobao
    routing_iterations: int = 3  # MIND: "repeated three times"
    routing_init_std: float = 1.0  # b_ij ~ TruncatedNormal(0, std^2); MIND chose sigma = 1
    stop_gradient: bool = True  # ComiRec CapsuleNetwork.stop_grad
    dynamic_interests: bool = False  # MIND Eq. 9 (off in ComiRec's MIND)


@dataclass(frozen=True)
class ComiRecDRConfig(ModelConfig):
    name: str = "comirec-dr"
    model_path: ClassVar[str] = "mirec.models.comirec_dr:ComiRecDR"
    can_be_base: ClassVar[bool] = True
    relu_layer: bool = False  # Model_ComiRec_DR default
    routing_iterations: int = 3  # dynamic routing rounds (ComiRec CapsuleNetwork iteration = 3)
    stop_gradient: bool = True  # ComiRec CapsuleNetwork.stop_grad


@dataclass(frozen=True)
class ComiRecSAConfig(ModelConfig):
    name: str = "comirec-sa"
    model_path: ClassVar[str] = "mirec.models.comirec_sa:ComiRecSA"
    can_be_base: ClassVar[bool] = True
    add_pos: bool = True  # Model_ComiRec_SA default: position embedding in the attention input
    init: Literal["glorot", "kaiming"] = "glorot"  # TF reference | (PyTorch ports: kaiming_normal_ on every weight)
    position_init_scale: float = 1.0  # multiplies the position table's init (TF Glorot: 1; std 0.15 vs items' 0.015)
    routing_reg: float = 0.0  # REMI's routing regulariser weight lambda (0 = off; REMI: 100)

    def check(self) -> None:
        super().check()
        self.require(self.routing_reg >= 0, "routing_reg", ">= 0")


@dataclass(frozen=True)
class PIMIConfig(ModelConfig):
    name: str = "pimi"
    model_path: ClassVar[str] = "mirec.models.pimi:PIMI"
    can_be_base: ClassVar[bool] = True
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
    model_path: ClassVar[str] = "mirec.models.gimirec:GIMIRec"
    can_be_base: ClassVar[bool] = True
    num_interests: int = 4  # K (Table 6: 4 on the Amazon sets)
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


# GemiRec's bases: the models whose options say they can extract its K interests
BASE_CHOICES = (
    "none",
    *(c.name for c in (MINDConfig, ComiRecDRConfig, ComiRecSAConfig, PIMIConfig, GIMIRecConfig) if c.can_be_base),
)


@dataclass(frozen=True)
class GemiRecConfig(ModelConfig):
    name: str = "gemirec"
    model_path: ClassVar[str] = "mirec.models.gemirec:GemiRec"
    # Framework-level use [PAPER: "a framework-level refinement"]: "none" = our standalone design; a model name
    # = that model extracts K interests from the history (with its default options, over this model's item
    # table and global context) and the generated interests are served beside them (K + K vectors) [OURS]
    base: Literal[BASE_CHOICES] = "none"
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
    # Glorot-scale table collapse level 1 onto one code (docs/models.md 5)
    idmm_input_norm: Literal["none", "l2"] = "l2"
    # extra catalogue items drawn uniformly per step for the IDMM update (0 = batch items only) [OURS]
    idmm_uniform_items: int = 0
    maintenance_every: int = 1000  # steps between catalogue item->interest re-assignments; 0 = only first use
    # re-assign the catalogue at the first eval forward after training steps [OURS]
    refresh_on_eval: bool = True
    # MIPDM: causal Transformer predicting the next item's code tuple level by level [SECONDARY: GPT]
    mipdm_layers: int = 2  # [OURS: the third party's reproduction uses 6]
    mipdm_heads: int = 2  # attention heads of the MIPDM transformer [OURS]
    mipdm_dropout: float = 0.1  # dropout in the MIPDM transformer [OURS]
    mipdm_input: Literal["item+code", "item", "code"] = "item+code"  # what each history position feeds [OURS]
    mipdm_all_positions: bool = False  # CE at every position (GPT style) instead of the last only [OURS]
    beam_width: int = 16  # serving beam over levels; >= num_interests [OURS]
    # the K served tuples are the best ones with pairwise-distinct first-level codes, not the K best overall,
    # which mostly share their first code (near-duplicate interests; docs/models.md 5) [OURS]
    beam_distinct_prefix: bool = True
    # > 0 (with beam_distinct_prefix): the K served tuples are chosen among the first-code candidates by maximal
    # marginal relevance, log p minus this weight (nats) times the largest cosine of the tuple's interest
    # embedding to those already chosen; the best distinct first codes are often neighbouring codes [OURS]
    beam_diversity: float = 0.0
    # MIRM: u_m = f(u_seq, e_m) [SECONDARY: fuses the user embedding with the quantized interest]
    # on the concatenation | gated sum | the code alone (no user vector: the K generated interests differ only as
    # their tuples do) [OURS]
    mirm_fusion: Literal["mlp", "gated", "code"] = "mlp"
    # share of training rows whose user vector is built from the target's own tuple (teacher forcing); the rest
    # use the hard readout over the K generated interests [OURS]
    mirm_teacher_prob: float = 0.0
    # weight of a penalty on the mean pairwise cosine of the K generated interests (per user), added to the
    # training loss; 0 = none; against near-duplicate generated interests (docs/models.md 5) [OURS]
    generated_diversity: float = 0.0
    # u_seq from the MIPDM transformer (shared) or from a separate one [OURS]
    user_encoder: Literal["shared", "separate"] = "shared"
    # total loss = retrieval + lambda_mipdm * CE + lambda_idmm * IDMM loss [OURS: lambdas not published]
    lambda_mipdm: float = 1.0
    lambda_idmm: float = 1.0  # weight of the IDMM (dictionary) loss [OURS: not published]
    # With a base [OURS]: "base" = only the base's own loss reaches the shared item table (the base trains
    # exactly as alone), the generator reads sg[item vectors] and the generated interests' readout is scored
    # against a detached table; "all" = every loss trains the table and the training user vector is one readout
    # over the base's and the generated interests. "base" was chosen on valid recall@50 (docs/models.md 5.3). No
    # effect without a base.
    item_table_gradient: Literal["all", "base"] = "base"

    def serves_generated_interests(self) -> bool:
        return self.base != "none" and self.generative

    def check(self) -> None:
        super().check()
        self.require(self.generative or self.base != "none", "generative", "true without a base (model.base)")
        # its base model and dictionary read the id table directly: features do not reach them yet
        self.require(not self.item_features, "item_features", "[] (GemiRec does not pool item features yet)")
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


# the one model registry: name -> options class, which names its model class (mirec.models.MODEL_PATHS reads it)
@dataclass(frozen=True)
class SASRecConfig(ModelConfig):
    """The single-interest control: one causal self-attention user vector (K = 1)."""

    name: str = "sasrec"
    model_path: ClassVar[str] = "mirec.models.sasrec:SASRec"
    num_interests: int = 1  # SASRec has one user vector; other values are refused
    num_blocks: int = 2  # self-attention blocks (SASRec paper: 2)
    num_heads: int = 1  # attention heads (SASRec paper: 1)
    dropout: float = 0.2  # on embeddings, attention weights and the feed-forward layers (paper: 0.2 Amazon)
    all_positions: bool = True  # every position predicts its next item (the paper) | false: one target per window
    # xavier: xavier_normal_ on every weight of 2+ dimensions, padding row zeroed (SASRec.pytorch main.py; chosen
    # on valid, study 20) | mixed: Glorot-uniform item table, N(0, 1) positions, torch's defaults (study 18's runs)
    # | torch: torch's defaults everywhere, N(0, 1) item table (RecTools' SASRecModel)
    init: Literal["xavier", "mixed", "torch"] = "xavier"
    scale_items: bool = True  # item vectors * sqrt(d) before the positions are added (SASRec.pytorch) | RecTools: no
    # shared: the input item table is also the output one (SASRec.pytorch, RecTools) | separate: a second item
    # table scores the states (gSASRec-pytorch's reuse_item_embeddings = False, its default)
    output_table: Literal["shared", "separate"] = "shared"
    # dropout on the item table, drawn once per training step and read by the history and the scored items alike
    # (RecTools' IdEmbeddingsItemNet, at its model's dropout_rate); 0 = off (SASRec.pytorch); the preset: 0.2
    item_dropout: float = 0.0

    def check(self) -> None:
        super().check()
        self.require(self.num_interests == 1, "num_interests", "1 (SASRec has one user vector)")
        self.require(self.num_blocks >= 1, "num_blocks", ">= 1")
        self.require(self.num_heads >= 1, "num_heads", ">= 1")
        self.require(self.embedding_dim % self.num_heads == 0, "num_heads", "a divisor of embedding_dim")
        self.require(0.0 <= self.item_dropout < 1.0, "item_dropout", "in [0, 1)")
        self.require(
            not (self.item_dropout and self.item_features),
            "item_dropout",
            "0 with item features (--set model.item_dropout=0)",
        )
        # a new item's output vector comes from its features through the shared table only
        self.require(
            self.output_table == "shared" or not self.item_features,
            "output_table",
            "'shared' with item features (a separate output table has no feature path)",
        )


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
        SASRecConfig,
    )
}


def option_descriptions(cls: type) -> dict[str, str]:
    """Each field's one-line description: its trailing comment, else the comment lines right above it (the one
    home of an option's meaning is the comment beside it), searched through the class and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# ").strip())
                continue
            match = FIELD_LINE.match(line)
            if match:
                trailing = match.group("comment")
                described = trailing.strip() if trailing else " ".join(above)
                if described:
                    out[match.group("name")] = described
            above = []
    return out


FIELD_LINE = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*): [^=]+=.*?(?:  # (?P<comment>.*))?$")


def describe_options(model_config: type[ModelConfig]) -> dict[str, dict[str, Any]]:
    """Every option of a model's run config: ``{"model.x": {"default", "type" or "choices", "description"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in (("model", model_config), ("graph", GraphConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        hints = typing.get_type_hints(cls)
        defaults = dataclasses.asdict(cls())
        described = option_descriptions(cls)
        for f in dataclasses.fields(cls):
            annotation = hints[f.name]
            entry: dict[str, Any] = {"default": defaults[f.name]}
            if typing.get_origin(annotation) is Literal:
                entry["choices"] = list(typing.get_args(annotation))
            else:
                entry["type"] = getattr(annotation, "__name__", str(annotation))
            entry["description"] = described.get(f.name, "")
            out[f"{section}.{f.name}"] = entry
    return out
