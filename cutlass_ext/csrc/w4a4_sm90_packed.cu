// sm_90a, weights kept packed 4-bit in GPU memory: the mixed-input wgmma mainloop reads the
// weight tile through TMA at 4 bits per code, widens it to int8 in registers and feeds the
// register-sourced (RS) int8 wgmma; the activation codes (int8, from the prologue) come from
// shared memory. The epilogue is the same visitor tree as the int8-weight kernel
// (w4a4_sm90_evt.hpp), with A and B swapped: the narrow operand must be the GEMM's A.
//
// Weight codes are stored as *signed* 4-bit values q − 8 (byte = checkpoint byte ^ 0x88, low
// nibble = even k) so that CUTLASS's int4 → int8 converter (shift/prmt, 8 codes per 32-bit
// register) applies. The shift only changes v: acc' = acc − 8·Sx, so
//   u·acc − v·Sx = u·acc' − (v − 8·u)·Sx,
// and prepare() passes v' = sw·(zw − 8); u and w are unchanged (docs/epilogue.md).
//
// a: activation codes int8 [M, K] row-major; b: weights int4 [N, K] row-major (K/2 bytes per
// row); d: [M, N] bf16/fp16 row-major. K % 32 == 0 (16-byte TMA rows of 4-bit codes), N % 8.

#include "w4a4_sm90_evt.hpp"

namespace {

using namespace duquant_sm90;

struct Dispatch {
  // Token tiles by M bucket. Decode (M ≤ 64) streams weights: 128 weight rows per tile leave a
  // 4096-output layer only 32 tiles for 132 SMs, so the stream-K scheduler splits their K loops
  // over every SM (partial accumulators reduced in the workspace, then the epilogue once per
  // tile); stream-K needs the cooperative kernel (two consumer warp groups, 64 rows each).
  // Prefill uses 128 × 128 cooperative tiles, one CTA per tile.
  template <class ElementD>
  static int run(const duquant_w4a4_args* p, void* ws, size_t wsb, cudaStream_t s, size_t* need) {
    using namespace cutlass::gemm;
    using W = cutlass::int4b_t;
    using C1 = Shape<_1, _1, _1>;
    using Coop = KernelTmaWarpSpecializedCooperative;
    using CoopEpi = cutlass::epilogue::TmaWarpSpecializedCooperative;
    if (p->m <= 16)
      return W4A4Gemm<W, Shape<_128, _16, _128>, C1, Coop, CoopEpi, ElementD, true,
                      StreamKScheduler>::run(p, ws, wsb, s, need);
    if (p->m <= 64)
      return W4A4Gemm<W, Shape<_128, _64, _128>, C1, Coop, CoopEpi, ElementD, true,
                      StreamKScheduler>::run(p, ws, wsb, s, need);
    return W4A4Gemm<W, Shape<_128, _128, _128>, C1, Coop, CoopEpi, ElementD, true>::run(
        p, ws, wsb, s, need);
  }
};

}  // namespace

extern "C" int duquant_w4a4_gemm_sm90_packed(const duquant_w4a4_args* p, void* workspace,
                                             size_t workspace_bytes, cudaStream_t stream) {
  return w4a4_entry<Dispatch>(p, 32, workspace, workspace_bytes, stream);
}

extern "C" int duquant_w4a4_gemm_sm90_packed_workspace(const duquant_w4a4_args* p,
                                                       size_t* bytes) {
  if (bytes == nullptr) return DUQUANT_ERR_SHAPE;
  return w4a4_entry<Dispatch>(p, 32, nullptr, 0, nullptr, bytes);
}
