"""Configuration of the ISSF network: module switches, hyper-parameters and official-code quirks."""

from __future__ import annotations

from dataclasses import dataclass, field

from issf.utils.config_types import check_field_types

# How the memory branch reads (and fills) the memory; see ISSF.memory_branch.
MEMORY_READS = ("class0", "gt_classes", "all_classes", "shared")


@dataclass
class CompatConfig:
    """Behaviours of the released ISSF code (docs/released_code.md), each True = official.

    The paper-faithful defaults (``experiment=thumos_full``) fix the bugs; ``thumos_official``
    turns every flag on to reproduce the released code.
    """

    memory_class0: bool = False  # B1: memory reads/updates class 0 for every GT class (= memory_read: class0)
    wrap_last: bool = True  # B3: snippet 0 selected -> predecessor index -1 wraps to the last snippet
    saliency_after_dropout: bool = True  # B5: temporal differences on post-dropout features
    memory_store_post_dropout: bool = True  # B11: training updates insert post-dropout features
    saliency_skip_first: bool = False  # B4 option: exclude snippet 0 (difference to zero) from ranking

    def __post_init__(self) -> None:
        check_field_types(self, "model.network.compat.")


@dataclass
class NetworkSettings:
    """Hyper-parameters and switches of the ISSF network and its losses: the ``model.network``
    config. These defaults are the only ones: the application registers this class as the schema
    of ``model.network`` (types checked by Hydra), and the YAML files set only what a recipe
    chooses differently."""

    embed_dim: int = 2048
    dropout: float = 0.6
    scale: float = 20.0  # cosine-classifier scale sigma
    # module switches (all off = the base branch alone, docs/method.md "Base branch alone")
    saliency: bool = True  # SIM + BRM branch
    channel_interaction: bool = True  # channel part of the IIU
    non_salient_branch: bool = True  # second IIU on the non-salient set (lambda mix)
    memory: bool = True  # DEM
    pseudo_labels: bool = True  # distillation of the fused branches into the base branch
    # hyper-parameters
    saliency_ratio: float = 0.5  # p
    lamb: float = 0.12  # weight of the non-salient IIU output
    reduce: int = 4  # channel-MLP reduction
    memory_slots: int = 9  # N per class
    # class0: the released read/update of class 0's slots for every video (B1); gt_classes: the slots
    # of the video's ground-truth classes; all_classes: every class's slots; shared: one
    # class-agnostic bank of N slots ranked by each candidate's best ground-truth-class score
    memory_read: str = "class0"
    memory_residual: bool = False  # memory feature = query + read (keeps it snippet-specific)
    # one more bank, of background prototypes (candidates ranked by their background-class score),
    # that every video reads besides its memory_read rows: a background snippet can read background
    memory_background: bool = False
    memory_init_epoch: int = 1  # eval-mode initialisation pass at the end of this epoch
    memory_ema_epoch: int = 85  # EMA blending for epoch index > this
    schedule_epochs: int = 180  # E in the EMA coefficient m = 0.5 ln(exp(t/E) + 1)
    tau: float = 0.2  # pseudo-label temperature
    w_bg: float = 0.2
    w_att: float = 0.1
    w_pl: float = 1.0  # before the memory starts
    w_pl_memory: float = 0.5  # from the memory start on
    w_memory: float = 0.5  # weight of the memory branch's NCE terms
    pl_memory_mix: float = 0.2  # pseudo-label target = mix * S_mem + (1 - mix) * S_sal
    att_ratio: float = 8.0  # attention loss uses k = max(T // att_ratio, 1)
    fusion_base: float = 0.6  # inference: weight of the base branch (rest: saliency branch)
    compat: CompatConfig = field(default_factory=CompatConfig)

    def __post_init__(self) -> None:
        if isinstance(self.compat, dict):
            self.compat = CompatConfig(**self.compat)
        check_field_types(self, "model.network.")
        self._check_ranges()
        if self.memory_read not in MEMORY_READS:
            raise ValueError(f"model.network.memory_read: expected one of {MEMORY_READS}, got {self.memory_read!r}")
        if self.compat.memory_class0:
            if self.memory_read not in ("class0", type(self).memory_read):  # the default yields
                raise ValueError(
                    f"model.network.compat.memory_class0=true is memory_read=class0; it cannot be combined with "
                    f"memory_read={self.memory_read}"
                )
            self.memory_read = "class0"
            if self.memory_background:
                raise ValueError(
                    "model.network.compat.memory_class0=true is the released memory; it has no memory_background bank"
                )
        if self.memory and not self.saliency:
            raise ValueError("model.network.memory=true needs saliency=true (the memory stores salient snippet-features)")

    def _check_ranges(self) -> None:
        """Values outside a field's range are errors naming the key and the range (before any work:
        ``embed_dim=0`` or ``tau=0`` used to fail far from the cause, ``dropout=1.0`` or ``lamb<0``
        trained silently). ``saliency_ratio`` only needs to be > 0 here: whether it selects at least
        one snippet depends on the video lengths, which the training module checks at fit start."""
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"model.network.{name}: must be {allowed}, got {getattr(self, name)}")

        for name in ("input_dim", "embed_dim", "num_classes", "reduce", "memory_slots"):
            if getattr(self, name, 1) < 1:  # input_dim, num_classes: ISSFConfig only
                raise bad(name, "an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "in [0, 1)")
        if not 0.0 < self.saliency_ratio <= 1.0:
            raise bad("saliency_ratio", "in (0, 1]")
        for name in ("scale", "tau", "att_ratio"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        for name in ("lamb", "pl_memory_mix", "fusion_base"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "in [0, 1]")
        for name in ("w_bg", "w_att", "w_pl", "w_pl_memory", "w_memory"):
            if not getattr(self, name) >= 0:
                raise bad(name, ">= 0")
        if self.channel_interaction and self.embed_dim // self.reduce < 1:
            raise ValueError(f"model.network.reduce: must be <= embed_dim ({self.embed_dim}) with channel_interaction "
                             f"(the channel MLP has embed_dim // reduce units), got {self.reduce}")
        if self.schedule_epochs < 1:
            raise bad("schedule_epochs", "an integer >= 1 (it follows trainer.max_epochs)")
        if self.memory_init_epoch < 0 or self.memory_ema_epoch < 0:
            raise ValueError(f"model.network.memory_init_epoch / memory_ema_epoch: must be >= 0, got "
                             f"{self.memory_init_epoch} / {self.memory_ema_epoch}")

    @property
    def memory_start_epoch(self) -> int:
        """First epoch whose training steps read the memory."""
        return self.memory_init_epoch + 1


@dataclass
class ISSFConfig(NetworkSettings):
    """:class:`NetworkSettings` plus the dimensions the data decide (feature dim, class count)."""

    input_dim: int = 2048
    num_classes: int = 20
