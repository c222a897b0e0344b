// sm_90a: the W4A4 GEMM + epilogue as one CUTLASS 3.x kernel (wgmma mainloop and an epilogue
// visitor tree, EVT), so the int32 accumulator never leaves the SM. Shared by the two weight
// layouts (w4a4_sm90_evt.cu: int8 codes; w4a4_sm90_packed.cu: packed 4-bit codes); the
// mainloop and the launch helper also serve the int32-out GEMM (w4a4_sm90.cu).
//
//   y[m, n] = sx[m] · ( u[n]·acc[m, n] − ( v[n]·Sx[m] + w[n]·zx[m] ) ) + bias[n]
//   u = sw,  v = sw·(zw − o),  w = sw·(Sw − K·zw)   (per output channel, precomputed at load)
//
// o is the offset of the stored weight values: 0 for int8 codes 0..15, 8 for the packed
// kernel's signed nibbles q − 8 (docs/epilogue.md).
//
// which is docs/epilogue.md's formula with s_w distributed into the bracket (so every per-channel
// factor is one broadcast vector).
//
// kSwapAB: the GEMM computes yᵀ = W · Xᵀ (problem N × M × K). The mixed-input mainloop must
// take the narrow (4-bit) operand as A, the one it converts in registers; the swap also fits
// decode, where a 16-wide token tile wastes nothing and the weight rows fill the 128-row tile.
// Then per-channel vectors broadcast along the GEMM's rows, per-token ones along its columns,
// and D is written column-major, which is y row-major.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "duquant_ext.h"

namespace duquant_sm90 {

using namespace cute;
namespace fu = cutlass::epilogue::fusion;

constexpr auto RN = cutlass::FloatRoundStyle::round_to_nearest;

template <class Tile, class ElementD, bool kSwapAB>
struct W4A4Evt {
  using RowS = Stride<_0, _1, int64_t>;
  using ColS = Stride<_1, _0, int64_t>;
  template <class T, int Align>
  using Row = fu::Sm90RowBroadcast<0, Tile, T, float, RowS, Align>;
  template <class T, int Align>
  using Col = fu::Sm90ColBroadcast<0, Tile, T, float, ColS, Align>;
  // Per-channel vectors load 128 bits at a time (N % 8 == 0); per-token ones one element at a
  // time: the token count is anything (1, 7, ...).
  template <class T>
  using Chan = std::conditional_t<kSwapAB, Col<T, 128 / cutlass::sizeof_bits<T>::value>,
                                  Row<T, 128 / cutlass::sizeof_bits<T>::value>>;
  template <class T>
  using Tok = std::conditional_t<kSwapAB, Row<T, 1>, Col<T, 1>>;
  using ChanS = std::conditional_t<kSwapAB, ColS, RowS>;
  using TokS = std::conditional_t<kSwapAB, RowS, ColS>;

  using Mul = fu::Sm90Compute<cutlass::multiplies, float, float, RN>;
  using Fma = fu::Sm90Compute<cutlass::homogeneous_multiply_add, float, float, RN>;
  using Sub = fu::Sm90Compute<cutlass::minus, float, float, RN>;
  using FmaOut = fu::Sm90Compute<cutlass::homogeneous_multiply_add, ElementD, float, RN>;

  using UAcc = fu::Sm90EVT<Mul, Chan<float>, fu::Sm90AccFetch>;       // u·acc
  using WZx = fu::Sm90EVT<Mul, Chan<float>, Tok<float>>;              // w·zx
  using Corr = fu::Sm90EVT<Fma, Chan<float>, Tok<int32_t>, WZx>;      // v·Sx + w·zx
  using Bracket = fu::Sm90EVT<Sub, UAcc, Corr>;                       // u·acc − corr
  using Op = fu::Sm90EVT<FmaOut, Tok<float>, Bracket, Chan<ElementD>>;  // sx·bracket + bias

  // EVT arguments mirror the tree: children first, then the node's own (empty) arguments.
  static typename Op::Arguments arguments(const duquant_w4a4_args* p) {
    auto fp = [](const void* q) { return static_cast<const float*>(q); };
    return {
        {fp(p->sx), 0.f, TokS{}},                                          // sx
        {                                                                  // bracket
            {{fp(p->u), 0.f, ChanS{}}, {}, {}},                            //   u·acc
            {                                                              //   corr
                {fp(p->v), 0.f, ChanS{}},                                  //     v
                {static_cast<const int32_t*>(p->sqx), 0, TokS{}},          //     Sx
                {{fp(p->w), 0.f, ChanS{}}, {fp(p->zx), 0.f, TokS{}}, {}},  //     w·zx
                {}},
            {}},
        {static_cast<const ElementD*>(p->bias), ElementD(0.f), ChanS{}},   // bias (nullptr → 0)
        {}};
  }
};

// The mainloop every sm_90a GEMM here uses: CUTLASS's collective builder, A row-major and B
// column-major (both K-major), 128-bit TMA rows, int32 accumulation, as many pipeline stages as
// the epilogue's shared memory leaves room for.
template <class ElementA, class ElementB, class Tile, class Cluster, class KernelSchedule,
          class CollectiveEpilogue>
using Sm90Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cutlass::layout::RowMajor,
    128 / cutlass::sizeof_bits<ElementA>::value, ElementB, cutlass::layout::ColumnMajor,
    128 / cutlass::sizeof_bits<ElementB>::value, int32_t, Tile, Cluster,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    KernelSchedule>::CollectiveOp;

// TileScheduler: void (one CTA per output tile) or cutlass::gemm::StreamKScheduler, which
// splits the K loop of too few output tiles over every SM (cooperative kernels only).
template <class Mainloop, class Epilogue, class TileScheduler = void>
using Sm90Gemm = cutlass::gemm::device::GemmUniversalAdapter<
    cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                         TileScheduler>>;

// SMs of the current device, queried once per device: stream-K splits work by it.
inline int sm_count() {
  static int counts[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  if (counts[dev] == 0)
    counts[dev] = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(dev);
  return counts[dev];
}

// The epilogue's own arguments (its fusion tree's, or {alpha, beta}) inside Gemm::Arguments.
template <class Gemm>
using EpilogueThreadArgs = decltype(std::declval<typename Gemm::Arguments>().epilogue.thread);

// Runs one GEMM of `rows × cols × k` (packed strides) and maps CUTLASS's status to the C ABI's
// error codes: a shape it cannot implement or a short workspace is refused, never run. With
// `need` set it runs nothing and stores the workspace the launch would need there.
template <class Gemm, class A, class B, class D>
int run_gemm(int rows, int cols, int k, const A* a, const B* b, D* d,
             EpilogueThreadArgs<Gemm> const& epi, void* workspace, size_t workspace_bytes,
             cudaStream_t stream, size_t* need = nullptr) {
  using Kernel = typename Gemm::GemmKernel;
  auto sa = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(rows, k, 1));
  auto sb = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(cols, k, 1));
  auto sc = cutlass::make_cute_packed_stride(typename Kernel::StrideC{},
                                             make_shape(rows, cols, 1));
  auto sd = cutlass::make_cute_packed_stride(typename Kernel::StrideD{},
                                             make_shape(rows, cols, 1));
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {rows, cols, k, 1},
                                {a, sa, b, sb},
                                {epi, nullptr, sc, d, sd}};
  args.hw_info.sm_count = sm_count();
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return DUQUANT_ERR_SHAPE;
  if (need != nullptr) {
    *need = Gemm::get_workspace_size(args);
    return DUQUANT_OK;
  }
  if (Gemm::get_workspace_size(args) > workspace_bytes) return DUQUANT_ERR_WORKSPACE;
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess)
    return DUQUANT_ERR_INIT;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return DUQUANT_ERR_LAUNCH;
  return cudaGetLastError() == cudaSuccess ? DUQUANT_OK : DUQUANT_ERR_LAUNCH;
}

// ElementW: the weight operand's element (int8_t, or cutlass::int4b_t read packed two per byte
// and widened to int8 in registers by the mixed-input mainloop). Activation codes are int8.
template <class ElementW, class Tile, class Cluster, class KernelSchedule, class EpiSchedule,
          class ElementD, bool kSwapAB, class TileScheduler = void>
struct W4A4Gemm {
  using Epi = W4A4Evt<Tile, ElementD, kSwapAB>;
  // Unswapped: A = activations [M, K], B = weights [N, K]. Swapped: A = weights, B =
  // activations, D = yᵀ in column-major storage.
  using ElementA = std::conditional_t<kSwapAB, ElementW, int8_t>;
  using ElementB = std::conditional_t<kSwapAB, int8_t, ElementW>;
  using LayoutD = std::conditional_t<kSwapAB, cutlass::layout::ColumnMajor,
                                     cutlass::layout::RowMajor>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, LayoutD, kAlignD,
      ElementD, LayoutD, kAlignD, EpiSchedule, typename Epi::Op>::CollectiveOp;
  using Gemm = Sm90Gemm<Sm90Mainloop<ElementA, ElementB, Tile, Cluster, KernelSchedule,
                                     CollectiveEpilogue>,
                        CollectiveEpilogue, TileScheduler>;

  static int run(const duquant_w4a4_args* p, void* workspace, size_t workspace_bytes,
                 cudaStream_t stream, size_t* need) {
    const void* a = kSwapAB ? p->b : p->a;
    const void* b = kSwapAB ? p->a : p->b;
    return run_gemm<Gemm>(kSwapAB ? p->n : p->m, kSwapAB ? p->m : p->n, p->k,
                          static_cast<const ElementA*>(a), static_cast<const ElementB*>(b),
                          static_cast<ElementD*>(p->d), Epi::arguments(p), workspace,
                          workspace_bytes, stream, need);
  }
};

// The C entry point of a fused kernel: checks what every tile config needs (positive sizes,
// K % k_multiple for the TMA rows of the weight codes, N % 8), then the output type picks
// Dispatch::run<bfloat16_t | half_t>, which picks the tile by M. With `need` set, nothing runs:
// the workspace that launch needs is stored there (the *_workspace entry points).
template <class Dispatch>
int w4a4_entry(const duquant_w4a4_args* p, int k_multiple, void* workspace,
               size_t workspace_bytes, cudaStream_t stream, size_t* need = nullptr) {
  if (p == nullptr || p->m <= 0 || p->n <= 0 || p->k <= 0) return DUQUANT_ERR_SHAPE;
  if (p->k % k_multiple || p->n % 8) return DUQUANT_ERR_SHAPE;
  switch (p->out_dtype) {
    case DUQUANT_BF16:
      return Dispatch::template run<cutlass::bfloat16_t>(p, workspace, workspace_bytes, stream,
                                                         need);
    case DUQUANT_FP16:
      return Dispatch::template run<cutlass::half_t>(p, workspace, workspace_bytes, stream,
                                                     need);
    default:
      return DUQUANT_ERR_SHAPE;
  }
}

}  // namespace duquant_sm90
