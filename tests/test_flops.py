"""`hdit flops`: Table 1 / Table 6 GFLOPs (1 FLOP = 1 MAC) against the paper, and the CLI contract."""
import json
import re
import subprocess
import sys

import pytest

from hdit import flops
from hdit.cli import main as cli
from hdit.configs import REGISTRY, TABLE1_ROWS
from hdit.reference import paper_values, tolerance

RESOLUTIONS = (128, 256, 512)


@pytest.fixture(scope="module")
def table1(tmp_path_factory):
    """All 30 Table 1 cells through the CLI's JSON path."""
    out = tmp_path_factory.mktemp("flops") / "table1.json"
    argv = ["flops", "--configs", *TABLE1_ROWS, "--resolutions", *map(str, RESOLUTIONS), "--format", "json",
            "--out", str(out)]
    assert cli(argv) == 0
    rows = json.loads(out.read_text())
    return {(r["config"], r["resolution"]): r for r in rows}


def test_table1_gflops_match_paper(table1):
    paper, tol = paper_values()["table1"], tolerance("table1_gflops_abs")
    assert len(table1) == 30
    lines, bad = [], []
    for cid in TABLE1_ROWS:
        cells = []
        for r in RESOLUTIONS:
            ours, theirs = table1[cid, r]["gflops"], paper[cid][f"gflops_{r}"]
            cells.append(f"{ours:9.2f} ({theirs})")
            if abs(ours - theirs) > tol:
                bad.append((cid, r, ours, theirs))
        lines.append(f"{cid:3s} " + " ".join(cells))
    print("\n".join(lines))
    assert not bad, bad


def test_table1_keys_types_and_no_uncounted_matmuls(table1):
    for row in table1.values():
        assert set(row) == {"config", "resolution", "profile", "gflops", "params", "unsupported_ops"}
        assert row["profile"] == "paper"
        assert isinstance(row["gflops"], float) and isinstance(row["params"], int)
        assert not [op for op in row["unsupported_ops"] if re.search(r"matmul|linear|mm|conv|attention|einsum", op)]
    assert table1["E", 128]["params"] == 117_003_805
    assert [round(table1["E", r]["params"] / 1e4) for r in RESOLUTIONS] == [11700, 12821, 13942]
    assert round(table1["R1", 128]["params"] / 1e4) == 13039


def test_dit_matches_closed_form():
    """12 x (12 T d^2 + 2 T^2 d) + patch in/out + per-sample conditioning (adaLN, timestep MLP)."""
    d, layers, p = 768, 12, 4
    for res, sigma in ((128, True), (256, False)):
        t, out_ch = (res // p) ** 2, 6 if sigma else 3
        closed = (layers * (12 * t * d * d + 2 * t * t * d) + t * 3 * p * p * d + t * d * p * p * out_ch
                  + layers * d * 6 * d + d * 2 * d + 256 * d + d * d)
        assert flops.count("R1" if sigma else "R2", res)["gflops"] == pytest.approx(closed / 1e9, abs=1e-6)


@pytest.mark.parametrize("config_id, resolution", [("E", 128), ("ffhq-1024", 1024), ("imagenet-256", 256)])
def test_table6_gflops(config_id, resolution):
    ours = flops.count(config_id, resolution)
    paper = paper_values()["table6"][config_id]
    print(f"{config_id}: {ours['gflops']:.2f} GFLOPs (paper {paper['gflops']}), "
          f"{ours['params'] / 1e6:.2f}M params (paper {paper['params'] / 1e6:.0f}M)")
    band = max(tolerance("table6_gflops_abs"), tolerance("table6_gflops_rel") * paper["gflops"])
    assert abs(ours["gflops"] - paper["gflops"]) <= band


def test_neighborhood_and_window_attention_are_linear_in_tokens():
    # doubling the resolution adds one outer level; the old levels keep their cost, so B1/B2 grow ~2-3x
    b2 = [flops.count("B2", r)["gflops"] for r in RESOLUTIONS]
    a = [flops.count("A", r)["gflops"] for r in RESOLUTIONS]
    assert b2[2] / b2[1] < 3.1 and a[2] / a[1] > 9


def test_any_power_of_two_resolution():
    assert flops.count("E", 1024)["gflops"] > flops.count("E", 512)["gflops"]


@pytest.mark.parametrize("argv, message", [
    (["--configs", "E", "nope"], "unknown config 'nope'; valid configs: R1, R2"),
    (["--resolutions", "128", "100"], "resolution 100 is not supported; expected a power of two >= 128"),
    (["--resolutions", "64"], "resolution 64 is not supported"),
])
def test_bad_input_exits_2_with_message(argv, message, capsys):
    assert cli(["flops", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_config_exit_code_from_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "hdit.cli", "flops", "--configs", "Z9"], capture_output=True, text=True)
    assert proc.returncode == 2 and "valid configs:" in proc.stderr and "imagenet-256" in proc.stderr


def test_markdown_and_csv(table1, capsys):
    rows = [table1[c, r] for c in ("R1", "E") for r in RESOLUTIONS]
    md = flops.to_markdown(rows)
    assert "| E | D + soft-min-snr | 31.37 | 64.72 | 198.10 |" in md
    lines = flops.to_csv(rows).splitlines()
    assert lines[0] == "config,resolution,gflops,params" and len(lines) == 7
    assert cli(["flops", "--configs", "E", "--resolutions", "128"]) == 0  # default format: md on stdout
    assert "| E |" in capsys.readouterr().out
    assert set(REGISTRY) >= set(TABLE1_ROWS)
