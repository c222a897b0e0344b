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

struct Dispatch {
  template <class ElementD>
  static int run(const duquant_w4a4_args* p, void* ws, size_t wsb, cudaStream_t s, size_t* need) {
    using namespace cutlass::gemm;
    using C1 = Shape<_1, _1, _1>;
    if (p->m <= 64)
      return W4A4Gemm<int8_t, Shape<_64, _128, _128>, C1, KernelTmaWarpSpecialized,
                      cutlass::epilogue::TmaWarpSpecialized, ElementD, false>::run(p, ws, wsb, s,
                                                                                   need);
    return W4A4Gemm<int8_t, Shape<_128, _256, _128>, C1, KernelTmaWarpSpecializedCooperative,
                    cutlass::epilogue::TmaWarpSpecializedCooperative, ElementD,
                    false>::run(p, ws, wsb, s, need);
  }
};

}  // namespace

extern "C" int duquant_w4a4_gemm_sm90(const duquant_w4a4_args* p, void* workspace,
                                      size_t workspace_bytes, cudaStream_t stream) {
  return w4a4_entry<Dispatch>(p, 16, workspace, workspace_bytes, stream);
}

extern "C" int duquant_w4a4_gemm_sm90_workspace(const duquant_w4a4_args* p, size_t* bytes) {
  if (bytes == nullptr) return DUQUANT_ERR_SHAPE;
  return w4a4_entry<Dispatch>(p, 16, nullptr, 0, nullptr, bytes);
}
