"""The checkpoint contract: round trip, and every malformed case refused with a named tensor."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from duquant_serve.checkpoint import CheckpointError, load_checkpoint, read_tensors

sys.path.insert(0, str(Path(__file__).parent / "vllm_plugin"))  # broken.py: as_format3

L0 = "model.layers.0"


def _copy_with(src, dst, edit=None, cfg_edit=None):
    shutil.copytree(src, dst)
    if edit is not None:
        t = read_tensors(dst)
        edit(t)
        save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if cfg_edit is not None:
        cfg = json.loads((dst / "config.json").read_text())
        cfg_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_round_trip(tiny_checkpoint):
    src, ck = tiny_checkpoint
    c = load_checkpoint(ck)
    assert c.quant_config.w_bits == 4 and c.quant_config.tp_shards == 2
    assert len(c.linears) == 2 * 7
    q = c.linears[f"{L0}.self_attn.q_proj"]
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (256, 128)
    assert c.linears[f"{L0}.self_attn.o_proj"].transform.smooth is not None  # GQA: online
    # Row-parallel inputs are quantized per tp_shards group, column-parallel ones per whole row.
    assert c.linears[f"{L0}.self_attn.o_proj"].act_groups == 2
    assert c.linears[f"{L0}.mlp.down_proj"].act_groups == 2
    assert q.act_groups == 1 and c.linears[f"{L0}.mlp.up_proj"].act_groups == 1
    assert c.quant_config.format_version == 5 and c.quant_config.method == "duquant-opt"
    assert c.quant_config.act_group_size == 0
    assert "lm_head.weight" in c.tensors and "model.embed_tokens.weight" in c.tensors
    for f in ("tokenizer.json", "generation_config.json", "duquant_report.json"):
        assert (ck / f).is_file()
    assert not list(ck.glob("*.bin"))


def _set(name, fn):
    def edit(t):
        t[name] = fn(t[name])
    return edit


def _drop(name):
    return lambda t: t.pop(name)


def _nonorth(r):
    r = r.clone()
    r[0, 0] += 0.1
    return r


def _dup_perm(p):
    p = p.clone()
    p[1] = p[0]
    return p


def _cross_shard(p):
    p = p.clone()
    p[0], p[-1] = p[-1].item(), p[0].item()
    return p


CASES = [
    ("missing", _drop(f"{L0}.self_attn.q_proj.weight_scale"), f"{L0}.self_attn.q_proj.weight_scale", "missing"),
    ("missing_norm", _drop(f"{L0}.input_layernorm.weight"), f"{L0}.input_layernorm.weight", "missing"),
    ("extra", lambda t: t.__setitem__("model.layers.0.mystery", torch.zeros(3)), "mystery", "unexpected"),
    ("shape", _set(f"{L0}.mlp.up_proj.qweight", lambda x: x[:, :-1].contiguous()), "up_proj.qweight", "shape"),
    ("dtype", _set(f"{L0}.mlp.up_proj.weight_scale", lambda x: x.half()), "up_proj.weight_scale", "dtype"),
    ("nan_scale", _set(f"{L0}.mlp.down_proj.weight_scale", lambda x: x.index_fill(0, torch.tensor([0]), float("nan"))),
     "down_proj.weight_scale", "non-finite"),
    ("nonint_zero", _set(f"{L0}.mlp.down_proj.weight_zero", lambda x: x + 0.5), "down_proj.weight_zero", "integer"),
    ("not_orthogonal", _set(f"{L0}.self_attn.o_proj.input_rot2", _nonorth), "o_proj.input_rot2", "orthogonal"),
    ("not_permutation", _set(f"{L0}.mlp.down_proj.input_perm", _dup_perm), "down_proj.input_perm", "permutation"),
    ("crosses_shards", _set(f"{L0}.mlp.down_proj.input_perm", _cross_shard), "down_proj.input_perm", "shards"),
    # Formats >= 4 store a fused group's transform once; a follower's own copy is refused.
    ("fused_copy_in_format4", lambda t: t.__setitem__(f"{L0}.self_attn.k_proj.input_rot1",
                                                       t[f"{L0}.self_attn.q_proj.input_rot1"].clone()),
     "k_proj.input_rot1", "store a fused group's input transform once"),
    # Format 3 (a copy per linear, below: FORMAT3_CASES): copies must agree.
    ("fused_mismatch", _set(f"{L0}.self_attn.k_proj.input_rot1", lambda r: r.flip(0).contiguous()),
     "k_proj.input_rot1", "fused input transform differs"),
    ("fused_perm_mismatch", _set(f"{L0}.mlp.up_proj.input_perm", lambda p: p.flip(0).contiguous()),
     "up_proj.input_perm", "fused"),
]
FORMAT3_CASES = ("fused_mismatch", "fused_perm_mismatch")


@pytest.mark.parametrize("case,edit,tensor,problem", CASES, ids=[c[0] for c in CASES])
def test_malformed_tensor_is_refused_naming_it(tiny_checkpoint, tmp_path, case, edit, tensor, problem):
    if case in FORMAT3_CASES:
        from broken import as_format3

        cfg = json.loads((tiny_checkpoint[1] / "config.json").read_text())
        edit3 = edit

        def edit(t):  # noqa: F811
            as_format3(t, cfg)
            edit3(t)

        bad = _copy_with(tiny_checkpoint[1], tmp_path / case, edit=edit,
                         cfg_edit=lambda c: c.update(quantization_config=cfg["quantization_config"]))
    else:
        bad = _copy_with(tiny_checkpoint[1], tmp_path / case, edit=edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert tensor in str(e.value) and problem in str(e.value)


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c["quantization_config"].__setitem__("format_version", 99), "format_version 99"),
    # Version 1 quantized row-parallel activations over whole rows: only tp_shards=1 means the same.
    (lambda c: (c["quantization_config"].__setitem__("format_version", 1),
                c["quantization_config"].pop("method")), "re-quantize"),
    (lambda c: c["quantization_config"].__setitem__("format_version", 2), "does not define"),
    (lambda c: c["quantization_config"].__setitem__("method", "magic"), "method must be one of"),
    (lambda c: c.pop("quantization_config"), "not a DuQuant checkpoint"),
    (lambda c: c["quantization_config"].__setitem__("w_bits", 3), "W3A4"),
    (lambda c: c["quantization_config"].__setitem__("surprise", 1), "unknown keys"),
    (lambda c: c["quantization_config"].__setitem__("act_group_size", 48), "act_group_size"),
    # Groups of 16 do not match the stored transforms (128-blocks, permutations over 128).
    (lambda c: c["quantization_config"].__setitem__("act_group_size", 16),
     "input_rot1: block 128 does not divide the input width 256 in 16 activation groups"),
])
def test_malformed_config_is_refused(tiny_checkpoint, tmp_path, edit, msg):
    bad = _copy_with(tiny_checkpoint[1], tmp_path / "cfg", cfg_edit=edit)
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(bad)


def test_corrupt_weight_file_and_pickles_are_refused(tiny_checkpoint, tmp_path):
    bad = _copy_with(tiny_checkpoint[1], tmp_path / "trunc")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    bad2 = _copy_with(tiny_checkpoint[1], tmp_path / "pickle")
    (bad2 / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(bad2)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")


def test_checkpoint_modes_follow_the_umask(tmp_path):
    """Readable by another uid under umask 022 (what save_pretrained gives), still atomic."""
    import os
    import stat

    from duquant_serve.files import atomic_directory

    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "ck") as d:
            (d / "model.safetensors").write_bytes(b"x")
            os.chmod(d / "model.safetensors", 0o600)  # as a temp-file writer leaves it
            (d / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    ck = tmp_path / "ck"
    assert stat.S_IMODE(ck.stat().st_mode) == 0o755
    assert stat.S_IMODE((ck / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((ck / "model.safetensors").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".ck.tmp-*"))


def test_format3_copies_per_linear_still_load(tiny_checkpoint, tmp_path):
    """Format 4 stores a fused group's transform once (on q_proj / gate_proj); a format-3
    checkpoint holding a copy per linear reads as the same linears."""
    from broken import as_format3

    _, ck = tiny_checkpoint
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["quantization_config"]["format_version"] == 5
    stored = read_tensors(ck)
    assert f"{L0}.self_attn.q_proj.input_rot1" in stored
    assert f"{L0}.self_attn.k_proj.input_rot1" not in stored
    assert f"{L0}.mlp.up_proj.input_perm" not in stored
    v3 = _copy_with(ck, tmp_path / "v3", edit=lambda t: as_format3(t, cfg),
                    cfg_edit=lambda c: c.update(quantization_config=cfg["quantization_config"]))
    a, b = load_checkpoint(ck), load_checkpoint(v3)
    assert a.linears.keys() == b.linears.keys()
    for name, q in a.linears.items():
        assert q.transform.first_difference(b.linears[name].transform) is None, name
    assert sum(f.stat().st_size for f in ck.glob("*.safetensors")) < \
        sum(f.stat().st_size for f in v3.glob("*.safetensors"))
