// Native CPU kernels of the Keras LSTM's recurrence (irnn_jax/lstm.py: gates i, f, g, o in one kernel of
// width 4H), as two XLA FFI handlers that `irnn_jax/native.py` registers and calls (recurrence "native"):
//
//   z_t = x_t W_in + h_{t-1} W_rec + b,   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of z_t's quarters
//   c_t = f c_{t-1} + i g,                h_t = o tanh(c_t),                    h_0 = c_0 = 0
//
//   IrnnLstmForward:  x (T, B, C), W_in (C, 4H), W_rec (H, 4H), b (4H)
//                     -> gates (T, B, S), c_prev (T, B, Hp), h_prev (T, B, Hp), h_T (B, H)
//                        [per step the gate activations and the states the step starts from; (0, B, .)
//                        to keep none]
//   IrnnLstmBackward: x, gates, c_prev, h_prev, dh_T (B, H), W_in, W_rec
//                     -> dx (T, B, C), dW_in (C, 4H), dW_rec (H, 4H), db (4H)
//
// The arithmetic of recurrence "fused" (irnn_jax/lstm.py), in one call each way. A row of gates keeps
// Keras's packed layout, i, f, g, o of H columns each (gate_stride): no gate is padded, so at H = 100 a
// step's (B, 100) x (100, 400) product is 25 vectors a row, not 28. It runs in chunks of kChunk vectors
// through the register-blocked micro-kernel (csrc/kernels.h); each gate's activation is one tanh of the
// whole row, s tanh(s z) + 1 - s with s = 1/2 on the sigmoid gates' columns (sigmoid(z) = tanh(z/2)/2 +
// 1/2), the rational tanh. The states c and h keep rows of Hp (H padded to a multiple of 16). The
// backward recomputes c_t = f c_{t-1} + i g from the kept gates, carries (dh, dc), and sums the weight
// gradients in blocks of about kBlockRows rows while those rows are in cache.
#include "kernels.h"

namespace {

using namespace irnn_kernels;

constexpr int kGates = 4;
// Rows of one block of the weight gradients' sums: a row of dz is 4 gates wide, so a quarter of the
// simple RNN's 512 keeps a block's dz (B rows x 4H floats) in L2 as it does.
constexpr int kBlockRows = 128;
// Vectors of a row of z (or of a weight gradient) that one micro-kernel call takes: 7 on AVX-512, and on
// AVX2 the chunk its 16 registers hold (kernels.h).
#if defined(__AVX512F__)
constexpr int kChunk = 7;
constexpr int kLstmRows = 0;  // row_block's
#else
#ifndef IRNN_LSTM_CHUNK
#define IRNN_LSTM_CHUNK 2
#endif
#ifndef IRNN_LSTM_ROWS
#define IRNN_LSTM_ROWS 3
#endif
constexpr int kChunk = IRNN_LSTM_CHUNK;
constexpr int kLstmRows = IRNN_LSTM_ROWS;
#endif
// Rows of a forward block: row_block's on AVX-512; on AVX2 kLstmRows.
constexpr int lstm_rows(int nv) { return kLstmRows ? kLstmRows : row_block(nv); }

// The packed layout of a row of gates: i, f, g, o, H columns each, one after the other (Keras's), in a
// row of `gate_stride(H)` floats. No gate is padded: at H = 100 a row is 25 vectors, where padding each
// gate to 112 would make it 28 (12% more arithmetic in every product). The elementwise work reads the
// four gates of units [j, j + 16) at j, H + j, 2H + j, 3H + j (unaligned loads); `over_unit_vectors`
// gives the j. A row is at least 3H + 16 floats so that the last gate's vector stays in the row when H < 16.
inline int gate_stride(int H) { return ((std::max(kGates * H, 3 * H + kLanes) + kLanes - 1) / kLanes) * kLanes; }

// f(j) for the starts j of 16-unit vectors that cover units [0, H): 0, 16, ... and, when 16 does not
// divide H, H - 16, a vector that overlaps the one before it. Everything computed per unit is a
// function of that unit's inputs alone, written to buffers other than those it reads, so a unit done
// twice is written twice with the same value. For H < 16, one vector at 0 whose lanes from H on hold
// whatever the neighbouring columns give: finite, and read by nothing (the products sum over k < H).
template <typename F>
inline void over_unit_vectors(int H, F&& f) {
  int j = 0;
  for (; j + kVL <= H; j += kVL) f(j);
  if (j < H) f(std::max(0, H - kVL));
}

// f(std::integral_constant<int, n>{}, v) for the chunks [v, v + n) of kChunk vectors (the last one
// shorter) that cover a row of nv vectors.
template <typename F>
inline void over_column_chunks(int nv, F&& f) {
  int v = 0;
  for (; v + kChunk <= nv; v += kChunk) f(std::integral_constant<int, kChunk>{}, v);
  with_constant<kChunk - 1>(nv - v, v, f);
}

// One forward step for rows [i, i + RB): the gate activations into a (stride S, packed), each gate
// s tanh(s z) + 1 - s with s = 1/2 on the sigmoid gates' columns and 1 on g's (sigmoid(z) =
// tanh(z/2)/2 + 1/2, as recurrence "fused"); then c_out = f c_prev + i g and h_out = o tanh(c_out)
// (stride Hp).
template <int NV, int RB>
inline void forward_rows(const float* h, const float* x, int C, const float* Winp, const float* Wp, const float* bp,
                         const float* scale, int H, int S, const float* c_prev, float* a, float* c_out, float* h_out) {
  constexpr int Hp = NV * kLanes;
  over_column_chunks(S / kLanes, [&](auto chunk, int v0) {
    constexpr int CB = decltype(chunk)::value, NCV = cv(CB);
    const int col = v0 * kLanes;
    vec acc[RB][cv(CB)];
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
      #pragma GCC unroll 16
      for (int v = 0; v < NCV; ++v) acc[r][v] = V(bp + col)[v];
    rows_times<cv(CB), RB>(x, C, Winp + col, C, S, acc);
    rows_times<cv(CB), RB>(h, Hp, Wp + col, H, S, acc);
    #pragma GCC unroll 16
    for (int v = 0; v < NCV; ++v) {
      const vec s = V(scale + col)[v];
      #pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) V(a + r * S + col)[v] = s * tanh_approx(s * acc[r][v]) + (splat(1.0f) - s);
    }
  });
  #pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) {
    const float* ar = a + r * S;
    over_unit_vectors(H, [&](int j) {
      const vec i = *V(ar + j), f = *V(ar + H + j), g = *V(ar + 2 * H + j), o = *V(ar + 3 * H + j);
      const vec c = f * *V(c_prev + r * Hp + j) + i * g;
      *V(c_out + r * Hp + j) = c;
      *V(h_out + r * Hp + j) = o * tanh_approx(c);
    });
  }
}

// One backward step's elementwise part for one row: from the kept gates a (packed) and c_{t-1}, and
// the carried (dh, dc) of h_t and c_t, dz_t (packed, stored gate after gate so that for H < 16 each
// gate's vector overwrites the spill of the one before) and dc_{t-1} = dc f into dc_out.
inline void gate_gradients(int H, const float* a, const float* c_prev, const float* dh, const float* dc,
                           float* dc_out, float* dz) {
  const vec one = splat(1.0f);
  over_unit_vectors(H, [&](int j) {
    const vec i = *V(a + j), f = *V(a + H + j), g = *V(a + 2 * H + j), o = *V(a + 3 * H + j);
    const vec cp = *V(c_prev + j), dhv = *V(dh + j);
    const vec tc = tanh_approx(f * cp + i * g);  // the forward's tanh(c_t), recomputed
    const vec dcv = *V(dc + j) + dhv * o * (one - tc * tc);
    *V(dz + j) = dcv * g * i * (one - i);
    *V(dz + H + j) = dcv * cp * f * (one - f);
    *V(dz + 2 * H + j) = dcv * i * (one - g * g);
    *V(dz + 3 * H + j) = dhv * tc * o * (one - o);
    *V(dc_out + j) = dcv * f;
  });
}

// dh_out[r, :] = dz[r, :4H] @ W_rec^T for rows [i, i + RB) (WT: (4H, Hp), W_rec^T; Q: rows_times's
// quarter form, where H's last vector holds 1 to 4 units).
template <int NV, int RB, bool Q>
inline void backprop_rows(const float* dz, int S, const float* WT, int H, float* dh_out) {
  constexpr int Hp = NV * kLanes;
  over_chunks<NV, Q>([&](auto cw, int v0, auto q) {
    constexpr int CB = decltype(cw)::value, NCV = cv(CB);
    const int col = v0 * kLanes;
    vec acc[RB][cv(CB)] = {};
    rows_times<cv(CB), RB, decltype(q)::value>(dz, S, WT + col, kGates * H, Hp, acc);
    #pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
      #pragma GCC unroll 16
      for (int v = 0; v < NCV; ++v) V(dh_out + static_cast<size_t>(r) * Hp + col)[v] = acc[r][v];
  });
}

// G (K rows, stride S) += A^T D over N rows of D (stride S), chunk by chunk of the packed row.
inline void accumulate_packed(const float* A, int a_stride, int K, const float* D, int N, int S, float* G) {
  over_column_chunks(S / kLanes, [&](auto chunk, int v0) {
    accumulate<decltype(chunk)::value>(A, a_stride, K, D + v0 * kLanes, N, S, G + v0 * kLanes);
  });
}

// (rows, 4H) into (rows, S), zeros after column 4H.
inline Floats packed(const float* src, int rows, int H, int S) { return padded(src, rows, kGates * H, S); }

template <int NV>
void forward(int T, int B, int C, int H, const float* x, const float* w_in, const float* w_rec, const float* b,
             float* gates, float* c_keep, float* h_keep, float* h_last) {
  constexpr int Hp = NV * kLanes, RB = lstm_rows(NV);
  const int S = gate_stride(H);
  Floats Winp = packed(w_in, C, H, S), Wp = packed(w_rec, H, H, S), bp = packed(b, 1, H, S);
  Floats scale = zeros(S);
  for (int col = 0; col < S; ++col) scale[col] = (col >= 2 * H && col < 3 * H) ? 1.0f : 0.5f;
  const size_t slab = static_cast<size_t>(B) * Hp, gate_slab = static_cast<size_t>(B) * S;
  const bool keep = gates != nullptr;
  Floats a_tmp = zeros(keep ? 0 : gate_slab);
  Floats c_ping = zeros(slab), c_pong = zeros(slab), h_ping = zeros(slab), h_pong = zeros(slab);
  if (keep) {  // h_0 = c_0 = 0
    prefer_huge_pages(gates, T * gate_slab * sizeof(float));
    prefer_huge_pages(c_keep, T * slab * sizeof(float));
    prefer_huge_pages(h_keep, T * slab * sizeof(float));
    std::memset(c_keep, 0, slab * sizeof(float));
    std::memset(h_keep, 0, slab * sizeof(float));
  }
  float* c = keep ? c_keep : c_ping.get();
  float* h = keep ? h_keep : h_ping.get();
  for (int t = 0; t < T; ++t) {
    const bool into_kept = keep && t + 1 < T;
    float* c_out = into_kept ? c_keep + (t + 1) * slab : (c == c_ping.get() ? c_pong.get() : c_ping.get());
    float* h_out = into_kept ? h_keep + (t + 1) * slab : (h == h_ping.get() ? h_pong.get() : h_ping.get());
    float* a = keep ? gates + t * gate_slab : a_tmp.get();
    const float* xt = x + static_cast<size_t>(t) * B * C;
    over_row_blocks<RB>(B, [&](auto rows, int i) {
      forward_rows<NV, decltype(rows)::value>(h + i * Hp, xt + i * C, C, Winp.get(), Wp.get(), bp.get(), scale.get(),
                                              H, S, c + i * Hp, a + i * S, c_out + i * Hp, h_out + i * Hp);
    });
    c = c_out;
    h = h_out;
  }
  unpad(h, B, H, Hp, h_last);
}

template <int NV, bool Q>
void backward(int T, int B, int C, int H, const float* x, const float* gates, const float* c_keep,
              const float* h_keep, const float* dh_in, const float* w_in, const float* w_rec, float* dx, float* dw_in,
              float* dw_rec, float* db) {
  constexpr int Hp = NV * kLanes, RB = row_block(NV);
  const int S = gate_stride(H);
  const size_t slab = static_cast<size_t>(B) * Hp, gate_slab = static_cast<size_t>(B) * S;
  Floats WT = zeros(static_cast<size_t>(kGates) * H * Hp);  // W_rec^T: (4H, Hp)
  for (int col = 0; col < kGates * H; ++col)
    for (int k = 0; k < H; ++k) WT[static_cast<size_t>(col) * Hp + k] = w_rec[static_cast<size_t>(k) * kGates * H + col];
  Floats Winp = packed(w_in, C, H, S);
  Floats g_rec = zeros(static_cast<size_t>(H) * S), g_in = zeros(static_cast<size_t>(C) * S), g_b = zeros(S);
  Floats dh = padded(dh_in, B, H, Hp), dh_next = zeros(slab), dc = zeros(slab), dc_next = zeros(slab);
  const int K = block_steps(T, B, kBlockRows);  // steps of one block of the weight gradients
  Floats dz = zeros(static_cast<size_t>(K) * gate_slab);
  for (int t0 = T - K; t0 >= 0; t0 -= K) {
    for (int t = t0 + K - 1; t >= t0; --t) {
      float* dz_t = dz.get() + (t - t0) * gate_slab;
      const float* a_t = gates + t * gate_slab;
      const float* c_t = c_keep + t * slab;
      for (int i = 0; i < B; ++i)
        gate_gradients(H, a_t + i * S, c_t + i * Hp, dh.get() + i * Hp, dc.get() + i * Hp, dc_next.get() + i * Hp,
                       dz_t + i * S);
      std::swap(dc, dc_next);
      if (t == 0) break;  // (dh_0, dc_0) are unused: the initial state is a constant
      over_row_blocks<RB>(B, [&](auto rows, int i) {
        backprop_rows<NV, decltype(rows)::value, Q>(dz_t + i * S, S, WT.get(), H, dh_next.get() + i * Hp);
      });
      std::swap(dh, dh_next);
    }
    const int N = K * B;
    const float* dz_blk = dz.get();
    accumulate_packed(h_keep + t0 * slab, Hp, H, dz_blk, N, S, g_rec.get());
    accumulate_packed(x + static_cast<size_t>(t0) * B * C, C, C, dz_blk, N, S, g_in.get());
    add_row_sums(dz_blk, N, S / kLanes, g_b.get());
    times_transposed(dz_blk, N, S / kLanes, Winp.get(), C, dx + static_cast<size_t>(t0) * B * C);  // dz W_in^T
  }
  unpad(g_rec.get(), H, kGates * H, S, dw_rec);
  unpad(g_in.get(), C, kGates * H, S, dw_in);
  std::memcpy(db, g_b.get(), kGates * H * sizeof(float));
}

template <int NV>
struct Forward {
  template <typename... Args>
  static void run(Args... args) { forward<NV>(args...); }
};
template <int NV>
struct Backward {
  template <typename... Args>
  static void run(bool quarter, Args... args) {
    with_quarter<NV>(quarter, [&](auto q) { backward<NV, decltype(q)::value>(args...); });
  }
};

// H from W_rec (H, 4H), or an error: W_rec's shape, and H within the kernel's 1 .. 128.
ffi::Error hidden_size(ffi::Buffer<ffi::F32>& w_rec, int64_t* H) {
  auto wd = w_rec.dimensions();
  if (wd.size() != 2 || wd[1] != kGates * wd[0]) return ffi::Error::InvalidArgument("W_rec must be (H, 4H)");
  *H = wd[0];
  if (*H < 1 || vectors(*H) > kMaxVectors) return ffi::Error::InvalidArgument("the native LSTM kernel takes 1 to 128 units");
  return ffi::Error::Success();
}

// Whether `buf` is (steps, B, width).
template <typename Buf>
bool shaped(const Buf& buf, int64_t steps, int64_t B, int64_t width) {
  auto d = buf.dimensions();
  return d.size() == 3 && d[0] == steps && d[1] == B && d[2] == width;
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_in, ffi::Buffer<ffi::F32> w_rec,
                       ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> c_prev,
                       ffi::ResultBuffer<ffi::F32> h_prev, ffi::ResultBuffer<ffi::F32> h_last) {
  auto xd = x.dimensions();
  if (xd.size() != 3) return ffi::Error::InvalidArgument("x must be (T, B, C)");
  int64_t H;
  if (auto e = hidden_size(w_rec, &H); e.failure()) return e;
  const int64_t T = xd[0], B = xd[1], C = xd[2];
  const int nv = vectors(H);
  const int64_t Hp = nv * kLanes, kept = gates->dimensions()[0];
  if ((kept != T && kept != 0) || !shaped(*gates, kept, B, gate_stride(H)) || !shaped(*c_prev, kept, B, Hp) ||
      !shaped(*h_prev, kept, B, Hp))
    return ffi::Error::InvalidArgument("gates, c_prev, h_prev must be (T, B, S), (T, B, Hp), (T, B, Hp), or with 0 steps");
  const bool keep = kept == T;
  dispatch_width<Forward>(nv, static_cast<int>(T), static_cast<int>(B), static_cast<int>(C), static_cast<int>(H),
                          static_cast<const float*>(x.typed_data()), static_cast<const float*>(w_in.typed_data()),
                          static_cast<const float*>(w_rec.typed_data()), static_cast<const float*>(b.typed_data()),
                          keep ? gates->typed_data() : nullptr, keep ? c_prev->typed_data() : nullptr,
                          keep ? h_prev->typed_data() : nullptr, h_last->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> c_prev,
                        ffi::Buffer<ffi::F32> h_prev, ffi::Buffer<ffi::F32> dh, ffi::Buffer<ffi::F32> w_in,
                        ffi::Buffer<ffi::F32> w_rec, ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw_in,
                        ffi::ResultBuffer<ffi::F32> dw_rec, ffi::ResultBuffer<ffi::F32> db) {
  auto xd = x.dimensions();
  if (xd.size() != 3) return ffi::Error::InvalidArgument("x must be (T, B, C)");
  int64_t H;
  if (auto e = hidden_size(w_rec, &H); e.failure()) return e;
  const int64_t T = xd[0], B = xd[1], C = xd[2];
  const int nv = vectors(H);
  const int64_t Hp = nv * kLanes;
  if (!shaped(gates, T, B, gate_stride(H)) || !shaped(c_prev, T, B, Hp) || !shaped(h_prev, T, B, Hp))
    return ffi::Error::InvalidArgument("gates, c_prev, h_prev must be (T, B, S), (T, B, Hp), (T, B, Hp), as the forward kept them");
  dispatch_width<Backward>(nv, quarter_tail(H), static_cast<int>(T), static_cast<int>(B), static_cast<int>(C), static_cast<int>(H),
                           static_cast<const float*>(x.typed_data()), static_cast<const float*>(gates.typed_data()),
                           static_cast<const float*>(c_prev.typed_data()), static_cast<const float*>(h_prev.typed_data()),
                           static_cast<const float*>(dh.typed_data()), static_cast<const float*>(w_in.typed_data()),
                           static_cast<const float*>(w_rec.typed_data()), dx->typed_data(), dw_in->typed_data(),
                           dw_rec->typed_data(), db->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrnnLstmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrnnLstmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
