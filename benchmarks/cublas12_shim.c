/* libcublas.so.12 for faiss-gpu's CUDA 12 wheel on a machine whose only cuBLAS is version 13
 * (benchmarks/gpu_faiss.py; never part of imgdup itself).  faiss calls eight cuBLAS functions,
 * all with the same C signatures in cuBLAS 12 and 13: each entry point below jumps to the
 * function of the same name in libcublas.so.13, which must already be loaded (torch loads it),
 * leaving the argument registers and the stack exactly as the caller set them.
 *
 *   gcc -O2 -shared -fPIC -o libcublas.so.12 cublas12_shim.c -ldl \
 *       -Wl,-soname,libcublas.so.12 -Wl,--version-script=cublas12.map
 * where cublas12.map gives the eight names the version node "libcublas.so.12" (faiss asks for it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define CUBLAS_NAMES X(cublasCreate_v2) X(cublasDestroy_v2) X(cublasSetStream_v2) \
    X(cublasSetMathMode) X(cublasGetMathMode) X(cublasSgemmEx) X(cublasGemmEx) \
    X(cublasGemmStridedBatchedEx)

#define X(name) void *real_##name;
CUBLAS_NAMES
#undef X

__attribute__((constructor)) static void resolve(void) {
    void *h = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        fprintf(stderr, "cublas12 shim: %s\n", dlerror());
        abort();
    }
#define X(name) \
    if (!(real_##name = dlsym(h, #name))) { fprintf(stderr, "cublas12 shim: no %s\n", #name); abort(); }
    CUBLAS_NAMES
#undef X
}

#define X(name) __asm__(".globl " #name "\n.type " #name ",@function\n" #name ":\n" \
                        "    jmp *real_" #name "(%rip)\n");
CUBLAS_NAMES
#undef X
