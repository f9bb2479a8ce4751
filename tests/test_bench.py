"""`hdit bench` (CPU path, reduced sizes) and the measured-scaling figure."""
import argparse
import json

import pandas as pd
import pytest
import torch

from hdit import bench
from hdit.report.scaling import render_scaling

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
REQUIRED = {"device", "torch", "config", "resolution", "batch", "precision", "metric", "value", "command", "cuda",
            "compile", "timestamp", "suite", "scale"}


def parse(*argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared 2-core CI box: threads only add contention
    yield
    torch.set_num_threads(n)


def test_device_slug():
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench.device_slug("cpu") == "cpu"


def test_time_per_iter_counts_calls():
    calls = []
    t = bench.time_per_iter(lambda: calls.append(1), torch.device("cpu"), warmup=2, iters=5)
    assert len(calls) == 7 and 0 <= t < 0.1


@pytest.mark.skipif(not bench.Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_cpu_peak_memory_sees_live_tensors():
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(16, 1024, 1024)  # 64 MiB
        y = x * 2  # + 64 MiB live at the peak
        del x, y
    assert mem.kind == "cpu_peak_rss_growth"
    assert 120 < mem.gib * 1024 < 140


def test_plan_and_scaling_batch():
    plan = bench.make_plan(parse("--device", "cpu", "--quick", "--batches", "3", "--iters", "2"))
    assert plan.scale == "default" and plan.batches == (3,) and plan.iters == 2
    gpu = bench.PLANS["cuda"]
    assert [bench.scaling_batch(gpu, r) for r in (128, 256, 512, 1024)] == [64, 16, 4, 1]  # constant tokens


@pytest.mark.parametrize("argv,msg", [
    (["--configs", "Z9"], "unknown config"),
    (["--resolutions", "48"], "resolution 48"),
    (["--batches", "0"], "positive"),
    (["--threads", "0"], "--threads 0"),
])
def test_bad_input_exits_2(argv, msg, capsys):
    assert bench.main(parse("--device", "cpu", "--quick", *argv)) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_exits_2(capsys):
    assert bench.main(parse("--device", "cuda")) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_quick_cpu_run_writes_records(tmp_path, one_thread):
    out = tmp_path / "b.json"
    args = parse("--device", "cpu", "--quick", "--threads", "1", "--out", str(out), "--batches", "2",
                 "--resolutions", "32", "64", "--scaling-batch", "2", "--sample-batch", "2", "--sample-steps", "3",
                 "--warmup", "1", "--iters", "1")
    assert bench.main(args) == 0
    recs = json.loads(out.read_text())
    for r in recs:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["precision"] == "fp32" and r["compile"] is False and r["scale"] == "default-profile"
        assert r["value"] is not None and r["value"] > 0
    got = {(r["suite"], r["config"], r["resolution"], r["metric"]) for r in recs}
    for cid in ("E", "R2"):
        assert {("train", cid, 32, "train_img_per_s"), ("forward", cid, 32, "fwd_ms"),
                ("sample", cid, 32, "sample_img_per_s"), ("scaling", cid, 64, "fwd_ms")} <= got
    assert {r["batch"] for r in recs if r["suite"] == "scaling" and r["resolution"] == 64} == {1}  # 2 * (32/64)^2
    assert all(r["steps"] == 3 for r in recs if r["suite"] == "sample")
    na = {(r["model"], r["metric"]) for r in recs if r["suite"] == "na"}  # no FlexAttention backward on a CPU
    assert na == {(k, "na_fwd_ms") for k in bench.NA_KERNELS} | {(k, "na_fwd_bwd_ms") for k in ("masked", "global")}
    paths = render_scaling([out], None, tmp_path / "scaling")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_train_step_updates_model_and_ema(one_thread):
    b = bench.Bench(torch.device("cpu"), bench.PLANS["quick"], False, "auto", 50, {})
    run, model, net = bench.build(b, "E", 32)
    before = [p.detach().clone() for p in model.parameters()]
    step = bench.train_step_fn(b, run, model, net, 2)
    step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    # Zero-initialised output layers get the only non-zero gradients of step 1, so they must have moved.
    assert model.patch_out.proj.weight.abs().sum() > 0 and sum(changed) >= 10


def test_benchmark_times_the_trainers_step(one_thread, monkeypatch):
    """Issue 12: the train suite's img/s is that of `hdit train`'s own step function, not a copy of it."""
    from hdit import step as step_mod, train as train_mod

    calls = []
    original = step_mod.TrainStep.__call__

    def counted(self, x, labels, step):
        calls.append(step)
        return original(self, x, labels, step)

    monkeypatch.setattr(step_mod.TrainStep, "__call__", counted)
    assert train_mod.TrainStep is step_mod.TrainStep  # the trainer builds the same class
    b = bench.Bench(torch.device("cpu"), bench.PLANS["quick"], False, "auto", 50, {})
    run, model, net = bench.build(b, "E", 32)
    bench.time_per_iter(bench.train_step_fn(b, run, model, net, 2), b.device, 1, 2)
    assert calls == [0, 1, 2]  # warm-up + timed iterations, each one TrainStep call at the next step index


def _records(device, device_type, e_ms, dit_ms, res=(128, 256, 512)):
    base = dict(device=device, device_type=device_type, torch="2.11.0", cuda=None, scale="paper",
                precision="bf16-autocast", compile=True, suite="scaling", batch=4, command="hdit bench",
                timestamp="t", mem_kind="cuda_max_allocated")
    recs = []
    for cid, ms in (("E", e_ms), ("R2", dit_ms)):
        for r, v in zip(res, ms):
            recs += [dict(base, config=cid, resolution=r, metric="fwd_ms", value=v),
                     dict(base, config=cid, resolution=r, metric="peak_mem_gib", value=v / 100)]
    return recs


def test_render_scaling_ratios_and_labels(tmp_path):
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps(_records("NVIDIA H100", "cuda", [4, 8, 16], [12, 80, 400])))
    flops = tmp_path / "fig2.csv"
    pd.DataFrame({"config": ["E", "E", "R1", "R1"], "resolution": [128, 256, 128, 256],
                  "gflops": [31.37, 64.72, 106.4, 657.5]}).to_csv(flops, index=False)
    png, pdf, csv = render_scaling([gpu], flops, tmp_path / "fig")
    df = pd.read_csv(csv)
    e = df[(df.config == "E")].set_index("resolution")
    assert e.ms_per_image.to_dict() == {128: 1.0, 256: 2.0, 512: 4.0}  # fwd_ms / batch
    assert e.gflops_paper_scale[128] == pytest.approx(31.37)
    assert e.wall_ratio_dit_over_hdit.to_dict() == {128: 3.0, 256: 10.0, 512: 25.0}
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0


def test_render_scaling_needs_scaling_records(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps([dict(r, suite="train") for r in _records("cpu", "cpu", [1], [2], res=(32,))]))
    with pytest.raises(ValueError, match="no scaling records"):
        render_scaling([p], None, tmp_path / "x")


def test_caption_is_honest_about_cpu():
    from hdit.report.scaling import caption

    recs = pd.DataFrame([dict(device="cpu (x86_64, 2 threads)", device_type="cpu", torch="2.14.1",
                              scale="default-profile")])
    assert "CPU-only" in caption(recs) and "default-profile" in caption(recs)


@CUDA
@pytest.mark.gpu
def test_cuda_train_step_has_no_host_sync():
    b = bench.Bench(torch.device("cuda", torch.cuda.current_device()), bench.PLANS["quick"], False, "flex", 50, {})
    run, model, net = bench.build(b, "E", 32)
    step = bench.train_step_fn(b, run, model, net, 4)
    step()  # first step: optimiser state, lazy inits
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
