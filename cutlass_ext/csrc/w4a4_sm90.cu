// sm_90a: 4-bit code VALUES (0..15, stored one per int8) through int8 wgmma, int32 accumulate.
//
// Hopper has no 4-bit tensor-core MMA (DESIGN.md, "Kernels, by GPU generation"), so A (activation
// codes from the prologue) and B (weight codes, unpacked once at load) are int8 in memory and the
// GEMM is CUTLASS 3.x's TMA warp-specialized s8 x s8 -> s32 kernel from the collective builder
// (the mainloop of w4a4_sm90_evt.hpp). The output is the raw int32 accumulator: this kernel times
// the GEMM alone; the zero-point/scale epilogue (docs/epilogue.md) can then run in the Triton kernel
// (duquant_serve/kernels/triton_gemm.py::epilogue_triton). Torch-free C ABI: raw pointers in,
// an error code out, so the .so builds without torch headers (README.md).
//
// A: [M, K] int8 row-major, B: [N, K] int8 row-major (= K x N column-major, the "TN" GEMM),
// D: [M, N] int32 row-major. K % 16 == 0 (16-byte TMA alignment of int8 rows), N % 4 == 0.

#include "w4a4_sm90_evt.hpp"

namespace {

using namespace duquant_sm90;

// Tile shapes are chosen per M bucket (the vLLM c3x dispatch idea): small M wastes less of a
// 64-row tile, large M wants the 128x256 cooperative tile to feed the tensor cores.
template <class Tile, class KernelSchedule, class EpiSchedule>
struct GemmS8 {
  using Cluster = Shape<_1, _1, _1>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, int32_t,
      void, cutlass::layout::RowMajor, 4,  // no C operand: D = acc
      int32_t, cutlass::layout::RowMajor, 4, EpiSchedule>::CollectiveOp;
  using Gemm = Sm90Gemm<Sm90Mainloop<int8_t, int8_t, Tile, Cluster, KernelSchedule,
                                     CollectiveEpilogue>,
                        CollectiveEpilogue>;
};

using SmallM = GemmS8<Shape<_64, _128, _128>, cutlass::gemm::KernelTmaWarpSpecialized,
                      cutlass::epilogue::TmaWarpSpecialized>::Gemm;
using LargeM = GemmS8<Shape<_128, _256, _128>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                      cutlass::epilogue::TmaWarpSpecializedCooperative>::Gemm;

}  // namespace

extern "C" int duquant_gemm_s8s8s32_sm90(const int8_t* a, const int8_t* b, int32_t* d, int m,
                                         int n, int k, void* workspace, size_t workspace_bytes,
                                         cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return DUQUANT_ERR_SHAPE;
  if (k % 16 || n % 4) return DUQUANT_ERR_SHAPE;
  // Epilogue arguments {alpha = 1, beta = 0}: D = acc.
  if (m <= 64) return run_gemm<SmallM>(m, n, k, a, b, d, {1, 0}, workspace, workspace_bytes, stream);
  return run_gemm<LargeM>(m, n, k, a, b, d, {1, 0}, workspace, workspace_bytes, stream);
}
