// saelab's hand-written CPU kernels for the sparse path's row passes (loaded by ctypes, see build.py).
//
// Written by hand because torch's CPU operators measured slower for exactly these passes (numbers:
// bench/README.md, "Native row kernels"): the top-k_aux among AuxK's dead columns of P, reading
// them in place (torch: a [B, |D|] copy, then topk); the decoder's backward as one pass over the
// gathered rows (torch: sampled_addmm for the dots, embedding_bag for the sums, each reading them);
// the stable sort of entries by latent (a counting sort: the keys are small integers).
//
// Every pass is "for each segment (a latent's entries, or a row's), combine table rows": the
// segment's sums are kept in registers one chunk of CH floats at a time while its rows stream by,
// so no accumulator goes through memory. Work is split over threads by whole segments at fixed
// boundaries and each sum runs in entry order, so every result is deterministic.
// Built with -march=native for the machine it runs on (build.py keys the library by CPU flags).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include <unistd.h>

typedef int64_t i64;

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
#define NV 8             // vectors per chunk: enough independent sums to hide the multiply-add latency
#define CH (VW * NV)     // floats per chunk
#define PREFETCH_AHEAD 4 // entries

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4)));
typedef uint16_t vhu __attribute__((vector_size(VW * 2), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));

// Runs fn(0), …, fn(nthreads − 1), one call per thread. Built with OpenMP (build.py tries -fopenmp
// first), the calls run in the process's OpenMP pool — torch's own: its workers spin for a while after
// each torch operator, and threads of our own would compete with them for the cores (measured in one
// bf16 step: the selection 41–46 ms on std::threads, 34–36 ms in the pool; bench/README).
// A forked child does not reuse a parent's pool (libgomp is not fork-safe): it starts std::threads.
static void std_threads(int nthreads, const std::function<void(int)>& fn) {
  std::vector<std::thread> pool;
  int started = 1;
  for (; started < nthreads; ++started) {
    try {
      pool.emplace_back(fn, started);
    } catch (...) {
      break;
    }
  }
  for (int t = started; t < nthreads; ++t) fn(t);
  fn(0);
  for (auto& th : pool) th.join();
}

#ifdef _OPENMP
static const pid_t loaded_in = getpid();
#endif

template <class F>
static void run_parallel(int nthreads, F fn) {
  if (nthreads <= 1) {
    fn(0);
    return;
  }
#ifdef _OPENMP
  if (getpid() == loaded_in) {
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int t = 0; t < nthreads; ++t) fn(t);
    return;
  }
#endif
  std_threads(nthreads, fn);
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Table rows of float32 or bfloat16 (stored as uint16), read as float32 vectors.
struct F32 {
  typedef float T;
  static inline vf load(const float* p) { return *(const vfu*)p; }
  static inline float one(const float* p) { return *p; }
};
struct BF16 {
  typedef uint16_t T;
  static inline vf load(const uint16_t* p) {
    vu u = __builtin_convertvector(*(const vhu*)p, vu) << 16;
    return (vf)u;
  }
  static inline float one(const uint16_t* p) { return bf16_to_f32(*p); }
};

// The lanes' sum as a tree of halves (log2 VW dependent adds, where a lane-by-lane loop made VW of them).
static inline float hsum(vf v) {
  float t[VW];
  std::memcpy(t, &v, sizeof v);
  for (int w = VW / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}

// One segment of `count` entries: entry e reads table row rows[e] with weight weights[ord(e)].
//   out (if set):  out[0:d] = Σ_e weights[ord(e)] · table[rows[e]]
//   dots (if set): dots[ord(e)] = ⟨w, table[rows[e]]⟩ (partial: scratch of `count` vectors)
// ord(e) = order[e] when `order` is set, else first + e.
template <class R>
static void segment(const typename R::T* table, i64 ld, i64 d, const i64* rows, const i64* order, i64 first,
                    i64 count, const float* weights, const float* w, float* out, float* dots, vf* partial) {
  auto ord = [&](i64 e) { return order ? order[e] : first + e; };
  if (dots)
    for (i64 e = 0; e < count; ++e) partial[e] = vf{};
  i64 c0 = 0;
  for (; c0 + CH <= d; c0 += CH) {
    vf acc[NV] = {}, wv[NV];
    if (dots)
      for (int q = 0; q < NV; ++q) wv[q] = F32::load(w + c0 + q * VW);
    for (i64 e = 0; e < count; ++e) {
      if (e + PREFETCH_AHEAD < count) {
        const char* next = (const char*)(table + rows[e + PREFETCH_AHEAD] * ld + c0);
        for (int line = 0; line < (int)(CH * sizeof(typename R::T)); line += 64) __builtin_prefetch(next + line);
      }
      const typename R::T* r = table + rows[e] * ld + c0;
      vf g[NV];
      for (int q = 0; q < NV; ++q) g[q] = R::load(r + q * VW);
      if (out) {
        float s = weights[ord(e)];
        for (int q = 0; q < NV; ++q) acc[q] += s * g[q];
      }
      if (dots) {
        vf p0 = wv[0] * g[0], p1 = wv[1] * g[1];
        for (int q = 2; q < NV; q += 2) {
          p0 += wv[q] * g[q];
          p1 += wv[q + 1] * g[q + 1];
        }
        partial[e] += p0 + p1;
      }
    }
    if (out)
      for (int q = 0; q < NV; ++q) *(vfu*)(out + c0 + q * VW) = acc[q];
  }
  for (; c0 < d; ++c0) {  // the columns past the last whole chunk
    float acc = 0.f;
    for (i64 e = 0; e < count; ++e) {
      float g = R::one(table + rows[e] * ld + c0);
      if (out) acc += weights[ord(e)] * g;
      if (dots) partial[e][0] += w[c0] * g;
    }
    if (out) out[c0] = acc;
  }
  if (dots)
    for (i64 e = 0; e < count; ++e) dots[ord(e)] = hsum(partial[e]);
}

// Segments [a, b) of thread t's share of [lo, hi), split at segment boundaries into equal entry counts.
static void share(const i64* crow, i64 lo, i64 hi, int t, int nthreads, i64* a, i64* b) {
  i64 total = crow[hi] - crow[lo];
  auto at = [&](int s) -> i64 {
    if (s <= 0) return lo;
    if (s >= nthreads) return hi;
    i64 target = crow[lo] + total * s / nthreads;
    return std::lower_bound(crow + lo, crow + hi + 1, target) - crow;
  };
  *a = at(t);
  *b = at(t + 1);
}

static i64 longest(const i64* crow, i64 a, i64 b) {
  i64 m = 0;
  for (i64 i = a; i < b; ++i) m = std::max(m, crow[i + 1] - crow[i]);
  return m;
}

extern "C" {

// 1 if built with OpenMP (run_parallel uses the process's OpenMP pool), else 0 (std::threads).
int sl_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// Stable counting sort of the entries by latent: order (entry ids, latent-major) and crow [n + 1].
void sl_sort_by_latent(const i64* lat, i64 nnz, i64 n, i64* order, i64* crow) {
  std::memset(crow, 0, sizeof(i64) * (n + 1));
  for (i64 e = 0; e < nnz; ++e) crow[lat[e] + 1]++;
  for (i64 i = 0; i < n; ++i) crow[i + 1] += crow[i];
  std::vector<i64> next(crow, crow + n);
  for (i64 e = 0; e < nnz; ++e) order[next[lat[e]]++] = e;
}

// out[i] = the row of entry order[i] of fixed-width codes stacked one after another; layout holds
// (entries, width, row offset) per code: entry e of code c sits in row (e − start_c) / width_c + offset_c.
void sl_rows_in_order(const i64* order, i64 nnz, const i64* layout, i64 n_codes, i64* out) {
  std::vector<i64> start(n_codes + 1, 0);
  for (i64 c = 0; c < n_codes; ++c) start[c + 1] = start[c] + layout[3 * c];
  for (i64 i = 0; i < nnz; ++i) {
    i64 e = order[i], c = 0;
    while (e >= start[c + 1]) ++c;
    out[i] = (e - start[c]) / layout[3 * c + 1] + layout[3 * c + 2];
  }
}

// For each latent i in [lo, hi), over its entries e (positions crow[i]:crow[i + 1] of the sorted order):
//   sums[i − lo] = Σ_e weights[order[e]] · table[sorted_rows[e]]      (if sums is set; [hi − lo, d])
//   dots[order[e]] = ⟨by_latent[i], table[sorted_rows[e]]⟩            (if dots is set)
void sl_segment_dots_sums(const float* by_latent, const float* table, i64 d, const i64* sorted_rows,
                          const i64* order, const float* weights, const i64* crow, i64 lo, i64 hi, float* dots,
                          float* sums, int nthreads) {
  run_parallel(nthreads, [&](int t) {
    i64 a, b;
    share(crow, lo, hi, t, nthreads, &a, &b);
    std::vector<vf> partial(dots ? longest(crow, a, b) : 0);
    for (i64 i = a; i < b; ++i) {
      i64 s = crow[i];
      segment<F32>(table, d, d, sorted_rows + s, order + s, 0, crow[i + 1] - s, weights,
                   by_latent ? by_latent + i * d : nullptr, sums ? sums + (i - lo) * d : nullptr, dots,
                   partial.data());
    }
  });
}

// The sums of sl_segment_dots_sums for every latent i < n, written as columns: out[q · ldo + i] =
// Σ_e weights[order[e]] · table[sorted_rows[e]][q] (out: [d, n] row-major, e.g. W_enc's gradient).
// Sixteen latents are summed into a small buffer, then stored transposed as 16-float runs, so no
// [n, d] temporary and no separate transposing copy is needed.
void sl_segment_sums_columns(const float* table, i64 d, const i64* sorted_rows, const i64* order,
                             const float* weights, const i64* crow, i64 n, float* out, i64 ldo, int nthreads) {
  const i64 G = 16;
  run_parallel(nthreads, [&](int t) {
    // Thread t's latents: whole groups of G, split by entry counts.
    i64 groups = (n + G - 1) / G, a, b;
    std::vector<i64> gcrow(groups + 1);
    for (i64 g = 0; g <= groups; ++g) gcrow[g] = crow[std::min(g * G, n)];
    share(gcrow.data(), 0, groups, t, nthreads, &a, &b);
    std::vector<float> buf(G * d);
    for (i64 g = a; g < b; ++g) {
      i64 i0 = g * G, m = std::min(G, n - i0);
      for (i64 j = 0; j < m; ++j) {
        i64 s = crow[i0 + j];
        segment<F32>(table, d, d, sorted_rows + s, order + s, 0, crow[i0 + j + 1] - s, weights, nullptr,
                     buf.data() + j * d, nullptr, nullptr);
      }
      for (i64 q = 0; q < d; ++q) {
        float* col = out + q * ldo + i0;
        for (i64 j = 0; j < m; ++j) col[j] = buf[j * d + q];
      }
    }
  });
}

// Σ_j a[j]·b[j] over one row, in VW lanes then a tree (a and b: float32, d long).
static inline float row_dot(const float* a, const float* b, i64 d) {
  vf s0 = {}, s1 = {};
  i64 c = 0;
  for (; c + 2 * VW <= d; c += 2 * VW) {
    s0 += F32::load(a + c) * F32::load(b + c);
    s1 += F32::load(a + c + VW) * F32::load(b + c + VW);
  }
  float s = hsum(s0 + s1);
  for (; c < d; ++c) s += a[c] * b[c];
  return s;
}

// The decoder gradient's projection off each decoder row, each row read and written in one visit
// (torch made a pass for the norms, one for the dots and one for the update; W, G: float32 [n, d]):
//   G[i] −= (⟨G[i], W[i]⟩ / max(‖W[i]‖, 1e-12)²) · W[i]
void sl_project_rows(const float* W, float* G, i64 n, i64 d, int nthreads) {
  run_parallel(nthreads, [&](int t) {
    i64 lo = n * t / nthreads, hi = n * (t + 1) / nthreads;
    for (i64 i = lo; i < hi; ++i) {
      const float* w = W + i * d;
      float* g = G + i * d;
      const float norm = std::max(std::sqrt(row_dot(w, w, d)), 1e-12f);
      const float coef = row_dot(g, w, d) / (norm * norm);
      for (i64 c = 0; c < d; ++c) g[c] -= coef * w[c];
    }
  });
}

// out[b] = Σ_{e in crow[b]:crow[b + 1]} values[e] · table[latents[e]]  (table float32 or bfloat16 [*, d])
void sl_gather_sum(const void* table, int bf16, i64 d, const i64* latents, const float* values, const i64* crow,
                   i64 n_rows, float* out, int nthreads) {
  run_parallel(nthreads, [&](int t) {
    i64 a, b;
    share(crow, 0, n_rows, t, nthreads, &a, &b);
    for (i64 r = a; r < b; ++r) {
      i64 s = crow[r];
      if (bf16)
        segment<BF16>((const uint16_t*)table, d, d, latents + s, nullptr, s, crow[r + 1] - s, values, nullptr,
                      out + r * d, nullptr, nullptr);
      else
        segment<F32>((const float*)table, d, d, latents + s, nullptr, s, crow[r + 1] - s, values, nullptr,
                     out + r * d, nullptr, nullptr);
    }
  });
}

}  // extern "C"

static inline uint32_t order_key(float f) {  // unsigned keys in the floats' order (NaN above +inf)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float key_value(uint32_t key) {  // order_key's inverse
  uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline float round_to_bf16(float f) {  // to nearest even, as torch's bfloat16 arithmetic rounds
  uint32_t u;
  std::memcpy(&u, &f, 4);
  // Branch-free (a NaN stays a quiet NaN), so the loops that round vectorize.
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  u = nan ? ((u | 0x00400000u) & 0xffff0000u) : ((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
  std::memcpy(&f, &u, 4);
  return f;
}

static inline uint32_t round_key_to_bf16(uint32_t key) {  // the order key of key_value(key) rounded to bfloat16
  return order_key(round_to_bf16(key_value(key)));
}

// Per-thread scratch of the selections.
struct Selector {
  static const int BITS = 11, SHIFT = 32 - BITS, BINS = 1 << BITS;
  std::vector<uint32_t> row_keys, keys, cand, hist, keys_tmp;
  std::vector<i64> kept, groups;
  std::vector<std::pair<uint32_t, i64>> pairs;
  uint32_t guess = 0;  // top_k: a key at or below the k-th largest of the last row, for the next one
  bool have_guess = false;
  uint32_t max_guess = 0;  // from_maxima: the last row's (k + k/4)-th group maximum, for the next one
  bool have_max_guess = false;

  // As radix (same results), faster for rows alike: the keys at or above a guessed threshold (from the
  // row before) are kept in order without branches; if they are at least k, the k-th key comes from
  // nth_element over them alone, else radix runs. The guess only changes the time, never the result.
  void top_k(const uint32_t* keys, i64 m, i64 k, const i64* cols, float* values, i64* local, i64* ids) {
    if (have_guess) {
      kept.resize(m);
      i64 c = 0;
      const uint32_t t = guess;
      for (i64 j = 0; j < m; ++j) {
        kept[c] = j;
        c += keys[j] >= t;
      }
      if (c >= k) {
        cand.resize(c);
        for (i64 q = 0; q < c; ++q) cand[q] = keys[kept[q]];
        // The next guess at about the (k + k/4)-th key of this row, when there are that many.
        i64 spare = std::min(c, k + k / 4);
        std::nth_element(cand.begin(), cand.begin() + (spare - 1), cand.end(), std::greater<uint32_t>());
        const uint32_t next = cand[spare - 1];
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.begin() + spare, std::greater<uint32_t>());
        const uint32_t kth = cand[k - 1];
        i64 strictly = 0;
        for (i64 q = 0; q < spare; ++q) strictly += cand[q] > kth;
        i64 ties = k - strictly, o = 0;
        for (i64 q = 0; q < c && o < k; ++q) {
          i64 j = kept[q];
          uint32_t key = keys[j];
          if (key > kth || (key == kth && ties-- > 0)) {
            values[o] = key_value(key);
            if (ids) ids[o] = cols[j];
            local[o++] = j;
          }
        }
        guess = spare == k + k / 4 ? next : t;
        return;
      }
    }
    radix(keys, m, k, cols, values, local, ids, &guess);
    have_guess = true;
  }

  // The k largest of keys[0:m] (column j's key is keys[j]), by a radix select: writes values,
  // positions j (ascending) and, if ids is set, cols[j]. Among equal keys at the k-th place the first
  // positions win. Pass 1 counts the keys by their top bits (4 interleaved histograms, so runs of
  // equal bins do not wait on each other's increments); pass 2 keeps, in order, the few entries at
  // or above the bin that holds the k-th key; the k-th key comes from nth_element over that bin.
  // If next_guess is set, it receives top_k's threshold for the next row of the same selection.
  void radix(const uint32_t* keys, i64 m, i64 k, const i64* cols, float* values, i64* local, i64* ids,
             uint32_t* next_guess = nullptr) {
    hist.assign(4 * BINS, 0u);
    for (i64 j = 0; j < m; ++j) hist[(j & 3) * BINS + (keys[j] >> SHIFT)]++;
    auto count = [&](i64 bin) -> i64 {
      return (i64)hist[bin] + hist[BINS + bin] + hist[2 * BINS + bin] + hist[3 * BINS + bin];
    };
    i64 bin = BINS - 1, above = 0;
    while (above + count(bin) < k) above += count(bin--);
    const uint32_t floor_key = (uint32_t)bin << SHIFT;
    if (next_guess) {  // the lower edge of the bin holding the (k + k/4)-th key
      i64 b2 = bin, at = above + count(bin);
      while (b2 > 0 && at < k + k / 4) at += count(--b2);
      *next_guess = (uint32_t)b2 << SHIFT;
    }
    kept.clear();
    cand.clear();
    for (i64 j = 0; j < m; ++j) {
      if (keys[j] >= floor_key) {
        kept.push_back(j);
        if ((keys[j] >> SHIFT) == (uint32_t)bin) cand.push_back(keys[j]);
      }
    }
    i64 need = k - above;
    std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end(), std::greater<uint32_t>());
    uint32_t kth = cand[need - 1];
    i64 strictly = above;
    for (uint32_t c : cand) strictly += c > kth;
    i64 ties = k - strictly, o = 0;
    for (i64 j : kept) {
      uint32_t key = keys[j];
      if (key > kth || (key == kth && ties-- > 0)) {
        values[o] = key_value(key);
        if (ids) ids[o] = cols[j];
        local[o++] = j;
        if (o == k) break;
      }
    }
  }

  // The k largest of a whole row of n keys (a radix select): by decreasing value (ties: lower column
  // first) if `sorted`, else by ascending column.
  void whole_row(const uint32_t* keys, i64 n, i64 k, int sorted, float* values, i64* cols) {
    radix(keys, n, k, nullptr, values, cols, nullptr);
    if (sorted) sort_by_value(values, cols, k);
  }

  // The k largest of a row from its group maxima (group j holds columns j, j + c, …, j + (g − 1)c,
  // c = n / g): `cand` holds the c maxima; key_at(col) gives any column's key.
  // With t the k-th largest maximum, the k groups with the largest maxima hold k entries ≥ t, so the
  // row's k-th largest value is ≥ t: the k largest are among the entries ≥ t, all of them in groups
  // whose maximum is ≥ t. Those few (about k) are ranked by decreasing key, ties to the lower column,
  // which makes the result the row's exact top k under that order.
  // t itself comes as top_k's does: the maxima at or above the previous row's (k + k/4)-th maximum
  // are kept without branches, and nth_element runs over those ≈ 1.25 k, not over all c (measured: that
  // nth_element was a third of the selection's time); when fewer than k are kept, over all c.
  template <class KeyAt>
  void from_maxima(KeyAt key_at, i64 n, i64 k, i64 g, int sorted, float* values, i64* cols) {
    const i64 c = n / g, spare_at = std::min(c, k + k / 4);
    i64 m = 0;
    if (have_max_guess) {
      groups.resize(c);
      const uint32_t guess_t = max_guess;
      for (i64 j = 0; j < c; ++j) {
        groups[m] = j;
        m += cand[j] >= guess_t;
      }
    }
    uint32_t t;
    if (have_max_guess && m >= k) {
      keys_tmp.resize(m);
      for (i64 q = 0; q < m; ++q) keys_tmp[q] = cand[groups[q]];
      const i64 spare = std::min(m, spare_at);
      std::nth_element(keys_tmp.begin(), keys_tmp.begin() + (spare - 1), keys_tmp.end(), std::greater<uint32_t>());
      if (spare == spare_at) max_guess = keys_tmp[spare - 1];
      std::nth_element(keys_tmp.begin(), keys_tmp.begin() + (k - 1), keys_tmp.begin() + spare,
                       std::greater<uint32_t>());
      t = keys_tmp[k - 1];
    } else {
      keys_tmp.assign(cand.begin(), cand.end());
      std::nth_element(keys_tmp.begin(), keys_tmp.begin() + (spare_at - 1), keys_tmp.end(), std::greater<uint32_t>());
      max_guess = keys_tmp[spare_at - 1];
      have_max_guess = true;
      std::nth_element(keys_tmp.begin(), keys_tmp.begin() + (k - 1), keys_tmp.begin() + spare_at,
                       std::greater<uint32_t>());
      t = keys_tmp[k - 1];
      groups.resize(c);
      for (i64 j = 0; j < c; ++j) groups[j] = j;
      m = c;
    }
    pairs.clear();
    for (i64 q = 0; q < m; ++q) {
      const i64 j = groups[q];
      if (cand[j] < t) continue;
      for (i64 i = 0; i < g; ++i) {
        uint32_t key = key_at(j + i * c);
        if (key >= t) pairs.push_back({key, j + i * c});
      }
    }
    auto larger = [](const std::pair<uint32_t, i64>& a, const std::pair<uint32_t, i64>& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    };
    if ((i64)pairs.size() > k) {
      std::nth_element(pairs.begin(), pairs.begin() + (k - 1), pairs.end(), larger);
      pairs.resize(k);
    }
    if (sorted)
      std::sort(pairs.begin(), pairs.end(), larger);
    else
      std::sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
    for (i64 q = 0; q < k; ++q) {
      values[q] = key_value(pairs[q].first);
      cols[q] = pairs[q].second;
    }
  }

  static void sort_by_value(float* values, i64* cols, i64 k) {
    std::vector<std::pair<uint32_t, i64>> p(k);
    for (i64 q = 0; q < k; ++q) p[q] = {order_key(values[q]), cols[q]};
    std::sort(p.begin(), p.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (i64 q = 0; q < k; ++q) {
      values[q] = key_value(p[q].first);
      cols[q] = p[q].second;
    }
  }
};

extern "C" {

// Per row b of P (float32 or bfloat16, row stride ldp): the k largest of P[b, cols[0:m]] (a radix
// select): values (float32), local (positions in cols, ascending) and, if set, ids (cols[local]).
// Among equal values at the k-th place the first columns win.
void sl_topk_among(const void* P, int bf16, i64 rows, i64 ldp, const i64* cols, i64 m, i64 k, float* values,
                   i64* local, i64* ids, int nthreads) {
  run_parallel(nthreads, [&](int t) {
    Selector sel;
    sel.keys.resize(m);
    i64 lo = rows * t / nthreads, hi = rows * (t + 1) / nthreads;
    for (i64 b = lo; b < hi; ++b) {
      if (bf16) {
        const uint16_t* row = (const uint16_t*)P + b * ldp;
        for (i64 j = 0; j < m; ++j) sel.keys[j] = order_key(bf16_to_f32(row[cols[j]]));
      } else {
        const float* row = (const float*)P + b * ldp;
        for (i64 j = 0; j < m; ++j) sel.keys[j] = order_key(row[cols[j]]);
      }
      sel.top_k(sel.keys.data(), m, k, cols, values + b * k, local + b * k, ids ? ids + b * k : nullptr);
    }
  });
}

// The per-row selections of a TopK-family step from P = x·W (float32 or bfloat16 [rows, n], without
// its bias), in one read of each row while it is in cache: P + bias (rounded to P's dtype, as
// torch's add_ rounds it; P itself is left as it was), then the row's k largest by group maxima (g
// per group, as select.group_size chose; values float32 and columns, sorted by decreasing value if
// `sorted`, else by column; among equal values at the k-th place the lower columns win) and, if
// dead is set, the k_aux largest among the dead columns (as sl_topk_among: aux_values, aux_local, aux_ids).
void sl_select_rows(const void* P, int bf16, i64 rows, i64 n, const void* bias, i64 k, i64 g, int sorted,
                    float* values, i64* cols, const i64* dead, i64 m, i64 k_aux, float* aux_values, i64* aux_local,
                    i64* aux_ids, int nthreads) {
  std::vector<float> wide_bias;  // a bfloat16 bias widened once (exact), not once per row
  if (bf16 && bias) {
    wide_bias.resize(n);
    for (i64 j = 0; j < n; ++j) wide_bias[j] = bf16_to_f32(((const uint16_t*)bias)[j]);
  }
  const float* bw = wide_bias.data();
  run_parallel(nthreads, [&](int t) {
    Selector sel;
    // A row of keys when it is read twice (whole-row radix select, or AuxK's dead columns too); else
    // the few candidates' keys are recomputed. The group maxima are taken in the same pass.
    const bool keep_keys = g <= 1 || dead;
    if (keep_keys) sel.row_keys.resize(n);
    if (dead) sel.keys.resize(m);
    const float* bf = (const float*)bias;
    const uint16_t* bh = (const uint16_t*)bias;
    const i64 c = g > 1 ? n / g : n;
    i64 lo = rows * t / nthreads, hi = rows * (t + 1) / nthreads;
    for (i64 b = lo; b < hi; ++b) {
      const float* rf = (const float*)P + b * n;
      const uint16_t* rh = (const uint16_t*)P + b * n;
      uint32_t* rk = keep_keys ? sel.row_keys.data() : nullptr;
      if (g > 1) sel.cand.assign(c, 0u);
      uint32_t* mx = g > 1 ? sel.cand.data() : nullptr;  // a whole-row selection needs no maxima
      // One pass over the row: P + bias rounded as torch rounds it, as order keys, into the group
      // maxima and/or the row of keys. One loop per case, so each vectorizes.
      auto scan = [&](auto key) {
        for (i64 o = 0; o < n; o += c) {
          if (rk && mx)
            for (i64 j = 0; j < c; ++j) {
              uint32_t v = key(o + j);
              rk[o + j] = v;
              mx[j] = std::max(mx[j], v);
            }
          else if (rk)
            for (i64 j = 0; j < c; ++j) rk[o + j] = key(o + j);
          else
            for (i64 j = 0; j < c; ++j) mx[j] = std::max(mx[j], key(o + j));
        }
      };
      auto bf16_bias = [&](i64 j) { return order_key(round_to_bf16(bf16_to_f32(rh[j]) + bw[j])); };
      // Unrounded: rounding to bfloat16 is monotonic, so a group's largest rounded sum is its largest
      // sum, rounded — the maxima-only scan rounds the c maxima, not all n sums.
      auto bf16_sum = [&](i64 j) { return order_key(bf16_to_f32(rh[j]) + bw[j]); };
      auto bf16_only = [&](i64 j) { return order_key(bf16_to_f32(rh[j])); };
      auto f32_bias = [&](i64 j) { return order_key(rf[j] + bf[j]); };
      auto f32_only = [&](i64 j) { return order_key(rf[j]); };
      if (bf16 && bh && !rk) {
        scan(bf16_sum);
        for (i64 j = 0; j < c; ++j) mx[j] = round_key_to_bf16(mx[j]);
      } else if (bf16 && bh)
        scan(bf16_bias);
      else if (bf16)
        scan(bf16_only);
      else if (bf)
        scan(f32_bias);
      else
        scan(f32_only);
      if (g <= 1) {
        sel.whole_row(rk, n, k, sorted, values + b * k, cols + b * k);
      } else if (rk) {
        sel.from_maxima([&](i64 j) { return rk[j]; }, n, k, g, sorted, values + b * k, cols + b * k);
      } else {
        auto key_at = [&](i64 j) -> uint32_t {
          if (bf16) return bh ? bf16_bias(j) : bf16_only(j);
          return bf ? f32_bias(j) : f32_only(j);
        };
        sel.from_maxima(key_at, n, k, g, sorted, values + b * k, cols + b * k);
      }
      if (dead) {
        for (i64 j = 0; j < m; ++j) sel.keys[j] = sel.row_keys[dead[j]];
        sel.top_k(sel.keys.data(), m, k_aux, dead, aux_values + b * k_aux, aux_local + b * k_aux,
                  aux_ids + b * k_aux);
      }
    }
  });
}
}
