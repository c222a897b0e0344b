// sm_90a: 4-bit code VALUES (0..15, stored one per int8) through int8 wgmma, int32 accumulate.
//
// Hopper has no 4-bit tensor-core MMA (DESIGN.md, "Kernels, by GPU generation"), so A (activation
// codes from the prologue) and B (weight codes, unpacked once at load) are int8 in memory and the
// GEMM is CUTLASS 3.x's TMA warp-specialized s8 x s8 -> s32 kernel from the collective builder.
// The output is the raw int32 accumulator; the zero-point/scale epilogue (EPILOGUE.md) runs in a
// fused Triton kernel (duquant_serve/kernels/triton_gemm.py::apply_epilogue). Torch-free C ABI:
// raw pointers in, an error code out, so the .so builds without torch headers (README.md).
//
// A: [M, K] int8 row-major, B: [N, K] int8 row-major (= K x N column-major, the "TN" GEMM),
// D: [M, N] int32 row-major. K % 16 == 0 (16-byte TMA alignment of int8 rows), N % 4 == 0.

#include <cuda_runtime.h>
#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "duquant_ext.h"

namespace {

using namespace cute;

// Tile shapes are chosen per M bucket (the vLLM c3x dispatch idea): small M wastes less of a
// 64-row tile, large M wants the 128x256 cooperative tile to feed the tensor cores.
template <class TileShape, class ClusterShape, class KernelSchedule, class EpiSchedule>
struct GemmS8 {
  using ElementA = int8_t;
  using ElementB = int8_t;
  using ElementD = int32_t;
  using ElementAcc = int32_t;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignAB = 16;
  static constexpr int kAlignD = 4;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc,
      void, LayoutD, kAlignD,  // no C operand: D = acc
      ElementD, LayoutD, kAlignD, EpiSchedule>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignAB,
      ElementB, LayoutB, kAlignAB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>,
                                                      CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static int run(const int8_t* a, const int8_t* b, int32_t* d, int m, int n, int k,
                 void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    auto sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(m, k, 1));
    auto sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(n, k, 1));
    auto sc = cutlass::make_cute_packed_stride(StrideC{}, make_shape(m, n, 1));
    auto sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(m, n, 1));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {a, sa, b, sb},
        {{1, 0}, nullptr, sc, d, sd}};  // alpha = 1, beta = 0
    Gemm gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return DUQUANT_ERR_SHAPE;
    if (Gemm::get_workspace_size(args) > workspace_bytes) return DUQUANT_ERR_WORKSPACE;
    if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess)
      return DUQUANT_ERR_INIT;
    if (gemm.run(stream) != cutlass::Status::kSuccess) return DUQUANT_ERR_LAUNCH;
    return cudaGetLastError() == cudaSuccess ? DUQUANT_OK : DUQUANT_ERR_LAUNCH;
  }
};

using SmallM = GemmS8<Shape<_64, _128, _128>, Shape<_1, _1, _1>,
                      cutlass::gemm::KernelTmaWarpSpecialized,
                      cutlass::epilogue::TmaWarpSpecialized>;
using LargeM = GemmS8<Shape<_128, _256, _128>, Shape<_1, _1, _1>,
                      cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                      cutlass::epilogue::TmaWarpSpecializedCooperative>;

}  // namespace

extern "C" int duquant_gemm_s8s8s32_sm90(const int8_t* a, const int8_t* b, int32_t* d, int m,
                                         int n, int k, void* workspace, size_t workspace_bytes,
                                         cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return DUQUANT_ERR_SHAPE;
  if (k % 16 || n % 4) return DUQUANT_ERR_SHAPE;
  if (m <= 64) return SmallM::run(a, b, d, m, n, k, workspace, workspace_bytes, stream);
  return LargeM::run(a, b, d, m, n, k, workspace, workspace_bytes, stream);
}
