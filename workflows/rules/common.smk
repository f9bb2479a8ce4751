# Shared wiring: config validation, the profile, the file layout of every stage and the input functions.
# Counts (steps, batch, FID samples, CFG scales) come from hdit.profiles; which rows share a training
# run comes from hdit.report.runs (resolved configs compared). Nothing here is a hard-coded number.
import copy
import functools
import glob
import itertools
import json
import os
import re

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from hdit.configs import REGISTRY, TABLE1_ROWS, TABLE2_ROWS, TABLE5_ROWS, TABLE_DIFFIT_ROWS, ConfigError
from hdit.profiles import get_profile, resolve
from hdit.report.runs import training_run

# A config given with --configfile is complete on its own: keys it lacks are errors, never silently the CPU
# defaults of workflows/config/default.yaml (which the Snakefile loads first, for runs without --configfile).
if workflow.overwrite_configfiles:
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))
try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as e:
    origin = ", ".join(map(str, workflow.overwrite_configfiles)) or "workflows/config/default.yaml"
    raise WorkflowError(f"workflow config ({origin}) is invalid or incomplete: {e}\nEvery key of "
                        "workflows/schemas/config.schema.yaml must be set (see workflows/config/paper.yaml).") from None
try:
    PROFILE = get_profile(config["profile"])
except ConfigError as e:
    raise WorkflowError(f"config 'profile': {e}") from None

# Every rule runs the installed `hdit` entry point. Under --use-conda a job runs in workflows/envs/hdit.yaml,
# which pins the dependencies but cannot install this checkout (Snakemake copies the env file away from it),
# so there `hdit` is a shell function for `python -m hdit.cli`, importing the package from the working dir.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    if not os.path.isfile(os.path.join("hdit", "cli.py")):
        raise WorkflowError(f"--use-conda runs `python -m hdit.cli` from the working directory, but {os.getcwd()!r} "
                            "has no hdit/cli.py: run snakemake from the repository root (or without --use-conda)")
    shell.prefix('set -euo pipefail; hdit() {{ python -m hdit.cli "$@"; }}; ')  # braces doubled: Snakemake formats it

P = PROFILE.name
RES = config["results"].rstrip("/")
if not RES:
    raise WorkflowError(f"config 'results' is {config['results']!r}: outputs would go to the filesystem root; "
                        "expected a results folder such as 'results'")
SEED = config["seed"]
NO_CFG = 1.0  # paper convention: w = 1 means no guidance (Tables 1-5)
FFHQ, IMAGENET256 = "ffhq-1024", "imagenet-256"  # the Table 3 / Table 4 (and Figure 9) configs

# ------------------------------------------------------------------ file layout
RUN_DIR = f"{RES}/runs/{P}/{{run}}"
SAMPLE_DIR = f"{RES}/samples/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-n{{n}}-steps{{steps}}"
METRICS = f"{RES}/metrics/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.json"
RAW_METRICS = f"{RES}/metrics/{P}/{{run}}/raw/seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.json"
REF_STATS = f"{RES}/refs/{P}/{{dataset}}-{{resolution}}.fid-stats.npz"
STATS_CACHE = f"{RES}/cache/fid-stats"
# class accuracy of a conditional sample set on the embedded shapes data (hdit classify), beside its FID JSON
CLASSACC = f"{RES}/metrics/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-n{{n}}.classacc.json"
CLASSIFIER = f"{RES}/refs/{P}/shapes-{{resolution}}.classifier.json"  # record of the cached classifier
CLASSIFIER_CACHE = f"{RES}/cache/classifier"
FLOPS = f"{RES}/flops/{{name}}.json"
TABLES = f"{RES}/tables"
FIGURES = f"{RES}/figures"
LOGS = f"{RES}/logs/{P}"

FIG2_DIFFIT = "diffit-ffhq64"  # Figure 2's third curve: image-space DiffiT, default (L = 4) layout


def trained_resolution(config_ids):
    """The one resolution the rows train at under the profile (their as-trained GFLOPs are counted there)."""
    res = {resolve(c, P).model.resolution for c in config_ids}
    if len(res) != 1:
        raise WorkflowError(f"rows {list(config_ids)} train at different resolutions {sorted(res)} under profile {P!r}")
    return res.pop()


# name -> (config IDs, resolutions, profile whose backbones are counted)
FLOP_SETS = {
    "table1": (TABLE1_ROWS, (128, 256, 512), "paper"),  # the paper's Table 1 columns
    "fig2": (("E", "R1"), tuple(config["fig2_resolutions"]), "paper"),  # HDiT-B/4 (step E) vs DiT-B/4
    # DiffiT from its native 64 px up to the figure's largest resolution (counted on meta tensors: it fits)
    "fig2-diffit": ((FIG2_DIFFIT,), tuple(sorted({64, *config["fig2_resolutions"]})), "paper"),
    "table_diffit": (TABLE_DIFFIT_ROWS, (128,), "paper"),  # paper-scale column at Table 1's 128 px
    "table_diffit-trained": (TABLE_DIFFIT_ROWS, (trained_resolution(TABLE_DIFFIT_ROWS),), P),  # as trained
}

# measured throughput vs FLOPs (hdit.report.scaling) from the committed benchmark JSON, when both exist
BENCH_JSON = sorted(glob.glob(f"{RES}/bench/*.json"))
HAVE_SCALING = bool(BENCH_JSON)

wildcard_constraints:
    run="|".join(re.escape(c) for c in REGISTRY),
    seed=r"\d+",
    cfg=r"\d+(\.\d+)?",
    n=r"\d+",
    steps=r"\d+",
    inception=r"(-is)?",
    dataset=r"[a-z]+",
    resolution=r"\d+",
    name="|".join(FLOP_SETS),


# ------------------------------------------------------------------ helpers
def resolved(run):
    return resolve(run, P)


def training_signature(wildcards):
    """The run's training identity (`RunConfig.training_key`, as the trainer and the reports use it) and step
    count: a `params` value, so a profile/registry change reruns training (resuming, or extending when only
    the step count grew)."""
    run = resolved(wildcards.run)
    return f"{run.training_key()}-{run.train.steps}"


def rule_resources(rule):
    return config["resources"].get(rule, {})


def launcher():
    """`hdit` on one device; torchrun for multi-GPU training (the paper profile)."""
    n = config["torchrun"]["nproc_per_node"]
    return "hdit" if n == 1 else f"torchrun --standalone --nproc_per_node={n} -m hdit.cli"


def dataset_setting(name, key):
    entry = config["datasets"].get(name)
    if entry is None:
        raise WorkflowError(f"config 'datasets' has no entry for dataset {name!r} "
                            f"(needed by profile {P!r}); add datasets: {{{name}: {{path: ...}}}}")
    return entry.get(key)


LAYOUTS = {"imagenet": "an ImageNet train folder with one sub-folder per class", "ffhq": "a folder of images"}


@functools.lru_cache(maxsize=None)
def checked_dataset_path(name):
    """The dataset folder of `name`, checked while the DAG is built (not hours later when a job starts)."""
    path, key = dataset_setting(name, "path"), f"datasets.{name}.path"
    if name == "shapes":
        if path is not None:
            raise WorkflowError(f"config '{key}' is {path!r}; the embedded 'shapes' data is generated, expected null")
        return None
    if not path:
        raise WorkflowError(f"config '{key}' is not set; profile {P!r} reads {name} from disk: set it to "
                            f"{LAYOUTS[name]}")
    if not os.path.isdir(path):
        raise WorkflowError(f"config '{key}' = {path!r} does not exist or is not a directory; expected {LAYOUTS[name]}")
    with os.scandir(path) as it:
        entries = list(itertools.islice(it, 1000))
    ok = any(e.is_dir() for e in entries) if name == "imagenet" else bool(entries)
    if not ok:
        raise WorkflowError(f"config '{key}' = {path!r} is empty or has no class sub-folders; expected "
                            f"{LAYOUTS[name]}")
    return path


def dataset_check(name_of):
    """An input function that checks the dataset folder of a job at DAG-build time and declares no file
    (a dataset folder as an input would rerun training whenever its mtime changed)."""
    def check(wildcards):
        checked_dataset_path(name_of(wildcards))
        return []
    return check


def metrics_file(config_id, n=None, cfg=NO_CFG, inception=False):
    """The annotated metrics JSON of a paper row (through the training run it shares)."""
    return METRICS.format(run=training_run(config_id, P), seed=SEED, cfg=float(cfg),
                          n=n or PROFILE.fid_samples, inception="-is" if inception else "")


def has_class_accuracy(config_id):
    """Class accuracy needs known classes: class-conditional runs on the embedded shapes data (the default
    profile; not ImageNet or FFHQ, whose classifier would be a network we do not have offline)."""
    r = resolved(config_id)
    return r.data.name == "shapes" and r.model.num_classes > 0


def classacc_file(config_id, n=None, cfg=NO_CFG):
    """The class-accuracy JSON of a paper row's samples (through the training run it shares)."""
    return CLASSACC.format(run=training_run(config_id, P), seed=SEED, cfg=float(cfg), n=n or PROFILE.fid_samples)


def classacc_files(config_ids):
    """The class-accuracy JSONs of those rows that have one (none under the paper profile)."""
    return sorted({classacc_file(c) for c in config_ids if has_class_accuracy(c)})


def metrics_pairs(config_ids):
    """`ROW=PATH ...` for `hdit report table`."""
    return " ".join(f"{c}={metrics_file(c)}" for c in config_ids)


def fig9_metrics():
    return [metrics_file(IMAGENET256, cfg=w, inception=True) for w in PROFILE.cfg_scales]


def table_files(n):
    return expand(f"{TABLES}/table{n}.{{ext}}", ext=("md", "tex", "csv"))


def figure_files(name):
    return expand(f"{FIGURES}/{name}.{{ext}}", ext=("png", "pdf", "csv"))


# ------------------------------------------------------------------ input functions and params
def reference_source(wildcards):
    """`--data PATH [--n N]`: the training split (ADM: all of it) or the configured / profile's subset size."""
    path = checked_dataset_path(wildcards.dataset)
    n = dataset_setting(wildcards.dataset, "reference_n") or PROFILE.reference_n
    return " ".join(([f"--data {path}"] if path else []) + ([f"--n {n}"] if n else []))


def reference_stats_of(wildcards):
    d = resolved(wildcards.run).data
    return REF_STATS.format(dataset=d.name, resolution=d.resolution)


def data_path(wildcards):
    path = checked_dataset_path(resolved(wildcards.run).data.name)
    return f"--data {path}" if path else ""


def samples_of(wildcards):
    """The run's sample set at this seed and CFG scale with exactly the n images FID-n scores."""
    steps = resolved(wildcards.run).sample.steps  # in the path: new sampler steps never reuse old shards
    return SAMPLE_DIR.format(run=wildcards.run, seed=wildcards.seed, cfg=wildcards.cfg, n=wildcards.n, steps=steps)


def sample_meta(wildcards):
    return os.path.join(samples_of(wildcards), "meta.json")
