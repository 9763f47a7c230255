// The selective-scan forward as a small native kernel (C ABI), built and loaded with ctypes by native_kernel.py
// for the torch backend (ops/scan_native.py) and the ONNX Runtime custom ops (onnx_scan_ops.py); and, sharing its
// threads, the decoder's 2x bilinear upsampling of channels-last maps (ops/upsample.py; at the end of this file).
//
// Same jobs, chunks and passes as the numba forward (scan_numba.py, `_forward_job`): a job is one (batch row,
// block of 16 channels) and all its scan sets, or one set where the sets are independent; time runs in chunks
// of 64 steps. Pass 1 gathers the chunk's delta (or forms it from its low-rank factors, as the model's dt
// projection makes it) and u time-major through the order table and computes softplus(delta + bias) and
// delta * u; pass 2 runs the recurrence with the 16 channels as the lanes of one vector; pass 3 adds the D skip
// and writes y back into position order (summed over the sets if merged).
// Where the positions are contiguous in memory (a row-major map's rows), 16 steps at neighbouring positions are
// read and written as one 16 x 16 tile transposed in registers; a set whose order jumps (the column-major
// cross-scan directions) first copies its rows of delta, u, B and C into step order (see in_step_order).
//
// Why it beats numba: the 16 states of h and the partial sums of y stay in vector registers across the state
// loop (N is a compile-time constant for the model's N = 16, and 4), the decay 2**x is an inline polynomial
// on whole vectors, and channels-last rows (the model's maps) are read and written as whole vectors.
// The vectors are GCC/Clang vector extensions: one AVX-512 register with -march=native on such a CPU, two AVX
// or four NEON registers elsewhere; no intrinsics, so the one source builds on x86-64 and aarch64 alike.
//
// Numerics: float32 state; bfloat16 / float16 inputs are widened as they are read; y is float32.
// 2**x is accurate to ~2 ulp, and exactly 0 below 2**-127 (delta * A -> -inf decays to 0, never NaN).
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include <unistd.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int W = 16;      // channels per block: the lanes of one vector
constexpr int CHUNK = 64;  // steps per chunk
constexpr float LOG2E = 1.4426950408889634f;

typedef float V __attribute__((vector_size(W * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(W * sizeof(int32_t))));

enum Kind { F32 = 0, BF16 = 1, F16 = 2 };  // how the input elements are stored

inline V splat(float s) { return V{} + s; }

// 2**x = 2**k * 2**r, k = round(x), |r| <= 1/2; degree-6 polynomial for 2**r fitted for relative error
// (1.9e-9, numba's _exp2: a degree-5 fit's 7.5e-8 is a bias that long scans with slow decay accumulate).
// Below 2**-126 the result is exactly 0: delta * A -> -inf decays to 0, never NaN, never to a subnormal.
inline V exp2_poly(V r) {
  V p = splat(1.534581159098134e-04f);
  p = p * r + 1.339993121587637e-03f;
  p = p * r + 9.618488958643395e-03f;
  p = p * r + 5.550328776975366e-02f;
  p = p * r + 2.4022646890619875e-01f;
  p = p * r + 6.931472057372625e-01f;
  return p * r + 1.0000000005541676f;
}

#ifdef __AVX512F__
inline __m512 m512(V v) { return reinterpret_cast<__m512>(v); }
inline V vec(__m512 v) { return reinterpret_cast<V>(v); }

// k by one rounding instruction, 2**k * p by one vscalefps: 9 instructions. Below -126 (-inf included) the
// lanes are set to 0 by the mask; NaN stays NaN.
inline V exp2v(V x) {
  __mmask16 normal = _mm512_cmp_ps_mask(m512(x), _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
  __m512 k = _mm512_roundscale_ps(m512(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return vec(_mm512_maskz_scalef_ps(normal, m512(exp2_poly(x - vec(k))), k));
}
#else
// Portable: k + 127 appears in the low bits of x + M (M = 1.5 * 2**23 + 127), 2**k from those bits.
inline V exp2v(V x) {
  x = x < -127.0f ? splat(-127.0f) : x;  // k = -127: exponent bits 0, the result is exactly 0
  x = x > 127.0f ? splat(127.0f) : x;
  const V magic = splat(12583039.0f);
  V t = x + magic;  // rounded to an integer: 1.5 * 2**23 + 127 + k
  V k = t - magic;
  VI bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits <<= 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return exp2_poly(x - k) * scale;
}
#endif

// log(1 + exp(x)) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e) in
// [0, 1/3], series to s**13 (error < 1e-8), as numba's _softplus.
inline V softplusv(V x) {
  V ax = x < 0.0f ? -x : x;
  V e = exp2v(-ax * LOG2E);
  V s = e / (2.0f + e);
  V s2 = s * s;
  V p = splat(1.0f / 13.0f);
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  V pos = x > 0.0f ? x : splat(0.0f);
  return pos + 2.0f * s * p;
}

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

template <int KIND>
inline float widen(const void* base, int64_t i) {
  if (KIND == F32) return static_cast<const float*>(base)[i];
  uint32_t h = static_cast<const uint16_t*>(base)[i];
  if (KIND == BF16) return bits_to_float(h << 16);
  uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2**-24
    float v = static_cast<float>(mantissa) * 5.960464477539063e-08f;
    return sign ? -v : v;
  }
  if (exponent == 31) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));  // inf or nan
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace

extern "C" {

// Shapes, with K scan sets of `per` channels each (as scan_numba's kernels; strides in elements):
//   u (batch, Cu, P): set k, channel c reads u channel k * u_step + c (u_step = per, or 0 if shared)
//   delta (batch, K * per, P); A (K * per, N) float32 contiguous; B, C (batch, G, N, P): set k reads B group k,
//   C group c_group[k]; Dskip (or null: no skip term), bias (K * per,) float32 contiguous; order (rows, L) int64 contiguous: step t of
//   set k reads position order[k % rows, t]; out (batch, Co, P) float32: step t of set k, channel c goes to out
//   channel k * out_step + c at position order[k % rows, t] (summed over the sets if out_step is 0).
//   dt_low (or null: delta is read): delta given by its factors, as the model's dt projection makes it: set k,
//   channel c at position p is sum over r < dt_rank of dt_weight[k * per + c, r] * dt_low(batch, p, k, r);
//   dt_low (batch, P, K, dt_rank) in the kind of u, dt_weight (K * per, dt_rank) float32 contiguous.
struct SigmaScanArgs {
  const void* u;
  int64_t u_stride[3];
  const void* delta;
  int64_t delta_stride[3];
  const float* A;
  const void* B;
  int64_t B_stride[4];
  const void* C;
  int64_t C_stride[4];
  const float* Dskip;
  const float* bias;
  const int64_t* order;
  int64_t order_rows, length;
  const int64_t* c_group;
  int64_t sets, per, n_state, batch, u_step, out_step;
  float* out;
  int64_t out_stride[3];
  int32_t kind, softplus, threads;
  const void* dt_low;
  int64_t dt_low_stride[4];
  const float* dt_weight;
  int64_t dt_rank;
};

int sigma_scan_abi_version(void) { return 3; }

}  // extern "C"

namespace {

bool sets_in_parallel(const SigmaScanArgs& a) { return a.u_step != 0 && a.out_step != 0; }

// Jobs: (batch row, span of channel blocks), and x sets where the sets are independent (each reads its own u
// channels and writes its own out channels: the plain grouped scan); otherwise (a map's directions sharing u,
// merged outputs) one job runs all sets in turn and owns its channels alone. One thread takes every block of a
// row in one job (span = all blocks): per chunk, the blocks then read neighbouring memory (a channels-last
// row, one page) and share one gather of B and C. With several threads the blocks are split into spans: one
// job per thread where that splits evenly, else about two per thread.
struct Jobs {
  int64_t blocks, span, spans, count;
};

Jobs job_layout(const SigmaScanArgs& a) {
  Jobs j;
  j.blocks = (a.per + W - 1) / W;
  const int64_t rows = a.batch * (sets_in_parallel(a) ? a.sets : 1);
  int64_t parts = 1;
  if (a.threads > 1 && rows < 2 * a.threads) {
    // One job per thread where the rows split into equal jobs that way: each job then shares one B/C gather over
    // more blocks, as one thread does (nano's 64-channel scans, 2 threads: 4 jobs of 1 block scaled 1.3x);
    // else about two per thread, so that uneven jobs still balance.
    const int64_t even = (a.threads + rows - 1) / rows;
    parts = (rows * even) % a.threads == 0 && j.blocks % even == 0
                ? even
                : std::min<int64_t>(j.blocks, (2 * a.threads + rows - 1) / rows);
  }
  j.span = (j.blocks + parts - 1) / parts;
  j.spans = (j.blocks + j.span - 1) / j.span;
  j.count = rows * j.spans;
  return j;
}

// Whether a set's step order jumps through memory: more than 1 step in 8 moves to a position other than a
// neighbour (the column-major cross-scan directions, W positions a step).
bool order_jumps(const int64_t* order, int64_t length) {
  int64_t jumps = 0;
  for (int64_t t = 1; t < length; ++t) jumps += std::abs(order[t] - order[t - 1]) > 1;
  return jumps * 8 > length;
}

// One input as a scan set reads it: element (row r, step t) at x[base + r * row + pos[t] * step], pos the set's
// order, or the steps 0, 1, 2, ... themselves where the rows were copied into step order (steps_in_order).
struct Rows {
  const void* x;
  int64_t base, row, step;
  bool steps_in_order;
};

// Scratch memory, left uninitialised (every element read is written first; std::vector would zero megabytes).
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> owner;
  T* data = nullptr;
  size_t size = 0;
  void reserve(size_t n) {
    if (n > size) owner.reset(new T[n]), data = owner.get(), size = n;
  }
};

// A set's rows [0, rows) of `in`, copied into buf in step order (rows x length, elements of type T): where the
// order jumps and a row's positions are contiguous in memory, reading a chunk's steps in place touches one cache
// line per element (16 channels x 64 steps: 1024 lines, reused only a column later, after megabytes), copied
// they are read as whole lines. One pass per row (a row of the largest map, 75 KB, stays in L2 meanwhile).
template <typename T>
Rows in_step_order(const Rows& in, int64_t rows, const int64_t* order, int64_t length, bool jumps,
                   Buffer<T>& buf) {
  if (in.row == 1 || !jumps) return in;  // rows of one step are contiguous: nothing to gain
  buf.reserve(static_cast<size_t>(rows * length));
  const T* x = static_cast<const T*>(in.x) + in.base;
  for (int64_t r = 0; r < rows; ++r) {
    const T* from = x + r * in.row;
    T* to = buf.data + r * length;
    for (int64_t t = 0; t < length; ++t) to[t] = from[order[t] * in.step];
  }
  return Rows{buf.data, 0, length, 1, true};
}

// A hint to bring rows [r0, r0 + width) of an input at the chunk's steps into the caches, by cache lines, for
// either layout: rows contiguous (a channels-last map: one line per step) or positions contiguous (one line per
// row and run of 16 steps, or per step where the order jumps). Why: a chunk reads 16 channels at 64 steps, rows
// far apart in memory; the hardware prefetchers do not follow that many streams.
void prefetch_rows(const Rows& in, int item, int64_t r0, int width, const int64_t* pos, int steps) {
  const char* base = static_cast<const char*>(in.x) + (in.base + r0 * in.row) * item;
  if (in.row == 1) {
    for (int t = 0; t < steps; ++t) {
      const char* row = base + pos[t] * in.step * item;
      __builtin_prefetch(row);
      __builtin_prefetch(row + (width - 1) * item);
    }
  } else if (in.step == 1) {
    for (int c = 0; c < width; ++c) {
      const char* row = base + c * in.row * item;
      for (int t = 0; t < steps; t += 16) {
        const int last = std::min(t + 15, steps - 1);
        if (std::abs(pos[last] - pos[t]) == last - t) {
          __builtin_prefetch(row + std::min(pos[t], pos[last]) * item);
          __builtin_prefetch(row + std::max(pos[t], pos[last]) * item);
        } else {
          for (int i = t; i <= last; ++i) __builtin_prefetch(row + pos[i] * item);
        }
      }
    }
  }
}

#ifdef __AVX512F__
// 1 where the 16 positions pos[0..15] ascend by one, -1 where they descend by one, else 0.
inline int contiguous_run(const int64_t* pos) {
  bool up = true, down = true;
  for (int i = 1; i < W; ++i) {
    up &= pos[i] == pos[0] + i;
    down &= pos[i] == pos[0] - i;
  }
  return up ? 1 : (down ? -1 : 0);
}

// In-register transpose of a 16 x 16 float32 tile: r[i] lane j becomes r[j] lane i.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: rows 2i, 2i + 1 interleaved
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // r[4i + j], 128-bit lane L: rows 4i..4i+3 at column 4L + j
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // 128-bit lanes regrouped across rows, twice
    t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
    t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
  }
}
#endif

// Gathers a chunk's rows [r0, r0 + width) of an input time-major into buf[t][c]; padding lanes 0.
template <int KIND>
void gather(const Rows& in, int64_t r0, int width, const int64_t* pos, int steps, V* buf) {
  const void* x = in.x;
  const int64_t base = in.base + r0 * in.row;
  if (KIND == F32 && in.row == 1 && width == W) {  // channels-last: each step is one contiguous row
    const float* x0 = static_cast<const float*>(x) + base;
    for (int t = 0; t < steps; ++t) std::memcpy(&buf[t], x0 + pos[t] * in.step, sizeof(V));
    return;
  }
  if (KIND != F32 && width == W) {  // half types: 16 lanes of one step widened together (vectorises)
    for (int t = 0; t < steps; ++t) {
      const int64_t at = base + pos[t] * in.step;
      V v;
      for (int c = 0; c < W; ++c) v[c] = widen<KIND>(x, at + c * in.row);
      buf[t] = v;
    }
    return;
  }
#ifdef __AVX512F__
  if (KIND == F32 && width == W && in.row * (W - 1) < INT32_MAX) {  // 16 channels of one step: one gather
    const float* x0 = static_cast<const float*>(x) + base;
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(static_cast<int32_t>(in.row)));
    int t = 0;
    if (in.step == 1) {  // positions contiguous: 16 steps at neighbouring positions as one 16 x 16 tile
      for (; t + W <= steps; t += W) {
        const int run = contiguous_run(pos + t);
        if (run == 0) {
          for (int i = t; i < t + W; ++i) buf[i] = vec(_mm512_i32gather_ps(lanes, x0 + pos[i], 4));
          continue;
        }
        __m512 tile[W];
        const float* first = x0 + (run > 0 ? pos[t] : pos[t + W - 1]);
#pragma GCC unroll 16
        for (int c = 0; c < W; ++c) tile[c] = _mm512_loadu_ps(first + c * in.row);
        transpose16(tile);  // tile[j]: the 16 channels at position first + j
#pragma GCC unroll 16
        for (int j = 0; j < W; ++j) buf[run > 0 ? t + j : t + W - 1 - j] = vec(tile[j]);
      }
    }
    for (; t < steps; ++t) buf[t] = vec(_mm512_i32gather_ps(lanes, x0 + pos[t] * in.step, 4));
    return;
  }
#endif
  for (int t = 0; t < steps; ++t) buf[t] = V{};
  for (int c = 0; c < width; ++c)
    for (int t = 0; t < steps; ++t) buf[t][c] = widen<KIND>(x, base + c * in.row + pos[t] * in.step);
}

template <int NS, int KIND>
void forward_job(const SigmaScanArgs& a, const Jobs& jobs, int64_t job) {
  const int n = NS > 0 ? NS : static_cast<int>(a.n_state);
  const int64_t span_index = job % jobs.spans, row = job / jobs.spans;
  int64_t b, first_set, end_set;
  if (sets_in_parallel(a)) {
    b = row / a.sets;
    first_set = row % a.sets;
    end_set = first_set + 1;
  } else {
    b = row;
    first_set = 0;
    end_set = a.sets;
  }
  const int64_t first_block = span_index * jobs.span;
  const int span = static_cast<int>(std::min(jobs.span, jobs.blocks - first_block));

  alignas(64) V dt_buf[CHUNK], u_buf[CHUNK], du_buf[CHUNK], y_buf[CHUNK];
  std::vector<float> bc(2 * CHUNK * n);  // B and C of the chunk: B of state s at step t: bc[s * CHUNK + t], C after
  // Per block of the span: the state h, A * log2(e) (n vectors each), the bias and the D skip; with delta as
  // factors, the block's dt_weight (dt_rank vectors) and the chunk's dt_low (dt_low_buf[r * CHUNK + t]).
  const int rank = a.dt_low ? static_cast<int>(a.dt_rank) : 0;
  std::vector<V> h_all(static_cast<size_t>(span) * n), a_all(static_cast<size_t>(span) * n), bias_all(span),
      dskip_all(span), w_all(static_cast<size_t>(span) * rank);
  std::vector<float> dt_low_buf(static_cast<size_t>(rank) * CHUNK);
  V h_fixed[NS > 0 ? NS : 1];
  std::vector<V> h_dyn(NS > 0 ? 0 : n);
  V* h = NS > 0 ? h_fixed : h_dyn.data();
  const int64_t* Bs = a.B_stride;
  const int64_t* Cs = a.C_stride;
  const int item = KIND == F32 ? 4 : 2;
  // The job's rows of delta, u, B and C in step order, for sets whose order jumps (see in_step_order).
  using Item = typename std::conditional<KIND == F32, float, uint16_t>::type;
  Buffer<Item> delta_steps, u_steps, b_steps, c_steps;
  std::vector<int64_t> steps_order;  // 0, 1, 2, ...: the positions of inputs copied into step order
  const int64_t first_channel = first_block * W, channels = std::min<int64_t>(span * W, a.per - first_channel);

  for (int64_t k = first_set; k < end_set; ++k) {
    const int64_t* order = a.order + (k % a.order_rows) * a.length;
    for (int i = 0; i < span; ++i) {
      const int64_t ch0 = k * a.per + (first_block + i) * W;
      const int width = static_cast<int>(std::min<int64_t>(W, a.per - (first_block + i) * W));
      V* av = &a_all[static_cast<size_t>(i) * n];
      V* wv = w_all.data() + static_cast<size_t>(i) * rank;  // not &w_all[...]: w_all is empty without factors
      bias_all[i] = V{};
      dskip_all[i] = V{};
      for (int s = 0; s < n; ++s) av[s] = V{}, h_all[static_cast<size_t>(i) * n + s] = V{};
      for (int r = 0; r < rank; ++r) wv[r] = V{};
      for (int c = 0; c < width; ++c) {
        bias_all[i][c] = a.bias[ch0 + c];
        dskip_all[i][c] = a.Dskip ? a.Dskip[ch0 + c] : 0.0f;
        for (int s = 0; s < n; ++s) av[s][c] = a.A[(ch0 + c) * a.n_state + s] * LOG2E;
        for (int r = 0; r < rank; ++r) wv[r][c] = a.dt_weight[(ch0 + c) * rank + r];
      }
    }
    const bool jumps = order_jumps(order, a.length);
    // Rows: delta and u the job's channels of the set, B and C the states of the set's groups.
    const int64_t* ds = a.delta_stride;
    const int64_t* us = a.u_stride;
    const Rows delta = rank ? Rows{nullptr, 0, 0, 0, false}
                            : in_step_order(Rows{a.delta, b * ds[0] + (k * a.per + first_channel) * ds[1], ds[1],
                                                 ds[2], false}, channels, order, a.length, jumps, delta_steps);
    const int64_t* ls = a.dt_low_stride;
    const Rows dt_low{a.dt_low, b * ls[0] + k * ls[2], ls[3], ls[1], false};  // rows: the ranks
    const Rows u = in_step_order(Rows{a.u, b * us[0] + (k * a.u_step + first_channel) * us[1], us[1], us[2], false},
                                 channels, order, a.length, jumps, u_steps);
    const Rows B = in_step_order(Rows{a.B, b * Bs[0] + k * Bs[1], Bs[2], Bs[3], false}, n, order, a.length, jumps, b_steps);
    const Rows C = in_step_order(Rows{a.C, b * Cs[0] + a.c_group[k] * Cs[1], Cs[2], Cs[3], false}, n, order, a.length,
                                 jumps, c_steps);
    const Rows out_rows{a.out, b * a.out_stride[0] + (k * a.out_step + first_channel) * a.out_stride[1],
                        a.out_stride[1], a.out_stride[2], false};
    if ((delta.steps_in_order || u.steps_in_order || B.steps_in_order || C.steps_in_order) && steps_order.empty()) {
      steps_order.resize(static_cast<size_t>(a.length));
      for (int64_t t = 0; t < a.length; ++t) steps_order[t] = t;
    }
    auto positions = [&](const Rows& in) { return in.steps_in_order ? steps_order.data() : order; };
    for (int64_t t0 = 0; t0 < a.length; t0 += CHUNK) {
      const int steps = static_cast<int>(std::min<int64_t>(CHUNK, a.length - t0));
      const int64_t* pos = order + t0;
      const int ahead_steps = static_cast<int>(std::min<int64_t>(CHUNK, std::max<int64_t>(0, a.length - t0 - CHUNK)));
      // The rows of block i (of this chunk, or of the next one's first block), one block ahead of their use: a
      // block's work covers the memory latency, and what is fetched (16 channels x 64 steps) stays in the caches.
      // at: the chunk's first step (t0, or t0 + CHUNK for the next chunk)
      auto prefetch_block = [&](int i, int64_t at, int count) {
        const int64_t r0 = i * W;
        const int width = static_cast<int>(std::min<int64_t>(W, channels - r0));
        if (!rank) prefetch_rows(delta, item, r0, width, positions(delta) + at, count);
        prefetch_rows(u, item, r0, width, positions(u) + at, count);
        prefetch_rows(out_rows, 4, r0, width, order + at, count);
      };
      if (ahead_steps > 0) {  // B and C (and dt_low) of the next chunk, while this one computes
        prefetch_rows(B, item, 0, n, positions(B) + t0 + CHUNK, ahead_steps);
        prefetch_rows(C, item, 0, n, positions(C) + t0 + CHUNK, ahead_steps);
        if (rank) prefetch_rows(dt_low, item, 0, rank, order + t0 + CHUNK, ahead_steps);
      }
      // B and C of the chunk, once for all blocks of the span.
      const int64_t* b_pos = positions(B) + t0;
      const int64_t* c_pos = positions(C) + t0;
      for (int s = 0; s < n; ++s)
        for (int t = 0; t < steps; ++t) {
          bc[s * CHUNK + t] = widen<KIND>(B.x, B.base + s * B.row + b_pos[t] * B.step);
          bc[(n + s) * CHUNK + t] = widen<KIND>(C.x, C.base + s * C.row + c_pos[t] * C.step);
        }
      for (int r = 0; r < rank; ++r)  // dt_low of the chunk, likewise once for all blocks
        for (int t = 0; t < steps; ++t)
          dt_low_buf[r * CHUNK + t] = widen<KIND>(dt_low.x, dt_low.base + r * dt_low.row + pos[t] * dt_low.step);
      for (int i = 0; i < span; ++i) {
        if (i + 1 < span) {
          prefetch_block(i + 1, t0, steps);
        } else if (ahead_steps > 0) {
          prefetch_block(0, t0 + CHUNK, ahead_steps);
        }
        const int64_t c0 = (first_block + i) * W;
        const int width = static_cast<int>(std::min<int64_t>(W, a.per - c0));
        const V bias = bias_all[i], dskip = dskip_all[i];
        const V* av = &a_all[static_cast<size_t>(i) * n];
        // Pass 1: the block's inputs, time-major; delta from its factors: dt_rank products per step, where reading
        // a written delta would cost a (channels x positions) tensor through memory twice.
        if (rank) {
          const V* wv = w_all.data() + static_cast<size_t>(i) * rank;
          for (int t = 0; t < steps; ++t) {
            V dt = wv[0] * dt_low_buf[t];
            for (int r = 1; r < rank; ++r) dt += wv[r] * dt_low_buf[r * CHUNK + t];
            dt_buf[t] = dt;
          }
        } else {
          gather<KIND>(delta, i * W, width, positions(delta) + t0, steps, dt_buf);
        }
        gather<KIND>(u, i * W, width, positions(u) + t0, steps, u_buf);
        for (int t = 0; t < steps; ++t) {
          V dt = dt_buf[t] + bias;
          if (a.softplus) dt = softplusv(dt);
          dt_buf[t] = dt;
          du_buf[t] = dt * u_buf[t];
        }
        // Pass 2: the recurrence; h and four partial sums of y stay in registers across the states.
        V* h_saved = &h_all[static_cast<size_t>(i) * n];
        for (int s = 0; s < n; ++s) h[s] = h_saved[s];
        for (int t = 0; t < steps; ++t) {
          const V dt = dt_buf[t], du = du_buf[t];
          const float* bt = &bc[t];
          const float* ct = bt + n * CHUNK;
          V y0 = V{}, y1 = V{}, y2 = V{}, y3 = V{};
#pragma GCC unroll 16
          for (int s = 0; s < n; ++s) {
            V hs = exp2v(dt * av[s]) * h[s] + du * bt[s * CHUNK];
            h[s] = hs;
            V term = hs * ct[s * CHUNK];
            switch (s & 3) {
              case 0: y0 += term; break;
              case 1: y1 += term; break;
              case 2: y2 += term; break;
              default: y3 += term; break;
            }
          }
          y_buf[t] = (y0 + y1) + (y2 + y3);
          if (a.Dskip) y_buf[t] += dskip * u_buf[t];  // no D: no 0 * u term (0 * inf would make -inf NaN)
        }
        for (int s = 0; s < n; ++s) h_saved[s] = h[s];
        // Pass 3: back into position order; merged sets: the first writes, the others add.
        const bool add = a.out_step == 0 && k > 0;
        const int64_t* os = a.out_stride;
        float* out = a.out + b * os[0] + (k * a.out_step + c0) * os[1];
        if (os[1] == 1 && width == W && !add) {
          for (int t = 0; t < steps; ++t) std::memcpy(out + pos[t] * os[2], &y_buf[t], sizeof(V));
        } else if (os[1] == 1 && width == W) {
          for (int t = 0; t < steps; ++t) {
            V o;
            std::memcpy(&o, out + pos[t] * os[2], sizeof(V));
            o += y_buf[t];
            std::memcpy(out + pos[t] * os[2], &o, sizeof(V));
          }
#ifdef __AVX512F__
        } else if (width == W && os[1] * (W - 1) < INT32_MAX) {  // 16 channels of one step: one scatter
          const __m512i lanes = _mm512_mullo_epi32(
              _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
              _mm512_set1_epi32(static_cast<int32_t>(os[1])));
          auto scatter = [&](int t) {
            float* o = out + pos[t] * os[2];
            __m512 y = m512(y_buf[t]);
            if (add) y = _mm512_add_ps(y, _mm512_i32gather_ps(lanes, o, 4));
            _mm512_i32scatter_ps(o, lanes, y, 4);
          };
          int t = 0;
          if (os[2] == 1) {  // positions contiguous: 16 steps at neighbouring positions as one 16 x 16 tile
            for (; t + W <= steps; t += W) {
              const int run = contiguous_run(pos + t);
              if (run == 0) {
                for (int i = t; i < t + W; ++i) scatter(i);
                continue;
              }
              __m512 tile[W];
#pragma GCC unroll 16
              for (int j = 0; j < W; ++j) tile[j] = m512(y_buf[run > 0 ? t + j : t + W - 1 - j]);
              transpose16(tile);  // tile[c]: channel c at positions first, first + 1, ...
              float* first = out + (run > 0 ? pos[t] : pos[t + W - 1]);
#pragma GCC unroll 16
              for (int c = 0; c < W; ++c) {
                __m512 y = tile[c];
                if (add) y = _mm512_add_ps(y, _mm512_loadu_ps(first + c * os[1]));
                _mm512_storeu_ps(first + c * os[1], y);
              }
            }
          }
          for (; t < steps; ++t) scatter(t);
#endif
        } else {
          for (int c = 0; c < width; ++c)
            for (int t = 0; t < steps; ++t) {
              float& o = out[c * os[1] + pos[t] * os[2]];
              o = add ? o + y_buf[t][c] : y_buf[t][c];
            }
        }
      }
    }
  }
}

template <int KIND>
void run_job(const SigmaScanArgs& a, const Jobs& jobs, int64_t job) {
  switch (a.n_state) {
    case 16: return forward_job<16, KIND>(a, jobs, job);
    case 4: return forward_job<4, KIND>(a, jobs, job);
    default: return forward_job<0, KIND>(a, jobs, job);
  }
}

// One in_parallel call's work and counter, shared by its threads; an item that throws (memory) sets `failed`
// instead of leaving the thread.
template <typename Work>
struct Shared {
  Work& work;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};

  void run() {
    try {
      for (int64_t i = next++; i < count; i = next++) work(i);
    } catch (const std::exception&) {
      failed = true;
    }
  }
  static void team_member(void* self) { static_cast<Shared*>(self)->run(); }
};

}  // namespace

// libgomp's entry for `#pragma omp parallel` (its stable ABI since GCC 4.9), taken from the process when an
// OpenMP runtime is already loaded there (torch's, for the torch backend), else null: no link flag, no runtime
// of our own. Why: after each of torch's parallel ops its OpenMP worker spins for a while on the other core; a
// thread started here then shares that core with the spinner (nano, 2 threads: a stage-3 scan right after an
// elementwise op took 11 ms against 7.5 ms alone). Run on torch's own team, the items start at once and
// no third thread competes for 2 cores. Same items either way, so the output is bit-equal.
extern "C" void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags)
    __attribute__((weak));
// libgomp's team does not survive fork (a forked child waits forever on the parent's threads): in a child,
// threads are started here as before. A child knows it is one by its pid where this library was loaded before the
// fork, else by sigma_forked_child(), which native_kernel.py calls when the library is first loaded in a child.
const pid_t loaded_in_process = getpid();
std::atomic<bool> in_forked_child{false};

extern "C" void sigma_forked_child(void) { in_forked_child = true; }

namespace {

// Runs work(i) for every i in [0, count) on up to `threads` threads: the calling one and threads - 1 others, which
// take items in turn from a shared counter. Returns false if an item threw.
template <typename Work>
bool in_parallel(int64_t count, int64_t threads, Work&& work) {
  Shared<Work> shared{work, count};
  const int64_t team = std::min<int64_t>(threads, count);
  if (team > 1 && GOMP_parallel != nullptr && getpid() == loaded_in_process && !in_forked_child) {
    // torch's threads, already awake
    GOMP_parallel(Shared<Work>::team_member, &shared, static_cast<unsigned>(team), 0);
    return !shared.failed;
  }
  std::vector<std::thread> workers;
  for (int64_t i = 0; i + 1 < team; ++i) {
    try {  // fewer threads than asked (none could start) still run every item
      workers.emplace_back([&shared] { shared.run(); });
    } catch (const std::exception&) {
      break;
    }
  }
  shared.run();
  for (auto& w : workers) w.join();
  return !shared.failed;
}

}  // namespace

extern "C" {

// Runs the forward on a.threads threads (see in_parallel). Returns 0, or 1 on an invalid argument, 2 if memory ran
// out (out is then incomplete).
int sigma_scan_forward(const SigmaScanArgs* args) {
  const SigmaScanArgs& a = *args;
  if (a.sets <= 0 || a.order_rows <= 0 || a.per <= 0 || a.n_state <= 0 || a.kind < 0 || a.kind > 2) return 1;
  if (a.dt_low && (a.dt_rank <= 0 || a.dt_rank > INT_MAX / CHUNK || !a.dt_weight)) return 1;
  const Jobs jobs = job_layout(a);
  auto job = [&](int64_t j) {
    switch (a.kind) {
      case BF16: return run_job<BF16>(a, jobs, j);
      case F16: return run_job<F16>(a, jobs, j);
      default: return run_job<F32>(a, jobs, j);
    }
  };
  return in_parallel(jobs.count, a.threads, job) ? 0 : 2;
}

// ---- 2x bilinear upsampling of a channels-last map (the decoder's UpsampleHalve and FinalUpsample) ----
//
// torch's channels-last bilinear kernel (torch 2.13) splits its work by batch row only, so a batch of 1 runs on one
// thread: at 480x640 its four calls were 2 % of nano's forward on one thread and 4 % on two. Here the output rows
// are split over the threads. F.interpolate's arithmetic (scale 2, align_corners=False): source index
// max(0, (o + 0.5) / 2 - 0.5) per axis, weights 1 - l and l, the four products summed in float32 in the order of
// torch's vector blocks; bfloat16 widened and rounded once, bit-equal to torch on ordinary maps (not where the four
// neighbours differ in magnitude by 2**15 or more, past torch's last full vector block); float32 within an ulp.

// x: (batch, height, width, channels) of the kind, element strides x_stride, channel stride 1; out: (batch,
// 2 height, 2 width, channels) contiguous, of the same kind (float32 or bfloat16).
struct SigmaUpsampleArgs {
  const void* x;
  int64_t x_stride[4];
  void* out;
  int64_t batch, height, width, channels;
  int32_t kind, threads;
};

}  // extern "C"

namespace {

// Source rows (or columns) and weights of output index o along an axis of n inputs upsampled 2x.
struct Taps {
  int64_t i0, i1;
  float l0, l1;
};

inline Taps taps(int64_t o, int64_t n) {
  const float src = std::max(0.0f, (static_cast<float>(o) + 0.5f) * 0.5f - 0.5f);
  Taps t;
  t.i0 = static_cast<int64_t>(src);
  t.i1 = t.i0 + (t.i0 < n - 1 ? 1 : 0);
  t.l1 = src - static_cast<float>(t.i0);
  t.l0 = 1.0f - t.l1;
  return t;
}

// 16 elements of the kind, widened to float32.
template <int KIND>
inline V load_lanes(const void* p) {
  V v;
  if (KIND == F32) {
    std::memcpy(&v, p, sizeof v);
  } else {  // bfloat16: the upper half of a float32
#ifdef __AVX512F__
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
    return vec(_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
#endif
    const uint16_t* h = static_cast<const uint16_t*>(p);
    uint32_t bits[W];
    for (int i = 0; i < W; ++i) bits[i] = static_cast<uint32_t>(h[i]) << 16;
    std::memcpy(&v, bits, sizeof v);
  }
  return v;
}

// 16 float32 lanes stored as the kind: bfloat16 rounded to nearest even, a NaN kept a (quiet) NaN.
template <int KIND>
inline void store_lanes(void* p, V v) {
  if (KIND == F32) {
    std::memcpy(p, &v, sizeof v);
    return;
  }
#ifdef __AVX512F__
  const __m512i b = _mm512_castps_si512(m512(v));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), odd), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFFFF)),
                                                 _mm512_set1_epi32(0x7F800000));
  _mm256_storeu_si256(static_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet)));
  return;
#endif
  uint32_t bits[W];
  std::memcpy(bits, &v, sizeof bits);
  uint16_t* h = static_cast<uint16_t*>(p);
  for (int i = 0; i < W; ++i) {
    const uint32_t b = bits[i];
    const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16, quiet = (b >> 16) | 0x40u;
    h[i] = static_cast<uint16_t>((b & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
  }
}

// One output row (batch row b, output row oh) of the kind.
template <int KIND>
void upsample_row(const SigmaUpsampleArgs& a, int64_t item) {
  using Item = typename std::conditional<KIND == F32, float, uint16_t>::type;
  const int64_t b = item / (2 * a.height), oh = item % (2 * a.height);
  const Taps h = taps(oh, a.height);
  const int64_t* xs = a.x_stride;
  const Item* x = static_cast<const Item*>(a.x) + b * xs[0];
  const Item* row0 = x + h.i0 * xs[1];
  const Item* row1 = x + h.i1 * xs[1];
  Item* out = static_cast<Item*>(a.out) + item * 2 * a.width * a.channels;
  for (int64_t ow = 0; ow < 2 * a.width; ++ow, out += a.channels) {
    const Taps w = taps(ow, a.width);
    const Item* p00 = row0 + w.i0 * xs[2];
    const Item* p01 = row0 + w.i1 * xs[2];
    const Item* p10 = row1 + w.i0 * xs[2];
    const Item* p11 = row1 + w.i1 * xs[2];
    const float w00 = h.l0 * w.l0, w01 = h.l0 * w.l1, w10 = h.l1 * w.l0, w11 = h.l1 * w.l1;
    auto blend = [&](const Item* q00, const Item* q01, const Item* q10, const Item* q11) {
      return load_lanes<KIND>(q00) * w00 + (load_lanes<KIND>(q01) * w01 + (load_lanes<KIND>(q10) * w10 +
                                                                          load_lanes<KIND>(q11) * w11));
    };
    if (a.channels < W) {  // fewer channels than lanes: through zero-padded copies
      Item q[4][W] = {}, y[W];
      for (int64_t c = 0; c < a.channels; ++c) q[0][c] = p00[c], q[1][c] = p01[c], q[2][c] = p10[c], q[3][c] = p11[c];
      store_lanes<KIND>(y, blend(q[0], q[1], q[2], q[3]));
      std::copy(y, y + a.channels, out);
      continue;
    }
    for (int64_t c = 0; c < a.channels; c += W) {
      c = std::min(c, a.channels - W);  // the last, partial block overlaps the one before (same values again)
      store_lanes<KIND>(out + c, blend(p00 + c, p01 + c, p10 + c, p11 + c));
    }
  }
}

}  // namespace

extern "C" {

// Returns 0, or 1 on invalid arguments (a size below 1, a channel stride other than 1, float16).
int sigma_upsample2x(const SigmaUpsampleArgs* args) {
  const SigmaUpsampleArgs& a = *args;
  if (a.batch < 1 || a.height < 1 || a.width < 1 || a.channels < 1 || a.x_stride[3] != 1) return 1;
  if (a.kind != F32 && a.kind != BF16) return 1;
  auto row = [&](int64_t item) { return a.kind == F32 ? upsample_row<F32>(a, item) : upsample_row<BF16>(a, item); };
  return in_parallel(a.batch * 2 * a.height, a.threads, row) ? 0 : 2;
}

}  // extern "C"
