// sm_90a, int8 weight codes (one per byte, 2× the bytes of packed 4-bit): both operands come
// from shared memory into the int8 wgmma (SS), no conversion in the mainloop. The comparator
// for w4a4_sm90_packed.cu (what the in-register widening costs) and its fallback; the GEMM and
// its epilogue visitor tree are w4a4_sm90_evt.hpp's.
//
// a: activation codes int8 [M, K] row-major; b: weight codes int8 [N, K] row-major;
// d: [M, N] bf16/fp16 row-major. K % 16 == 0, N % 8 == 0.

#include "w4a4_sm90_evt.hpp"

namespace {

using namespace duquant_sm90;

template <class ElementD>
int dispatch(const duquant_w4a4_args* p, void* ws, size_t wsb, cudaStream_t s) {
  using namespace cutlass::gemm;
  using C1 = Shape<_1, _1, _1>;
  if (p->m <= 64)
    return W4A4Gemm<int8_t, Shape<_64, _128, _128>, C1, KernelTmaWarpSpecialized,
                    cutlass::epilogue::TmaWarpSpecialized, ElementD, false>::run(p, ws, wsb, s);
  return W4A4Gemm<int8_t, Shape<_128, _256, _128>, C1, KernelTmaWarpSpecializedCooperative,
                  cutlass::epilogue::TmaWarpSpecializedCooperative, ElementD,
                  false>::run(p, ws, wsb, s);
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
