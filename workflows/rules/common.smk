# Shared wiring: config validation, the profile, the file layout of every stage and the input functions.
# Counts (steps, batch, FID samples, CFG scales) come from hdit.profiles; which rows share a training
# run comes from hdit.report.runs (RunConfig.training_key and sampler compared); what each table reads comes
# from hdit.report.specs. Nothing here is a hard-coded number, and the DAG is a function of the config alone:
# nothing at parse time asks the machine (GPUs) or looks at files left in results/.
import copy
import functools
import glob
import itertools
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from hdit.configs import REGISTRY, TABLE1_ROWS, TABLE_DIFFIT_ROWS, ConfigError, DataConfig
from hdit.profiles import get_profile, resolve
from hdit.report.runs import training_run
from hdit.report.specs import FFHQ, IMAGENET256, NO_CFG, TABLE_SPECS, Scored, drawn_count
from hdit.report.tables import has_class_accuracy, table_scale

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

# ------------------------------------------------------------------ file layout
RUN_DIR = f"{RES}/runs/{P}/{{run}}"
SAMPLE_DIR = f"{RES}/samples/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-n{{n}}-steps{{steps}}"
METRICS = f"{RES}/metrics/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.json"
RAW_METRICS = f"{RES}/metrics/{P}/{{run}}/raw/seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.json"
# class accuracy of a conditional sample set on the embedded shapes data (`hdit classify`, issue 13)
CLASSACC = f"{RES}/metrics/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-n{{n}}.classacc.json"
REF_STATS = f"{RES}/refs/{P}/{{dataset}}-{{resolution}}.fid-stats.npz"
# a training split preprocessed once at a resolution (`hdit data prepare`, datasets.<name>.prepared; data.smk):
# shared by every profile, since it depends on the source folder and the resolution alone
PREPARED = f"{RES}/prepared/{{dataset}}-{{resolution}}"
STATS_CACHE = f"{RES}/cache/fid-stats"
# class accuracy of a conditional sample set on the embedded shapes data (hdit classify), beside its FID JSON
CLASSACC = f"{RES}/metrics/{P}/{{run}}/seed{{seed}}-cfg{{cfg}}-n{{n}}.classacc.json"
CLASSIFIER = f"{RES}/refs/{P}/shapes-{{resolution}}.classifier.json"  # record of the cached classifier
CLASSIFIER_CACHE = f"{RES}/cache/classifier"
FLOPS = f"{RES}/flops/{{name}}.json"
TABLES = f"{RES}/tables"
FIGURES = f"{RES}/figures"
BENCH_DIR = f"{RES}/bench"
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


def train_threads(wildcards):
    """Threads of a training job: config threads.train, or every core for a run in threads.train_alone (Snakemake
    scales a claim above --cores down to --cores, and no other job starts while one holds them all)."""
    return workflow.cores if wildcards.run in config["threads"].get("train_alone", []) else config["threads"]["train"]


def rule_resources(rule):
    return config["resources"].get(rule, {})


# ------------------------------------------------------------------ training launch (hdit.launch)
# How a run is launched: torchrun.nnodes x torchrun.nproc_per_node (per-run overrides in torchrun.runs). The
# train rule's gpu / nodes / tasks / cpus_per_task resources follow from it; a run on more than one node is
# an `mpi` job of the SLURM plugin (rule train_multinode), whose shell runs `srun` itself (hdit.launch).
DERIVED_TRAIN_RESOURCES = ("gpu", "nodes", "tasks", "mpi", "tasks_per_gpu")
if set(rule_resources("train")) & set(DERIVED_TRAIN_RESOURCES):
    raise WorkflowError(f"config 'resources.train' sets {sorted(set(rule_resources('train')) & set(DERIVED_TRAIN_RESOURCES))}: "
                        "a training job's GPUs, nodes and tasks follow from 'torchrun' (nnodes, nproc_per_node, runs); "
                        "set them there")
if unknown := sorted(set(config["torchrun"]["runs"]) - set(REGISTRY)):
    raise WorkflowError(f"config 'torchrun.runs' names {unknown}, which are not runs; expected names of "
                        f"hdit.configs.REGISTRY such as ffhq-1024, imagenet-256, E")


def launch_shape(run):
    """(nodes, processes per node) of a training run."""
    t = config["torchrun"]
    own = t["runs"].get(run, {})
    return own.get("nnodes", t["nnodes"]), own.get("nproc_per_node", t["nproc_per_node"])


MULTINODE_RUNS = sorted(r for r in REGISTRY if launch_shape(r)[0] > 1)
SINGLE_NODE_RUNS = sorted(set(REGISTRY) - set(MULTINODE_RUNS))


def runs_pattern(runs):
    return "|".join(re.escape(r) for r in runs) or "(?!)"


def gpus_per_node(run):
    return launch_shape(run)[1] if config["device"].startswith("cuda") else 0


def train_resources(multinode):
    """Resources of a training job: the config's (mem_mb, runtime, partition ...) and the launch shape's. `gpu` is
    the job's total (SLURM --gpus; a local run claims at most what --resources gpu=N allows); a multi-node job
    has one task per node (`tasks`, `tasks_per_gpu: 0` so the plugin adds no --ntasks-per-gpu) and `mpi`.
    `attempt` (1, 2, ... as Snakemake retries the job) tells hdit.launch whether an earlier attempt failed."""
    res = {**rule_resources("train"),
           "gpu": lambda wc: launch_shape(wc.run)[0] * gpus_per_node(wc.run),
           "nodes": lambda wc: launch_shape(wc.run)[0],
           "attempt": lambda wc, attempt: attempt}
    # SLURM CPUs of a node's task: threads.train per process (not the job's threads, which a local run and a
    # dry run scale down to --cores)
    res.setdefault("cpus_per_task", lambda wc: config["threads"]["train"] * launch_shape(wc.run)[1])
    if multinode:
        res.update(mpi="srun", tasks=lambda wc: launch_shape(wc.run)[0], tasks_per_gpu=0)
    return res


def train_retries():
    """Snakemake retries of a training job: the main process continues a stopped run in a new job; the Snakemake
    inside a cluster job runs the rule once (it would otherwise retry it inside the same SLURM job)."""
    return 0 if workflow.remote_exec else config["training_jobs"]["max_jobs"] - 1


def launcher(wildcards, threads, resources):
    """`python -m hdit.launch job ...` for this run: one process runs `hdit train` itself, one node torchrun
    --standalone, several nodes one torchrun per node under the job's own srun (hdit/launch.py)."""
    nnodes, nproc = launch_shape(wildcards.run)
    log_dir = shlex.quote(f"{LOGS}/train/{wildcards.run}.jobs")  # per-job logs: a retry removes the rule's log
    return (f"python -m hdit.launch job --nnodes {nnodes} --nproc-per-node {nproc} --threads {threads} "
            f"--cpus-per-node {resources.cpus_per_task} --gpus-per-node {gpus_per_node(wildcards.run)} "
            f"--stop-margin {config['training_jobs']['stop_margin_s']} --log-dir {log_dir}")


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


def is_prepared(name):
    """datasets.<name>.prepared: training and reference statistics read the split prepared once (data.smk)."""
    on = bool(dataset_setting(name, "prepared"))
    if on and name == "shapes":
        raise WorkflowError("config 'datasets.shapes.prepared' is true; the embedded 'shapes' data is generated "
                            "on the fly and cannot be prepared: expected false or no key")
    return on


def training_data(name, resolution):
    """The --data folder of a job reading dataset `name` at `resolution`: its prepared split when the config
    says so, else the raw folder (checked at DAG build), None for shapes."""
    path = checked_dataset_path(name)
    return PREPARED.format(dataset=name, resolution=resolution) if path and is_prepared(name) else path


def dataset_input(data_of):
    """An input function: the dataset folder checked at DAG build (`dataset_check`) and, for a prepared
    dataset, the prepared split's manifest (so `prepare_dataset` runs first). `data_of(wildcards)` -> DataConfig."""
    def inputs(wildcards):
        d = data_of(wildcards)
        path, prepared = checked_dataset_path(d.name), is_prepared(d.name)
        return [os.path.join(training_data(d.name, d.resolution), "manifest.json")] if path and prepared else []
    return inputs


def metrics_file(config_id, n=None, cfg=NO_CFG, inception=False):
    """The annotated metrics JSON of a paper row (through the training run it shares)."""
    return METRICS.format(run=training_run(config_id, P), seed=SEED, cfg=float(cfg),
                          n=n or PROFILE.fid_samples, inception="-is" if inception else "")


def scored_metrics(s: Scored):
    return metrics_file(s.config, s.count(PROFILE), s.cfg_scale, s.inception)


def scored_samples(s: Scored):
    """The sample directory of a scored set (sampler steps in the path: new steps never reuse old shards)."""
    return SAMPLE_DIR.format(run=training_run(s.config, P), seed=SEED, cfg=float(s.cfg_scale), n=s.drawn(PROFILE),
                             steps=resolved(s.config).sample.steps)


def scored_classacc(s: Scored):
    return CLASSACC.format(run=training_run(s.config, P), seed=SEED, cfg=float(s.cfg_scale), n=s.count(PROFILE))


def pairs(mapping):
    """`KEY=PATH ...` for `hdit report`, each shell-quoted (a path may hold spaces)."""
    return " ".join(shlex.quote(f"{k}={v}") for k, v in mapping.items())


def fig9_metrics():
    return [metrics_file(IMAGENET256, cfg=w, inception=True) for w in PROFILE.cfg_scales]


def table_files(n):
    """What a table target makes: the table itself (md, tex, csv, html), its sample grid and training curves."""
    return [*expand(f"{TABLES}/table{n}.{{ext}}", ext=("md", "tex", "csv", "html")),
            *grid_files(n), *curves_files(n)]


def grid_files(n):
    return expand(f"{FIGURES}/grid-table{n}.{{ext}}", ext=("png", "csv"))


def curves_files(n):
    return expand(f"{FIGURES}/curves-table{n}.{{ext}}", ext=("png", "csv"))


def figure_files(name):
    return expand(f"{FIGURES}/{name}.{{ext}}", ext=("png", "pdf", "csv"))


def reported(path, caption, category, subcategory=None):
    """`path`, marked for `snakemake --report` once it exists. The report then shows what has been built: after
    `snakemake table1`, `snakemake --report results/report.html` (the default target `all`) reports Table 1,
    its grid and its curves instead of failing on the tables not built yet. Only the mark depends on the file;
    the jobs of the DAG and their order never do."""
    caption = os.path.join(workflow.basedir, "workflows", "report", caption)
    return report(path, caption=caption, category=category, subcategory=subcategory) if os.path.exists(path) else path


# ------------------------------------------------------------------ input functions and params
def reference_source(wildcards):
    """`--data PATH [--n N]`: the training split (ADM: all of it) or the configured / profile's subset size."""
    path = training_data(wildcards.dataset, wildcards.resolution)
    n = dataset_setting(wildcards.dataset, "reference_n") or PROFILE.reference_n
    return " ".join(([f"--data {shlex.quote(path)}"] if path else []) + ([f"--n {n}"] if n else []))


def reference_stats_of(wildcards):
    d = resolved(wildcards.run).data
    return REF_STATS.format(dataset=d.name, resolution=d.resolution)


def data_path(wildcards):
    d = resolved(wildcards.run).data
    path = training_data(d.name, d.resolution)
    return f"--data {shlex.quote(path)}" if path else ""


def samples_of(wildcards):
    """The run's sample set at this seed and CFG scale that FID-n scores: n images, or the profile's full FID set
    when n is smaller (its first n images: `drawn_count`)."""
    steps = resolved(wildcards.run).sample.steps  # in the path: new sampler steps never reuse old shards
    n = drawn_count(wildcards.n, PROFILE)
    return SAMPLE_DIR.format(run=wildcards.run, seed=wildcards.seed, cfg=wildcards.cfg, n=n, steps=steps)


def fid_count(wildcards):
    """`--n N` (the whole set, checked) or `--first N` (the first N images of the larger set it shares)."""
    n = int(wildcards.n)
    return f"--n {n}" if drawn_count(n, PROFILE) == n else f"--first {n}"


def sample_meta(wildcards):
    return os.path.join(samples_of(wildcards), "meta.json")


def run_file(config_id, name):
    """A file in the training run dir of a paper row (through the run it shares)."""
    return os.path.join(RUN_DIR.format(run=training_run(config_id, P)), name)


# ------------------------------------------------------------------ tables, grids, curves (report.smk)


def table_inputs(spec):
    """Metrics JSON per row, the FLOP JSON where the table has GFLOP columns, and the class-accuracy JSON of
    its class-conditional rows -- declared as inputs when the workflow has the rule that makes them
    (`class_accuracy`), otherwise only passed to the table, which leaves the column blank for a missing file."""
    scored = spec.scored(PROFILE)

    def inputs(wildcards):
        acc = [scored_classacc(s) for s in scored.values() if has_class_accuracy(s.config, PROFILE)]
        return {"metrics": [scored_metrics(s) for s in scored.values()],
                "flops": [FLOPS.format(name=f) for f in spec.flops],
                "class_acc": acc if workflow.is_rule("class_accuracy") else []}

    return inputs


def _grid_config(spec):
    """The config whose dataset a table's grid shows as its reference row (one dataset per table)."""
    return next(iter(spec.scored(PROFILE).values())).config


def dataset_of(spec):
    return dataset_check(lambda wildcards: resolved(_grid_config(spec)).data.name)


def data_option_of(spec):
    """`--data PATH` of the grid's reference dataset (none for the embedded shapes), checked at DAG build."""
    def option(wildcards):
        path = checked_dataset_path(resolved(_grid_config(spec)).data.name)
        return f"--data {shlex.quote(path)}" if path else ""
    return option


# ------------------------------------------------------------------ benchmarks (bench.smk, scaling figure)


def bench_jsons(wildcards):
    """The benchmark JSON in results/bench (tracked; `hdit bench`), read only when the scaling figure is asked
    for (`snakemake scaling`): no other target's DAG depends on which files are there."""
    found = sorted(glob.glob(f"{BENCH_DIR}/*.json"))
    if not found:
        raise WorkflowError(f"the scaling figure plots benchmark results, and {BENCH_DIR}/ has no *.json; run "
                            "`snakemake bench` (GPU) or `snakemake bench_cpu_quick` first")
    return found


def present_gpu():
    """The slug of this machine's NVIDIA GPU (nvidia-smi), asked when a benchmark job runs, never at parse time."""
    from hdit.provenance import nvidia_gpu_slug

    slug = nvidia_gpu_slug()
    if not slug:
        raise WorkflowError("the GPU benchmark needs an NVIDIA GPU (nvidia-smi found none on this machine); the CPU "
                            "benchmark is `snakemake bench_cpu_quick` or `hdit bench --device cpu --quick`")
    return slug


def classifier_of(wildcards):
    if not has_class_accuracy(wildcards.run, PROFILE):
        raise WorkflowError(f"class accuracy of run {wildcards.run!r} under profile {P!r}: needs a class-conditional "
                            "run on the embedded shapes data")
    return CLASSIFIER.format(resolution=resolved(wildcards.run).data.resolution)
