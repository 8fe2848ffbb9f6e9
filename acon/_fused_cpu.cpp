// The CPU kernel of the fused ACON-C: y = d x * gate(beta d x) + q x with d = p1 - p2, q = p2.
// Plain C++ with OpenMP and no PyTorch headers, so it builds in about a second; acon/_fused_cpu.py
// compiles it on first use and calls it through ctypes. gate 0 is the sigmoid (the paper),
// gate 1 the hard sigmoid clamp(u / 6 + 1/2, 0, 1) (torch's F.hardsigmoid).
#include <cmath>
#include <cstdint>

namespace {

// Cephes-style expf written as plain arithmetic so the compiler vectorizes it inside
// `omp simd` loops (glibc's expf only vectorizes under -ffast-math).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float y = 1.9875691500e-4f;
  y = std::fma(y, r, 1.3981999507e-3f);
  y = std::fma(y, r, 8.3334519073e-3f);
  y = std::fma(y, r, 4.1665795894e-2f);
  y = std::fma(y, r, 1.6666665459e-1f);
  y = std::fma(y, r, 5.0000001201e-1f);
  y = std::fma(y, r * r, r) + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return y * __builtin_bit_cast(float, bits);
}

inline double exp_approx(double x) { return std::exp(x); }

// The gate s(u) and its derivative s'(u). The hard sigmoid's derivative is 1/6 strictly inside
// (-3, 3) and 0 outside, as in torch's hardsigmoid_backward.
template <typename T, bool HARD>
inline T gate(T u) {
  if (HARD) {
    const T h = u * T(1.0 / 6.0) + T(0.5);
    return h < T(0) ? T(0) : (h > T(1) ? T(1) : h);
  }
  return T(1) / (T(1) + exp_approx(-u));
}

template <typename T, bool HARD>
inline T gate_slope(T u, T s) {
  if (HARD) return (u > T(-3) && u < T(3)) ? T(1.0 / 6.0) : T(0);
  return s * (T(1) - s);
}

template <typename T, bool FULL, bool HARD>
void forward_span(const T* __restrict xp, const T* __restrict bp, T d, T q, int64_t len, T* __restrict yp) {
  const T b0 = bp[0];
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const T dx = d * xp[i];
    yp[i] = dx * gate<T, HARD>((FULL ? bp[i] : b0) * dx) + q * xp[i];
  }
}

// One pass over a chunk: dx, and the sums of g*x*t (dp1), g*x (dp1 + dp2) and g*s'(u)*(d x)^2
// (dbeta; written per element when FULL). Sums run in T within a chunk (SIMD lanes make each a
// sum of at most CHUNK / 8 terms); chunks are added in double by the caller.
template <typename T, bool FULL, bool HARD>
void backward_span(const T* __restrict gp, const T* __restrict xp, const T* __restrict bp, T d, T q,
                   int64_t len, T* __restrict gxp, T* __restrict gbp, double* sums) {
  const T b0 = bp[0];
  T sa = 0, sb = 0, sc = 0;
#pragma omp simd reduction(+ : sa, sb, sc)
  for (int64_t i = 0; i < len; ++i) {
    const T dx = d * xp[i], u = (FULL ? bp[i] : b0) * dx, s = gate<T, HARD>(u);
    const T sp = gate_slope<T, HARD>(u, s), t = s + u * sp, gi = gp[i];
    gxp[i] = gi * (d * t + q);
    sa += gi * xp[i] * t;
    sb += gi * xp[i];
    if (FULL) {
      gbp[i] = gi * sp * dx * dx;
    } else {
      sc += gi * sp * dx * dx;
    }
  }
  sums[0] = sa;
  sums[1] = sb;
  sums[2] = sc;
}

// Work item w is a chunk of one (n, c) plane: its channel, element offset, length, and the
// offset of its beta (the plane's for per-plane beta, the chunk's for per-element beta).
struct Item {
  int64_t c, off, len, boff;
  Item(int64_t w, int64_t C, int64_t HW, int64_t chunk, int full) {
    const int64_t per_plane = (HW + chunk - 1) / chunk, start = (w % per_plane) * chunk, plane = w / per_plane;
    c = plane % C;
    off = plane * HW + start;
    len = HW - start < chunk ? HW - start : chunk;
    boff = full ? off : plane;
  }
};

// Runs fn(w, item) over all work items. schedule(static): every call gives each thread the same
// contiguous run of items (no shared counter to contend on, the same memory per thread each call).
template <typename F>
void each_item(int64_t items, int64_t C, int64_t HW, int64_t chunk, int full, int threads, F fn) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t w = 0; w < items; ++w) fn(w, Item(w, C, HW, chunk, full));
}

// p1, p2 are per channel and beta is per plane (full == 0) or per element (full == 1).
template <typename T, bool HARD>
void forward(const T* x, const T* p1, const T* p2, const T* beta, int full, int64_t C, int64_t HW,
             int64_t chunk, int64_t items, T* y, int threads) {
  each_item(items, C, HW, chunk, full, threads, [&](int64_t, const Item& it) {
    auto span = full ? forward_span<T, true, HARD> : forward_span<T, false, HARD>;
    span(x + it.off, beta + it.boff, p1[it.c] - p2[it.c], p2[it.c], it.len, y + it.off);
  });
}

template <typename T, bool HARD>
void backward(const T* g, const T* x, const T* p1, const T* p2, const T* beta, int full, int64_t C,
              int64_t HW, int64_t chunk, int64_t items, T* gx, T* gbeta, double* partial, int threads) {
  each_item(items, C, HW, chunk, full, threads, [&](int64_t w, const Item& it) {
    auto span = full ? backward_span<T, true, HARD> : backward_span<T, false, HARD>;
    span(g + it.off, x + it.off, beta + it.boff, p1[it.c] - p2[it.c], p2[it.c], it.len, gx + it.off,
         full ? gbeta + it.off : nullptr, partial + 3 * w);
  });
}

}  // namespace

#define ACON_EXPORT(T, SUFFIX)                                                                        \
  extern "C" void acon_c_forward_##SUFFIX(const T* x, const T* p1, const T* p2, const T* beta,        \
                                          int full, int64_t C, int64_t HW, int64_t chunk,             \
                                          int64_t items, T* y, int threads, int hard) {               \
    if (hard) {                                                                                       \
      forward<T, true>(x, p1, p2, beta, full, C, HW, chunk, items, y, threads);                       \
    } else {                                                                                          \
      forward<T, false>(x, p1, p2, beta, full, C, HW, chunk, items, y, threads);                      \
    }                                                                                                 \
  }                                                                                                   \
  extern "C" void acon_c_backward_##SUFFIX(const T* g, const T* x, const T* p1, const T* p2,          \
                                           const T* beta, int full, int64_t C, int64_t HW,            \
                                           int64_t chunk, int64_t items, T* gx, T* gbeta,             \
                                           double* partial, int threads, int hard) {                  \
    if (hard) {                                                                                       \
      backward<T, true>(g, x, p1, p2, beta, full, C, HW, chunk, items, gx, gbeta, partial, threads);  \
    } else {                                                                                          \
      backward<T, false>(g, x, p1, p2, beta, full, C, HW, chunk, items, gx, gbeta, partial, threads); \
    }                                                                                                 \
  }

ACON_EXPORT(float, f32)
ACON_EXPORT(double, f64)
