// C ABI of libduquant_ext.so (loaded with ctypes by duquant_serve/kernels/cutlass.py).
#pragma once
#include <cuda_runtime.h>
#include <cstddef>
#include <cstdint>

enum {
  DUQUANT_OK = 0,
  DUQUANT_ERR_SHAPE = 1,      // shape/alignment the kernel cannot implement
  DUQUANT_ERR_WORKSPACE = 2,  // caller's workspace too small
  DUQUANT_ERR_INIT = 3,       // CUTLASS initialize() failed
  DUQUANT_ERR_LAUNCH = 4,     // launch or CUDA error after launch
  DUQUANT_ERR_ARCH = 5,       // built without this architecture
};

enum { DUQUANT_BF16 = 0, DUQUANT_FP16 = 1 };

// Operands of the fused sm_90a W4A4 GEMMs (w4a4_sm90_evt.hpp). Device pointers; vectors fp32
// unless noted. y = sx·(u·acc − (v·Sx + w·zx)) + bias, acc = a · bᵀ.
typedef struct {
  const void* a;     // int8 [m, k] activation codes
  const void* b;     // weight codes: int8 [n, k], or packed signed 4-bit [n, k/2] (_packed)
  void* d;           // [m, n] out_dtype
  const void* sx;    // [m] activation scales
  const void* zx;    // [m] activation zero points
  const void* sqx;   // int32 [m] Σ_k activation codes
  const void* u;     // [n] sw
  const void* v;     // [n] sw·zw (_packed: sw·(zw − 8), its codes are stored as q − 8)
  const void* w;     // [n] sw·(Σ_k qw − k·zw)
  const void* bias;  // [n] out_dtype, or NULL
  int m, n, k;
  int out_dtype;     // DUQUANT_BF16 / DUQUANT_FP16
} duquant_w4a4_args;

extern "C" {
// sm_90a: fused GEMM + epilogue (EVT). k % 16 == 0, n % 8 == 0.
int duquant_w4a4_gemm_sm90(const duquant_w4a4_args* args, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);
// sm_90a: the same with weights packed two signed 4-bit codes (q − 8) per byte, low nibble =
// even k, widened to int8 in registers (w4a4_sm90_packed.cu). k % 32 == 0, n % 8 == 0.
int duquant_w4a4_gemm_sm90_packed(const duquant_w4a4_args* args, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream);
// Workspace (bytes) the two fused kernels need for these arguments (pointers unused): the
// stream-K decode tiles reduce partial accumulators there. Allocate it per call.
int duquant_w4a4_gemm_sm90_workspace(const duquant_w4a4_args* args, size_t* bytes);
int duquant_w4a4_gemm_sm90_packed_workspace(const duquant_w4a4_args* args, size_t* bytes);
// sm_90a: D[M,N] (int32) = A[M,K] (int8 codes) · B[N,K]ᵀ (int8 codes).
int duquant_gemm_s8s8s32_sm90(const int8_t* a, const int8_t* b, int32_t* d, int m, int n, int k,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream);
// sm_80: same product with both operands packed two 4-bit codes per byte along K (low nibble =
// even k), through native u4 mma.sync. K % 32 == 0.
int duquant_gemm_u4u4s32_sm80(const uint8_t* a_packed, const uint8_t* b_packed, int32_t* d, int m,
                              int n, int k, cudaStream_t stream);
int duquant_built_archs(void);  // bit 0: sm80 path compiled, bit 1: sm90a path compiled
}
