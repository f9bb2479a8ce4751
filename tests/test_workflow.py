"""The Snakemake DAG: dry-runs of both profiles, config-schema rejection, lint, the resume contract and
`snakemake --report` on a fabricated results tree. The whole paper DAG runs for real in tests/test_paper_smoke.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hdit.profiles import get_profile, resolve

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "Snakefile"


def snakemake(workdir, *args, cwd=ROOT, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' block of a dry-run."""
    block = output.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def jobs(output: str, rule: str) -> list[str]:
    """The dry-run text of every job of `rule`."""
    return [b for b in re.split(r"\n(?=\[.*\]\nrule )", output) if re.search(rf"^rule {rule}:$", b, re.M)]


def test_default_table1_dry_run_trains_all_ten_rows(tmp_path):
    r = snakemake(tmp_path, "-n", "-p", "table1")
    assert r.returncode == 0, r.stderr + r.stdout
    counts = job_counts(r.stdout)
    assert counts["train"] == 10 and counts["sample"] == 10 and counts["fid"] == 10
    assert counts["count_flops"] == 1 and counts["reference_stats"] == 1
    assert counts["table1_files"] == 1
    train = jobs(r.stdout, "train")
    assert {re.search(r"--config (\S+)", j)[1] for j in train} == {"R1", "R2", "R3", "R4", "A", "B1", "B2", "C",
                                                                    "D", "E"}
    # resume contract: only done.json is declared, every run passes --resume, threads set torch's threads
    for j in train:
        assert re.search(r"output: results/runs/default/[\w-]+/done\.json\n", j)
        assert "--resume" in j and "--profile default" in j and "OMP_NUM_THREADS=" in j
        assert "--compile" not in j  # eager on one CPU thread (docs/PERFORMANCE.md, issue 26)
    fid = jobs(r.stdout, "fid")[0]
    n = get_profile("default").fid_samples
    mode = get_profile("default").fid_mode
    assert f"--n {n} " in fid and f"--mode {mode}" in fid and "results/refs/default/shapes-32" in fid
    steps = resolve("E", "default").sample.steps  # sampler steps are part of the sample dir
    assert any(f"--steps {steps} --out results/samples/default/E/seed0-cfg1.0-n{n}-steps{steps}" in j
               for j in jobs(r.stdout, "sample"))


def test_table3_scores_fid_small_on_the_first_images_of_the_full_set(tmp_path):
    """FID-5k and FID-50k of FFHQ-1024 read one sample set (drawn once): --first 5k and --n 50k."""
    r = snakemake(tmp_path, "-n", "-p", "table3")
    assert r.returncode == 0, r.stderr + r.stdout
    p = get_profile("default")
    assert job_counts(r.stdout)["sample"] == 1 and job_counts(r.stdout)["fid"] == 2
    sample_dir = re.search(r"--out (\S+)", jobs(r.stdout, "sample")[0])[1]
    assert sample_dir.endswith(f"-n{p.fid_samples}-steps{resolve('ffhq-1024', 'default').sample.steps}")
    fids = sorted(jobs(r.stdout, "fid"), key=len)
    assert all(f"--samples {sample_dir} " in j for j in fids)
    assert sum(f"--first {p.fid_samples_ffhq_small} " in j for j in fids) == 1
    assert sum(f"--n {p.fid_samples} " in j for j in fids) == 1


def test_default_all_shares_identical_rows(tmp_path):
    r = snakemake(tmp_path, "-n", "all")
    assert r.returncode == 0, r.stderr + r.stdout
    counts = job_counts(r.stdout)
    # 19 registry rows, E = skip-lerp = softminsnr-g4 and D = snr resolve equal -> 16 runs
    assert counts["train"] == 16
    # Tables 1, 2, 5: 14 runs at w = 1; Table 3: one sample set (its FID-small scores the set's first images);
    # Table 4 / Figure 9: one set per CFG scale
    assert counts["sample"] == 14 + 1 + 4 and counts["fid"] == 14 + 2 + 4
    for rule in ("table1_files", "table2_files", "table3_files", "table4_files", "table5_files", "fig2_files",
                 "fig8_files", "fig9_files"):
        assert counts[rule] == 1


def test_diffit_table_dry_run_adds_one_run_and_two_flop_sets(tmp_path):
    r = snakemake(tmp_path, "-n", "-p", "table_diffit")
    assert r.returncode == 0, r.stderr + r.stdout
    counts = job_counts(r.stdout)
    assert counts["train"] == 3 and counts["sample"] == 3 and counts["fid"] == 3 and counts["count_flops"] == 2
    assert {re.search(r"--config (\S+)", j)[1] for j in jobs(r.stdout, "train")} == {"E", "R2", "diffit-imagenet128"}
    flops = " ".join(jobs(r.stdout, "count_flops"))
    assert "--resolutions 128 --profile paper" in flops and "--resolutions 32 --profile default" in flops
    assert "hdit report table diffit --profile default" in r.stdout
    assert counts["table_diffit_files"] == 1


def paper_config(tmp_path, **changes):
    """workflows/config/paper.yaml with its dataset paths pointed at small real folders (the DAG checks them
    when it is built) and `changes` applied to the top-level keys (None deletes a key)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())
    (tmp_path / "imagenet" / "n01440764").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ffhq").mkdir(exist_ok=True)
    (tmp_path / "ffhq" / "00000.png").write_bytes(b"")
    cfg["datasets"] = {"imagenet": {"path": str(tmp_path / "imagenet"), "reference_n": None},
                       "ffhq": {"path": str(tmp_path / "ffhq"), "reference_n": None}}
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    path = tmp_path / "paper-test.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_paper_profile_dry_run_has_gpu_resources(tmp_path):
    r = snakemake(tmp_path, "-n", "-p", "all", "--configfile", paper_config(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    counts = job_counts(r.stdout)
    # one set of reference statistics per (dataset, resolution): imagenet-128, imagenet-256, ffhq-1024, each
    # over the whole training split (ADM protocol: no --n), streamed from the dataset folder (no export)
    # Table 6's hardware: the 128-px runs on 4 GPUs, ImageNet-256 on 8, FFHQ-1024 on 8 nodes x 8 (one job)
    assert counts["train"] == 15 and counts["train_multinode"] == 1
    assert counts["reference_stats"] == 3 and "export_reference" not in counts
    refs = jobs(r.stdout, "reference_stats")
    assert all("--n " not in j and "--cache-dir results/cache/fid-stats" in j for j in refs)
    assert {re.search(r"--data (\S+)", j)[1] for j in refs} == {str(tmp_path / "imagenet"), str(tmp_path / "ffhq")}
    for j in jobs(r.stdout, "train"):
        gpus = 8 if "run=imagenet-256" in j else 4
        assert f"gpu={gpus}," in j and f"python -m hdit.launch job --nnodes 1 --nproc-per-node {gpus} " in j
        assert "--device cuda" in j and "--profile paper" in j and "mpi=" not in j
        assert "--compile" in j  # compile.train: true (issue 26); bf16 is the profile's precision
    (ffhq,) = jobs(r.stdout, "train_multinode")
    assert "gpu=64," in ffhq and "--nnodes 8 --nproc-per-node 8 " in ffhq and f"--data {tmp_path / 'ffhq'}" in ffhq
    assert "--compile" in ffhq
    assert all("--compile" in j for j in jobs(r.stdout, "sample"))
    assert all("gpu=1" in j for j in jobs(r.stdout, "fid"))
    # FID-50k on 50k samples; Table 3's FID-5k on the first 5k of the same set (no second sample set)
    assert any("--first 5000 " in j for j in jobs(r.stdout, "fid")) and any("--n 50000 " in j for j in jobs(r.stdout, "fid"))
    assert not any("-n5000-" in j for j in jobs(r.stdout, "sample"))


def test_paper_smoke_trains_two_runs_side_by_side_and_imagenet_256_alone(tmp_path):
    """threads.train_alone: ImageNet-256's training job claims both cores (its model leaves no memory for a
    second job on the 24 GB machine); every other paper-size run takes one, so two of them train at once."""
    (tmp_path / "synth/imagenet-train/n01440764").mkdir(parents=True)
    (tmp_path / "synth/ffhq-1024").mkdir()
    (tmp_path / "synth/ffhq-1024/00000.png").write_bytes(b"")
    r = snakemake(tmp_path, "-n", "-p", "--cores", "2", "all", "--configfile",
                  str(ROOT / "workflows/config/paper-smoke.yaml"))
    assert r.returncode == 0, r.stderr + r.stdout
    threads = {re.search(r"wildcards: run=(\S+)", j)[1]: int(re.search(r"OMP_NUM_THREADS=(\d+)", j)[1])
               for j in jobs(r.stdout, "train")}
    assert len(threads) == 16 and threads.pop("imagenet-256") == 2 and set(threads.values()) == {1}


def test_slurm_workflow_profile_dry_run(tmp_path):
    r = snakemake(tmp_path, "-n", "all", "--workflow-profile", str(ROOT / "workflows/profiles/slurm"),
                  "--configfile", paper_config(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    train = jobs(r.stdout, "train")
    assert all("nodes=1," in j and "cpus_per_task=" in j for j in train)
    assert {re.search(r"cpus_per_task=(\d+)", j)[1] for j in train} == {"32", "64"}  # 8 threads x 4 or 8 GPUs


@pytest.mark.parametrize("change,message", [
    # a key missing from a --configfile is an error, never the CPU default of default.yaml
    ({"device": None}, "'device' is a required property"),
    ({"threads": None}, "'threads' is a required property"),
    ({"compile": None}, "'compile' is a required property"),
    ({"results": ""}, "should be non-empty"),
])
def test_paper_config_is_complete_on_its_own(tmp_path, change, message):
    r = snakemake(tmp_path, "-n", "all", "--configfile", paper_config(tmp_path, **change))
    assert r.returncode != 0
    assert message in r.stdout + r.stderr and "paper-test.yaml" in r.stdout + r.stderr


@pytest.mark.parametrize("dataset,path,message", [
    ("imagenet", "/nonexistent/imagenet/train", "does not exist or is not a directory"),
    ("ffhq", "", "is not set"),
    ("imagenet", "EMPTY", "is empty or has no class sub-folders"),
])
def test_dataset_paths_are_checked_when_the_dag_is_built(tmp_path, dataset, path, message):
    """A wrong dataset path fails at once (dry-run included), naming the key and the path."""
    if path == "EMPTY":
        path = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    cfg = paper_config(tmp_path)
    import yaml

    d = yaml.safe_load(Path(cfg).read_text())
    d["datasets"][dataset]["path"] = path
    Path(cfg).write_text(yaml.safe_dump(d))
    r = snakemake(tmp_path, "-n", "all", "--configfile", cfg)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"datasets.{dataset}.path" in out and message in out
    if path:
        assert repr(path) in out


@pytest.mark.parametrize("override,message", [
    ("bogus=1", "'bogus' was unexpected"),
    ("device=tpu", "'tpu'"),
    ("profile=laptop", "unknown profile 'laptop'; valid profiles"),
])
def test_config_is_validated(tmp_path, override, message):
    r = snakemake(tmp_path, "-n", "table1", "--config", override)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr


def test_lint_is_clean(tmp_path):
    r = snakemake(tmp_path, "--lint")
    assert r.returncode == 0 and "Lints for" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_no_workflow_output_is_tracked():
    """A tracked table/figure would make Snakemake skip its whole upstream on a fresh clone ("Nothing to be
    done"), so the README's `snakemake --cores all table1` would train nothing. Only the paper's values, the
    benchmark JSON (the scaling figure's input) and the dated record of our measurements are tracked."""
    r = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = r.stdout.split()
    assert tracked, "results/paper/hdit_paper_values.json should be tracked"
    allowed = ("results/paper/", "results/bench/", "results/recorded/")
    assert [f for f in tracked if not f.startswith(allowed)] == []


TEST_ONLY = ("pytest", "execnet")  # pytest, pytest-xdist and its execnet: not needed by any rule


def _pins(lines):
    return sorted(s for s in (l.split("#")[0].strip() for l in lines) if "==" in s and not s.startswith(TEST_ONLY))


def test_conda_env_pins_match_requirements():
    """--use-conda builds workflows/envs/hdit.yaml (+ its post-deploy script): the same pinned stack."""
    import yaml

    env = yaml.safe_load((ROOT / "workflows/envs/hdit.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == _pins((ROOT / "requirements.txt").read_text().splitlines())
    post = (ROOT / "workflows/envs/hdit.post-deploy.sh").read_text()
    nodeps = _pins((ROOT / "requirements-nodeps.txt").read_text().splitlines())
    assert nodeps and all(p in post.split() for p in nodeps) and "--no-deps" in post


@pytest.mark.slow
def test_killed_training_job_resumes_under_snakemake(tmp_path):
    """Issue contract: a job killed mid-training (SIGKILL of the whole Snakemake process group, as a lost node
    would) keeps its checkpoint -- it is not a declared output, so Snakemake never deletes it -- and the rerun
    of the same target continues from it instead of starting again."""
    import os
    import signal
    import time

    # B1, the cheapest row, under `smoke` (the default profile at 40 steps, a checkpoint every 4)
    target, smoke = "results/runs/smoke/B1/done.json", ("--config", "profile=smoke")
    run_dir = tmp_path / "results" / "runs" / "smoke" / "B1"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path), "--cores", "1",
           target, *smoke]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "done.json").exists() and (run_dir / "checkpoint.pt").exists()

    # a hard kill leaves Snakemake's directory lock behind; its own message says to run --unlock first
    assert snakemake(tmp_path, "--unlock", *smoke).returncode == 0
    r = snakemake(tmp_path, "--cores", "1", target, *smoke)
    assert r.returncode == 0, r.stderr + r.stdout
    done = json.loads((run_dir / "done.json").read_text())
    assert done["step"] == resolve("B1", "smoke").train.steps == 40 and done["resumed_from_step"] > 0


def test_dag_does_not_depend_on_leftover_files_or_the_machine(tmp_path):
    """`all` is the same DAG with or without benchmark JSON lying in results/bench; the scaling figure (and the
    benchmarks) run only when asked for by name."""
    before = snakemake(tmp_path, "-n", "all")
    assert before.returncode == 0, before.stderr + before.stdout
    (tmp_path / "results" / "bench").mkdir(parents=True)
    (tmp_path / "results" / "bench" / "leftover.json").write_text("{}")
    after = snakemake(tmp_path, "-n", "all")
    assert after.returncode == 0 and job_counts(after.stdout) == job_counts(before.stdout)
    assert "scaling_files" not in job_counts(after.stdout) and "bench" not in job_counts(after.stdout)
    (tmp_path / "results" / "bench" / "leftover.json").unlink()
    r = snakemake(tmp_path, "-n", "scaling")
    assert r.returncode != 0 and "results/bench/ has no *.json" in r.stdout + r.stderr


def fake_results_tree(root, rows=("skip-concat", "skip-add", "skip-lerp")):
    """What training, sampling and scoring leave for Table 2 under the default profile (fabricated, no training):
    annotated metrics with intervals, class-accuracy JSONs (the workflow's class_accuracy rule makes them for every
    conditional shapes row), sample shards, run logs."""
    import numpy as np

    from hdit.integrity import write_set_record
    from hdit.io import save_npz, write_json, write_text
    from hdit.report.runs import training_run

    p = get_profile("default")
    for i, row in enumerate(rows):
        run = training_run(row, "default")
        metrics = root / f"results/metrics/default/{run}/seed0-cfg1.0-fid{p.fid_samples}.json"
        fid = 100.0 + 5 * i  # intervals of neighbours overlap, of the outer two not
        write_json(metrics, {"config": run, "fid": fid, "fid_ci95": [fid - 3, fid + 3], "kid": 0.05,
                             "kid_ci95": [0.04, 0.06], "n": p.fid_samples, "fid_mode": p.fid_mode})
        steps = resolve(run, "default").sample.steps
        samples = root / f"results/samples/default/{run}/seed0-cfg1.0-n{p.fid_samples}-steps{steps}"
        labels = np.arange(40) % 10
        save_npz(samples / "shard-00000.npz", images=np.full((40, 32, 32, 3), 40 * i, np.uint8), labels=labels)
        write_set_record(samples, {"n": 40}, 1)  # the set's record (meta.json with its shard list), written last
        write_json(root / f"results/runs/default/{run}/done.json", {"step": p.steps})
        write_text(root / f"results/runs/default/{run}/log.csv",
                   "step,loss,lr,img_per_s,elapsed_s\n10,0.5,0.001,9.0,1\n20,0.4,0.001,9.5,2\n")
    for i, row in enumerate(rows):
        run, acc = training_run(row, "default"), 0.5 + 0.1 * i
        write_json(root / f"results/metrics/default/{run}/seed0-cfg1.0-n{p.fid_samples}.classacc.json",
                   {"accuracy": acc, "accuracy_ci95": [acc - 0.07, acc + 0.07], "n": 200, "chance": 0.1,
                    "classifier": {}})


def test_snakemake_report_of_what_has_been_built(tmp_path):
    """Table 2 with its grid and curves made by the real rules from a fabricated results tree, then Snakemake's
    own report: `snakemake --report` (default target `all`, most of it not built) shows exactly what exists,
    each caption with the scale label."""
    fake_results_tree(tmp_path)
    rules = ["--allowed-rules", "table2", "table2_files", "table2_grid", "table2_curves"]
    r = snakemake(tmp_path, "--cores", "1", "table2", *rules)
    assert r.returncode == 0, r.stderr + r.stdout
    tables_dir, figures_dir = tmp_path / "results" / "tables", tmp_path / "results" / "figures"
    csv = pd.read_csv(tables_dir / "table2.csv").set_index("row")
    assert csv.loc["skip-add", "fid_ci_hi"] == 108.0 and csv.loc["skip-concat", "class_acc"] == 0.5
    assert csv.loc["skip-add", "class_acc"] == pytest.approx(0.6)  # (a missing JSON leaves it blank: test_report)
    assert "(their 95% intervals overlap): skip-concat ~ skip-add; skip-add ~ skip-lerp" in (
        tables_dir / "table2.md").read_text()
    assert pd.read_csv(figures_dir / "grid-table2.csv").groupby("grid_row").size().tolist() == [20] * 4
    report = tmp_path / "report.html"
    r = snakemake(tmp_path, "--report", str(report))
    assert r.returncode == 0, r.stderr + r.stdout
    html = report.read_text()
    for name in ("table2.html", "grid-table2.png", "curves-table2.png"):
        assert name in html
    assert "table1.html" not in html and "fig8.png" not in html  # not built, not reported
    assert html.count("default: shapes 32px") >= 3  # the scale label in the table, grid and curves captions
