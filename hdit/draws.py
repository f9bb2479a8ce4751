"""Random draws keyed by (seed, step, global sample index): a run is a function of its config and seed, not of
how many processes train it or how many micro-batches each of them accumulates (issue 22).

The data order is already global (`hdit.data.BatchStream`: sample i of step k is stream position k * B + i,
B the global batch). Every draw of sample i is keyed the same way:
- its noise comes from a generator of its own, seeded with word 2 + i of `SeedSequence([seed, k])` (numpy's
  hash; word i does not depend on how many words are asked for, so the key is (seed, k, i));
- its noise level (EDM: u stratified over the GLOBAL batch, u_i = (i + r_i) / B, as the authors' trainer; DDPM:
  a uniform timestep), its class-dropout draw and its augmentation are slices of ONE draw of the whole global
  batch's scalars, on a generator seeded with word 0 (B scalars, or 9 B for augmentation: nothing next to a
  step). The noise is never drawn for the global batch: at FFHQ-1024 that tensor alone would be 3 GB.
A micro-batch is a contiguous slice [lo, lo + n) of the global batch, so every partition over ranks and
micro-batches sees the same draws.

Not keyed per sample: dropout inside the model (`nn.Dropout` draws from torch's global generator; only
FFHQ-1024's last level has p = 0.1). torch's generator is re-seeded from word 1 and the micro-batch's first index
before every micro-batch, so the run still needs no saved RNG state (it resumes bitwise on the same partition),
but its dropout masks depend on the partition: FFHQ-1024 on 64 GPUs and on 8 are two equally valid runs.

Generators live on the training device: on CUDA a Philox generator (a 64-bit seed; `manual_seed` only sets the
host-side seed and offset, no device work), on CPU a Mersenne Twister, which keeps the low 32 bits of a seed
(two samples of a long CPU run may then share a noise draw: harmless at the default profile's sizes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCALARS, MODEL, NOISE = 0, 1, 2  # word offsets in a step's key words


def step_words(seed: int, step: int, batch: int) -> list[int]:
    """The 64-bit key words of (seed, step): the scalars' seed, the model RNG's base and one word per sample."""
    return np.random.SeedSequence([seed, step]).generate_state(NOISE + batch, np.uint64).tolist()


@dataclass
class StepDraws:
    """One step's draws for the whole global batch; `slice`-like accessors take a micro-batch [lo, lo + n)."""

    words: list[int]
    level: torch.Tensor  # [B] the noise level: sigma (EDM) or the DDPM timestep
    drop: torch.Tensor | None = None  # [B] uniforms of class dropout (conditional models)
    aug: torch.Tensor | None = None  # [B, 9] augmentation parameters (hdit.data.augment), where the run augments

    @property
    def batch(self) -> int:
        return len(self.words) - NOISE

    def noise(self, lo: int, shape, gen: torch.Generator) -> torch.Tensor:
        """Standard normal noise [n, *shape[1:]] of samples lo .. lo + n - 1, each from its own seed.
        One small draw per sample (a kernel each on a GPU: ~10 us against a step of many ms)."""
        out = torch.empty(shape, device=gen.device)
        for j in range(shape[0]):
            gen.manual_seed(self.words[NOISE + lo + j])
            out[j].normal_(generator=gen)
        return out

    def seed_model_rng(self, lo: int) -> None:
        """torch's global generator (dropout inside the model) for the micro-batch starting at sample lo."""
        torch.manual_seed((self.words[MODEL] + lo) % 2 ** 64)
