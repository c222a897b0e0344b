"""`duquant bench serve`: its statistics, comparison and plots on synthetic measurements (fast),
and the whole benchmark against two real servers on a tiny model (slow)."""

import json
import math

import pytest

from benchmarks.serve.report import RunData, compare, markdown_table, percentiles_ms, plot, summarize


def _run(ttft: float, gap: float, n_out: int, n_req: int, duration: float) -> RunData:
    """n_req identical requests: first token after `ttft`, then n_out-1 tokens `gap` apart."""
    return RunData(ttfts=[ttft] * n_req, itls=[[gap] * (n_out - 1)] * n_req,
                   latencies=[ttft + gap * (n_out - 1)] * n_req, output_lens=[n_out] * n_req,
                   input_lens=[32] * n_req, duration=duration)


def test_percentiles_match_numpy_linear_interpolation():
    p = percentiles_ms([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5)
    assert percentiles_ms([]) == {"p50": None, "p99": None, "mean": None}


def test_summary_of_a_decode_run():
    s = summarize(_run(ttft=0.2, gap=0.05, n_out=11, n_req=4, duration=2.0))
    assert s["ttft_ms"]["p50"] == pytest.approx(200)
    assert s["tpot_ms"]["p99"] == pytest.approx(50)  # (latency - ttft) / (11 - 1)
    assert s["itl_ms"]["p50"] == pytest.approx(50)
    assert s["e2el_ms"]["p50"] == pytest.approx(700)
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_throughput"] == pytest.approx(22.0)  # 44 tokens / 2 s
    assert s["input_throughput"] == pytest.approx(64.0)
    assert s["completed"] == 4 and s["failed"] == 0


def test_summary_of_one_token_outputs_has_no_tpot():
    s = summarize(RunData(ttfts=[1.0, 3.0], itls=[[], []], latencies=[1.0, 3.0], output_lens=[1, 1],
                          input_lens=[1024, 1024], duration=4.0))
    assert s["tpot_ms"]["p50"] is None and s["itl_ms"]["p99"] is None
    assert s["ttft_ms"]["p50"] == pytest.approx(2000) and s["ttft_ms"]["p99"] == pytest.approx(2980)
    assert s["input_throughput"] == pytest.approx(512)


@pytest.mark.parametrize("bad", ["lengths", "duration"])
def test_summary_refuses_inconsistent_data(bad):
    r = _run(0.1, 0.01, 3, 2, 1.0)
    if bad == "lengths":
        r.latencies.pop()
    else:
        r.duration = 0.0
    with pytest.raises(ValueError):
        summarize(r)


def _models():
    def runs(scale):
        return [{"workload": "prefill", "concurrency": 1,
                 "summary": summarize(RunData([2.0 * scale] * 3, [[]] * 3, [2.0 * scale] * 3, [1] * 3,
                                              [1024] * 3, 6.0 * scale))}] + [
            {"workload": "decode", "concurrency": c,
             "summary": summarize(_run(0.1 * scale, 0.04 * scale * (1 + c / 8), 65, 2 * c, 3.0 * scale))}
            for c in (1, 4, 16)]
    return [{"label": "16-bit", "runs": runs(1.0)}, {"label": "DuQuant W4A4", "runs": runs(2.0)}]


def test_comparison_rows_and_table():
    rows = compare(_models())
    prefill = [r for r in rows if r["workload"] == "prefill"]
    assert {r["metric"] for r in prefill} == {"TTFT p50 (ms)", "TTFT p99 (ms)", "requests/s",
                                              "output tokens/s"}  # no TPOT/ITL for 1-token outputs
    ttft = next(r for r in prefill if r["metric"] == "TTFT p50 (ms)")
    assert ttft["16-bit"] == pytest.approx(2000) and ttft["ratio"] == pytest.approx(2.0)
    tput = next(r for r in rows if r["workload"] == "decode" and r["concurrency"] == 4
                and r["metric"] == "output tokens/s")
    assert tput["ratio"] == pytest.approx(0.5) and tput["higher_is_better"]
    assert len([r for r in rows if r["workload"] == "decode"]) == 3 * 8
    md = markdown_table(rows, ("16-bit", "DuQuant W4A4"))
    assert md.splitlines()[0].startswith("| workload | concurrency | metric | 16-bit | DuQuant W4A4 |")
    assert "| prefill | 1 | TTFT p50 (ms) | 2000 | 4000 | 2.00× |" in md
    assert compare(_models()[:1]) == []


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the bench extra: pip install -e '.[bench]'")
    result = {"models": _models(), "settings": {"workloads": {
        "prefill": {"input_len": 1024, "output_len": 1, "concurrency": [1]},
        "decode": {"input_len": 32, "output_len": 64, "concurrency": [1, 4, 16]}}}}
    paths = plot(result, tmp_path / "x")
    assert [p.name for p in paths] == ["x_decode.png", "x_prefill.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.engine
def test_bench_serve_end_to_end_on_tiny_model(tiny_checkpoint, tmp_path):
    """Both servers started and stopped by the benchmark, every run complete, JSON and plots."""
    pytest.importorskip("matplotlib")
    from benchmarks.serve.bench_serve import main

    src, ck = tiny_checkpoint
    rc = main(["--baseline", str(src), "--checkpoint", str(ck), "--out-dir", str(tmp_path),
               "--name", "tiny", "--prefill-input-len", "128", "--prefill-prompts", "2",
               "--decode-input-len", "16", "--decode-output-len", "8", "--concurrency", "1,2",
               "--max-model-len", "256", "--warmups", "0", "--server-arg=--enforce-eager",
               "--log-dir", str(tmp_path / "logs")])
    assert rc == 0
    res = json.loads((tmp_path / "tiny.json").read_text())
    assert [m["label"] for m in res["models"]] == ["16-bit", "DuQuant W4A4"]
    assert res["models"][1]["duquant_kernel"] is not None
    for m in res["models"]:
        assert [(r["workload"], r["concurrency"]) for r in m["runs"]] == [("prefill", 1), ("decode", 1),
                                                                          ("decode", 2)]
        for r in m["runs"]:
            s = r["summary"]
            assert s["failed"] == 0 and s["completed"] == r["num_prompts"]
            assert s["total_output_tokens"] == r["num_prompts"] * r["output_len"]  # ignore_eos
            assert math.isfinite(s["ttft_ms"]["p99"])
    assert len(res["loadavg_before"]) == 3 and res["settings"]["dtype"] == "bfloat16"
    assert (tmp_path / "tiny_decode.png").is_file() and (tmp_path / "tiny_prefill.png").is_file()


@pytest.mark.engine
def test_bench_serve_startup_only_empties_the_compile_caches(tiny_checkpoint, tmp_path, monkeypatch):
    """`--startup-only --empty-compile-cache`: both servers started from empty caches (the ones
    named by VLLM_CACHE_ROOT / TORCHINDUCTOR_CACHE_DIR, here temporary), no workloads run."""
    from benchmarks.serve.bench_serve import compile_cache_dirs, main

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    dirs = compile_cache_dirs()
    assert dirs == [tmp_path / "vllm-cache" / "torch_compile_cache", tmp_path / "inductor"]
    for d in dirs:
        d.mkdir(parents=True)
        (d / "stale").write_text("x")
    src, ck = tiny_checkpoint
    rc = main(["--baseline", str(src), "--checkpoint", str(ck), "--out-dir", str(tmp_path),
               "--name", "tiny", "--startup-only", "--empty-compile-cache", "--no-restart",
               "--max-model-len", "256", "--server-arg=--enforce-eager",
               "--log-dir", str(tmp_path / "logs")])
    assert rc == 0
    res = json.loads((tmp_path / "tiny.json").read_text())
    assert [m["label"] for m in res["models"]] == ["16-bit", "DuQuant W4A4"]
    for m in res["models"]:
        assert m["runs"] == [] and m["startup_s"] > 0 and "restart_startup_s" not in m
    assert res["settings"]["compile_caches"].startswith("emptied")
    assert not any((d / "stale").exists() for d in dirs)
