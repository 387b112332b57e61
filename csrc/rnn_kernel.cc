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
// kBlockRows rows while those rows are in cache (csrc/kernels.h). Rows are padded to Hp, a multiple of 16 floats, with
// zeros that stay zero (relu(0) = tanh(0) = 0), so every vector load is whole. tanh is a rational
// approximation good to 3e-7 relative (kTanh*; XLA's CPU tanh is one of the same kind). Float sums run in
// another order than XLA's: equal to it to float32 rounding (tests/test_native.py).
#include <cmath>

#include "kernels.h"

namespace {

using namespace irnn_kernels;

constexpr int kBlockRows = 512;  // rows (steps x batch) of one block of the weight gradients' sums

enum Activation { kRelu = 0, kTanh = 1 };

template <int ACT>
inline vec activate(vec z) {
  if (ACT == kTanh) return tanh_approx(z);
  const vec zero = splat(0.0f);
  return z < zero ? zero : z;  // NaN stays NaN (z > 0 ? z : 0 would map it to 0): a divergence shows in the loss
}

// act'(z) * g, written with h = act(z): relu, g where h > 0; tanh, g (1 - h^2).
template <int ACT>
inline vec times_derivative(vec h, vec g) {
  if (ACT == kTanh) return g * (splat(1.0f) - h * h);
  return h > splat(0.0f) ? g : splat(0.0f);
}

// One forward step for rows [i, i + RB) and the columns of one chunk (CB vectors from col, the pointers
// already at col): out = act(b + x W_in + h W_rec) (Q: rows_times's quarter form). The steps below take
// the chunks in the outer loop and the rows in the inner one, so that a chunk of the weights stays in L1
// for every row of the batch (on AVX-512 the one chunk is the whole row, as before).
template <int CB, int RB, int ACT, bool Q>
inline void forward_rows(const float* h, const float* x, int C, const float* Winp, const float* Wp, const float* bp,
                         int H, int Hp, float* out) {
  constexpr int NCV = cv(CB);
  vec acc[RB][NCV];
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NCV; ++v) acc[r][v] = V(bp)[v];
  rows_times<NCV, RB, Q>(x, C, Winp, C, Hp, acc);
  rows_times<NCV, RB, Q>(h, Hp, Wp, H, Hp, acc);
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NCV; ++v) V(out + static_cast<size_t>(r) * Hp)[v] = activate<ACT>(acc[r][v]);
}

// dh_out[r, chunk] = dz[r, :] @ W_rec^T[:, chunk] for rows [i, i + RB) (WTp: W_rec^T padded, H x Hp, at the
// chunk's column).
template <int CB, int RB, bool Q>
inline void backprop_rows(const float* dz, const float* WTp, int H, int Hp, float* dh_out) {
  constexpr int NCV = cv(CB);
  vec acc[RB][NCV] = {};
  rows_times<NCV, RB, Q>(dz, Hp, WTp, H, Hp, acc);
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
    #pragma GCC unroll 16
    for (int v = 0; v < NCV; ++v) V(dh_out + static_cast<size_t>(r) * Hp)[v] = acc[r][v];
}

template <int NV, int ACT, bool Q>
void forward(int T, int B, int C, int H, const float* x, const float* w_in, const float* w_rec, const float* b,
             float* states, float* h_last) {
  const int Hp = NV * kLanes;
  constexpr int RB = row_block(NV);
  Floats Winp = padded(w_in, C, H, Hp), Wp = padded(w_rec, H, H, Hp), bp = padded(b, 1, H, Hp);
  Floats ping = zeros(static_cast<size_t>(B) * Hp), pong = zeros(static_cast<size_t>(B) * Hp);
  const size_t slab = static_cast<size_t>(B) * Hp;
  if (states) {
    prefer_huge_pages(states, T * slab * sizeof(float));
    std::memset(states, 0, slab * sizeof(float));  // h_0 = 0
  }
  float* h = states ? states : ping.get();
  for (int t = 0; t < T; ++t) {
    float* out = (t + 1 < T && states) ? states + (t + 1) * slab : (h == ping.get() ? pong.get() : ping.get());
    const float* xt = x + static_cast<size_t>(t) * B * C;
    over_chunks<NV, Q>([&](auto cw, int v0, auto q) {
      const int col = v0 * kLanes;
      over_row_blocks<RB>(B, [&](auto rows, int i) {
        forward_rows<decltype(cw)::value, decltype(rows)::value, ACT, decltype(q)::value>(
            h + i * Hp, xt + i * C, C, Winp.get() + col, Wp.get() + col, bp.get() + col, H, Hp, out + i * Hp + col);
      });
    });
    h = out;
  }
  unpad(h, B, H, Hp, h_last);
}

template <int NV, int ACT, bool Q>
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
  const int K = block_steps(T, B, kBlockRows);  // steps of one block of the weight gradients
  Floats dz = zeros(static_cast<size_t>(K) * slab);
  for (int t0 = T - K; t0 >= 0; t0 -= K) {
    for (int t = t0 + K - 1; t >= t0; --t) {
      const float* h_out = (t == T - 1) ? h_last.get() : states + (t + 1) * slab;  // act(z_t)
      float* dz_t = dz.get() + (t - t0) * slab;
      for (size_t n = 0; n < slab / kVL; ++n) V(dz_t)[n] = times_derivative<ACT>(V(h_out)[n], V(dh.get())[n]);
      if (t == 0) break;  // dh_0 is unused: h_0 is a constant
      over_chunks<NV, Q>([&](auto cw, int v0, auto q) {
        const int col = v0 * kLanes;
        over_row_blocks<RB>(B, [&](auto rows, int i) {
          backprop_rows<decltype(cw)::value, decltype(rows)::value, decltype(q)::value>(
              dz_t + i * Hp, WT.get() + col, H, Hp, dh_next.get() + i * Hp + col);
        });
      });
      std::swap(dh, dh_next);
    }
    const int N = K * B;
    const float* dz_blk = dz.get();
    accumulate<NV, Q>(states + t0 * slab, Hp, H, dz_blk, N, Hp, g_rec.get());
    accumulate<NV, Q>(x + static_cast<size_t>(t0) * B * C, C, C, dz_blk, N, Hp, g_in.get());
    add_row_sums(dz_blk, N, NV, g_b.get());
    times_transposed(dz_blk, N, NV, Winp.get(), C, dx + static_cast<size_t>(t0) * B * C);  // dx = dz W_in^T
  }
  unpad(g_rec.get(), H, H, Hp, dw_rec);
  unpad(g_in.get(), C, H, Hp, dw_in);
  unpad(g_b.get(), 1, H, Hp, db);
}

// The loops for a width and activation, in the quarter form where H's last vector holds 1 to 4 units.
template <int ACT>
struct Forward {
  template <int NV>
  struct Width {
    template <typename... Args>
    static void run(bool quarter, Args... args) {
      with_quarter<NV>(quarter, [&](auto q) { forward<NV, ACT, decltype(q)::value>(args...); });
    }
  };
};
template <int ACT>
struct Backward {
  template <int NV>
  struct Width {
    template <typename... Args>
    static void run(bool quarter, Args... args) {
      with_quarter<NV>(quarter, [&](auto q) { backward<NV, ACT, decltype(q)::value>(args...); });
    }
  };
};

// F<activation>::Width<vectors per row>::run(args...): the loops compiled for each activation and width.
template <template <int> class F, typename... Args>
void dispatch(int nv, int32_t activation, Args... args) {
  if (activation == kTanh)
    dispatch_width<F<kTanh>::template Width>(nv, args...);
  else
    dispatch_width<F<kRelu>::template Width>(nv, args...);
}

ffi::Error check_activation(int32_t activation) {
  if (activation != kRelu && activation != kTanh)
    return ffi::Error::InvalidArgument("activation must be 0 (relu) or 1 (tanh)");
  return ffi::Error::Success();
}

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
  dispatch<Forward>(nv, activation, quarter_tail(H), static_cast<int>(T), static_cast<int>(B), static_cast<int>(C), static_cast<int>(H),
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
  dispatch<Backward>(nv, activation, quarter_tail(H), static_cast<int>(T), static_cast<int>(B), static_cast<int>(C), static_cast<int>(H),
                     static_cast<const float*>(x.typed_data()), static_cast<const float*>(states.typed_data()),
                     static_cast<const float*>(h_last.typed_data()), static_cast<const float*>(dh.typed_data()),
                     static_cast<const float*>(w_in.typed_data()), static_cast<const float*>(w_rec.typed_data()),
                     dx->typed_data(), dw_in->typed_data(), dw_rec->typed_data(), db->typed_data());
  return ffi::Error::Success();
}

// The self-test behind IrnnSelfTest: a small forward (relu and tanh, a width with the quarter tail and one
// without) and a relu backward, against plain scalar loops in double. 0: all agree; else the number of the
// first check that failed.
int self_test() {
  const int T = 5, B = 3, C = 2;
  for (int H : {20, 32}) {
    const int nv = vectors(H);
    float x[T * B * C], w_in[C * 32], w_rec[32 * 32], b[32], h_last[B * 32];
    for (int i = 0; i < T * B * C; ++i) x[i] = 0.25f * static_cast<float>((i * 7) % 11) - 1.0f;
    for (int i = 0; i < C * H; ++i) w_in[i] = 0.1f * static_cast<float>((i * 5) % 9) - 0.4f;
    for (int i = 0; i < H * H; ++i) w_rec[i] = (i % (H + 1) == 0 ? 0.9f : 0.0f) + 0.01f * static_cast<float>((i * 3) % 7 - 3);
    for (int i = 0; i < H; ++i) b[i] = 0.02f * static_cast<float>(i % 5) - 0.04f;
    for (int act : {static_cast<int>(kRelu), static_cast<int>(kTanh)}) {
      dispatch<Forward>(nv, act, quarter_tail(H), T, B, C, H, x, w_in, w_rec, b, static_cast<float*>(nullptr), h_last);
      double h[B * 32] = {}, z[B * 32];
      for (int t = 0; t < T; ++t) {
        for (int r = 0; r < B; ++r)
          for (int j = 0; j < H; ++j) {
            double s = b[j];
            for (int c = 0; c < C; ++c) s += static_cast<double>(x[(t * B + r) * C + c]) * w_in[c * H + j];
            for (int k = 0; k < H; ++k) s += h[r * H + k] * w_rec[k * H + j];
            z[r * H + j] = act == kRelu ? (s > 0 ? s : 0) : std::tanh(s);
          }
        std::memcpy(h, z, sizeof(double) * B * H);
      }
      for (int i = 0; i < B * H; ++i)
        if (!(std::fabs(h_last[i] - h[i]) <= 1e-4 * (1 + std::fabs(h[i])))) return 1 + act;
    }
    // The backward runs (relu), and its bias gradient is finite where every input is.
    Floats states = zeros(static_cast<size_t>(T) * B * nv * kLanes);
    dispatch<Forward>(nv, static_cast<int>(kRelu), quarter_tail(H), T, B, C, H, x, w_in, w_rec, b, states.get(), h_last);
    float dh[B * 32], dx[T * B * C], dw_in[C * 32], dw_rec[32 * 32], db[32];
    for (int i = 0; i < B * H; ++i) dh[i] = 1.0f;
    dispatch<Backward>(nv, static_cast<int>(kRelu), quarter_tail(H), T, B, C, H, static_cast<const float*>(x),
                       static_cast<const float*>(states.get()), static_cast<const float*>(h_last),
                       static_cast<const float*>(dh), static_cast<const float*>(w_in), static_cast<const float*>(w_rec),
                       dx, dw_in, dw_rec, db);
    for (int i = 0; i < H; ++i)
      if (!std::isfinite(db[i])) return 3;
  }
  return 0;
}

}  // namespace

// What the library was compiled for, as the compiler's predefined macros say, in /proc/cpuinfo's names: a
// string that irnn_jax/native.py finds in the file's bytes before it loads the library (a library built
// for a CPU with more than this one has would die of an illegal instruction on load or on its first call).
extern "C" __attribute__((used, visibility("default"))) const char IrnnBuildIsa[] =
    "irnn-jax-native-isa:"
#ifdef __SSE4_2__
    "sse4_2,"
#endif
#ifdef __POPCNT__
    "popcnt,"
#endif
#ifdef __AVX__
    "avx,"
#endif
#ifdef __AVX2__
    "avx2,"
#endif
#ifdef __FMA__
    "fma,"
#endif
#ifdef __F16C__
    "f16c,"
#endif
#ifdef __BMI__
    "bmi1,"
#endif
#ifdef __BMI2__
    "bmi2,"
#endif
#ifdef __LZCNT__
    "abm,"
#endif
#ifdef __MOVBE__
    "movbe,"
#endif
#ifdef __AVX512F__
    "avx512f,"
#endif
#ifdef __AVX512CD__
    "avx512cd,"
#endif
#ifdef __AVX512BW__
    "avx512bw,"
#endif
#ifdef __AVX512DQ__
    "avx512dq,"
#endif
#ifdef __AVX512VL__
    "avx512vl,"
#endif
#ifdef __AVX512IFMA__
    "avx512ifma,"
#endif
#ifdef __AVX512VBMI__
    "avx512vbmi,"
#endif
#ifdef __AVX512VBMI2__
    "avx512_vbmi2,"
#endif
#ifdef __AVX512VNNI__
    "avx512_vnni,"
#endif
#ifdef __AVX512BITALG__
    "avx512_bitalg,"
#endif
#ifdef __AVX512VPOPCNTDQ__
    "avx512_vpopcntdq,"
#endif
#ifdef __AVX512BF16__
    "avx512_bf16,"
#endif
#ifdef __AVX512FP16__
    "avx512_fp16,"
#endif
#ifdef __AVXVNNI__
    "avx_vnni,"
#endif
#ifdef __AMX_TILE__
    "amx_tile,"
#endif
#ifdef __GFNI__
    "gfni,"
#endif
#ifdef __VAES__
    "vaes,"
#endif
#ifdef __VPCLMULQDQ__
    "vpclmulqdq,"
#endif
#ifdef __aarch64__
    "aarch64,"
#endif
    ";";

// 0 when the kernels compute what plain loops compute on this CPU (irnn_jax/native.py runs it in a child
// process before the library is loaded into the training process: a library that traps or is damaged kills
// the child, not the run).
extern "C" __attribute__((visibility("default"))) int IrnnSelfTest() { return self_test(); }

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
