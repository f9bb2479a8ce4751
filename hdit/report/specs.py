"""What each table reads: its rows, the scored sample set behind each row, its FLOP counts.

One spec per table drives the workflow (which metrics JSON, sample directories and training logs a table, its
sample grid and its training curves need) and `hdit report` (how to read them), so neither keeps its own list.
Counts come from the profile (`hdit.profiles`); nothing here is a number of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hdit.configs import TABLE1_ROWS, TABLE2_ROWS, TABLE5_ROWS, TABLE_DIFFIT_ROWS
from hdit.profiles import Profile, get_profile

NO_CFG = 1.0  # paper convention: w = 1 means no guidance (Tables 1-5)
FFHQ, IMAGENET256 = "ffhq-1024", "imagenet-256"  # the Table 3 / Table 4 (and Figure 9) configs


@dataclass(frozen=True)
class Scored:
    """One scored sample set: `n` samples of `config`'s run at CFG scale `cfg_scale` (n None: the profile's
    FID sample count); `inception`: also its Inception Score."""
    config: str
    n: int | None = None
    cfg_scale: float = NO_CFG
    inception: bool = False

    def count(self, profile: Profile) -> int:
        return self.n or profile.fid_samples

    def drawn(self, profile: Profile) -> int:
        return drawn_count(self.count(profile), profile)


def drawn_count(n: int, profile: Profile) -> int:
    """The size of the sample set a FID-n reads: a count below the profile's FID sample count scores the first n
    images of that full set (Table 3's FID-5k beside its FID-50k), so no run samples the same model twice."""
    return max(int(n), profile.fid_samples)


@dataclass(frozen=True)
class TableSpec:
    number: str
    title: str
    rows: Callable[[Profile], dict[str, Scored]]  # KEY (paper row, or Table 3's small/full) -> its sample set
    flops: tuple[str, ...] = ()  # the FLOP sets the table reads (`hdit flops` JSON), if any

    @property
    def name(self) -> str:
        return f"table{self.number}" if self.number.isdigit() else f"table_{self.number}"

    def scored(self, profile: Profile | str) -> dict[str, Scored]:
        return self.rows(get_profile(profile) if isinstance(profile, str) else profile)


def _each(config_ids) -> Callable[[Profile], dict[str, Scored]]:
    return lambda profile: {c: Scored(c) for c in config_ids}


TABLE_SPECS: dict[str, TableSpec] = {s.number: s for s in (
    TableSpec("1", "Ablation of the architecture and training steps (ImageNet-128 in the paper).", _each(TABLE1_ROWS),
              flops=("table1",)),
    TableSpec("2", "Skip information merging mechanism (on top of step E).", _each(TABLE2_ROWS)),
    # Table 3: one run scored twice, as the paper's 5k and 50k rows (the profile's two FFHQ sample counts)
    TableSpec("3", "FFHQ-1024.", lambda p: {"small": Scored(FFHQ, p.fid_samples_ffhq_small), "full": Scored(FFHQ)}),
    TableSpec("4", "ImageNet-256 without guidance.", lambda p: {IMAGENET256: Scored(IMAGENET256, inception=True)}),
    TableSpec("5", "Loss weighting ablation (step E's model).", _each(TABLE5_ROWS)),
    # Not a paper table (docs/DIFFIT.md): image-space DiffiT beside HDiT step E and DiT-B/4 (R2), same trainer and
    # budget; GFLOPs as trained and at paper scale (128 px). Built only when named (`table_diffit`), not by `all`.
    TableSpec("diffit", "DiffiT (image space) beside HDiT (step E) and DiT-B/4 at matched training compute.",
              _each(TABLE_DIFFIT_ROWS), flops=("table_diffit", "table_diffit-trained")),
)}


def table_spec(number: str) -> TableSpec:
    try:
        return TABLE_SPECS[str(number)]
    except KeyError:
        raise ValueError(f"table {number!r}; expected one of {', '.join(TABLE_SPECS)}") from None
