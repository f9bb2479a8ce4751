"""Profiles: how a paper row is scaled for the machine it runs on.

`paper` is Table 6 unchanged. `default` is the embedded offline profile for a 2-core CPU: the same
config IDs, the same code paths, shrunk by the rules in `Profile.apply` -- the only place where
scale-down happens. A number measured under `default` is labelled with `Profile.scale_label` wherever
it is shown; it is never the paper's protocol.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hdit.configs import ConfigError, DataConfig, RunConfig, get_config


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # --- model scale-down (None / 1 = unchanged) ---
    resolution: int | None = None  # train/sample resolution; None = the config's own
    patch_size: int | None = None
    keep_inner_levels: int | None = None  # HDiT: keep only the innermost N levels
    width_divisor: int = 1  # widths (and DiT width) divided by this, rounded to a multiple of head_dim
    head_dim: int | None = None
    depth_divisor: int = 1  # depths -> max(min_depth, ceil(depth / divisor))
    min_depth: int = 1  # 2 keeps one shifted layer per Swin stack (shift on odd layers, B1)
    mapping_width: int | None = None
    # --- data / training / sampling ---
    dataset: str | None = None  # None = the config's dataset; "shapes" = embedded procedural data
    num_classes: int | None = None  # for a class-conditional config on the profile's dataset
    steps: int | None = None
    batch_size: int | None = None
    batch_size_at: tuple[tuple[int, int], ...] = ()  # (resolution, batch) pairs overriding batch_size there
    lr: float | None = None
    lr_schedule: str | None = None  # None = the config's (Table 6: constant)
    lr_warmup_steps: int | None = None
    ema_warmup_gamma: float | None = None
    ema_warmup_power: float | None = None
    sample_steps: int | None = None  # None = the config's sampler steps
    ddpm_sample_steps: int | None = None  # R1's respaced DDPM steps
    # --- evaluation ---
    fid_samples: int = 50_000
    reference_n: int | None = None  # FID reference images: None = the whole training split (ADM protocol)
    fid_samples_ffhq_small: int = 5_000  # Table 3's second HDiT row
    fid_mode: str = "legacy_tensorflow"  # closest to the ADM evaluator the paper used (docs/EVALUATION.md)
    cfg_scales: tuple[float, ...] = (1.0, 1.3, 1.5, 2.0, 2.5, 3.0)  # Figure 9

    def apply(self, run: RunConfig) -> RunConfig:
        """The scale-down rules (identity for `paper`)."""
        m = run.model
        if self.keep_inner_levels and m.family == "hdit" and len(m.widths) > self.keep_inner_levels:
            k = self.keep_inner_levels
            m = replace(m, widths=m.widths[-k:], depths=m.depths[-k:], attention=m.attention[-k:],
                        dropout=m.dropout[-k:] if m.dropout else ())
        head_dim = self.head_dim or m.head_dim

        def width(w: int) -> int:
            return max(head_dim, head_dim * round(w / self.width_divisor / head_dim))

        m = replace(
            m,
            widths=tuple(width(w) for w in m.widths),
            depths=tuple(self.depth(d) for d in m.depths),
            head_dim=head_dim,
            patch_size=m.patch_size if m.family == "diffit" else (self.patch_size or m.patch_size),  # pixel tokens
            mapping_width=self.mapping_width or m.mapping_width,
            outer_width=width(m.outer_width),
            outer_depth=self.depth(m.outer_depth),
            resolution=self.resolution or m.resolution,
            num_classes=(self.num_classes if (self.num_classes is not None and m.num_classes) else m.num_classes),
        )
        t = run.train
        batch = dict(self.batch_size_at).get(m.resolution, self.batch_size or t.batch_size)
        t = replace(t, steps=self.steps or t.steps, batch_size=batch, lr=self.lr or t.lr,
                    lr_schedule=self.lr_schedule or t.lr_schedule,
                    lr_warmup_steps=t.lr_warmup_steps if self.lr_warmup_steps is None else self.lr_warmup_steps,
                    ema_warmup_gamma=self.ema_warmup_gamma or t.ema_warmup_gamma,
                    ema_warmup_power=self.ema_warmup_power or t.ema_warmup_power)
        s = run.sample
        new_steps = self.ddpm_sample_steps if s.sampler == "ddpm" else self.sample_steps
        s = replace(s, steps=new_steps or s.steps)
        d = DataConfig(self.dataset or run.data.name, self.resolution or run.data.resolution)
        return replace(run, model=m, train=t, sample=s, data=d)

    def depth(self, d: int) -> int:
        return max(min(d, self.min_depth), math.ceil(d / self.depth_divisor))

    def fid_label(self, n: int | None = None) -> str:
        n = n or self.fid_samples
        return f"FID-{n // 1000}k" if n % 1000 == 0 else f"FID-{n}"

    def scale_label(self, run: RunConfig) -> str:
        """How a number under this profile was measured, e.g. for table captions and CSV columns."""
        if self.name == "paper":
            return f"paper protocol: {run.data.name}-{run.data.resolution}, {run.train.steps} steps, {self.fid_label()}"
        r = self.apply(run)
        return (f"{self.name}: {r.data.name} {r.data.resolution}px, widths {list(r.model.widths)}, "
                f"{r.train.steps} steps x batch {r.train.batch_size}, {r.sample.steps} sampling steps, "
                f"{self.fid_label()}")


_DEFAULT_SCALE = dict(
    resolution=32, patch_size=2, keep_inner_levels=2, width_divisor=12, head_dim=32, depth_divisor=4, min_depth=2,
    mapping_width=128, dataset="shapes", num_classes=10, steps=800, batch_size=32, lr=3e-3, lr_warmup_steps=100,
    ema_warmup_gamma=1.0, sample_steps=25, ddpm_sample_steps=25, fid_samples=200, fid_samples_ffhq_small=100,
    cfg_scales=(1.0, 1.5, 2.0, 3.0), reference_n=200,
)

PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", "Table 6 hyperparameters, ImageNet/FFHQ, FID-50k (GPU cluster)."),
    "default": Profile(
        "default",
        "Embedded offline profile for a 2-core CPU: procedural 'shapes' data at 32 px, ~1/12 widths, "
        "~1/4 depths, short training, small-sample FID. Same code paths as the paper profile.",
        # The learning budget (docs/LEARNING_BUDGET.md): at a fixed CPU budget the 1/12-width models learn as much
        # per step as the 1/6-width ones at ~2.2x fewer seconds per step, so the budget goes into steps; a higher
        # lr with a short warm-up, kept constant as Table 6. 800 steps: E's samples are classified as their class
        # ~2.5x as often as chance (0.10) where 200 steps at 1/6 width were at chance.
        **_DEFAULT_SCALE,
    ),
    # The default profile cut to 40 training steps: checks the harness end to end (training with its checkpoints,
    # resume, sampling, scoring) in about a minute per run. Its numbers mean nothing and its tables say "smoke".
    "smoke": Profile(
        "smoke",
        "The default profile with 40 training steps and FID-50: checks the harness end to end in minutes.",
        **{**_DEFAULT_SCALE, "steps": 40, "lr_warmup_steps": 10, "fid_samples": 50, "fid_samples_ffhq_small": 25,
           "reference_n": 50},
    ),
    # The paper DAG with only the counts shrunk, for a CPU: every Table 6 architecture at full size on its own
    # data pipeline (ImageNet class folders at 128/256 px, FFHQ at 1024 px with augmentation), the paper's
    # samplers, reference statistics and FID protocol. Proves that the paper profile's code paths run end
    # to end before a lab spends GPU-months on them (tests/test_paper_smoke.py; `hdit data synth`).
    "paper-smoke": Profile(
        "paper-smoke",
        "Paper architectures and data pipelines at full size; 1 step at batch 1 (the 128-px rows at batch 2), "
        "2 sampler steps, FID on 3 samples.",
        # batch 2 at 128 px: a 128-px row also trains on two processes (tests/test_slurm.py: a 2-node job); the
        # FFHQ-1024 and ImageNet-256 runs stay at 1, their activations fill the 24 GB CPU machine as it is
        steps=1, batch_size=1, batch_size_at=((128, 2),), sample_steps=2, ddpm_sample_steps=2, fid_samples=3,
        fid_samples_ffhq_small=2,
        cfg_scales=(1.0, 1.5),
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}") from None


def resolve(config_id: str, profile: str = "paper") -> RunConfig:
    """The config a run actually uses: registry row -> profile scale-down."""
    return get_profile(profile).apply(get_config(config_id))
