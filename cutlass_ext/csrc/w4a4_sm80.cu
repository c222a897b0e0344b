// sm_80/86/89: native 4-bit tensor cores (mma.sync m16n8k64 u4.u4.s32), CUTLASS 2.x device GEMM.
//
// Both operands stay packed two codes per byte along K, low nibble = even k: the layout of
// duquant_serve/core/pack.py and also CUTLASS's sub-byte layout, so the checkpoint's packed
// weights are used as is. Codes are unsigned (0..15; zero points are applied in the epilogue,
// docs/epilogue.md), hence uint4b_t rather than int4b_t.
//
// A: [M, K/2] bytes row-major, B: [N, K/2] bytes row-major (= K x N column-major), D: [M, N]
// int32 row-major. K % 32 == 0 (128-bit alignment of 4-bit rows), N % 4 == 0.

#include <cuda_runtime.h>
#include <cstdint>

#include "cutlass/cutlass.h"
#include "cutlass/gemm/device/gemm.h"
#include "cutlass/epilogue/thread/linear_combination.h"

#include "duquant_ext.h"

namespace {

using ElementIn = cutlass::uint4b_t;
using ElementAcc = int32_t;
using EpilogueOp = cutlass::epilogue::thread::LinearCombination<ElementAcc, 4, ElementAcc, ElementAcc>;

template <class Tb, class Warp, int Stages>
using GemmU4 = cutlass::gemm::device::Gemm<
    ElementIn, cutlass::layout::RowMajor, ElementIn, cutlass::layout::ColumnMajor, ElementAcc,
    cutlass::layout::RowMajor, ElementAcc, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    Tb, Warp, cutlass::gemm::GemmShape<16, 8, 64>, EpilogueOp,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, Stages, 32, 32, false,
    cutlass::arch::OpMultiplyAddSaturate>;

// Two tiles: a narrow one for decode-sized M, QuaRot's 128x256x128 for prefill.
using SmallM = GemmU4<cutlass::gemm::GemmShape<32, 128, 128>, cutlass::gemm::GemmShape<32, 32, 128>, 4>;
using LargeM = GemmU4<cutlass::gemm::GemmShape<128, 256, 128>, cutlass::gemm::GemmShape<64, 64, 128>, 3>;

template <class Gemm>
int run(const uint8_t* a, const uint8_t* b, int32_t* d, int m, int n, int k, cudaStream_t stream) {
  using RefA = cutlass::TensorRef<ElementIn const, cutlass::layout::RowMajor>;
  using RefB = cutlass::TensorRef<ElementIn const, cutlass::layout::ColumnMajor>;
  typename Gemm::Arguments args(
      {m, n, k},
      RefA(reinterpret_cast<ElementIn const*>(a), k),  // leading dims count elements, not bytes
      RefB(reinterpret_cast<ElementIn const*>(b), k),
      {d, n}, {d, n}, {1, 0});
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return DUQUANT_ERR_SHAPE;
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return DUQUANT_ERR_INIT;
  if (gemm(stream) != cutlass::Status::kSuccess) return DUQUANT_ERR_LAUNCH;
  return cudaGetLastError() == cudaSuccess ? DUQUANT_OK : DUQUANT_ERR_LAUNCH;
}

}  // namespace

extern "C" int duquant_gemm_u4u4s32_sm80(const uint8_t* a_packed, const uint8_t* b_packed,
                                         int32_t* d, int m, int n, int k, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0 || k % 32 || n % 4) return DUQUANT_ERR_SHAPE;
  if (m <= 32) return run<SmallM>(a_packed, b_packed, d, m, n, k, stream);
  return run<LargeM>(a_packed, b_packed, d, m, n, k, stream);
}
