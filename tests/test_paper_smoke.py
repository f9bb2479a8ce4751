"""The paper DAG executed for real on a CPU (profile `paper-smoke`, workflows/config/paper-smoke.yaml).

Every rule of `snakemake all` runs: the 16 training runs at their full paper size (ImageNet-128/256 class
folders, FFHQ at 1024 px with augmentation), sampling with the paper's samplers, the ADM-protocol reference
statistics over 1000 class folders, FID, Tables 1-5 and Figures 2, 8 and 9. Only the counts are shrunk.
The dataset folders are generated with `hdit data synth` in the ImageNet / FFHQ layouts and formats, and
prepared once per resolution (`hdit data prepare`) as in the paper profile.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hdit.configs import TABLE1_ROWS, TABLE2_ROWS, TABLE5_ROWS
from hdit.profiles import get_profile, resolve
from hdit.report.runs import training_run

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "paper-smoke"


def run(cmd, cwd, timeout):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, memory_heavy):
    work = tmp_path_factory.mktemp("paper-smoke")
    hdit = [sys.executable, "-m", "hdit.cli", "data", "synth"]
    run([*hdit, "--layout", "imagenet", "--classes", "1000", "--size", "96x72", "--out", "synth/imagenet-train"],
        work, 600)
    run([*hdit, "--layout", "ffhq", "--n", "6", "--size", "1024x1024", "--out", "synth/ffhq-1024"], work, 120)
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
                 "--cores", "2", "all", "--configfile", str(ROOT / "workflows/config/paper-smoke.yaml")]
    with memory_heavy():  # not beside tests/test_slurm.py's paper-size 2-node training
        r = run(snakemake, ROOT, 1500)
    again = run([*snakemake[:-2], "-n", *snakemake[-2:]], ROOT, 300)  # finished results are not recomputed
    yield work / "results", r.stdout + r.stderr + again.stdout + again.stderr
    shutil.rmtree(work, ignore_errors=True)  # ~40 GB of paper-size checkpoints


@pytest.mark.slow
def test_every_run_trains_at_paper_size(smoke):
    results, _ = smoke
    rows = (*TABLE1_ROWS, *TABLE2_ROWS, *TABLE5_ROWS, "ffhq-1024", "imagenet-256")
    runs = {training_run(c, PROFILE) for c in rows}
    assert len(runs) == 16
    for name in runs:
        done = json.loads((results / "runs" / PROFILE / name / "done.json").read_text())
        cfg = resolve(name, PROFILE)
        assert done["step"] == get_profile(PROFILE).steps
        # the paper architecture, not a shrunk one: Table 6 widths/depths and resolution
        assert cfg.to_dict() == resolve(name, PROFILE).to_dict()
        assert cfg.data.resolution in (128, 256, 1024) and cfg.model == resolve(name, "paper").model


@pytest.mark.slow
def test_reference_statistics_follow_the_adm_protocol(smoke):
    results, _ = smoke
    refs = results / "refs" / PROFILE
    ffhq = json.loads((refs / "ffhq-1024.fid-stats.json").read_text())
    assert ffhq["selection"]["how"] == "whole split" and ffhq["selection"]["n"] == 6
    for res in (128, 256):
        rec = json.loads((refs / f"imagenet-{res}.fid-stats.json").read_text())
        sel = rec["selection"]
        # 20 of 1000 classes, one image each: a stratified subset never takes the first 20 folders
        assert sel["n"] == 20 and sel["how"].startswith("seeded class-stratified") and sel["seed"] == 0
        stats = np.load(refs / f"imagenet-{res}.fid-stats.npz")
        assert stats["mu"].shape == (2048,) and np.isfinite(stats["sigma"]).all()


@pytest.mark.slow
def test_training_and_reference_statistics_read_the_prepared_splits(smoke):
    """datasets.<name>.prepared (paper-smoke.yaml, as paper.yaml): each split is prepared once per resolution
    (rule prepare_dataset) and every training run and reference set reads it, not the image folder."""
    results, _ = smoke
    for name, images in (("imagenet-128", 1000), ("imagenet-256", 1000), ("ffhq-1024", 6)):
        manifest = json.loads((results / "prepared" / name / "manifest.json").read_text())
        assert manifest["images"] == images and len(manifest["chunks"]) >= 1
        ref = json.loads((results / "refs" / PROFILE / f"{name}.fid-stats.json").read_text())
        assert ref["spec"]["data"] == f"results/prepared/{name}"
    for run_name in ("E", "ffhq-1024"):
        record = json.loads((results / "runs" / PROFILE / training_run(run_name, PROFILE) / "config.json").read_text())
        assert record["data_path"] == f"results/prepared/{resolve(run_name, PROFILE).data.name}-" \
                                      f"{resolve(run_name, PROFILE).data.resolution}"


@pytest.mark.slow
def test_every_table_and_figure_is_rendered_and_labelled(smoke):
    results, _ = smoke
    for n in range(1, 6):
        md = (results / "tables" / f"table{n}.md").read_text()
        csv = pd.read_csv(results / "tables" / f"table{n}.csv")
        assert PROFILE in md and "paper's protocol." not in md
        measured = csv[csv.scale.astype(str).str.contains(PROFILE)]
        assert len(measured) >= 1 and measured.filter(like="measured_fid").notna().all().all()
    for fig in ("fig2", "fig8", "fig9"):
        for ext in ("png", "pdf", "csv"):
            assert (results / "figures" / f"{fig}.{ext}").stat().st_size > 0
    g = pd.read_csv(results / "figures" / "fig2.csv").set_index(["config", "resolution"]).gflops
    assert g["E", 128] == pytest.approx(31.37, abs=0.05) and g["R1", 128] == pytest.approx(106.4, abs=0.1)
    assert g["E", 1024] / g["R1", 1024] < 0.01  # paper Figure 2: < 1% of DiT's cost at megapixel scale
    w = pd.read_csv(results / "figures" / "fig8.csv")
    assert w.gamma.unique().tolist() == [5.0] and w.min_snr.max() == pytest.approx(5.0)


@pytest.mark.slow
def test_a_finished_dag_is_not_recomputed(smoke):
    _, output = smoke
    assert "Nothing to be done" in output
