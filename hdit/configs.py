"""Config registry: one entry per paper row (Table 1, 2, 5 and Table 6).

Every model, training and sampling setting the harness uses comes from here. Variants are
`dataclasses.replace` of a parent row, mirroring how the paper builds each ablation step on the
previous one (A -> B1/B2 -> C -> D -> E). Profiles (`hdit.profiles`) scale these configs down for the
embedded CPU default; the `paper` profile uses them unchanged (Table 6).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, replace

from hdit.errors import HarnessError

FAMILIES = ("hdit", "dit", "diffit")
ATTENTION_KINDS = ("global", "neighborhood", "shifted_window", "window")  # "window": DiffiT's, not shifted
FF_KINDS = ("geglu", "gelu")
POS_EMB_KINDS = ("rope", "additive", "sincos", "relative")  # "relative": DiffiT's bias inside windows
SKIP_KINDS = ("lerp", "add", "concat")
WEIGHTINGS = ("snr", "min-snr", "soft-min-snr", "ddpm-hybrid")
SAMPLERS = ("dpmpp-3m-sde", "ddpm")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("bf16", "bf16-all", "fp32")  # TrainConfig.precision: see there


class ConfigError(HarnessError):
    """A config ID, resolution or value that the registry cannot satisfy."""


@dataclass(frozen=True)
class ModelConfig:
    """Backbone architecture. `family` picks HDiT (`hdit.model`), DiT (`baselines.dit`) or image-space
    DiffiT (`baselines.diffit`; there `mapping_width` is the time token's width and `window_size` the
    TMSA window).

    Per-level tuples run from the outermost (highest-resolution) level to the innermost one.
    """

    family: str  # one of FAMILIES
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    attention: tuple[str, ...]  # per level, one of ATTENTION_KINDS
    ff: str = "geglu"  # GEGLU with d_ff = 3d (step C on); plain GELU MLP with d_ff = 4d before
    pos_emb: str = "rope"  # axial RoPE (step D on); additive learned embedding before; DiT: sincos
    skip: str = "lerp"  # Table 2
    patch_size: int = 4
    head_dim: int = 64
    kernel_size: int = 7  # neighborhood attention kernel
    window_size: int = 8  # shifted-window attention (B1)
    mapping_depth: int = 1
    mapping_width: int = 768
    dropout: tuple[float, ...] = ()  # per level; empty = no dropout
    num_classes: int = 1000  # 0 = unconditional
    in_channels: int = 3
    resolution: int = 128  # the resolution the widths/depths above are specified for
    learn_sigma: bool = False  # DiT only: 2x output channels (R1)
    # Resolution adaptation (Sec. 4.1, 5.2): each doubling of resolution adds a new, independent
    # outer level of this width/depth using the level's local attention (A: global).
    outer_width: int = 384
    outer_depth: int = 2
    outer_attention: str = "neighborhood"

    def __post_init__(self):
        n = len(self.widths)
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}; expected one of {FAMILIES}")
        if len(self.depths) != n or len(self.attention) != n:
            raise ConfigError(f"widths/depths/attention lengths differ: {self.widths} {self.depths} {self.attention}")
        if self.dropout and len(self.dropout) != n:
            raise ConfigError(f"dropout {self.dropout} must have one entry per level ({n})")
        for name, value, allowed in (("ff", self.ff, FF_KINDS), ("pos_emb", self.pos_emb, POS_EMB_KINDS),
                                     ("skip", self.skip, SKIP_KINDS),
                                     ("outer_attention", self.outer_attention, ATTENTION_KINDS)):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}; expected one of {allowed}")
        for a in self.attention:
            if a not in ATTENTION_KINDS:
                raise ConfigError(f"attention={a!r}; expected one of {ATTENTION_KINDS}")
        for w in self.widths:
            if w % self.head_dim:
                raise ConfigError(f"width {w} is not a multiple of head_dim {self.head_dim}")

    @property
    def d_ffs(self) -> tuple[int, ...]:
        mult = 3 if self.ff == "geglu" else 4
        return tuple(mult * w for w in self.widths)

    @property
    def heads(self) -> tuple[int, ...]:
        return tuple(w // self.head_dim for w in self.widths)

    @property
    def level_dropout(self) -> tuple[float, ...]:
        return self.dropout or (0.0,) * len(self.widths)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    def at_resolution(self, resolution: int) -> "ModelConfig":
        """The paper's resolution adaptation: one new outer level per doubling (hourglass models only).

        Below the native resolution the rule runs backwards (outer levels are dropped). DiffiT keeps its
        levels and window size at every resolution (the appendix gives no rule above 64 px; docs/DIFFIT.md).
        """
        if resolution == self.resolution:
            return self
        if self.family == "diffit":  # convolutions + fixed-size windows: the same network sees more pixels
            check_resolution(resolution, minimum=2 ** (len(self.widths) - 1))
            return replace(self, resolution=resolution)
        check_resolution(resolution, minimum=min(128, self.resolution))
        if len(self.widths) == 1:  # isotropic models (DiT-B/4, R3/R4) just see (R/p)^2 tokens
            return replace(self, resolution=resolution)
        k = int(round(math.log2(resolution / self.resolution)))
        if k < 0:  # the inverse rule: drop outer levels, keeping at least the innermost one
            if -k >= len(self.widths):
                raise ConfigError(f"resolution {resolution} would remove all {len(self.widths)} levels of this model")
            return replace(self, resolution=resolution, widths=self.widths[-k:], depths=self.depths[-k:],
                           attention=self.attention[-k:], dropout=self.dropout[-k:] if self.dropout else ())
        return replace(
            self,
            resolution=resolution,
            widths=(self.outer_width,) * k + self.widths,
            depths=(self.outer_depth,) * k + self.depths,
            attention=(self.outer_attention,) * k + self.attention,
            dropout=((0.0,) * k + self.dropout) if self.dropout else (),
        )


@dataclass(frozen=True)
class TrainConfig:
    """Diffusion objective and optimiser (Table 6; R1/R2 use DiT's own optimiser settings)."""

    objective: str = "edm"  # "edm" (HDiT trainer) | "ddpm" (R1: ADM/DiT Gaussian diffusion)
    weighting: str = "soft-min-snr"
    gamma: float = 4.0  # min-SNR / soft-min-SNR gamma
    sigma_data: float = 0.5
    sigma_min: float = 1e-3
    sigma_max: float = 1e3
    lr: float = 5e-4
    # Table 6: constant lr. Options, for short runs: a linear warm-up over lr_warmup_steps (the default profile's
    # 100 steps, docs/LEARNING_BUDGET.md), then (cosine) a half-cosine from lr down to 0 at the last step.
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    batch_size: int = 256
    steps: int = 400_000
    ema_decay: float = 0.9999
    # EMA warm-up (k-diffusion style): decay_t = min(ema_decay, 1 - (1 + t / ema_warmup_gamma) ** -ema_warmup_power)
    ema_warmup_power: float = 2 / 3
    ema_warmup_gamma: float = 1.0
    cond_dropout: float = 0.1
    augment_prob: float = 0.0
    # Autocast of forward + loss (PRECISIONS). "bf16" is Table 6's: bf16 on CUDA, while a CPU runs the same code in
    # fp32 (the paper trained on GPUs; CPU bf16 autocast is slower than fp32). "bf16-all" also casts on a CPU (tests
    # of the bf16 path), "fp32" never casts. Part of the run's identity (training_key): it changes the numerics.
    precision: str = "bf16"
    seed: int = 0

    def lr_factor(self, step: int) -> float:
        """Multiplier of every param group's lr for the optimiser step after `step` steps (0-indexed)."""
        f = min(1.0, (step + 1) / self.lr_warmup_steps) if self.lr_warmup_steps else 1.0
        if self.lr_schedule == "cosine" and step >= self.lr_warmup_steps:
            span = max(1, self.steps - self.lr_warmup_steps)
            f *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.lr_warmup_steps) / span)))
        return f

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting={self.weighting!r}; expected one of {WEIGHTINGS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"lr_warmup_steps={self.lr_warmup_steps!r}; expected an integer >= 0")
        if self.objective not in ("edm", "ddpm"):
            raise ConfigError(f"objective={self.objective!r}; expected 'edm' or 'ddpm'")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; expected one of {PRECISIONS}")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "dpmpp-3m-sde"
    steps: int = 50
    eta: float = 1.0
    rho: float = 7.0  # Karras schedule
    cfg_scale: float = 1.0  # paper convention: 1 = no guidance

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r}; expected one of {SAMPLERS}")


@dataclass(frozen=True)
class DataConfig:
    name: str = "imagenet"  # "imagenet" | "ffhq" | "shapes" (embedded procedural dataset)
    resolution: int = 128


@dataclass(frozen=True)
class RunConfig:
    id: str
    title: str  # the paper's row label
    table: str  # where the paper reports it
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def training_identity(self) -> dict:
        """What makes two trainings the same run: model, training and data settings, without the row's names and
        sampler, and without the step count where a run can be extended (a constant lr; a decaying schedule is
        a function of the step count). Used by the trainer (resume), the workflow and the reports alike."""
        d = self.to_dict()
        train = d["train"] if self.train.lr_schedule != "constant" else {
            k: v for k, v in d["train"].items() if k != "steps"}
        return {"model": d["model"], "train": train, "data": d["data"]}

    def training_key(self) -> str:
        """A short hash of `training_identity` (recorded in config.json and done.json)."""
        blob = json.dumps(self.training_identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """JSON-shaped (tuples as lists): equal to what config.json / metrics JSON store, so the two compare."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @staticmethod
    def from_dict(d: dict) -> "RunConfig":
        def tup(x):
            return tuple(x) if isinstance(x, list) else x

        m = {k: tup(v) for k, v in d["model"].items()}
        t = {k: tup(v) for k, v in d["train"].items()}
        return RunConfig(id=d["id"], title=d["title"], table=d["table"], model=ModelConfig(**m),
                         train=TrainConfig(**t), sample=SampleConfig(**d["sample"]), data=DataConfig(**d["data"]))


def check_resolution(resolution: int, minimum: int = 128) -> int:
    ok = isinstance(resolution, int) and resolution >= minimum and resolution & (resolution - 1) == 0
    if not ok:
        raise ConfigError(f"resolution {resolution!r} is not supported; expected a power of two >= {minimum}")
    return resolution


# --------------------------------------------------------------------------------------------
# The registry. Comments cite the paper's description of each step (Sec. 5.2, Tables 1, 2, 5, 6).
# --------------------------------------------------------------------------------------------

# DiT-B/4 in pixel space (R1, R2): 12 layers, width 768, 12 heads, patch 4.
_DIT_B4 = ModelConfig(family="dit", widths=(768,), depths=(12,), attention=("global",), ff="gelu",
                      pos_emb="sincos", skip="add", learn_sigma=False)
_DIT_OPTIM = dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)  # DiT's own settings (paper footnote 3)

# Ablation A: hourglass [384, 768] x [2, 11], global attention everywhere, GELU 4x MLP, additive
# positions, lerp skips, SNR weighting.
_A = ModelConfig(family="hdit", widths=(384, 768), depths=(2, 11), attention=("global", "global"), ff="gelu",
                 pos_emb="additive", skip="lerp", outer_attention="global")
_SNR = TrainConfig(weighting="snr")

_B1 = replace(_A, attention=("shifted_window", "global"), outer_attention="shifted_window")
_B2 = replace(_A, attention=("neighborhood", "global"), outer_attention="neighborhood")
_C = replace(_B2, ff="geglu")
_D = replace(_C, pos_emb="rope")
_E = _D
_SOFTMIN = TrainConfig(weighting="soft-min-snr", gamma=4.0)

_T1 = "Table 1"

# Image-space DiffiT (Hatamizadeh et al. 2023; appendix H.1 Tables S.2/S.3 and I.1), a third backbone.
# Pixels are tokens (patch 1, 3x3 conv tokenizer); widths 128 at the first stage and 256 after it ("we keep
# the number of channels constant in the rest of the stages"); TMSA in windows of 8 at 64 px and 4 at 32 px
# with relative position bias; U-Net concatenation skips; time token of width 512 (EDM's DDPM++ embedding
# width, 4 x 128: the appendix does not give one); head_dim 64. The appendix gives two block counts:
#   H.1 (architecture section, with Tables S.2/S.3): L = 4 at every level (FFHQ-64: 4,4,4,4; CIFAR-10: 4,4,4)
#   I.1 (implementation details): FFHQ-64 "1, 2, 2, 2 blocks at each stage"; CIFAR-10 "2 blocks at each stage"
# DEFAULT = H.1 (`diffit-ffhq64`, `diffit-cifar10`): it is the section that specifies the architecture, next
# to the tables it parameterises, and it states the L values for both datasets in the tables' own notation;
# I.1 is a training-details paragraph. The I.1 counts are kept as named variants (-1222, -222).
# The paper trains these unconditionally on FFHQ-64 / CIFAR-10 with EDM's full protocol (EDM loss weight,
# log-normal sigma density, EDM augmentation). The harness has EDM's preconditioning but its own objective
# (interpolated-cosine density, the row's weighting), so these rows define DiffiT's ARCHITECTURE (params,
# GFLOPs, Figure 2); the optimiser numbers are the appendix's (Adam, I.1); sampling uses the harness's
# DPM++(3M) SDE, not EDM's Heun sampler. The harness has no CIFAR-10 loader (training diffit-cifar10* under `paper` stops there).
_DIFFIT_FFHQ64 = ModelConfig(family="diffit", widths=(128, 256, 256, 256), depths=(4, 4, 4, 4),
                             attention=("window",) * 4, ff="gelu", pos_emb="relative", skip="concat", patch_size=1,
                             head_dim=64, window_size=8, mapping_width=512, num_classes=0, resolution=64)
_DIFFIT_CIFAR10 = replace(_DIFFIT_FFHQ64, widths=(128, 256, 256), depths=(4, 4, 4), attention=("window",) * 3,
                          window_size=4, resolution=32)
_DIFFIT_ADAM = dict(betas=(0.9, 0.999), weight_decay=0.0, steps=200_000)  # I.1: Adam, 200k iterations
_DIFFIT_FFHQ_TRAIN = TrainConfig(lr=2e-4, batch_size=256, **_DIFFIT_ADAM)
_DIFFIT_CIFAR_TRAIN = TrainConfig(lr=1e-3, batch_size=512, **_DIFFIT_ADAM)
# The measured comparison (table_diffit): the default DiffiT layout put in step E's place -- Table 1's
# ImageNet-128 class-conditional setting with E's training recipe, so that only the backbone differs from E.
# Class conditioning as in the authors' latent DiffiT: a label embedding added to the time token.
_DIFFIT_IN128 = replace(_DIFFIT_FFHQ64, num_classes=1000, resolution=128)


def _rows() -> list[RunConfig]:
    r3_model = replace(_A, widths=(768,), depths=(12,), attention=("global",))
    return [
        RunConfig("R1", "DiT-B/4", _T1, replace(_DIT_B4, learn_sigma=True),
                  TrainConfig(objective="ddpm", weighting="ddpm-hybrid", **_DIT_OPTIM),
                  SampleConfig(sampler="ddpm", steps=250)),
        RunConfig("R2", "R1 + our trainer (no soft-min-snr)", _T1, _DIT_B4, replace(_SNR, **_DIT_OPTIM)),
        RunConfig("R3", "R2 + our basic blocks & mapping network", _T1, r3_model, _SNR),
        RunConfig("R4", "R3 + soft-min-snr", _T1, r3_model, _SOFTMIN),
        RunConfig("A", "Global Attention Diffusion Hourglass", _T1, _A, _SNR),
        RunConfig("B1", "A + Swin Attn.", _T1, _B1, _SNR),
        RunConfig("B2", "A + Neighborhood Attn.", _T1, _B2, _SNR),
        RunConfig("C", "B2 + GeGLU", _T1, _C, _SNR),
        RunConfig("D", "C + Axial RoPE", _T1, _D, _SNR),
        RunConfig("E", "D + soft-min-snr", _T1, _E, _SOFTMIN),
        # Table 2: skip merging, on top of E.
        RunConfig("skip-concat", "Concatenation (U-Net)", "Table 2", replace(_E, skip="concat"), _SOFTMIN),
        RunConfig("skip-add", "Addition (Original Hourglass)", "Table 2", replace(_E, skip="add"), _SOFTMIN),
        RunConfig("skip-lerp", "Learnable Linear Interpolation (Ours)", "Table 2", _E, _SOFTMIN),
        # Table 5: loss weighting, E's model.
        RunConfig("snr", "SNR (Table 1 step D)", "Table 5", _E, _SNR),
        RunConfig("minsnr-g5", "Min-SNR (gamma = 5)", "Table 5", _E, TrainConfig(weighting="min-snr", gamma=5.0)),
        RunConfig("minsnr-g4", "Min-SNR (gamma = 4)", "Table 5", _E, TrainConfig(weighting="min-snr", gamma=4.0)),
        RunConfig("softminsnr-g4", "Soft-Min-SNR (Ours, gamma = 4)", "Table 5", _E, _SOFTMIN),
        # Table 6 models.
        RunConfig("ffhq-1024", "HDiT-85M, FFHQ-1024", "Table 3",
                  replace(_E, widths=(128, 256, 384, 768, 1024), depths=(2, 2, 2, 2, 2),
                          attention=("neighborhood",) * 3 + ("global",) * 2, mapping_depth=2,
                          dropout=(0.0, 0.0, 0.0, 0.0, 0.1), num_classes=0, resolution=1024),
                  replace(_SOFTMIN, steps=1_000_000, augment_prob=0.12),
                  data=DataConfig("ffhq", 1024)),
        RunConfig("imagenet-256", "HDiT-557M, ImageNet-256", "Table 4",
                  replace(_E, widths=(384, 768, 1536), depths=(2, 2, 16),
                          attention=("neighborhood", "neighborhood", "global"), mapping_depth=2, resolution=256),
                  replace(_SOFTMIN, steps=2_200_000),
                  data=DataConfig("imagenet", 256)),
        # Image-space DiffiT (see the comment above _DIFFIT_FFHQ64); the first of each pair is the default.
        RunConfig("diffit-ffhq64", "DiffiT, FFHQ-64 (L = 4 per level, H.1)", "DiffiT appendix H.1",
                  _DIFFIT_FFHQ64, _DIFFIT_FFHQ_TRAIN, data=DataConfig("ffhq", 64)),
        RunConfig("diffit-ffhq64-1222", "DiffiT, FFHQ-64 (1, 2, 2, 2 blocks, I.1)", "DiffiT appendix I.1",
                  replace(_DIFFIT_FFHQ64, depths=(1, 2, 2, 2)), _DIFFIT_FFHQ_TRAIN,
                  data=DataConfig("ffhq", 64)),
        RunConfig("diffit-cifar10", "DiffiT, CIFAR-10 (L = 4 per level, H.1)", "DiffiT appendix H.1",
                  _DIFFIT_CIFAR10, _DIFFIT_CIFAR_TRAIN, data=DataConfig("cifar10", 32)),
        RunConfig("diffit-cifar10-222", "DiffiT, CIFAR-10 (2 blocks per stage, I.1)", "DiffiT appendix I.1",
                  replace(_DIFFIT_CIFAR10, depths=(2, 2, 2)), _DIFFIT_CIFAR_TRAIN,
                  data=DataConfig("cifar10", 32)),
        RunConfig("diffit-imagenet128", "DiffiT (image space) in step E's setting", "Table DiffiT",
                  _DIFFIT_IN128, _SOFTMIN),
    ]


REGISTRY: dict[str, RunConfig] = {r.id: r for r in _rows()}
TABLE1_ROWS = ("R1", "R2", "R3", "R4", "A", "B1", "B2", "C", "D", "E")
TABLE2_ROWS = ("skip-concat", "skip-add", "skip-lerp")
TABLE5_ROWS = ("snr", "minsnr-g5", "minsnr-g4", "softminsnr-g4")
TABLE_DIFFIT_ROWS = ("E", "R2", "diffit-imagenet128")  # HDiT E, DiT-B/4 in the same EDM trainer, DiffiT


def get_config(config_id: str) -> RunConfig:
    """The paper-scale config of a row. Raises ConfigError naming the valid IDs."""
    try:
        return REGISTRY[config_id]
    except KeyError:
        raise ConfigError(f"unknown config {config_id!r}; valid configs: {', '.join(REGISTRY)}") from None
