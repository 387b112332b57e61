// What the native kernels share (csrc/rnn_kernel.cc, the simple RNN; csrc/lstm_kernel.cc, the LSTM):
// 16-float vectors, the rational tanh, the register-blocked micro-kernels of the per-step products and
// of the weight gradients, zero-padded copies of the weights, the backward's block length, and the
// dispatch of a loop compiled for each row width.
//
// Rows are padded to Hp, a multiple of 16 floats, so every vector load is whole.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include <sys/mman.h>

#include "xla/ffi/api/ffi.h"

namespace irnn_kernels {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;     // the layout: rows padded to a multiple of 16 floats, in every build
constexpr int kMaxVectors = 8;  // Hp <= 128: H <= 128 units
// The arithmetic's vectors: 16 floats on AVX-512, 8 on AVX2 (a 16-float vector type compiled for AVX2
// becomes pairs of registers that GCC keeps in memory: the first AVX2 build read or wrote the stack in
// about half its instructions). kSub of them make one 16-float vector of the layout.
#if defined(__AVX512F__)
constexpr int kVL = 16;
#else
constexpr int kVL = 8;
#endif
constexpr int kSub = kLanes / kVL;
// The arithmetic's vectors in nv vectors of the layout.
constexpr int cv(int nv) { return nv * kSub; }

// Register blocking, per instruction set. The data layout is the same for every build (rows of 16-float
// vectors); what changes is how many of them one micro-kernel call holds in registers. AVX-512 has 32
// registers of 16 floats: a block of a few rows takes a whole row of up to 8 vectors at once
// (kChunkVectors), RB x NV accumulators plus RB broadcasts. AVX2 has 16 registers of 8 floats, so a
// 16-float vector takes two: a block of whole 112-float rows would need 14 registers a row and spill
// (the first AVX2 build of these kernels read or wrote the stack in about half its instructions and ran
// 5 to 7x slower than XLA). There the rows are taken in chunks of kChunkVectors vectors, with more rows
// sharing each load of the weights.
#if defined(__AVX512F__)
constexpr int kChunkVectors = 8;  // a whole row
#else
#ifndef IRNN_CHUNK_VECTORS
#define IRNN_CHUNK_VECTORS 1
#endif
#ifndef IRNN_ROW_BLOCK
#define IRNN_ROW_BLOCK 6
#endif
constexpr int kChunkVectors = IRNN_CHUNK_VECTORS;  // 16 floats: two ymm accumulators a row
#endif

// The vectors of a row that one micro-kernel call takes: the whole row, or a chunk of it.
constexpr int chunk_width(int nv) { return kChunkVectors < nv ? kChunkVectors : nv; }
typedef float vec __attribute__((vector_size(kVL * sizeof(float))));
// Loads and stores go through this type, which assumes no alignment: XLA's buffers (x, states) need
// not be 64-byte aligned; on aligned data (the kernel's own buffers) it costs nothing more.
typedef float uvec __attribute__((vector_size(kVL * sizeof(float)), aligned(alignof(float))));

// A broadcast (GCC's vector-scalar arithmetic). s - 0 is s for every float, so it compiles to one
// vbroadcastss (from memory where s is loaded); 0 + s is not (-0 + 0 = +0), and costs an add before it.
inline vec splat(float s) { return s - vec{}; }

// tanh(x) = x P(x^2) / Q(x^2) on [-7.9988, 7.9988] (+-1 to float precision beyond), x itself below
// 4e-4: within 3e-7 relative of tanh over [-20, 20], checked against std::tanh in double. XLA's CPU
// tanh is an approximation of the same kind.
inline vec tanh_approx(vec x) {
  const vec lim = splat(7.99881172180175781f);
  vec xc = x > lim ? lim : x;
  xc = xc < -lim ? -lim : xc;
  const vec x2 = xc * xc;
  vec p = splat(-2.76076847742355e-16f);
  p = p * x2 + splat(2.00018790482477e-13f);
  p = p * x2 + splat(-8.60467152213735e-11f);
  p = p * x2 + splat(5.12229709037114e-08f);
  p = p * x2 + splat(1.48572235717979e-05f);
  p = p * x2 + splat(6.37261928875436e-04f);
  p = p * x2 + splat(4.89352455891786e-03f);
  vec q = splat(1.19825839466702e-06f);
  q = q * x2 + splat(1.18534705686654e-04f);
  q = q * x2 + splat(2.26843463243900e-03f);
  q = q * x2 + splat(4.89352518554385e-03f);
  const vec r = xc * p / q;
  const vec ax = x < splat(0.0f) ? -x : x;
  return ax < splat(0.0004f) ? x : r;
}

inline uvec* V(float* p) { return reinterpret_cast<uvec*>(p); }
inline const uvec* V(const float* p) { return reinterpret_cast<const uvec*>(p); }

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], FreeDeleter>;

// n floats, 64-byte aligned, zeroed.
inline Floats zeros(size_t n) {
  size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (p) std::memset(p, 0, bytes);
  return Floats(p);
}

// Asks Linux for transparent huge pages (2 MB) under the 2 MB-aligned part of a large output buffer,
// before the kernel first writes it. XLA allocates a call's outputs afresh, and glibc serves a buffer
// above 32 MB (the backward's kept states, at batch 128 per device) by a new mmap each call: written
// in 4 KB pages, it costs one page fault per 4 KB at every training step. With THP in "madvise" mode
// (Debian's default) the same buffer takes one fault per 2 MB and fewer TLB misses: the IRNN's
// value_and_grad at batch 128 went from 106-116 to 82-86 ms (docs/performance.md). Where THP is off, or
// the range was already written, the advice changes nothing.
inline void prefer_huge_pages(void* p, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// A (rows, H) matrix with its rows padded to Hp with zeros: (rows, Hp).
inline Floats padded(const float* src, int rows, int H, int Hp) {
  Floats dst = zeros(static_cast<size_t>(rows) * Hp);
  for (int r = 0; r < rows; ++r)
    std::memcpy(dst.get() + static_cast<size_t>(r) * Hp, src + static_cast<size_t>(r) * H, H * sizeof(float));
  return dst;
}

// The inverse of `padded`: (rows, Hp) into dst (rows, H).
inline void unpad(const float* src, int rows, int H, int Hp, float* dst) {
  for (int r = 0; r < rows; ++r)
    std::memcpy(dst + static_cast<size_t>(r) * H, src + static_cast<size_t>(r) * Hp, H * sizeof(float));
}

// A quarter vector: 4 floats. On Zen 4, which runs a 16-float FMA as two 8-float halves, a 4-float
// FMA costs half as much; where a row's last vector holds at most 4 real floats (100 units = 6 x 16
// + 4), computing it as a quarter saves 1 of 14 halves a row (`Q` in the micro-kernels below).
typedef float vec4 __attribute__((vector_size(4 * sizeof(float))));
typedef float uvec4 __attribute__((vector_size(4 * sizeof(float)), aligned(alignof(float))));

inline vec4 low_quarter(vec v) { return __builtin_shufflevector(v, v, 0, 1, 2, 3); }
#if defined(__AVX512F__)
inline vec widened(vec4 q) { return __builtin_shufflevector(q, vec4{}, 0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4); }
#else
inline vec widened(vec4 q) { return __builtin_shufflevector(q, vec4{}, 0, 1, 2, 3, 4, 4, 4, 4); }
#endif

// Whether a row of H floats takes the quarter form: its last vector holds 1 to 4 real floats, after
// at least one whole vector.
inline bool quarter_tail(int64_t H) { return H > kLanes && H % kLanes >= 1 && H % kLanes <= 4; }

// acc[r][:] += sum_k in[r, k] * M[k, :] (r < RB, k < K), over NV vectors of 16: RB rows of `in` (element
// (r, k) at in[r * in_stride + k * k_stride]) times K rows of M (stride m_stride). The RB rows share
// each load of M. With Q, the last vector is computed as a quarter (4 floats) and comes back with its
// lanes 4 to 15 zero. The one micro-kernel of every product: a step's (rows of the batch times the
// weights; k_stride 1) and a weight gradient's (A^T D: the rows of the gradient are columns of A,
// k_stride A's row stride).
template <int NV, int RB, bool Q = false>
inline void rows_times(const float* in, int in_stride, const float* M, int K, int m_stride, vec (&acc)[RB][NV],
                       int k_stride = 1) {
  // Whole vectors before the quarter (none: a chunk that is only the quarter); with Q the last layout
  // vector (kSub of ours) is the quarter, and its vectors after the first are left as they are (zero).
  constexpr int NF = Q ? NV - kSub : NV;
  vec4 tail[RB];
  if constexpr (Q) {
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) tail[r] = low_quarter(acc[r][NF]);
  }
  for (int k = 0; k < K; ++k) {
    const uvec* m = V(M + static_cast<size_t>(k) * m_stride);
#if defined(__AVX512F__)
    // All RB broadcasts first, then each vector of M once for the RB rows: RB x NV accumulators, RB
    // broadcasts and one vector of M fit the 32 registers.
    vec s[RB];
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) s[r] = splat(in[r * in_stride + static_cast<size_t>(k) * k_stride]);
    #pragma GCC unroll 16
    for (int v = 0; v < NF; ++v) {
      vec mv = m[v];
      // One load of M's vector for the RB rows. Without this GCC folds the load into each row's FMA,
      // RB loads of the same vector, and the micro-kernel waits on loads, not FMAs: the LSTM's
      // value_and_grad at batch 16 took 1.11 to 1.16x as long (docs/performance.md).
      asm("" : "+v"(mv));
      #pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[r][v] += s[r] * mv;
    }
    if constexpr (Q) {
      const vec4 mq = *reinterpret_cast<const uvec4*>(M + static_cast<size_t>(k) * m_stride + NF * kVL);
      #pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) tail[r] += low_quarter(s[r]) * mq;
    }
#else
    // The chunk of M's row first (NF vectors and the quarter), then a row at a time, its broadcast used
    // at once: RB x NF accumulators, NF vectors of M and one broadcast, where the order above would
    // hold all RB broadcasts and spill at 6 rows of 2 ymm (16 registers).
    vec mv[NF > 0 ? NF : 1];
    #pragma GCC unroll 16
    for (int v = 0; v < NF; ++v) mv[v] = m[v];
    vec4 mq{};
    if constexpr (Q) mq = *reinterpret_cast<const uvec4*>(M + static_cast<size_t>(k) * m_stride + NF * kVL);
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const vec s = splat(in[r * in_stride + static_cast<size_t>(k) * k_stride]);
      #pragma GCC unroll 16
      for (int v = 0; v < NF; ++v) acc[r][v] += s * mv[v];
      if constexpr (Q) tail[r] += low_quarter(s) * mq;
    }
#endif
  }
  if constexpr (Q) {
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[r][NF] = widened(tail[r]);
  }
}

// G[k + q, :] += sum_n A[n, k + q] * D[n, :] (q < KR, n < N), over NV vectors: KR rows of the weight
// gradient A^T D, by rows_times. A has stride a_stride; D and G have stride stride. With Q, the last
// vector as a quarter, its lanes 4 to 15 of G left zero.
template <int NV, int KR, bool Q = false>
inline void accumulate_rows(const float* A, int a_stride, int k, const float* D, int N, int stride, float* G) {
  vec acc[KR][NV];
  #pragma GCC unroll 16
  for (int q = 0; q < KR; ++q)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[q][v] = V(G + static_cast<size_t>(k + q) * stride)[v];
  rows_times<NV, KR, Q>(A + k, 1, D, N, stride, acc, a_stride);
  #pragma GCC unroll 16
  for (int q = 0; q < KR; ++q)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V(G + static_cast<size_t>(k + q) * stride)[v] = acc[q][v];
}

// Rows (of the input, or of a weight gradient) that share each vector load in the micro-kernels, for a
// row of nv vectors taken chunk_width(nv) at a time. AVX-512: RB x NV accumulators plus RB broadcasts
// fit the 32 vector registers. AVX2: RB rows x 2 registers (one 16-float vector), the weights' two
// halves and one broadcast fit 16: 6 rows, 12 accumulators, enough independent FMAs to cover their
// latency (4 rows, 8 accumulators, ran 4 to 5% slower: docs/performance.md).
#if defined(__AVX512F__)
constexpr int row_block(int nv) { return nv <= 4 ? 4 : (nv <= 7 ? 3 : 2); }
#else
constexpr int row_block(int) { return IRNN_ROW_BLOCK; }
#endif

// f(std::integral_constant<int, CB>{}, v0, std::bool_constant<q>{}) for the chunks [v0, v0 + CB) of
// chunk_width(NV) vectors (the last one shorter) that cover a row of NV vectors; q is Q on the last
// chunk (rows_times's quarter form: the row's last vector) and false elsewhere. With whole rows (AVX-512)
// one call, f(NV, 0, Q).
template <int NV, bool Q, int MAXW = kChunkVectors, typename F>
inline void over_chunks(F&& f) {
  constexpr int CW = MAXW < NV ? MAXW : NV, FULL = NV / CW, REST = NV % CW;
  for (int c = 0; c < FULL; ++c) {
    if (Q && REST == 0 && c == FULL - 1)
      f(std::integral_constant<int, CW>{}, c * CW, std::true_type{});
    else
      f(std::integral_constant<int, CW>{}, c * CW, std::false_type{});
  }
  if constexpr (REST > 0) f(std::integral_constant<int, REST>{}, FULL * CW, std::bool_constant<Q>{});
}

// f(std::integral_constant<int, R>{}, i) for blocks of R rows [i, i + R) that cover rows [0, n). AVX-512:
// R = RB (row_block) while more than RB + 1 rows are left, then blocks of 3 and 2. AVX2: the fewest
// blocks of at most RB rows, of sizes that differ by at most one (16 rows in blocks of 6: 6, 5, 5; not
// 6, 6, 2 + 2, whose blocks of 2 hold too few accumulators to cover the FMA's latency). A row left alone
// would run at a fraction of the micro-kernel's rate (one row shares each load of the matrix with no
// other): at batch 16 in blocks of 3, the 16th row took about a tenth of a step.
// f(std::integral_constant<int, n>{}, at) for a run-time n in [1, N] (nothing for any other n): a loop
// compiled for each block of rows, or chunk of vectors, that a run-time split can give.
template <int N, typename F>
inline void with_constant(int n, int at, F&& f) {
  if constexpr (N >= 1) {
    if (n == N) return f(std::integral_constant<int, N>{}, at);
    with_constant<N - 1>(n, at, f);
  }
}

template <int RB, typename F>
inline void over_row_blocks(int n, F&& f) {
#if !defined(__AVX512F__)
  if (n <= 0) return;
  const int nb = (n + RB - 1) / RB, base = n / nb, extra = n % nb;
  for (int b = 0, i = 0; b < nb; ++b) {
    const int size = base + (b < extra ? 1 : 0);
    with_constant<RB>(size, i, f);
    i += size;
  }
#else
  int i = 0;
  for (; n - i > RB + 1 || n - i == RB; i += RB) f(std::integral_constant<int, RB>{}, i);
  while (n - i > 0) {
    const int left = n - i;
    if (left == 1) {
      f(std::integral_constant<int, 1>{}, i);
      i += 1;
    } else if (left == 2 || left == 4) {
      f(std::integral_constant<int, 2>{}, i);
      i += 2;
    } else {
      f(std::integral_constant<int, 3>{}, i);
      i += 3;
    }
  }
#endif
}

// G (K rows, stride) += A^T D over N rows: all K rows of the weight gradient, a few at a time, chunk by
// chunk of its columns.
#if defined(__AVX512F__)
constexpr int kAccChunk = kChunkVectors, kAccRows = 0;
#else
#ifndef IRNN_ACC_CHUNK
#define IRNN_ACC_CHUNK 1
#endif
#ifndef IRNN_ACC_ROWS
#define IRNN_ACC_ROWS 6
#endif
constexpr int kAccChunk = IRNN_ACC_CHUNK, kAccRows = IRNN_ACC_ROWS;
#endif

template <int NV, bool Q = false>
void accumulate(const float* A, int a_stride, int K, const float* D, int N, int stride, float* G) {
  over_chunks<NV, Q, kAccChunk>([&](auto cw, int v0, auto q) {
    constexpr int CB = decltype(cw)::value;
    over_row_blocks<(kAccRows ? kAccRows : row_block(NV))>(K, [&](auto rows, int k) {
      accumulate_rows<cv(CB), decltype(rows)::value, decltype(q)::value>(A, a_stride, k, D + v0 * kLanes, N, stride,
                                                                          G + v0 * kLanes);
    });
  });
}

// sums[:] += the sum of the N rows of D (nw vectors each, stride nw * 16): the bias gradient.
inline void add_row_sums(const float* D, int N, int nw, float* sums) {
  for (int n = 0; n < N; ++n)
    for (int v = 0; v < cv(nw); ++v) V(sums)[v] += V(D + static_cast<size_t>(n) * nw * kLanes)[v];
}

// out[n, c] = D[n, :] . W[c, :] (n < N, c < C), rows of nw vectors: the input's gradient dz W_in^T.
inline void times_transposed(const float* D, int N, int nw, const float* W, int C, float* out) {
  for (int n = 0; n < N; ++n) {
    const uvec* d = V(D + static_cast<size_t>(n) * nw * kLanes);
    for (int c = 0; c < C; ++c) {
      vec s = splat(0.0f);
      for (int v = 0; v < cv(nw); ++v) s += d[v] * V(W + static_cast<size_t>(c) * nw * kLanes)[v];
      float total = 0.0f;
      #pragma GCC unroll 16
      for (int l = 0; l < kVL; ++l) total += s[l];
      out[static_cast<size_t>(n) * C + c] = total;
    }
  }
}

// f(std::bool_constant<Q>{}): Q = quarter where a row of NV vectors can take rows_times's quarter form
// (a whole vector before it: NV >= 2), else false. The loops are compiled both ways and picked at run
// time (quarter_tail).
template <int NV, typename F>
inline void with_quarter(bool quarter, F&& f) {
  if constexpr (NV >= 2)
    if (quarter) return f(std::true_type{});
  f(std::false_type{});
}

// The backward's block of K steps: the largest divisor K of T with K * B <= rows (as
// irnn_jax/recurrence.py's block_steps; at least 1).
inline int block_steps(int T, int B, int rows) {
  int K = 1;
  for (int k = 1; k <= std::min(T, std::max(1, rows / B)); ++k)
    if (T % k == 0) K = k;
  return K;
}

inline int vectors(int64_t H) { return static_cast<int>((H + kLanes - 1) / kLanes); }

// F<NV>::run(args...) for nv = 1 .. kMaxVectors: a loop compiled for each row width.
template <template <int> class F, typename... Args>
void dispatch_width(int nv, Args... args) {
  switch (nv) {
    case 1: F<1>::run(args...); break;
    case 2: F<2>::run(args...); break;
    case 3: F<3>::run(args...); break;
    case 4: F<4>::run(args...); break;
    case 5: F<5>::run(args...); break;
    case 6: F<6>::run(args...); break;
    case 7: F<7>::run(args...); break;
    case 8: F<8>::run(args...); break;
  }
}

}  // namespace irnn_kernels
