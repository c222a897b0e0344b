// sm_90a: the whole W4A4 GEMM + epilogue in one CUTLASS 3.x kernel (int8 wgmma mainloop and an
// epilogue visitor tree, EVT), so the int32 accumulator never leaves the SM.
//
//   y[m, n] = sx[m] · ( u[n]·acc[m, n] − ( v[n]·Sx[m] + w[n]·zx[m] ) ) + bias[n]
//   u = sw,  v = sw·zw,  w = sw·(Sw − K·zw)      (per output channel, precomputed at load)
//
// which is EPILOGUE.md's formula with s_w distributed into the bracket (so every per-channel
// factor is one row-broadcast vector). A: codes int8 [M, K] row-major; B: weight codes int8
// [N, K] row-major; D: [M, N] bf16 or fp16 row-major. K % 16 == 0, N % 8 == 0.

#include <cuda_runtime.h>
#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "duquant_ext.h"

namespace {

using namespace cute;
namespace fu = cutlass::epilogue::fusion;

constexpr auto RN = cutlass::FloatRoundStyle::round_to_nearest;

template <class Tile, class ElementD>
struct W4A4Evt {
  // Per-channel (N) vectors are row broadcasts, per-token (M) vectors column broadcasts.
  // Column loads use alignment 1: M is any token count (1, 7, ...).
  template <class T>
  using Row = fu::Sm90RowBroadcast<0, Tile, T, float, Stride<_0, _1, int64_t>,
                                   128 / cutlass::sizeof_bits<T>::value>;
  template <class T>
  using Col = fu::Sm90ColBroadcast<0, Tile, T, float, Stride<_1, _0, int64_t>, 1>;
  using Mul = fu::Sm90Compute<cutlass::multiplies, float, float, RN>;
  using Fma = fu::Sm90Compute<cutlass::homogeneous_multiply_add, float, float, RN>;
  using Sub = fu::Sm90Compute<cutlass::minus, float, float, RN>;
  using FmaOut = fu::Sm90Compute<cutlass::homogeneous_multiply_add, ElementD, float, RN>;

  using UAcc = fu::Sm90EVT<Mul, Row<float>, fu::Sm90AccFetch>;         // u·acc
  using WZx = fu::Sm90EVT<Mul, Row<float>, Col<float>>;                // w·zx
  using Corr = fu::Sm90EVT<Fma, Row<float>, Col<int32_t>, WZx>;        // v·Sx + w·zx
  using Bracket = fu::Sm90EVT<Sub, UAcc, Corr>;                        // u·acc − corr
  using Op = fu::Sm90EVT<FmaOut, Col<float>, Bracket, Row<ElementD>>;  // sx·bracket + bias
};

template <class Tile, class Cluster, class KernelSchedule, class EpiSchedule, class ElementD>
struct GemmEvt {
  using Evt = typename W4A4Evt<Tile, ElementD>::Op;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, LayoutD, kAlignD,
      ElementD, LayoutD, kAlignD, EpiSchedule, Evt>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, LayoutA, 16, int8_t, LayoutB,
      16, int32_t, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>,
                                                      CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static int run(const duquant_w4a4_args* p, void* workspace, size_t workspace_bytes,
                 cudaStream_t stream) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    const int m = p->m, n = p->n, k = p->k;
    auto sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(m, k, 1));
    auto sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(n, k, 1));
    auto sc = cutlass::make_cute_packed_stride(StrideC{}, make_shape(m, n, 1));
    auto sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(m, n, 1));
    using RowS = Stride<_0, _1, int64_t>;
    using ColS = Stride<_1, _0, int64_t>;
    auto fp = [](const void* q) { return static_cast<const float*>(q); };
    // EVT arguments mirror the tree: children first, then the node's own (empty) arguments.
    typename Evt::Arguments evt{
        {fp(p->sx), 0.f, ColS{}},                                        // sx
        {                                                                // bracket
            {{fp(p->u), 0.f, RowS{}}, {}, {}},                           //   u·acc
            {                                                            //   corr
                {fp(p->v), 0.f, RowS{}},                                 //     v
                {static_cast<const int32_t*>(p->sqx), 0, ColS{}},        //     Sx
                {{fp(p->w), 0.f, RowS{}}, {fp(p->zx), 0.f, ColS{}}, {}}, //     w·zx
                {}},
            {}},
        {static_cast<const ElementD*>(p->bias), ElementD(0.f), RowS{}},  // bias (nullptr → 0)
        {}};
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const int8_t*>(p->a), sa, static_cast<const int8_t*>(p->b), sb},
        {evt, nullptr, sc, static_cast<ElementD*>(p->d), sd}};
    Gemm gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return DUQUANT_ERR_SHAPE;
    if (Gemm::get_workspace_size(args) > workspace_bytes) return DUQUANT_ERR_WORKSPACE;
    if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess)
      return DUQUANT_ERR_INIT;
    if (gemm.run(stream) != cutlass::Status::kSuccess) return DUQUANT_ERR_LAUNCH;
    return cudaGetLastError() == cudaSuccess ? DUQUANT_OK : DUQUANT_ERR_LAUNCH;
  }
};

template <class ElementD>
int dispatch(const duquant_w4a4_args* p, void* ws, size_t wsb, cudaStream_t s) {
  using namespace cutlass::gemm;
  if (p->m <= 64)
    return GemmEvt<Shape<_64, _128, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecialized,
                   cutlass::epilogue::TmaWarpSpecialized, ElementD>::run(p, ws, wsb, s);
  return GemmEvt<Shape<_128, _256, _128>, Shape<_1, _1, _1>,
                 KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative, ElementD>::run(p, ws, wsb, s);
}

}  // namespace

extern "C" int duquant_w4a4_gemm_sm90(const duquant_w4a4_args* p, void* workspace,
                                      size_t workspace_bytes, cudaStream_t stream) {
  if (p == nullptr || p->m <= 0 || p->n <= 0 || p->k <= 0) return DUQUANT_ERR_SHAPE;
  if (p->k % 16 || p->n % 8) return DUQUANT_ERR_SHAPE;
  switch (p->out_dtype) {
    case DUQUANT_BF16: return dispatch<cutlass::bfloat16_t>(p, workspace, workspace_bytes, stream);
    case DUQUANT_FP16: return dispatch<cutlass::half_t>(p, workspace, workspace_bytes, stream);
    default: return DUQUANT_ERR_SHAPE;
  }
}
