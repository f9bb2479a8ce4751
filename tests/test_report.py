"""Report rendering on fabricated metrics/FLOP JSON (tmp dirs only): delta, scale label, complexity
slope, run sharing, the Markdown/LaTeX/CSV writers and the `hdit report` CLI's errors."""
import json
import math
import re
import subprocess
import sys

import pandas as pd
import pytest

from hdit.configs import TABLE1_ROWS, TABLE2_ROWS, TABLE5_ROWS, get_config
from hdit.profiles import get_profile
from hdit.reference import paper_values
from hdit.report import render, tables
from hdit.report.runs import rows_of_run, signature, training_run

# Closed-form GMACs consistent with the paper's Table 1 (docs/METHOD.md §1); A-E share one slope class.
FAKE_GFLOPS = {"R1": (106.4, 657.6, 6340.6), "A": (32.17, 114.03, 1059.91), "B1": (29.15, 60.27, 184.74),
               "B2": (29.10, 60.04, 183.75), "E": (31.37, 64.72, 198.10)}
for _r, _src in (("R2", "R1"), ("R3", "R1"), ("R4", "R1"), ("C", "E"), ("D", "E")):
    FAKE_GFLOPS[_r] = FAKE_GFLOPS[_src]


def fake_flops():
    return [{"config": c, "resolution": r, "gflops": g, "params": 1000 + i, "unsupported_ops": {}}
            for c, gs in FAKE_GFLOPS.items() for i, (r, g) in enumerate(zip((128, 256, 512), gs))]


def fake_metrics(row, fid, n=None, **extra):
    n = n or get_profile("default").fid_samples
    return {"config": training_run(row, "default"), "fid": fid, "n": n, "fid_mode": "clean", **extra}


def test_rows_share_a_run_only_when_resolved_configs_are_equal():
    for profile in ("default", "paper"):
        assert training_run("skip-lerp", profile) == training_run("softminsnr-g4", profile) == "E"
        assert training_run("snr", profile) == "D"
        assert rows_of_run("E", profile) == ["E", "skip-lerp", "softminsnr-g4"]
        # every other row trains on its own
        for cid in ("R1", "R2", "R3", "R4", "A", "B1", "B2", "C", "skip-add", "skip-concat", "minsnr-g5",
                    "minsnr-g4", "ffhq-1024", "imagenet-256"):
            assert training_run(cid, profile) == cid
    # the names differ, the trained content does not
    assert get_config("E").title != get_config("skip-lerp").title
    assert signature("E", "default") == signature("skip-lerp", "default") != signature("D", "default")


@pytest.mark.parametrize("slope,label", [(0.81, "O(n)"), (1.0, "O(n)"), (1.63, "O(n^2)"), (2.04, "O(n^2)"),
                                         (0.2, "O(1)"), (float("nan"), "n/a")])
def test_complexity_label_from_slope(slope, label):
    assert tables.complexity(slope) == label


def test_gflops_slope_is_per_pixel_count():
    assert tables.gflops_slope(10, 40, 256, 512) == pytest.approx(1.0)  # 4x pixels, 4x cost
    assert tables.gflops_slope(10, 160, 256, 512) == pytest.approx(2.0)
    assert tables.gflops_slope(657.6, 6340.6, 256, 512) == pytest.approx(1.635, abs=1e-3)


def test_table1_delta_slope_and_scale(tmp_path):
    fids = {r: 10.0 + i for i, r in enumerate(TABLE1_ROWS)}
    t = tables.table1({r: fake_metrics(r, f) for r, f in fids.items()}, fake_flops(), "default")
    df = t.df.set_index("row")
    paper = paper_values()["table1"]
    assert list(df.index) == list(TABLE1_ROWS)
    for r in TABLE1_ROWS:
        assert df.loc[r, "measured_fid"] == fids[r]
        assert df.loc[r, "paper_fid"] == paper[r]["fid"]
        assert df.loc[r, "delta_fid"] == pytest.approx(fids[r] - paper[r]["fid"])
        assert df.loc[r, "complexity"] == paper[r]["complexity"]  # derived from the counts, matches the paper
    assert df.loc["E", "complexity_slope"] == pytest.approx(math.log(198.10 / 64.72) / math.log(4))
    assert df.loc["A", "gflops_512"] == 1059.91 and df.loc["A", "paper_gflops_512"] == 1060
    label = df.loc["E", "scale"]
    assert label == get_profile("default").scale_label(get_config("E")) and label.startswith("default:")
    assert "32px" in label and get_profile("default").fid_label() in label
    assert any("E, skip-lerp, softminsnr-g4" in n for n in t.notes)
    assert any("NOT the paper's protocol" in n for n in t.notes)

    paths = render.write(t, tmp_path)
    csv = pd.read_csv(tmp_path / "table1.csv")
    for col in ("row", "measured_fid", "paper_fid", "gflops_128", "gflops_256", "gflops_512", "complexity",
                "complexity_slope", "scale"):
        assert col in csv.columns
    assert len(csv) == 10
    md = (tmp_path / "table1.md").read_text()
    assert "reduced scale" in md.splitlines()[0] and md.count("\n| ") == 11  # header + 10 rows
    assert "| E | D + soft-min-snr | 19.00 | 27.74 | -8.74 |" in re.sub(" +", " ", md)  # cells padded by pandas
    tex = (tmp_path / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and r"O(n\textasciicircum{}2)" in tex and "skip-lerp" in tex
    assert [p.name for p in paths] == ["table1.md", "table1.tex", "table1.csv"]


def test_paper_profile_caption_says_paper_protocol():
    t = tables.table2({r: fake_metrics(r, 30.0) for r in TABLE2_ROWS}, "paper")
    assert "paper protocol" in t.caption and "reduced" not in t.caption
    assert t.df.scale.str.startswith("paper protocol: imagenet-128").all()


def test_table1_rejects_missing_flops_or_rows():
    metrics = {r: fake_metrics(r, 1.0) for r in TABLE1_ROWS}
    with pytest.raises(ValueError, match=r"R1 at \[512\]"):
        tables.table1(metrics, [f for f in fake_flops() if not (f["config"] == "R1" and f["resolution"] == 512)],
                      "default")
    del metrics["C"]
    with pytest.raises(ValueError, match=r"\['C'\]"):
        tables.table1(metrics, fake_flops(), "default")


def test_table5_rows_and_sharing_note():
    t = tables.table5({r: fake_metrics(r, 40.0) for r in TABLE5_ROWS}, "default")
    assert list(t.df.row) == list(TABLE5_ROWS)
    assert list(t.df.run) == ["D", "minsnr-g5", "minsnr-g4", "E"]
    assert list(t.df.paper_fid) == [41.41, 36.65, 35.62, 27.74]
    assert any("snr" in n and "(D)" in n for n in t.notes)


def test_table3_cited_and_measured_rows():
    p = get_profile("default")
    metrics = {"small": fake_metrics("ffhq-1024", 80.0, n=p.fid_samples_ffhq_small),
               "full": fake_metrics("ffhq-1024", 70.0, n=p.fid_samples)}
    df = tables.table3(metrics, "default").df
    ours = df[df.source == "measured"].set_index("paper_n")
    assert ours.loc[5000, "measured_fid"] == 80.0 and ours.loc[50000, "measured_fid"] == 70.0
    assert ours.loc[5000, "delta_fid"] == pytest.approx(80.0 - 8.48)
    assert f"FID-{p.fid_samples_ffhq_small}" in ours.loc[5000, "scale"]  # the count actually used
    assert f"FID-{p.fid_samples}" in ours.loc[50000, "scale"]
    cited = df[df.source != "measured"]
    assert len(cited) == 5 and cited.measured_fid.isna().all() and cited.scale.str.startswith("cited").all()


def test_table4_is_params_samples_seen():
    m = fake_metrics("imagenet-256", 90.0, is_mean=3.5, is_std=0.1,
                     train={"steps": 300, "batch_size": 32, "params": 2_500_000}, sample={"steps": 50, "cfg_scale": 1.0})
    df = tables.table4(m, "default").df
    ours = df[df.source == "measured"].iloc[0]
    assert ours.measured_is == 3.5 and ours.paper_is == 135.2 and ours.delta_is == pytest.approx(3.5 - 135.2)
    assert ours.measured_samples_seen == 9600 and ours.measured_params_str == "2.50M"
    assert ours.paper_params == "557M" and ours.measured_steps == 50
    assert (df.source == "measured").sum() == 1 and len(df) == 11


def test_stale_metrics_are_refused():
    """A run trained under other settings than the profile's current ones must not get its Scale label."""
    current = json.loads(json.dumps(tables.resolve("E", "default").to_dict()))
    m = fake_metrics("E", 20.0, resolved_config=current, train={"steps": current["train"]["steps"]})
    tables.check_current(m, "E", get_profile("default"))  # current: accepted
    stale = json.loads(json.dumps(current))
    stale["model"]["depths"] = [9, 9]
    with pytest.raises(ValueError, match="model.depths"):
        tables.check_current({**m, "resolved_config": stale}, "E", get_profile("default"))
    with pytest.raises(ValueError, match="steps trained 1"):
        tables.check_current({**m, "train": {"steps": 1}}, "E", get_profile("default"))


def test_markdown_escapes_and_missing_cells():
    t = render.Table("tableX", "cap", pd.DataFrame({"a": ["x|y", None], "b": [1.0, float("nan")]}),
                     [render.Column("a", "A"), render.Column("b", "B", "{:.1f}")])
    md = re.sub(" +", " ", render.to_markdown(t))
    assert "| x\\|y | 1.0 |" in md and "| – | – |" in md
    tex = render.to_latex(t)
    assert "x|y & 1.0" in tex and "-- & --" in tex


def _report(*args):
    return subprocess.run([sys.executable, "-m", "hdit.cli", "report", *args], capture_output=True, text=True)


def test_cli_renders_table2_and_rejects_bad_input(tmp_path):
    pairs = []
    for r in TABLE2_ROWS:
        p = tmp_path / f"{r}.json"
        p.write_text(json.dumps(fake_metrics(r, 25.0)))
        pairs.append(f"{r}={p}")
    out = _report("table", "2", "--profile", "default", "--metrics", *pairs, "--out", str(tmp_path / "t" / "table2.csv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t" / "table2.csv").exists()
    u = str(tmp_path / "u" / "table2.csv")
    bad = _report("table", "2", "--profile", "default", "--metrics", *pairs[:2], "--out", u)
    assert bad.returncode == 2 and "skip-lerp" in bad.stderr
    bad = _report("table", "2", "--profile", "laptop", "--metrics", *pairs, "--out", u)
    assert bad.returncode == 2 and "'laptop'" in bad.stderr
    bad = _report("table", "2", "--profile", "default", "--metrics", "nonsense", "--out", u)
    assert bad.returncode == 2 and "KEY=PATH" in bad.stderr
    bad = _report("table", "2", "--profile", "default", "--metrics", *pairs, "--out", str(tmp_path / "u" / "t.xlsx"))
    assert bad.returncode == 2 and "t.xlsx" in bad.stderr and ".md" in bad.stderr


def test_fig8_from_the_trainers_weighting(tmp_path):
    from hdit.report import figures

    df = figures.fig8_frame(gamma=5.0)
    small, large = df.iloc[0], df.iloc[-1]
    assert small.min_snr == pytest.approx(5.0) and small.soft_min_snr == pytest.approx(1 / (0.01 ** 2 + 0.2))
    assert large.soft_min_snr == pytest.approx(large.min_snr, rel=1e-3)  # both -> 1/sigma^2
    assert (df.soft_min_snr <= df.min_snr + 1e-12).all()
    paths = figures.fig8(tmp_path / "fig8")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_fig9_needs_inception_scores(tmp_path):
    from hdit.report import figures

    ms = [fake_metrics("imagenet-256", 50 - w, is_mean=2 + w, is_std=0.1, scale="s", sample={"cfg_scale": w})
          for w in (3.0, 1.0, 1.5)]
    df = figures.fig9_frame(ms)
    assert list(df.cfg_scale) == [1.0, 1.5, 3.0] and list(df.is_mean) == [3.0, 3.5, 5.0]
    figures.fig9(ms, tmp_path / "fig9", {"cfg_scale": 1.3, "fid": 3.21, "is": 220.6})
    assert (tmp_path / "fig9.csv").exists() and (tmp_path / "fig9.pdf").exists()
    ms[0]["is_mean"] = None
    with pytest.raises(ValueError, match="3.0"):
        figures.fig9_frame(ms)
    # IS unavailable for every scale (offline Inception without classifier): FID over w, labelled as such
    for m in ms:
        m.update(is_mean=None, is_unavailable="no classifier head")
    figures.fig9(ms, tmp_path / "fig9b")
    assert pd.read_csv(tmp_path / "fig9b.csv").is_mean.isna().all()


# ----------------------------------------------------------------------------- intervals, class accuracy (issue 13)

def with_ci(row, fid, half, kid=0.01, kid_half=0.002, **extra):
    return fake_metrics(row, fid, fid_ci95=[fid - half, fid + half], kid=kid, kid_ci95=[kid - kid_half, kid + kid_half],
                        **extra)


def test_intervals_beside_values_and_unresolved_pairs_noted(tmp_path):
    # R1..R4 far apart; A, B1 overlap (10 +- 2 vs 13 +- 2); E is alone
    fids = dict(zip(TABLE1_ROWS, (90, 70, 50, 30, 10, 13, 120, 140, 160, 190)))
    t = tables.table1({r: with_ci(r, f, 2.0) for r, f in fids.items()}, fake_flops(), "default")
    df = t.df.set_index("row")
    assert df.loc["A", "fid_ci_lo"] == 8.0 and df.loc["A", "fid_ci_hi"] == 12.0
    assert df.loc["A", "measured_kid"] == 0.01 and df.loc["A", "kid_ci_hi"] == pytest.approx(0.012)
    fid_note = next(n for n in t.notes if n.startswith("FID:"))
    assert "NOT resolved at this scale" in fid_note and fid_note.endswith("A ~ B1.")
    kid_note = next(n for n in t.notes if n.startswith("KID:"))  # equal KIDs everywhere: every pair overlaps
    assert "R1 ~ R2, R3, R4, A, B1, B2, C, D, E" in kid_note
    assert any("sampling noise" in n for n in t.notes)
    paths = render.write_files(t, [tmp_path / "t1.md", tmp_path / "t1.tex", tmp_path / "t1.csv", tmp_path / "t1.html"])
    md = re.sub(" +", " ", paths[0].read_text())
    assert "| A | Global Attention Diffusion Hourglass | 10.00 [8.00, 12.00] |" in md
    assert "| 10.0 [8.0, 12.0] |" in md  # KID x 10^3 with its interval
    assert "10.00 [8.00, 12.00]" in paths[1].read_text() and "10.00 [8.00, 12.00]" in paths[3].read_text()
    csv = pd.read_csv(paths[2])
    for col in ("fid_ci_lo", "fid_ci_hi", "measured_kid", "kid_ci_lo", "kid_ci_hi", "class_acc"):
        assert col in csv.columns


def test_disjoint_intervals_resolve_every_difference_and_shared_runs_are_not_compared():
    fids = {"skip-concat": 40.0, "skip-add": 30.0, "skip-lerp": 20.0}
    t = tables.table2({r: with_ci(r, f, 1.0, kid=f / 1000, kid_half=0.0001) for r, f in fids.items()}, "default")
    assert any(n.startswith("FID: the 95% intervals of all rows are disjoint") for n in t.notes)
    # Table 5: softminsnr-g4 is run E, snr is run D -- different runs; equal rows of one run are never a "pair"
    df = pd.DataFrame({"row": ["E", "skip-lerp"], "run": ["E", "E"], "lo": [1.0, 1.0], "hi": [2.0, 2.0]})
    assert tables.overlapping(df, "lo", "hi") == []
    # metrics without intervals (older JSON): no interval note, cells show the value alone
    t = tables.table2({r: fake_metrics(r, f) for r, f in fids.items()}, "default")
    assert not any(n.startswith(("FID:", "[95% CI]")) for n in t.notes)


def test_class_accuracy_column_filled_when_given():
    acc = {"accuracy": 0.93, "accuracy_ci95": [0.89, 0.96], "n": 200, "chance": 0.1,
           "classifier": {"test_accuracy": 0.998}}
    metrics = {r: fake_metrics(r, 20.0) for r in TABLE5_ROWS}
    t = tables.build("5", metrics, "default", class_acc={"snr": acc})
    df = t.df.set_index("row")
    assert df.loc["snr", "class_acc"] == 0.93 and df.loc["snr", "class_acc_ci_lo"] == 0.89
    assert df.loc["minsnr-g5", "class_acc"] != df.loc["minsnr-g5", "class_acc"]  # blank (NaN) without a JSON
    md = re.sub(" +", " ", render.to_markdown(t))
    assert "Class acc. [95% CI]" in md and "| 0.93 [0.89, 0.96] |" in md
    assert any("test accuracy 0.998" in n and "chance 0.10" in n for n in t.notes)
    # no JSON at all: the column is there, blank, and the note says why
    t = tables.build("5", metrics, "default")
    assert t.df.class_acc.isna().all() and any("Class acc. is blank" in n for n in t.notes)
    # the paper profile (ImageNet: no classifier) and unconditional FFHQ have no such column
    assert "class_acc" not in tables.build("2", {r: fake_metrics(r, 1.0) for r in TABLE2_ROWS}, "paper").df
    p = get_profile("default")
    t3 = tables.build("3", {"small": fake_metrics("ffhq-1024", 1.0, n=p.fid_samples_ffhq_small),
                            "full": fake_metrics("ffhq-1024", 1.0)}, "default")
    assert "class_acc" not in t3.df


def test_table_spec_drives_keys_and_scale():
    from hdit.report.specs import TABLE_SPECS, table_spec

    p = get_profile("default")
    assert list(table_spec("1").scored(p)) == list(TABLE1_ROWS) and table_spec("1").flops == ("table1",)
    t3 = table_spec("3").scored(p)
    assert (t3["small"].count(p), t3["full"].count(p)) == (p.fid_samples_ffhq_small, p.fid_samples)
    assert table_spec("4").scored(p)["imagenet-256"].inception
    assert sorted(TABLE_SPECS) == ["1", "2", "3", "4", "5", "diffit"]  # the paper tables and the DiffiT one
    with pytest.raises(ValueError, match="'6'"):
        table_spec("6")
    assert tables.table_scale("default", "1") == (f"default: shapes 32px, {p.steps} steps x batch {p.batch_size}, "
                                                  f"{p.sample_steps} sampling steps, {p.fid_label()}")
    assert tables.table_scale("paper", "1").startswith("paper protocol: imagenet-128")


def test_annotating_metrics_reads_records_without_importing_torch(tmp_path):
    """`hdit report metrics` runs once per scored sample set (18 jobs in the paper DAG): it reads the parameter
    count from done.json (`hdit train` writes it) and the versions from package metadata, so it never pays the
    ~3 s of a torch import."""
    import subprocess
    import sys

    from hdit.io import write_json

    cfg = tables.resolve("E", "default").to_dict()
    write_json(tmp_path / "run" / "config.json", {"config": cfg, "profile": "default", "seed": 0})
    write_json(tmp_path / "run" / "done.json", {"step": cfg["train"]["steps"], "params": 123})
    write_json(tmp_path / "samples" / "meta.json", {"n": 200, "steps": 25, "cfg_scale": 1.0})
    write_json(tmp_path / "fid.json", {"fid": 50.0, "n": 200, "mode": "legacy_tensorflow"})
    args = ["report", "metrics", "--fid", "fid.json", "--samples", "samples", "--run", "run", "--profile", "default",
            "--out", "m.json"]
    code = ("import sys; from hdit.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["train"]["params"] == 123 and m["versions"]["torch"] and m["fid"] == 50.0


def test_annotated_metrics_keep_the_intervals(tmp_path):
    """`hdit report metrics` carries the intervals of `hdit fid` to the JSON the tables read."""
    from hdit.io import write_json
    from hdit.report.annotate import annotate

    cfg = tables.resolve("E", "default").to_dict()
    write_json(tmp_path / "run" / "config.json", {"config": cfg, "profile": "default", "seed": 0,
                                                  "precision": "fp32", "compile": True})
    write_json(tmp_path / "run" / "done.json", {"step": cfg["train"]["steps"]})
    write_json(tmp_path / "samples" / "meta.json", {"n": 200, "steps": 25, "cfg_scale": 1.0, "compile": False,
                                                    "precision": "fp32"})
    fid = {"fid": 50.0, "fid_ci95": [45.0, 56.0], "fid_bootstrap": {"resamples": 200}, "kid": 0.03,
           "kid_ci95": [0.02, 0.04], "kid_std": 0.005, "n": 200, "mode": "legacy_tensorflow"}
    m = annotate(fid, tmp_path / "samples", tmp_path / "run", "default")
    assert m["fid_ci95"] == [45.0, 56.0] and m["kid_ci95"] == [0.02, 0.04] and m["fid_bootstrap"]["resamples"] == 200
    assert (m["train"]["precision"], m["train"]["compile"]) == ("fp32", True)  # issue 26: what ran, in provenance
    assert (m["sample"]["precision"], m["sample"]["compile"]) == ("fp32", False)
    metrics = {**{r: fake_metrics(r, 60.0) for r in TABLE2_ROWS}, "skip-lerp": m}  # run E's JSON, checked current
    row = tables.table2(metrics, "default").df.set_index("row").loc["skip-lerp"]
    assert (row.fid_ci_lo, row.fid_ci_hi, row.kid_ci_hi) == (45.0, 56.0, 0.04)
