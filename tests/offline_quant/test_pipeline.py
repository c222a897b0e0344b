"""End to end on tiny random models of every supported architecture, and the CLI's errors."""

import json

import pytest
import torch

from duquant_serve.checkpoint import load_checkpoint
from duquant_serve.cli import build_parser, main
from duquant_serve.core.config import METHODS
from duquant_serve.testing.tiny import ARCHS, make_tiny_model
from duquant_serve.testing.tiny import QUICK_QUANT_ARGS as QUICK_QUANT
from offline_quant.evaluate import evaluate
from offline_quant.pipeline import PipelineOptions


@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_and_eval_each_architecture(tmp_path, arch, wikitext_valid):
    src = make_tiny_model(tmp_path / arch, arch, hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / f"{arch}-dq"
    # float32 unquantized tensors: the comparison below is integer path vs fake quantization of
    # one model (the bfloat16 default would also round the norms and embeddings).
    assert main(["-q", "quantize", str(src), "--out", str(out), *QUICK_QUANT,
                 "--dtype", "float32"]) == 0
    ck = load_checkpoint(out)
    assert ck.model_config["model_type"] == arch
    report = json.loads((out / "duquant_report.json").read_text())
    assert set(report["seconds_per_stage"]) >= {"load_model", "rotation_permutation", "write_and_validate"}
    assert report["device"] == "cpu"  # --device auto on a machine without CUDA
    site = report["layers"][0]["sites"]["mlp_in"]
    assert site["after"]["max_abs"] < site["before"]["max_abs"]  # planted outliers were spread

    kw = dict(dataset=wikitext_valid, seqlen=64, limit=3, progress=False)
    fq = evaluate(str(src), methods=["fp16", ck.quant_config.method], calib_source="random",
                  calib_nsamples=4, calib_seqlen=64, qcfg=ck.quant_config, **kw)
    real = evaluate(str(out), methods=[], **kw)
    assert real["results"][0]["method"] == "checkpoint"
    ppl_fake = fq["results"][1]["ppl"]
    ppl_real = real["results"][0]["ppl"]
    # The checkpoint runs the same quantized model through real integer codes: the method row
    # (float64 dequantization, rounded once) is that number (bit for bit here; an output whose
    # exact value sits within ~1e-16 of a float32 rounding midpoint may round apart).
    assert fq["results"][1]["linears"] == "exact"
    assert abs(ppl_real - ppl_fake) / ppl_fake < 1e-4
    assert fq["windows"] == 3 and fq["tokens"] == 192
    assert fq["device"] == real["device"] == "cpu"


def test_activation_groups_end_to_end(tmp_path, wikitext_valid):
    """--act-group-size: every linear input gets per-token ranges per group (row-parallel ones
    inside each tp shard), transforms stay inside a group, the checkpoint records it, and its
    integer path equals the pipeline's fake quantization."""
    from duquant_serve.core.transform import permutation_respects_shards

    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), *QUICK_QUANT, "--dtype", "float32",
                 "--tp-shards", "2", "--act-group-size", "32"]) == 0
    ck = load_checkpoint(out)
    assert ck.quant_config.act_group_size == 32 and ck.quant_config.format_version == 5
    want = {"q_proj": 4, "o_proj": 4, "gate_proj": 4, "down_proj": 6}  # 128/32; 2 × 96/32
    for name, lin in ck.linears.items():
        g = want.get(name.rsplit(".", 1)[1])
        if g is None:
            continue
        assert lin.act_groups == g, name
        assert lin.transform.block_size <= 32 and permutation_respects_shards(lin.transform.perm, g)
    sites = json.loads((out / "duquant_report.json").read_text())["layers"][0]["sites"]
    assert sites["mlp_out"]["act_groups"] == 6 and sites["attn_in"]["act_groups"] == 4
    kw = dict(dataset=wikitext_valid, seqlen=64, limit=3, progress=False)
    fq = evaluate(str(src), methods=[ck.quant_config.method], calib_source="random",
                  calib_nsamples=4, calib_seqlen=64, qcfg=ck.quant_config, **kw)
    real = evaluate(str(out), methods=[], **kw)
    ppl_fake, ppl_real = fq["results"][0]["ppl"], real["results"][0]["ppl"]
    assert abs(ppl_real - ppl_fake) / ppl_fake < 1e-4


@pytest.mark.parametrize("size, fragment", [
    ("48", "act_group_size must be 0 (whole input) or a power of two >= 8, got 48"),
    ("4", "act_group_size must be 0"),
])
def test_bad_act_group_size_exits_2_before_writing(tmp_path, capsys, size, fragment):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "dq"
    rc = main(["-q", "quantize", str(src), "--out", str(out), *QUICK_QUANT,
               "--act-group-size", size])
    _assert_clean_error(capsys, rc, out, fragment)


def test_eval_refuses_bad_act_group_size_before_any_row(tmp_path, capsys, wikitext_valid):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "r.json"
    rc = main(["-q", "eval", str(src), "--dataset", wikitext_valid, "--seqlen", "64", "--limit",
               "1", "--methods", "fp16,duquant", "--act-group-size", "48", "--json", str(out)])
    assert rc == 2 and not out.exists()
    assert "act_group_size must be 0 (whole input) or a power of two >= 8, got 48" in (
        capsys.readouterr().err)


def test_eval_methods_and_json(tmp_path, wikitext_valid):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "r.json"
    rc = main(["-q", "eval", str(src), "--dataset", wikitext_valid, "--seqlen", "64", "--limit", "2",
               "--methods", ",".join(("fp16",) + METHODS), "--json", str(out),
               "--fake-quant-attention", "--steps", "8", *QUICK_QUANT[:6]])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["method"] for r in res["results"]] == ["fp16", *METHODS]
    assert all(r["ppl"] > 1 and r["seconds"] >= 0 for r in res["results"])
    assert set(res) >= {"target", "dataset", "seqlen", "windows", "tokens", "results"}
    # Default activation groups: 128 channels for the DuQuant methods; the baselines keep the
    # published per-token ranges.
    groups = {r["method"]: r.get("act_group_size") for r in res["results"]}
    assert groups == {"fp16": None, "rtn": 0, "smoothquant": 0, "hadamard": 0,
                      "hadamard-gptq": 0, "duquant": 128, "duquant-lwc": 128,
                      "duquant-gptq": 128, "duquant-opt": 128}
    clips = {r["method"]: r.get("act_clip_ratio") for r in res["results"]}
    assert clips == {m: None if m == "fp16" else 1.0 if g else 0.9 for m, g in groups.items()}


@pytest.mark.parametrize("bits, groups", [(("4", "4"), 128), (("6", "6"), 0), (("4", "8"), 0)])
def test_default_act_groups_and_clip_follow_the_activation_width(bits, groups):
    """The 128-channel groups help 4-bit activations and cost at 6 and 8 bits (SmolLM2
    duquant-opt, benchmarks/results/accuracy/README.md), so only 4-bit ones get them by
    default, and the activation clip follows the groups; explicit options win."""
    from duquant_serve.cli import _qcfg

    argv = ["quantize", "--out", "x", "--tp-shards", "1", "--w-bits", bits[0], "--a-bits", bits[1]]
    for method, grouped in (("duquant-opt", groups), ("duquant", groups), ("hadamard-gptq", 0)):
        cfg = _qcfg(build_parser().parse_args(argv), method)
        assert cfg.act_group_size == grouped, method
        # No clipping over a group's range; the paper's 0.9 over a whole input's.
        assert cfg.act_clip_ratio == (1.0 if grouped else 0.9), method
    cfg = _qcfg(build_parser().parse_args([*argv, "--act-group-size", "64"]), "duquant-opt")
    assert (cfg.act_group_size, cfg.act_clip_ratio) == (64, 1.0)
    cfg = _qcfg(build_parser().parse_args([*argv, "--act-group-size", "0"]), "duquant-opt")
    assert (cfg.act_group_size, cfg.act_clip_ratio) == (0, 0.9)
    cfg = _qcfg(build_parser().parse_args([*argv, "--act-clip", "0.85"]), "duquant-opt")
    assert (cfg.act_group_size, cfg.act_clip_ratio) == (groups, 0.85)


def _assert_clean_error(capsys, rc, out, fragment):
    assert rc == 2
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    assert fragment in capsys.readouterr().err


def test_unsupported_architecture(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(src)
    out = tmp_path / "o"
    _assert_clean_error(capsys, main(["-q", "quantize", str(src), "--out", str(out), *QUICK_QUANT]),
                        out, "not supported")


def test_impossible_block_size(tmp_path, capsys):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "o"
    rc = main(["-q", "quantize", str(src), "--out", str(out), "--block-size", "96", *QUICK_QUANT])
    _assert_clean_error(capsys, rc, out, "power of two")
    rc = main(["-q", "quantize", str(src), "--out", str(out), "--tp-shards", "3", *QUICK_QUANT])
    _assert_clean_error(capsys, rc, out, "3 equal shards")


def test_missing_calibration_file(tmp_path, capsys):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "o"
    rc = main(["-q", "quantize", str(src), "--out", str(out), "--calib", str(tmp_path / "none.txt")])
    _assert_clean_error(capsys, rc, out, "does not exist")


@pytest.mark.parametrize("what", ["textfile", "fakegguf", "emptydir", "missing"])
def test_not_a_model(tmp_path, capsys, what):
    p = tmp_path / "thing"
    if what == "textfile":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
    elif what == "fakegguf":
        p = tmp_path / "m.gguf"
        p.write_bytes(b"NOPE" + b"\0" * 64)
    elif what == "emptydir":
        p.mkdir()
    out = tmp_path / "o"
    _assert_clean_error(capsys, main(["-q", "quantize", str(p), "--out", str(out)]), out, "error:")


def test_existing_output_is_not_overwritten(tiny_checkpoint, capsys):
    src, ck = tiny_checkpoint
    before = (ck / "model.safetensors").stat().st_mtime_ns
    rc = main(["-q", "quantize", str(src), "--out", str(ck), *QUICK_QUANT])
    assert rc == 2 and "exists" in capsys.readouterr().err
    assert (ck / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("bits", [("4", "8"), ("8", "8")])
def test_other_bit_widths(tmp_path, bits):
    src = make_tiny_model(tmp_path / "m", "qwen2", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = tmp_path / "o"
    assert main(["-q", "quantize", str(src), "--out", str(out), "--w-bits", bits[0], "--a-bits", bits[1],
                 *QUICK_QUANT]) == 0
    ck = load_checkpoint(out)
    q = ck.linears["model.layers.0.mlp.up_proj"]
    assert q.qweight.shape[1] == (64 if bits[0] == "4" else 128)


@pytest.mark.parametrize("bad, fragment", [
    (["--method", "gptq-magic"], "invalid choice"),
    (["--learn-steps", "-1"], "must be >= 0"),
    (["--learn-start-steps", "x"], "invalid"),
    (["--learn-lr", "0"], "must be a finite number > 0"),
    (["--learn-lr", "nan"], "must be a finite number > 0"),
])
def test_bad_method_options_exit_2_before_writing(tmp_path, capsys, bad, fragment):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["-q", "quantize", "smollm2", "--out", str(out), *bad])
    assert e.value.code == 2 and not out.exists()
    assert fragment in capsys.readouterr().err


def test_quantize_defaults_are_the_pipelines():
    args = build_parser().parse_args(["quantize", "--out", "x"])
    opts = PipelineOptions()
    for name in ("learn_steps", "learn_start_steps", "learn_lr", "learn_dtype"):
        assert getattr(args, name) == getattr(opts, name), name


def test_each_method_writes_a_checkpoint_that_records_it(tmp_path):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    for method in ("duquant-gptq", "duquant-opt"):
        out = tmp_path / method
        assert main(["-q", "quantize", str(src), "--out", str(out), "--method", method,
                     "--learn-steps", "5", "--learn-start-steps", "4", *QUICK_QUANT]) == 0
        cfg = load_checkpoint(out).quant_config
        assert cfg.method == method and not cfg.lwc
        assert (cfg.act_group_size, cfg.act_clip_ratio) == (128, 1.0)  # the defaults
        # The learned method's greedy start is what its config records.
        assert cfg.rotation_steps == (4 if method == "duquant-opt" else 16)
        report = json.loads((out / "duquant_report.json").read_text())
        learned = report["layers"][0]["sites"]["mlp_out"].get("learned")
        assert (learned is not None) == (method == "duquant-opt")
        assert report["seconds_per_stage"]["gptq"] > 0
        # The report says what the stage times ran on: the learned products' dtype (the
        # learned method only) and the threads.
        compute = report["compute"]
        assert compute["threads"] == torch.get_num_threads() and compute["cpu_capability"]
        assert (compute["learned_matmul_dtype"] in ("float32", "bfloat16")) == (
            method == "duquant-opt")
