// Native CPU kernels of the simple RNN's recurrence, h_{t+1} = act(x_t W_in + h_t W_rec + b), act relu or tanh,
// as two XLA FFI handlers that `irnn_jax/native.py` registers and calls (recurrence "native"):
//
//   IrnnRnnForward:  x (T, B, C), W_in (C, H), W_rec (H, H), b (H)
//                    -> states (T, B, Hp) [h_0 .. h_{T-1}, or (0, B, Hp) to keep none], h_T (B, H)
//   IrnnRnnBackward: x, states, h_T, dh_T (B, H), W_in, W_rec
//                    -> dx (T, B, C), dW_in (C, H), dW_rec (H, H), db (H)
//
// The same arithmetic as the XLA loops of recurrence "fused" (irnn_jax/recurrence.py), in one call
// each way: no per-step loop overhead, every per-step (B, H) x (H, H) product done by a register-
// blocked micro-kernel on 16-float vectors, and the weight gradients summed in blocks of about
// kBlockRows rows while those rows are in cache. Rows are padded to Hp, a multiple of 16 floats, with
// zeros that stay zero (relu(0) = tanh(0) = 0), so every vector load is whole. tanh is a rational
// approximation good to 3e-7 relative (kTanh*; XLA's CPU tanh is one of the same kind). Float sums run in
// another order than XLA's: equal to it to float32 rounding (tests/test_native.py).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
constexpr int kBlockRows = 512;  // rows (steps x batch) of one block of the weight gradients' sums
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
// Loads and stores go through this type, which assumes no alignment: XLA's buffers (x, states) need
// not be 64-byte aligned; on aligned data (the kernel's own buffers) it costs nothing more.
typedef float uvec __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));

inline vec splat(float s) { return vec{} + s; }  // a broadcast (GCC's vector-scalar arithmetic)

// tanh(x) = x P(x^2) / Q(x^2) on [-7.9988, 7.9988] (+-1 to float precision beyond), x itself below
// 4e-4: within 3e-7 relative of tanh over [-20, 20], checked against std::tanh in double.
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

enum Activation { kRelu = 0, kTanh = 1 };

template <int ACT>
inline vec activate(vec z) {
  if (ACT == kTanh) return tanh_approx(z);
  const vec zero = splat(0.0f);
  return z > zero ? z : zero;
}

// act'(z) * g, written with h = act(z): relu, g where h > 0; tanh, g (1 - h^2).
template <int ACT>
inline vec times_derivative(vec h, vec g) {
  if (ACT == kTanh) return g * (splat(1.0f) - h * h);
  return h > splat(0.0f) ? g : splat(0.0f);
}

inline uvec* V(float* p) { return reinterpret_cast<uvec*>(p); }
inline const uvec* V(const float* p) { return reinterpret_cast<const uvec*>(p); }

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], FreeDeleter>;

// n floats, 64-byte aligned, zeroed.
Floats zeros(size_t n) {
  size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (p) std::memset(p, 0, bytes);
  return Floats(p);
}

// out[r, :] (r < RB) = init[r] + sum_k in[r, k] * M[k, :], over NV vectors of 16: the rows of `in`
// (stride in_stride) times the K x Hp matrix M. RB rows share each load of M.
template <int NV, int RB>
inline void rows_times(const float* in, int in_stride, const float* M, int K, int Hp, vec (&acc)[RB][NV]) {
  for (int k = 0; k < K; ++k) {
    const uvec* m = V(M + static_cast<size_t>(k) * Hp);
    vec s[RB];
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) s[r] = splat(in[r * in_stride + k]);
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      vec mv = m[v];
      #pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[r][v] += s[r] * mv;
    }
  }
}

// One forward step for rows [i, i + RB): out = act(b + x W_in + h W_rec).
template <int NV, int RB, int ACT>
inline void forward_rows(const float* h, const float* x, int C, const float* Winp, const float* Wp, const float* bp,
                         int H, int Hp, float* out) {
  vec acc[RB][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = V(bp)[v];
  rows_times<NV, RB>(x, C, Winp, C, Hp, acc);
  rows_times<NV, RB>(h, Hp, Wp, H, Hp, acc);
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V(out + static_cast<size_t>(r) * Hp)[v] = activate<ACT>(acc[r][v]);
}

// dh_out[r, :] = dz[r, :] @ W_rec^T for rows [i, i + RB) (WTp: W_rec^T padded, H x Hp).
template <int NV, int RB>
inline void backprop_rows(const float* dz, const float* WTp, int H, int Hp, float* dh_out) {
  vec acc[RB][NV] = {};
  rows_times<NV, RB>(dz, Hp, WTp, H, Hp, acc);
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V(dh_out + static_cast<size_t>(r) * Hp)[v] = acc[r][v];
}

// G[k, :] += sum_n A[n, k] * D[n, :] for k < K: the weight gradient A^T D over N rows, A with
// stride a_stride, D with stride Hp, G K x Hp. KR rows of G at a time share each load of D.
template <int NV, int KR>
inline void accumulate_rows(const float* A, int a_stride, int k, const float* D, int N, int Hp, float* G) {
  vec acc[KR][NV];
  #pragma GCC unroll 16
  for (int q = 0; q < KR; ++q)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[q][v] = V(G + static_cast<size_t>(k + q) * Hp)[v];
  for (int n = 0; n < N; ++n) {
    const float* a = A + static_cast<size_t>(n) * a_stride + k;
    const uvec* d = V(D + static_cast<size_t>(n) * Hp);
    vec s[KR];
    #pragma GCC unroll 16
    for (int q = 0; q < KR; ++q) s[q] = splat(a[q]);
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      vec dv = d[v];
      #pragma GCC unroll 16
      for (int q = 0; q < KR; ++q) acc[q][v] += s[q] * dv;
    }
  }
  #pragma GCC unroll 16
  for (int q = 0; q < KR; ++q)
    #pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V(G + static_cast<size_t>(k + q) * Hp)[v] = acc[q][v];
}

// Rows (of the input, or of a weight gradient) that share each vector load in the micro-kernels:
// RB x NV accumulators plus RB broadcasts fit the 32 vector registers.
constexpr int row_block(int nv) { return nv <= 4 ? 4 : (nv <= 7 ? 3 : 2); }

template <int NV>
void accumulate(const float* A, int a_stride, int K, const float* D, int N, int Hp, float* G) {
  constexpr int KR = row_block(NV);
  int k = 0;
  for (; k + KR <= K; k += KR) accumulate_rows<NV, KR>(A, a_stride, k, D, N, Hp, G);
  for (; k < K; ++k) accumulate_rows<NV, 1>(A, a_stride, k, D, N, Hp, G);
}

// Pads a (rows, H) matrix to (rows, Hp) with zeros.
Floats padded(const float* src, int rows, int H, int Hp) {
  Floats dst = zeros(static_cast<size_t>(rows) * Hp);
  for (int r = 0; r < rows; ++r) std::memcpy(dst.get() + static_cast<size_t>(r) * Hp, src + static_cast<size_t>(r) * H, H * sizeof(float));
  return dst;
}

template <int NV, int ACT>
void forward(int T, int B, int C, int H, const float* x, const float* w_in, const float* w_rec, const float* b,
             float* states, float* h_last) {
  const int Hp = NV * kLanes;
  constexpr int RB = row_block(NV);
  Floats Winp = padded(w_in, C, H, Hp), Wp = padded(w_rec, H, H, Hp), bp = padded(b, 1, H, Hp);
  Floats ping = zeros(static_cast<size_t>(B) * Hp), pong = zeros(static_cast<size_t>(B) * Hp);
  const size_t slab = static_cast<size_t>(B) * Hp;
  if (states) std::memset(states, 0, slab * sizeof(float));  // h_0 = 0
  float* h = states ? states : ping.get();
  for (int t = 0; t < T; ++t) {
    float* out = (t + 1 < T && states) ? states + (t + 1) * slab : (h == ping.get() ? pong.get() : ping.get());
    const float* xt = x + static_cast<size_t>(t) * B * C;
    int i = 0;
    for (; i + RB <= B; i += RB)
      forward_rows<NV, RB, ACT>(h + i * Hp, xt + i * C, C, Winp.get(), Wp.get(), bp.get(), H, Hp, out + i * Hp);
    for (; i < B; ++i)
      forward_rows<NV, 1, ACT>(h + i * Hp, xt + i * C, C, Winp.get(), Wp.get(), bp.get(), H, Hp, out + i * Hp);
    h = out;
  }
  for (int i = 0; i < B; ++i) std::memcpy(h_last + static_cast<size_t>(i) * H, h + static_cast<size_t>(i) * Hp, H * sizeof(float));
}

template <int NV, int ACT>
void backward(int T, int B, int C, int H, const float* x, const float* states, const float* h_last_in,
              const float* dh_in, const float* w_in, const float* w_rec, float* dx, float* dw_in, float* dw_rec,
              float* db) {
  const int Hp = NV * kLanes;
  constexpr int RB = row_block(NV);
  const size_t slab = static_cast<size_t>(B) * Hp;
  // W_rec^T and W_in, padded; the gradients' accumulators, padded.
  Floats WT = zeros(static_cast<size_t>(H) * Hp);
  for (int j = 0; j < H; ++j)
    for (int k = 0; k < H; ++k) WT[static_cast<size_t>(j) * Hp + k] = w_rec[static_cast<size_t>(k) * H + j];
  Floats Winp = padded(w_in, C, H, Hp);
  Floats g_rec = zeros(static_cast<size_t>(H) * Hp), g_in = zeros(static_cast<size_t>(C) * Hp), g_b = zeros(Hp);
  Floats h_last = padded(h_last_in, B, H, Hp);
  Floats dh = padded(dh_in, B, H, Hp), dh_next = zeros(slab);
  // Block of K steps: K a divisor of T with K * B <= kBlockRows (as recurrence.block_steps).
  int K = 1;
  for (int k = 1; k <= std::min(T, std::max(1, kBlockRows / B)); ++k)
    if (T % k == 0) K = k;
  Floats dz = zeros(static_cast<size_t>(K) * slab);
  for (int t0 = T - K; t0 >= 0; t0 -= K) {
    for (int t = t0 + K - 1; t >= t0; --t) {
      const float* h_out = (t == T - 1) ? h_last.get() : states + (t + 1) * slab;  // act(z_t)
      float* dz_t = dz.get() + (t - t0) * slab;
      for (size_t n = 0; n < slab / kLanes; ++n) V(dz_t)[n] = times_derivative<ACT>(V(h_out)[n], V(dh.get())[n]);
      if (t == 0) break;  // dh_0 is unused: h_0 is a constant
      int i = 0;
      for (; i + RB <= B; i += RB) backprop_rows<NV, RB>(dz_t + i * Hp, WT.get(), H, Hp, dh_next.get() + i * Hp);
      for (; i < B; ++i) backprop_rows<NV, 1>(dz_t + i * Hp, WT.get(), H, Hp, dh_next.get() + i * Hp);
      std::swap(dh, dh_next);
    }
    const int N = K * B;
    const float* dz_blk = dz.get();
    accumulate<NV>(states + t0 * slab, Hp, H, dz_blk, N, Hp, g_rec.get());
    accumulate<NV>(x + static_cast<size_t>(t0) * B * C, C, C, dz_blk, N, Hp, g_in.get());
    for (int n = 0; n < N; ++n)
      #pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) V(g_b.get())[v] += V(dz_blk + static_cast<size_t>(n) * Hp)[v];
    // dx[t, i, c] = dz[t, i, :] . W_in[c, :]
    for (int n = 0; n < N; ++n) {
      const uvec* d = V(dz_blk + static_cast<size_t>(n) * Hp);
      for (int c = 0; c < C; ++c) {
        vec s = splat(0.0f);
        #pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) s += d[v] * V(Winp.get() + static_cast<size_t>(c) * Hp)[v];
        float total = 0.0f;
        #pragma GCC unroll 16
        for (int l = 0; l < kLanes; ++l) total += s[l];
        dx[(static_cast<size_t>(t0) * B + n) * C + c] = total;
      }
    }
  }
  for (int k = 0; k < H; ++k) std::memcpy(dw_rec + static_cast<size_t>(k) * H, g_rec.get() + static_cast<size_t>(k) * Hp, H * sizeof(float));
  for (int c = 0; c < C; ++c) std::memcpy(dw_in + static_cast<size_t>(c) * H, g_in.get() + static_cast<size_t>(c) * Hp, H * sizeof(float));
  std::memcpy(db, g_b.get(), H * sizeof(float));
}

constexpr int kMaxVectors = 8;  // H <= 128

template <template <int, int> class F, int ACT, typename... Args>
void dispatch_width(int nv, Args... args) {
  switch (nv) {
    case 1: F<1, ACT>::run(args...); break;
    case 2: F<2, ACT>::run(args...); break;
    case 3: F<3, ACT>::run(args...); break;
    case 4: F<4, ACT>::run(args...); break;
    case 5: F<5, ACT>::run(args...); break;
    case 6: F<6, ACT>::run(args...); break;
    case 7: F<7, ACT>::run(args...); break;
    case 8: F<8, ACT>::run(args...); break;
  }
}

// F<vectors per row, activation>::run(args...): the loops compiled for each width and activation.
template <template <int, int> class F, typename... Args>
void dispatch(int nv, int32_t activation, Args... args) {
  if (activation == kTanh)
    dispatch_width<F, kTanh>(nv, args...);
  else
    dispatch_width<F, kRelu>(nv, args...);
}

template <int NV, int ACT>
struct Forward {
  template <typename... Args>
  static void run(Args... args) { forward<NV, ACT>(args...); }
};
template <int NV, int ACT>
struct Backward {
  template <typename... Args>
  static void run(Args... args) { backward<NV, ACT>(args...); }
};

ffi::Error check_activation(int32_t activation) {
  if (activation != kRelu && activation != kTanh)
    return ffi::Error::InvalidArgument("activation must be 0 (relu) or 1 (tanh)");
  return ffi::Error::Success();
}

int vectors(int64_t H) { return static_cast<int>((H + kLanes - 1) / kLanes); }

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_in, ffi::Buffer<ffi::F32> w_rec,
                       ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> states, ffi::ResultBuffer<ffi::F32> h_last,
                       int32_t activation) {
  if (auto e = check_activation(activation); e.failure()) return e;
  auto xd = x.dimensions();
  if (xd.size() != 3) return ffi::Error::InvalidArgument("x must be (T, B, C)");
  const int64_t T = xd[0], B = xd[1], C = xd[2], H = w_rec.dimensions()[0];
  const int nv = vectors(H);
  if (nv < 1 || nv > kMaxVectors) return ffi::Error::InvalidArgument("the native RNN kernel takes 1 to 128 hidden units");
  auto sd = states->dimensions();
  if (sd.size() != 3 || sd[1] != B || sd[2] != nv * kLanes || (sd[0] != T && sd[0] != 0))
    return ffi::Error::InvalidArgument("states must be (T, B, Hp) or (0, B, Hp)");
  float* keep = sd[0] == T ? states->typed_data() : nullptr;
  dispatch<Forward>(nv, activation, static_cast<int>(T), static_cast<int>(B), static_cast<int>(C), static_cast<int>(H),
                    static_cast<const float*>(x.typed_data()), static_cast<const float*>(w_in.typed_data()),
                    static_cast<const float*>(w_rec.typed_data()), static_cast<const float*>(b.typed_data()), keep,
                    h_last->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> states, ffi::Buffer<ffi::F32> h_last,
                        ffi::Buffer<ffi::F32> dh, ffi::Buffer<ffi::F32> w_in, ffi::Buffer<ffi::F32> w_rec,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw_in,
                        ffi::ResultBuffer<ffi::F32> dw_rec, ffi::ResultBuffer<ffi::F32> db, int32_t activation) {
  if (auto e = check_activation(activation); e.failure()) return e;
  auto xd = x.dimensions();
  if (xd.size() != 3) return ffi::Error::InvalidArgument("x must be (T, B, C)");
  const int64_t T = xd[0], B = xd[1], C = xd[2], H = w_rec.dimensions()[0];
  const int nv = vectors(H);
  if (nv < 1 || nv > kMaxVectors) return ffi::Error::InvalidArgument("the native RNN kernel takes 1 to 128 hidden units");
  auto sd = states.dimensions();
  if (sd.size() != 3 || sd[0] != T || sd[1] != B || sd[2] != nv * kLanes)
    return ffi::Error::InvalidArgument("states must be (T, B, Hp), as the forward kept them");
  dispatch<Backward>(nv, activation, static_cast<int>(T), static_cast<int>(B), static_cast<int>(C), static_cast<int>(H),
                     static_cast<const float*>(x.typed_data()), static_cast<const float*>(states.typed_data()),
                     static_cast<const float*>(h_last.typed_data()), static_cast<const float*>(dh.typed_data()),
                     static_cast<const float*>(w_in.typed_data()), static_cast<const float*>(w_rec.typed_data()),
                     dx->typed_data(), dw_in->typed_data(), dw_rec->typed_data(), db->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrnnRnnForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrnnRnnBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("activation"));
