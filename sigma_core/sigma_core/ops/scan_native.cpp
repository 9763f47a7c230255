// The selective-scan forward as a small native kernel (C ABI, loaded with ctypes by scan_native.py).
//
// Same jobs, chunks and passes as the numba forward (scan_numba.py, `_forward_job`): a job is one (batch row,
// block of 16 channels) and all its scan sets, or one set where the sets are independent; time runs in chunks
// of 64 steps. Pass 1 gathers the chunk's delta and u time-major through the order table and computes
// softplus(delta + bias) and delta * u; pass 2 runs the recurrence with the 16 channels as the lanes of one
// vector; pass 3 adds the D skip and writes y back into position order (summed over the sets if merged).
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
#include <thread>
#include <vector>

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
};

int sigma_scan_abi_version(void) { return 1; }

}  // extern "C"

namespace {

bool sets_in_parallel(const SigmaScanArgs& a) { return a.u_step != 0 && a.out_step != 0; }

// Jobs: (batch row, span of channel blocks), and x sets where the sets are independent (each reads its own u
// channels and writes its own out channels: the plain grouped scan); otherwise (a map's directions sharing u,
// merged outputs) one job runs all sets in turn and owns its channels alone. One thread takes every block of a
// row in one job (span = all blocks): per chunk, the blocks then read neighbouring memory (a channels-last
// row, one page) and share one gather of B and C. With several threads the blocks are split into spans so
// that there are about two jobs per thread.
struct Jobs {
  int64_t blocks, span, spans, count;
};

Jobs job_layout(const SigmaScanArgs& a) {
  Jobs j;
  j.blocks = (a.per + W - 1) / W;
  const int64_t rows = a.batch * (sets_in_parallel(a) ? a.sets : 1);
  int64_t parts = 1;
  if (a.threads > 1 && rows < 2 * a.threads) parts = std::min<int64_t>(j.blocks, (2 * a.threads + rows - 1) / rows);
  j.span = (j.blocks + parts - 1) / parts;
  j.spans = (j.blocks + j.span - 1) / j.span;
  j.count = rows * j.spans;
  return j;
}

// A hint to bring rows [ch, ch + width) of a (batch, channels, P) array at the chunk's positions into the caches,
// by cache lines, for either layout: channels contiguous (a channels-last map: one line per step) or positions
// contiguous (one line per channel and run of 16 steps, or per step where the order jumps). Why: a chunk reads
// 16 channels at 64 steps, rows far apart in memory; the hardware prefetchers do not follow that many streams.
void prefetch_rows(const void* x, int item, const int64_t* s, int64_t b, int64_t ch, int width, const int64_t* pos,
                   int steps) {
  const char* base = static_cast<const char*>(x) + (b * s[0] + ch * s[1]) * item;
  if (s[1] == 1) {
    for (int t = 0; t < steps; ++t) {
      const char* row = base + pos[t] * s[2] * item;
      __builtin_prefetch(row);
      __builtin_prefetch(row + (width - 1) * item);
    }
  } else if (s[2] == 1) {
    for (int c = 0; c < width; ++c) {
      const char* row = base + c * s[1] * item;
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

// Gathers a chunk's rows of a (batch, channels, P) input time-major into buf[t][c]; padding lanes 0.
template <int KIND>
void gather(const void* x, const int64_t* s, int64_t b, int64_t ch, int width, const int64_t* pos, int steps,
            V* buf) {
  if (KIND == F32 && s[1] == 1 && width == W) {  // channels-last: each step is one contiguous row
    const float* base = static_cast<const float*>(x) + b * s[0] + ch;
    for (int t = 0; t < steps; ++t) {
      const float* row = base + pos[t] * s[2];
      std::memcpy(&buf[t], row, sizeof(V));
    }
    return;
  }
  const int64_t base = b * s[0] + ch * s[1];
  if (KIND != F32 && width == W) {  // half types: 16 lanes of one step widened together (vectorises)
    for (int t = 0; t < steps; ++t) {
      const int64_t at = base + pos[t] * s[2];
      V v;
      for (int c = 0; c < W; ++c) v[c] = widen<KIND>(x, at + c * s[1]);
      buf[t] = v;
    }
    return;
  }
#ifdef __AVX512F__
  if (KIND == F32 && width == W && s[1] * (W - 1) < INT32_MAX) {  // 16 channels of one step: one gather
    const float* x0 = static_cast<const float*>(x) + base;
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(static_cast<int32_t>(s[1])));
    for (int t = 0; t < steps; ++t) buf[t] = vec(_mm512_i32gather_ps(lanes, x0 + pos[t] * s[2], 4));
    return;
  }
#endif
  for (int t = 0; t < steps; ++t) buf[t] = V{};
  for (int c = 0; c < width; ++c)
    for (int t = 0; t < steps; ++t) buf[t][c] = widen<KIND>(x, base + c * s[1] + pos[t] * s[2]);
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
  // Per block of the span: the state h, A * log2(e) (n vectors each), the bias and the D skip.
  std::vector<V> h_all(static_cast<size_t>(span) * n), a_all(static_cast<size_t>(span) * n), bias_all(span),
      dskip_all(span);
  V h_fixed[NS > 0 ? NS : 1];
  std::vector<V> h_dyn(NS > 0 ? 0 : n);
  V* h = NS > 0 ? h_fixed : h_dyn.data();
  const int64_t* Bs = a.B_stride;
  const int64_t* Cs = a.C_stride;
  const int item = KIND == F32 ? 4 : 2;

  for (int64_t k = first_set; k < end_set; ++k) {
    const int64_t* order = a.order + (k % a.order_rows) * a.length;
    for (int i = 0; i < span; ++i) {
      const int64_t ch0 = k * a.per + (first_block + i) * W;
      const int width = static_cast<int>(std::min<int64_t>(W, a.per - (first_block + i) * W));
      V* av = &a_all[static_cast<size_t>(i) * n];
      bias_all[i] = V{};
      dskip_all[i] = V{};
      for (int s = 0; s < n; ++s) av[s] = V{}, h_all[static_cast<size_t>(i) * n + s] = V{};
      for (int c = 0; c < width; ++c) {
        bias_all[i][c] = a.bias[ch0 + c];
        dskip_all[i][c] = a.Dskip ? a.Dskip[ch0 + c] : 0.0f;
        for (int s = 0; s < n; ++s) av[s][c] = a.A[(ch0 + c) * a.n_state + s] * LOG2E;
      }
    }
    const int64_t b_base = b * Bs[0] + k * Bs[1], c_base = b * Cs[0] + a.c_group[k] * Cs[1];
    for (int64_t t0 = 0; t0 < a.length; t0 += CHUNK) {
      const int steps = static_cast<int>(std::min<int64_t>(CHUNK, a.length - t0));
      const int64_t* pos = order + t0;
      const int64_t* ahead = pos + CHUNK;
      const int ahead_steps = static_cast<int>(std::min<int64_t>(CHUNK, std::max<int64_t>(0, a.length - t0 - CHUNK)));
      // The rows of block i (of this chunk, or of the next one's first block), one block ahead of their use: a
      // block's work covers the memory latency, and what is fetched (16 channels x 64 steps) stays in the caches.
      auto prefetch_block = [&](int i, const int64_t* at, int count) {
        const int64_t c0 = (first_block + i) * W;
        const int width = static_cast<int>(std::min<int64_t>(W, a.per - c0));
        prefetch_rows(a.delta, item, a.delta_stride, b, k * a.per + c0, width, at, count);
        prefetch_rows(a.u, item, a.u_stride, b, k * a.u_step + c0, width, at, count);
        prefetch_rows(a.out, 4, a.out_stride, b, k * a.out_step + c0, width, at, count);
      };
      if (ahead_steps > 0) {  // B and C of the next chunk, while this one computes
        // B[b] and C[b] as (G, N, P) arrays: "batch" the group, "channels" the states
        prefetch_rows(static_cast<const char*>(a.B) + b * Bs[0] * item, item, Bs + 1, k, 0, n, ahead, ahead_steps);
        prefetch_rows(static_cast<const char*>(a.C) + b * Cs[0] * item, item, Cs + 1, a.c_group[k], 0, n, ahead,
                      ahead_steps);
      }
      // B and C of the chunk, once for all blocks of the span.
      for (int s = 0; s < n; ++s)
        for (int t = 0; t < steps; ++t) {
          bc[s * CHUNK + t] = widen<KIND>(a.B, b_base + s * Bs[2] + pos[t] * Bs[3]);
          bc[(n + s) * CHUNK + t] = widen<KIND>(a.C, c_base + s * Cs[2] + pos[t] * Cs[3]);
        }
      for (int i = 0; i < span; ++i) {
        if (i + 1 < span) {
          prefetch_block(i + 1, pos, steps);
        } else if (ahead_steps > 0) {
          prefetch_block(0, ahead, ahead_steps);
        }
        const int64_t c0 = (first_block + i) * W;
        const int width = static_cast<int>(std::min<int64_t>(W, a.per - c0));
        const V bias = bias_all[i], dskip = dskip_all[i];
        const V* av = &a_all[static_cast<size_t>(i) * n];
        // Pass 1: the block's inputs, time-major.
        gather<KIND>(a.delta, a.delta_stride, b, k * a.per + c0, width, pos, steps, dt_buf);
        gather<KIND>(a.u, a.u_stride, b, k * a.u_step + c0, width, pos, steps, u_buf);
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
          for (int t = 0; t < steps; ++t) {
            float* o = out + pos[t] * os[2];
            __m512 y = m512(y_buf[t]);
            if (add) y = _mm512_add_ps(y, _mm512_i32gather_ps(lanes, o, 4));
            _mm512_i32scatter_ps(o, lanes, y, 4);
          }
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

// Takes jobs from `next` until none is left; an exception (memory) sets `failed` instead of leaving the thread.
void run_jobs(const SigmaScanArgs& a, const Jobs& jobs, std::atomic<int64_t>& next, std::atomic<bool>& failed) {
  try {
    for (int64_t job = next++; job < jobs.count; job = next++) {
      switch (a.kind) {
        case BF16: run_job<BF16>(a, jobs, job); break;
        case F16: run_job<F16>(a, jobs, job); break;
        default: run_job<F32>(a, jobs, job); break;
      }
    }
  } catch (const std::exception&) {
    failed = true;
  }
}

}  // namespace

extern "C" {

// Runs the forward on a.threads threads (the calling one and a.threads - 1 started here, which take jobs in
// turn). Returns 0, or 1 on an invalid argument, 2 if memory ran out (out is then incomplete).
int sigma_scan_forward(const SigmaScanArgs* args) {
  const SigmaScanArgs& a = *args;
  if (a.sets <= 0 || a.order_rows <= 0 || a.per <= 0 || a.n_state <= 0 || a.kind < 0 || a.kind > 2) return 1;
  const Jobs jobs = job_layout(a);
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  const int64_t extra = std::max<int64_t>(0, std::min<int64_t>(a.threads, jobs.count) - 1);
  std::vector<std::thread> workers;
  for (int64_t i = 0; i < extra; ++i) {
    try {  // fewer threads than asked (none could start) still run every job
      workers.emplace_back(run_jobs, std::cref(a), std::cref(jobs), std::ref(next), std::ref(failed));
    } catch (const std::exception&) {
      break;
    }
  }
  run_jobs(a, jobs, next, failed);
  for (auto& w : workers) w.join();
  return failed ? 2 : 0;
}

}  // extern "C"
