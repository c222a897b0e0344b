// Arch-independent entry points of libduquant_ext.so. Each GEMM lives in its own translation
// unit compiled for its own -gencode (sm_80 / sm_90a), so a kernel never meets an arch it was
// not built for; this file reports which ones were built (macros set by build.sh).
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
