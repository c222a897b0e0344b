"""prepare/apply of the kernels in duquant_serve/kernels/linear_kernels.py on CPU.

The ops' CPU implementations are the reference, so the Triton kernel's own code is exercised
by calling its launchers on the prepared (kernel-layout) tensors under TRITON_INTERPRET.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_cases import make_layer, make_x

from duquant_serve.core.reference import w4a4_linear_ref
from duquant_serve.kernels.base import LayerSpec
from duquant_serve.kernels.cpu_int8 import FP32_EXACT_MAX_K
from duquant_serve.kernels.linear_kernels import (
    CpuFp32GemmKernel,
    CpuInt8Kernel,
    CutlassSm80Kernel,
    CutlassSm90Int8WeightKernel,
    CutlassSm90Kernel,
    TorchRefKernel,
    TritonKernel,
)
from duquant_serve.kernels.triton_gemm import epilogue_triton, w4a4_gemm_triton
from duquant_serve.kernels.triton_prologue import fused_prologue


def _prep(kernel, lin, dtype=torch.float32):
    spec = LayerSpec(lin.in_features, lin.out_features, lin.transform.block_size,
                     has_smooth=lin.transform.smooth is not None, has_bias=lin.bias is not None,
                     act_dtype=dtype, device_type="cpu")
    return kernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero, lin.transform,
                          lin.bias, lin.act_clip_ratio)


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("n,k,b", [(40, 576, 64), (100, 192, 64)])
def test_torch_ref_kernel_is_the_reference(m, n, k, b):
    g = torch.Generator().manual_seed(m + n)
    lin = make_layer(n, k, b, smooth=True, bias=True, g=g)
    x = make_x(m, k, g).reshape(1, m, k)  # leading dims are flattened and restored
    y = TorchRefKernel.apply(_prep(TorchRefKernel, lin), x)
    assert y.shape == (1, m, n)
    assert torch.equal(y, w4a4_linear_ref(x, lin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [0, 1, 7, 33, 300])
@pytest.mark.parametrize("n,k,b", [(40, 576, 64), (100, 192, 64), (3, 256, 128)])
def test_cpu_int8_kernel_matches_the_reference(m, n, k, b, dtype):
    # The reference prologue (same codes), an exact int32 accumulator, the fp32 epilogue: only
    # the epilogue's fp32 scaling separates it from torch_ref.
    g = torch.Generator().manual_seed(m * 7 + n)
    lin = make_layer(n, k, b, smooth=m % 2 == 1, bias=n != 3, g=g)
    p = _prep(CpuInt8Kernel, lin, dtype)
    assert p.qweight.dtype == torch.int8 and p.qweight.shape == (n, k)
    x = make_x(m, k, g, dtype).reshape(1, m, k)
    y = CpuInt8Kernel.apply(p, x)
    assert y.shape == (1, m, n) and y.dtype == dtype
    want = TorchRefKernel.apply(_prep(TorchRefKernel, lin, dtype), x)
    _assert_epilogue_close(y, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 9])
def test_cpu_fp32_gemm_equals_cpu_int8_bit_for_bit(groups, dtype):
    """The fp32 GEMM on the codes accumulates the same integers as torch._int_mm (every
    partial sum an integer below 2^24), so the two CPU kernels give identical outputs, eager
    and under inductor, with and without activation groups."""
    g = torch.Generator().manual_seed(groups)
    lin = make_layer(72, 576, 64, smooth=True, bias=True, g=g, clip=1.0 if groups > 1 else 0.9,
                     groups=groups)
    spec = LayerSpec(576, 72, 64, has_smooth=True, has_bias=True, act_dtype=dtype,
                     device_type="cpu", act_groups=groups)
    (p8,) = CpuInt8Kernel.prepare_groups(spec, lin)
    (pf,) = CpuFp32GemmKernel.prepare_groups(spec, lin)
    assert pf.qweight.dtype == torch.float32 and torch.equal(pf.qweight, p8.qweight.float())
    torch._dynamo.reset()
    f8 = torch.compile(lambda t: CpuInt8Kernel.apply(p8, t), fullgraph=True, backend="inductor")
    ff = torch.compile(lambda t: CpuFp32GemmKernel.apply(pf, t), fullgraph=True,
                       backend="inductor")
    for m in (1, 5, 33, 300):
        x = (make_x(m, 576, g) * 4).to(dtype)
        torch._dynamo.mark_dynamic(x, 0)
        assert torch.equal(CpuFp32GemmKernel.apply(pf, x), CpuInt8Kernel.apply(p8, x)), m
        assert torch.equal(ff(x), f8(x)), m


def test_fp32_code_products_are_exact_up_to_the_width_limit():
    """At the widest K the fp32 kernel accepts, all-15 codes (the largest sums) and random
    codes give the int64 dot products exactly; one code further, 15·15·K passes 2^24."""
    k = FP32_EXACT_MAX_K - FP32_EXACT_MAX_K % 2
    a = torch.full((2, k), 15, dtype=torch.int8)
    a[1] = torch.randint(0, 16, (k,), generator=torch.Generator().manual_seed(0))
    w = torch.full((3, k), 15.0)
    w[1:] = torch.randint(0, 16, (2, k), generator=torch.Generator().manual_seed(1)).float()
    from duquant_serve.kernels.cpu_int8 import _codes_mm

    got = _codes_mm(a, w)
    assert torch.equal(got.long(), a.long() @ w.long().t())
    assert 225 * (FP32_EXACT_MAX_K + 1) >= 2**24


def test_cpu_int8_compiled_equals_eager_and_the_reference():
    """cpu_int8 calls the ops' plain torch bodies so that inductor (vLLM's CPU compile backend)
    fuses them. Compiled with dynamic token counts, as vLLM compiles, it must give the eager
    output bit for bit, and both must stay within the epilogue's rounding of the float64
    integer reference (core.reference, independent code)."""
    from duquant_serve.core.reference import w4a4_linear_ref

    g = torch.Generator().manual_seed(11)
    lin = make_layer(72, 576, 64, smooth=True, bias=True, g=g)
    p = _prep(CpuInt8Kernel, lin)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    f = torch.compile(lambda t: CpuInt8Kernel.apply(p, t), fullgraph=True, dynamic=True,
                      backend="inductor")
    for m in (1, 2, 5, 33, 300):
        for _ in range(3):
            x = make_x(m, 576, g) * 4
            eager = CpuInt8Kernel.apply(p, x)
            _assert_epilogue_close(eager, w4a4_linear_ref(x, lin).to(eager.dtype))
            assert torch.equal(f(x), eager), m
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # no recompile per m


def _assert_epilogue_close(y, want):
    """fp32 epilogue vs the float64 reference: ~1e-7 relative before the output cast, so at
    most one unit of the output dtype's last place apart."""
    ulp = torch.finfo(want.dtype).eps
    torch.testing.assert_close(y.float(), want.float(), rtol=2 * ulp, atol=2 * ulp * float(
        want.float().abs().max()) if want.numel() else 0.0)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("n,k,b", [(40, 576, 64), (72, 192, 64)])
def test_triton_kernel_layout_end_to_end(m, n, k, b):
    """prologue → grouped-layout GEMM on TritonKernel.prepare's tensors = w4a4_linear_ref."""
    g = torch.Generator().manual_seed(7 * m + k)
    lin = make_layer(n, k, b, smooth=(m != 7), bias=(m != 1), g=g)
    p = _prep(TritonKernel, lin)
    x = make_x(m, k, g)
    q, s, z, qs = fused_prologue(x, p.r1, p.r2, p.inv_perm, p.smooth, 4, p.act_clip_ratio)
    y = w4a4_gemm_triton(q, s, z, qs, p.qweight, p.weight_scale, p.weight_zero,
                         p.weight_code_sum, p.bias, torch.float32)
    # A code off by one at a rounding tie changes y by one quantization step of one element.
    assert _rel(y, w4a4_linear_ref(x, lin)) < 1e-4


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("n,k,groups,shards", [(40, 576, 9, 1), (72, 512, 4, 2)])
def test_triton_groups_kernel_end_to_end(m, n, k, groups, shards):
    """TritonGroupsKernel.prepare_groups → its prologue op → the block-scaled Triton GEMM
    (interpreted) on the prepared tensors, shards tree-summed = w4a4_linear_ref."""
    from duquant_serve.core.reference import tree_sum
    from duquant_serve.kernels.linear_kernels import TritonGroupsKernel
    from duquant_serve.kernels.triton_gemm import w4a4_gemm_groups_triton

    g = torch.Generator().manual_seed(m + k)
    lin = make_layer(n, k, 64, smooth=m != 7, bias=m != 1, g=g, clip=1.0 if m == 7 else 0.9,
                     groups=groups, shards=shards)
    spec = LayerSpec(k // shards, n, 64, has_smooth=m != 7, has_bias=m != 1,
                     act_dtype=torch.float32, device_type="cpu", act_groups=groups // shards)
    ps = TritonGroupsKernel.prepare_groups(spec, lin)
    assert len(ps) == shards and ps[0].group_code_sum.shape == (groups // shards, n)
    x = make_x(m, k, g)
    kp = k // shards
    ys = []
    for i, p in enumerate(ps):
        xs = x[:, i * kp:(i + 1) * kp].contiguous()
        q, s, z, qs = torch.ops.duquant.prologue_groups(xs, p.r1, p.r2, p.perm, p.smooth, 4,
                                                        p.act_clip_ratio, p.spec.act_groups)
        ys.append(w4a4_gemm_groups_triton(q, s, z, qs, p.qweight, p.weight_scale, p.weight_zero,
                                          p.group_code_sum, p.bias, torch.float32))
    assert _rel(tree_sum(ys), w4a4_linear_ref(x, lin)) < 1e-6
    # The op's CPU body is the reference too.
    assert _rel(TritonGroupsKernel.apply_groups(ps, x), w4a4_linear_ref(x, lin)) < 1e-6


def test_triton_groups_kernel_takes_only_grouped_layers():
    from duquant_serve.kernels.linear_kernels import TritonGroupsKernel

    gpu = dict(device_type="cuda", capability=(9, 0), act_dtype=torch.bfloat16)
    ok, why = TritonGroupsKernel.can_implement(LayerSpec(576, 40, 64, **gpu))
    assert not ok and "activation groups only" in why
    ok, why = TritonGroupsKernel.can_implement(LayerSpec(576, 40, 16, act_groups=18, **gpu))
    assert not ok and "32 channels" in why
    assert TritonGroupsKernel.validated_on_gpu is False  # opt-in until a GPU run checks it


def test_cutlass_kernel_layouts_end_to_end():
    """CUTLASS paths' prepare layouts through the ops' CPU impls (+ the Triton epilogue where
    the GEMM writes int32): each kernel's stored weights and epilogue vectors = the reference."""
    g = torch.Generator().manual_seed(3)
    lin = make_layer(72, 576, 64, smooth=True, bias=True, g=g)
    x = make_x(7, 576, g)
    ref = w4a4_linear_ref(x, lin)
    for kern in (CutlassSm90Kernel, CutlassSm90Int8WeightKernel, CutlassSm80Kernel):
        p = _prep(kern, lin)
        q, s, z, qs = fused_prologue(x, p.r1, p.r2, p.inv_perm, p.smooth, 4, p.act_clip_ratio)
        if kern is CutlassSm80Kernel:
            acc = torch.ops.duquant.gemm_u4_sm80(torch.ops.duquant.pack_codes(q), p.qweight)
            y = epilogue_triton(acc, s, z, qs, p.weight_scale, p.weight_zero,
                                p.weight_code_sum, p.bias, 576, torch.float32)
        else:  # the fused EVT op's algebra with prepare()'s weights and u, v, w
            y = torch.ops.duquant.w4a4_gemm_sm90(q, s, z, qs, p.qweight, p.epilogue_u,
                                                 p.epilogue_v, p.epilogue_w, p.bias,
                                                 torch.float32, kern.packed)
        assert _rel(y, ref) < 1e-4, kern.name
    # Packed keeps 4 bits per weight; the int8 variant one byte.
    assert _prep(CutlassSm90Kernel, lin).qweight.numel() * 2 == \
        _prep(CutlassSm90Int8WeightKernel, lin).qweight.numel()


def test_prepared_rotations_need_no_copy_per_call():
    """The prologue reads Rᵀ row-major: prepare stores R that way, so the launcher's
    `r.t().contiguous()` is a view, not a copy kernel per linear per forward."""
    lin = make_layer(40, 192, 64, smooth=False, bias=False, g=torch.Generator().manual_seed(3))
    p = _prep(TritonKernel, lin)
    for r, ref in ((p.r1, lin.transform.r1), (p.r2, lin.transform.r2)):
        assert torch.equal(r, ref.float())
        assert r.t().contiguous().data_ptr() == r.data_ptr()


def test_prepare_rejects_mismatched_tensors():
    g = torch.Generator().manual_seed(4)
    lin = make_layer(40, 192, 64, smooth=False, bias=False, g=g)
    spec = LayerSpec(192, 40, 64, has_bias=True, device_type="cpu")
    with pytest.raises(ValueError, match="has_bias"):
        TorchRefKernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero,
                               lin.transform, None, 1.0)
    spec = LayerSpec(192, 41, 64, device_type="cpu")
    with pytest.raises(ValueError, match="qweight"):
        TorchRefKernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero,
                               lin.transform, None, 1.0)


@pytest.mark.parametrize("kernel", [TorchRefKernel, CpuInt8Kernel, CpuFp32GemmKernel])
def test_apply_compiles_without_graph_breaks(kernel):
    g = torch.Generator().manual_seed(5)
    lin = make_layer(40, 192, 64, smooth=True, bias=True, g=g)
    p = _prep(kernel, lin)
    x = make_x(7, 192, g)
    torch._dynamo.reset()
    f = torch.compile(lambda t: kernel.apply(p, t), fullgraph=True, backend="aot_eager")
    want = w4a4_linear_ref(x, lin)
    if kernel is TorchRefKernel:
        assert torch.equal(f(x), want)
    else:
        _assert_epilogue_close(f(x), want)


class _PerGroupCpuInt8(CpuInt8Kernel):
    """cpu_int8 as a kernel without native activation groups: one linear per group."""

    name = "cpu_int8_per_group"
    native_act_groups = False


@pytest.mark.parametrize("groups, shards, kg, block, clip",
                         [(2, 2, 192, 64, 0.9), (3, 1, 192, 64, 0.9), (9, 1, 64, 64, 1.0),
                          (6, 2, 32, 16, 0.9), (4, 2, 64, 64, 1.0)])
def test_grouped_apply_equals_grouped_reference(groups, shards, kg, block, clip):
    """Activation groups over row-parallel shards: kernels with native groups run one linear
    per shard (one prologue, a block-scaled GEMM), the others one per group summed in fp32;
    shards are summed as core.reference sums them (torch_ref: bit for bit, also compiled)."""
    import dataclasses

    g = torch.Generator().manual_seed(groups + shards)
    n = 40  # kg 192: SmolLM2-like 3 blocks per group, where strided slices rounded differently
    k = kg * groups
    lin = make_layer(n, k, block, smooth=True, bias=True, g=g, clip=clip, groups=groups,
                     shards=shards)  # clip 1.0: grouped checkpoints' default
    spec = LayerSpec(k // shards, n, block, has_smooth=True, has_bias=True,
                     act_dtype=torch.float32, device_type="cpu", act_groups=groups // shards)
    ps = TorchRefKernel.prepare_groups(spec, lin)
    assert len(ps) == shards and ps[0].bias is not None and all(p.bias is None for p in ps[1:])
    ps8 = CpuInt8Kernel.prepare_groups(spec, lin)
    per = groups // shards
    assert len(ps8) == shards and ps8[0].qweight.shape == ((per, n, kg) if per > 1 else (n, kg))
    per_group = _PerGroupCpuInt8.prepare_groups(spec, lin)
    assert len(per_group) == groups and [p.shard for p in per_group] == [
        i // (groups // shards) for i in range(groups)]
    for m in (1, 7, 9, 33, 64):
        for _ in range(3):
            x = make_x(m, k, g)
            want = w4a4_linear_ref(x, lin)
            assert torch.equal(TorchRefKernel.apply_groups(ps, x), want), m
            _assert_epilogue_close(CpuInt8Kernel.apply_groups(ps8, x), want)
            _assert_epilogue_close(_PerGroupCpuInt8.apply_groups(per_group, x), want)
    x = make_x(9, k, g)
    want = w4a4_linear_ref(x, lin)
    torch._dynamo.reset()
    f = torch.compile(lambda t: TorchRefKernel.apply_groups(ps, t), fullgraph=True,
                      backend="aot_eager")
    assert torch.equal(f(x), want)
    with pytest.raises(ValueError, match="groups"):
        TorchRefKernel.prepare_groups(dataclasses.replace(spec, in_features=2 * k // shards), lin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_int8_groups_compiled_equals_eager_and_the_reference(dtype):
    """The block-scaled cpu_int8 path under inductor with dynamic token counts, as vLLM
    compiles it: within an output ulp of eager and of the reference (not bit for bit: inductor
    sums the groups' fp32 terms in its own order, with fused multiply-adds)."""
    g = torch.Generator().manual_seed(5)
    lin = make_layer(72, 576, 64, smooth=True, bias=True, g=g, clip=1.0, groups=9)
    spec = LayerSpec(576, 72, 64, has_smooth=True, has_bias=True, act_dtype=dtype,
                     device_type="cpu", act_groups=9)
    (p,) = CpuInt8Kernel.prepare_groups(spec, lin)
    torch._dynamo.reset()
    f = torch.compile(lambda t: CpuInt8Kernel.apply(p, t), fullgraph=True, backend="inductor")
    for m in (1, 2, 5, 33, 300):
        x = (make_x(m, 576, g) * 4).to(dtype)
        torch._dynamo.mark_dynamic(x, 0)
        eager = CpuInt8Kernel.apply(p, x)
        want = w4a4_linear_ref(x, lin)
        _assert_epilogue_close(eager, want)
        _assert_epilogue_close(f(x), want)


def test_prepare_refuses_a_permutation_across_groups():
    g = torch.Generator().manual_seed(3)
    lin = make_layer(8, 256, 64, smooth=False, bias=False, g=g, groups=2)
    lin.transform.perm = lin.transform.perm.flip(0)
    spec = LayerSpec(256, 8, 64, device_type="cpu", act_groups=2)
    with pytest.raises(ValueError, match="across the 2 activation groups"):
        CpuInt8Kernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero,
                              lin.transform, None, 0.9)


def test_import_duquant_serve_stays_light():
    code = ("import sys, duquant_serve, duquant_serve.kernels.select as s, "
            "duquant_serve.kernels.linear_kernels;"
            "bad = [m for m in ('triton', 'vllm', 'duquant_serve.kernels.triton_prologue', "
            "'duquant_serve.kernels.triton_gemm') if m in sys.modules];"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
