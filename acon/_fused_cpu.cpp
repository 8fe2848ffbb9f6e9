// The CPU kernel of the fused ACON-C: y = d x * gate(beta d x) + q x with d = p1 - p2, q = p2.
// Plain C++ with OpenMP and no PyTorch headers, so it builds in about a second; acon/_fused_cpu.py
// compiles it on first use and calls it through ctypes. gate 0 is the sigmoid (the paper),
// gate 1 the hard sigmoid clamp(u / 6 + 1/2, 0, 1) (torch's F.hardsigmoid).
#include <cmath>
#include <cstdint>
#include <vector>

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
// sum of at most CHUNK / 8 terms); chunks and planes are added in double by `backward`.
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

// How a call's P = N*C planes of HW elements are cut into work items: a long plane into chunks
// (two threads may share one plane), short planes grouped (a 2-D (N, C) input has HW = 1, and an
// item per element would cost more than the arithmetic).
struct Work {
  int64_t HW, P, chunk, per_plane, group, items;
  Work(int64_t P_, int64_t HW_, int64_t max_chunk) : HW(HW_), P(P_) {
    chunk = HW < max_chunk ? HW : max_chunk;
    per_plane = (HW + chunk - 1) / chunk;
    group = per_plane > 1 ? 1 : (max_chunk / HW > 1 ? max_chunk / HW : 1);
    items = per_plane > 1 ? P * per_plane : (P + group - 1) / group;
  }
  // Item w covers planes [first, last) and, in each, elements [start, start + len). Its k-th plane
  // (k = plane - first) writes partial sums at entry plane * per_plane + w % per_plane.
  void item(int64_t w, int64_t& first, int64_t& last, int64_t& start, int64_t& len) const {
    if (per_plane > 1) {
      first = w / per_plane;
      last = first + 1;
      start = (w % per_plane) * chunk;
      len = HW - start < chunk ? HW - start : chunk;
    } else {
      first = w * group;
      last = first + group < P ? first + group : P;
      start = 0;
      len = HW;
    }
  }
};

// Where a plane's beta lives: bmode 0 per channel (C values), 1 per plane (N*C), 2 per element.
inline int64_t beta_offset(int bmode, int64_t plane, int64_t C, int64_t off) {
  return bmode == 0 ? plane % C : (bmode == 1 ? plane : off);
}

// Runs fn(w, plane, offset, channel, len) on every span of every work item. schedule(static): every
// call gives each thread the same contiguous run of items (no shared counter to contend on, the same
// memory per thread each call).
template <typename F>
void each_span(const Work& wk, int64_t C, int threads, F fn) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t w = 0; w < wk.items; ++w) {
    int64_t first, last, start, len;
    wk.item(w, first, last, start, len);
    for (int64_t pl = first; pl < last; ++pl) fn(w, pl, pl * wk.HW + start, pl % C, len);
  }
}

// p1, p2 have C values.
template <typename T, bool HARD>
void forward(const T* x, const T* p1, const T* p2, const T* beta, int bmode, int64_t P, int64_t C,
             int64_t HW, int64_t max_chunk, T* y, int threads) {
  const auto span = bmode == 2 ? forward_span<T, true, HARD> : forward_span<T, false, HARD>;
  each_span(Work(P, HW, max_chunk), C, threads, [&](int64_t, int64_t pl, int64_t off, int64_t c, int64_t len) {
    span(x + off, beta + beta_offset(bmode, pl, C, off), p1[c] - p2[c], p2[c], len, y + off);
  });
}

// dx per element, then the parameter gradients reduced here (in double) to their own layouts:
// dp1 and dp2 per channel, dbeta per channel, per plane, or (written by the span) per element.
template <typename T, bool HARD>
void backward(const T* g, const T* x, const T* p1, const T* p2, const T* beta, int bmode, int64_t P,
              int64_t C, int64_t HW, int64_t max_chunk, T* gx, T* dp1, T* dp2, T* dbeta, int threads) {
  const Work wk(P, HW, max_chunk);
  std::vector<double> part(3 * P * wk.per_plane);
  const auto span = bmode == 2 ? backward_span<T, true, HARD> : backward_span<T, false, HARD>;
  each_span(wk, C, threads, [&](int64_t w, int64_t pl, int64_t off, int64_t c, int64_t len) {
    span(g + off, x + off, beta + beta_offset(bmode, pl, C, off), p1[c] - p2[c], p2[c], len, gx + off,
         bmode == 2 ? dbeta + off : nullptr, part.data() + 3 * (pl * wk.per_plane + w % wk.per_plane));
  });
  std::vector<double> a(C, 0.0), b(C, 0.0), s(bmode == 0 ? C : 0, 0.0);
  for (int64_t pl = 0; pl < P; ++pl) {
    double sa = 0, sb = 0, sc = 0;
    for (int64_t k = 0; k < wk.per_plane; ++k) {
      const double* e = part.data() + 3 * (pl * wk.per_plane + k);
      sa += e[0];
      sb += e[1];
      sc += e[2];
    }
    const int64_t c = pl % C;
    a[c] += sa;
    b[c] += sb;
    if (bmode == 0) s[c] += sc;
    if (bmode == 1) dbeta[pl] = static_cast<T>(sc);
  }
  for (int64_t c = 0; c < C; ++c) {
    dp1[c] = static_cast<T>(a[c]);
    dp2[c] = static_cast<T>(b[c] - a[c]);
    if (bmode == 0) dbeta[c] = static_cast<T>(s[c]);
  }
}

}  // namespace

#define ACON_EXPORT(T, SUFFIX)                                                                      \
  extern "C" void acon_c_forward_##SUFFIX(const T* x, const T* p1, const T* p2, const T* beta,      \
                                          int bmode, int64_t P, int64_t C, int64_t HW,              \
                                          int64_t max_chunk, T* y, int threads, int hard) {         \
    if (hard) {                                                                                     \
      forward<T, true>(x, p1, p2, beta, bmode, P, C, HW, max_chunk, y, threads);                    \
    } else {                                                                                        \
      forward<T, false>(x, p1, p2, beta, bmode, P, C, HW, max_chunk, y, threads);                   \
    }                                                                                               \
  }                                                                                                 \
  extern "C" void acon_c_backward_##SUFFIX(const T* g, const T* x, const T* p1, const T* p2,        \
                                           const T* beta, int bmode, int64_t P, int64_t C,          \
                                           int64_t HW, int64_t max_chunk, T* gx, T* dp1, T* dp2,    \
                                           T* dbeta, int threads, int hard) {                       \
    if (hard) {                                                                                     \
      backward<T, true>(g, x, p1, p2, beta, bmode, P, C, HW, max_chunk, gx, dp1, dp2, dbeta,        \
                        threads);                                                                   \
    } else {                                                                                        \
      backward<T, false>(g, x, p1, p2, beta, bmode, P, C, HW, max_chunk, gx, dp1, dp2, dbeta,       \
                         threads);                                                                  \
    }                                                                                               \
  }

ACON_EXPORT(float, f32)
ACON_EXPORT(double, f64)
