// Arch-independent entry points of libduquant_ext.so. Each GEMM lives in its own translation
// unit compiled for its own -gencode (sm_80 / sm_90a), so a kernel never meets an arch it was
// not built for. An arch left out of DUQUANT_ARCHS still gets its symbols here, as stubs that
// answer DUQUANT_ERR_ARCH, so every build exports the same C ABI.
#include "duquant_ext.h"

extern "C" int duquant_built_archs(void) {
  int bits = 0;
#ifdef DUQUANT_BUILT_SM80
  bits |= 1;
#endif
#ifdef DUQUANT_BUILT_SM90
  bits |= 2;
#endif
  return bits;
}

#ifndef DUQUANT_BUILT_SM90
extern "C" int duquant_gemm_s8s8s32_sm90(const int8_t*, const int8_t*, int32_t*, int, int, int,
                                         void*, size_t, cudaStream_t) {
  return DUQUANT_ERR_ARCH;
}
extern "C" int duquant_w4a4_gemm_sm90(const duquant_w4a4_args*, void*, size_t, cudaStream_t) {
  return DUQUANT_ERR_ARCH;
}
extern "C" int duquant_w4a4_gemm_sm90_packed(const duquant_w4a4_args*, void*, size_t,
                                             cudaStream_t) {
  return DUQUANT_ERR_ARCH;
}
extern "C" int duquant_w4a4_gemm_sm90_workspace(const duquant_w4a4_args*, size_t*) {
  return DUQUANT_ERR_ARCH;
}
extern "C" int duquant_w4a4_gemm_sm90_packed_workspace(const duquant_w4a4_args*, size_t*) {
  return DUQUANT_ERR_ARCH;
}
#endif

#ifndef DUQUANT_BUILT_SM80
extern "C" int duquant_gemm_u4u4s32_sm80(const uint8_t*, const uint8_t*, int32_t*, int, int, int,
                                         cudaStream_t) {
  return DUQUANT_ERR_ARCH;
}
#endif
