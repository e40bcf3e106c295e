"""Multi-scale deformable sampling on the CPU as one fused loop, forward and backward.

HF's pure-PyTorch path samples each level with ``grid_sample``, stacks the samples of every
level and point (batch · heads × head width × queries × levels · points floats, 67 MB per
encoder layer of deformable-detr-small at batch 16), multiplies them by the attention weights
and sums; autograd keeps that tensor and builds two more of its size going back. Profiled on a
training step of deformable-detr-small (two threads), that stacking, weighting and summing plus
``grid_sample`` forward and backward took about half of the step, against a few per cent of its
multiply–accumulates. The loop here visits the four bilinear corners of each sampling point
once and never builds anything of that size: forward, each row's points become their corners'
weights and positions sixteen at a time in vector registers, and the attention-weighted corners
are summed into the output row; backward, the gradients of the value map (scattered), of the
sampling locations and of the attention weights come from one more visit.

It is the arithmetic of ``grid_sample`` (bilinear, zero padding, ``align_corners=False``) and
its gradients, which the tests compare with HF's path in double precision. The C++ source below
is compiled once per kind of CPU (``-march=native``: the head widths 16 and 32, and the
model widths 64 and 256, fixed at compile time, so that a row's sums stay in vector registers,
three times faster than generic x86-64 code here; a 16-float row is written as one GCC/Clang
vector, which g++ 12's own vectoriser had left scalar) with the system's C++
compiler into prunekit's cache (``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``) and loaded with
ctypes: no PyTorch headers, so it builds in about a second. Without a compiler, on CUDA, under
``torch.compile``, ``torch.export`` or TorchScript tracing, and for dtypes other than float32
and float64, HF's own path runs (the deployed form: its weighted gather).
Threads: as many as PyTorch's (``torch.get_num_threads``); the forward splits the (batch,
query, head) rows between them, the backward the (batch, head) pairs, so that no two threads
ever add into the same value gradient and any number of threads gives the same bits. Where
PyTorch's threads are GNU OpenMP's (``libgomp.so.1`` loaded, as in PyTorch's Linux wheels) and
the compiler is GCC, the library is built with ``-fopenmp`` and runs on those very threads;
elsewhere, or if that build fails, it starts its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from prunekit.device import cpu_info

SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>
#ifdef PRUNEKIT_OPENMP
#include <omp.h>
#endif

namespace {

// f(lo, hi) over [0, n) in `threads` equal chunks. Built with PRUNEKIT_OPENMP, the chunks run
// on PyTorch's own OpenMP threads (the library then links the libgomp PyTorch has loaded, one
// runtime in the process); otherwise on threads of our own.
template <typename F>
void parallel(int64_t n, int64_t threads, const F& f) {
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  const int64_t chunk = (n + threads - 1) / threads;
  if (threads == 1) {
    f(0, n);
    return;
  }
#ifdef PRUNEKIT_OPENMP
#pragma omp parallel num_threads(threads)
  {
    // A team smaller than asked for takes the chunks in turn.
    for (int64_t t = omp_get_thread_num(); t < threads; t += omp_get_num_threads()) {
      const int64_t lo = t * chunk, hi = std::min(n, lo + chunk);
      if (lo < hi) f(lo, hi);
    }
  }
#else
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t lo = t * chunk, hi = std::min(n, lo + chunk);
    if (lo < hi) pool.emplace_back([&f, lo, hi] { f(lo, hi); });
  }
  f(0, std::min(n, chunk));
  for (auto& th : pool) th.join();
#endif
}

// One sampling point of the backward: its top-left corner, fractions, and whether it touches
// the map at all. Locations are fractions of the map (x, y in [0, 1] on it).
template <typename T>
struct Point {
  int64_t x0, y0;
  T fx, fy;
  bool inside;
  Point(T lx, T ly, int64_t w, int64_t h) {
    const T x = lx * w - T(0.5), y = ly * h - T(0.5);
    inside = x > T(-1) && x < T(w) && y > T(-1) && y < T(h);
    const T fx0 = inside ? std::floor(x) : T(0), fy0 = inside ? std::floor(y) : T(0);
    x0 = static_cast<int64_t>(fx0);
    y0 = static_cast<int64_t>(fy0);
    fx = x - fx0;
    fy = y - fy0;
  }
};

// Calls f with the row width as a compile-time constant for the common widths, so that a
// row's buffers live in registers: the head widths 16 and 32, and the model widths 64 and 256
// that a deployed decoder samples whole (every head reading the unprojected map); 0 stands for
// the width known at run time only. At 256 the fixed width took a decoder layer's sampling of
// the reference model from 1.8-2.5 ms to 1.1-1.4 ms (two threads).
template <typename F>
void by_width(int64_t D, const F& f) {
  if (D == 16) {
    f(std::integral_constant<int64_t, 16>{});
  } else if (D == 32) {
    f(std::integral_constant<int64_t, 32>{});
  } else if (D == 64) {
    f(std::integral_constant<int64_t, 64>{});
  } else if (D == 256) {
    f(std::integral_constant<int64_t, 256>{});
  } else {
    f(std::integral_constant<int64_t, 0>{});
  }
}

// The lanes of an N-wide vector reduced by op (a sum, a maximum), the vector halved until one
// lane is left: four steps for sixteen floats where a lane-by-lane loop is a chain of fifteen.
template <typename T, int64_t N, typename V, typename Op>
T halves(const V& v, const Op& op) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    typedef T Half __attribute__((vector_size(sizeof(T) * (N / 2))));
    Half lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return halves<T, N / 2>(op(lo, hi), op);
  }
}

inline constexpr auto kAdd = [](const auto& a, const auto& b) { return a + b; };
inline constexpr auto kMax = [](const auto& a, const auto& b) { return a > b ? a : b; };

// The backward's row of W values: one GCC/Clang vector where it fits 64 bytes (16 floats: W = 16
// in float32), so that its sums stay in registers and each step on it is one or two SIMD
// instructions: g++ 12 turned a plain 16-float accumulator into 16 scalar registers and
// multiplied corner by corner, lane by lane. Wider rows (W = 32, or double precision) keep
// plain arrays of compile-time width, which g++ vectorises well (in the forward's earlier
// per-point loop, a row of two 64-byte vectors ran 1.75 times slower), and W = 0, the width
// known at run time only, plain loops.
template <typename T, int64_t W>
struct Row {
  static constexpr bool kVector = W > 0 && W * int64_t(sizeof(T)) <= 64;
  static constexpr int64_t kLanes = kVector ? W : 1;
  typedef T Chunk __attribute__((vector_size(sizeof(T) * kLanes)));
  Chunk c[1];

  static Row load(const T* p) {
    Row r;
    std::memcpy(r.c, p, sizeof r.c);
    return r;
  }
  void store(T* p) const { std::memcpy(p, c, sizeof c); }
  // this += s * x.
  void add(T s, const Row& x) { c[0] += s * x.c[0]; }
  Row operator*(const Row& x) const {
    Row r;
    r.c[0] = c[0] * x.c[0];
    return r;
  }
  // The sum of the lanes.
  T sum() const { return halves<T, kLanes>(c[0], kAdd); }
};

// One 64-byte register's worth of T, and of integers as wide as T.
template <typename T>
struct Lanes {
  static constexpr int64_t N = 64 / int64_t(sizeof(T));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef T V __attribute__((vector_size(64)));
  typedef I VI __attribute__((vector_size(64)));
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static VI load(const I* p) {
    VI v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  // floor(x) for |x| < 2^31: truncated, less one where truncation went up.
  static V floor(V x) {
    const V t = __builtin_convertvector(__builtin_convertvector(x, VI), V);
    return t + __builtin_convertvector(x < t, V);  // true is -1
  }
};

// exp(x) for x <= 0, sixteen floats at a time: Cephes' expf, a degree-5 polynomial on the
// remainder after powers of two (within 2 ulp of std::exp); below -87.3, 0.
inline Lanes<float>::V exp_nonpositive(Lanes<float>::V x) {
  using L = Lanes<float>;
  using V = L::V;
  using VI = L::VI;
  const V zero = {}, lo = zero - 87.33654f, one = zero + 1.0f;
  const VI under = x < lo;
  x = under ? lo : x;
  // x = j ln 2 + r, |r| <= ln 2 / 2, ln 2 in two parts so that j ln 2 is exact.
  const V j = L::floor(x * 1.44269504088896341f + 0.5f);
  const V r = (x - j * 0.693359375f) - j * -2.12194440e-4f;
  V p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + one;
  const VI bits = (__builtin_convertvector(j, VI) + 127) << 23;  // 2^j
  V e;
  std::memcpy(&e, &bits, sizeof e);
  return under ? zero : p * e;
}

// softmax of a row's n attention logits, written to out. float32 rows of one register (the
// reference model's four levels × four points) stay in it throughout; anything else takes
// std::exp lane by lane. The logits are read where the linear layer wrote them, not from
// scalar copies just stored (a vector load would wait for those).
template <typename T>
void softmax_row(const T* in, T* out, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    using L = Lanes<float>;
    if (n == L::N) {
      const L::V x = L::load(in);
      const L::V y = exp_nonpositive(x - halves<float, L::N>(x, kMax));
      const L::V w = y * (1.0f / halves<float, L::N>(y, kAdd));
      std::memcpy(out, &w, sizeof w);
      return;
    }
  }
  T m = in[0], total = T(0);
  for (int64_t k = 1; k < n; ++k) m = std::max(m, in[k]);
  for (int64_t k = 0; k < n; ++k) total += out[k] = std::exp(in[k] - m);
  for (int64_t k = 0; k < n; ++k) out[k] /= total;
}

// The four corners of np points (a multiple of Lanes<T>::N), Lanes<T>::N at a time: each
// corner's weight (the attention weight times the bilinear weight, 0 for a corner off the map
// or a point outside it) and its position in the value map (the level's first position for a
// corner off the map: read and weighted 0, so that the sums need no branch; a value map with
// an infinity or NaN there gives NaN where grid_sample's zero padding would not). The same
// arithmetic as grid_sample's, in the same order: each weight's bits are the scalar code's.
// xs, ys: grid_sample's pixel coordinates (with ``scale``, fractions of the map to scale to
// them); lw, lh, ls: each point's level's width, height and first position.
template <typename T>
void corners(const T* xs, const T* ys, const T* as, const T* lw, const T* lh,
             const typename Lanes<T>::I* ls, int64_t np, bool scale, T* w,
             typename Lanes<T>::I* pos) {
  using L = Lanes<T>;
  using V = typename L::V;
  using VI = typename L::VI;
  const V zero = {}, one = zero + T(1), half = zero + T(0.5);
  for (int64_t k = 0; k < np; k += L::N) {
    const V wl = L::load(lw + k), hl = L::load(lh + k);
    V x = L::load(xs + k), y = L::load(ys + k);
    if (scale) {
      x = x * wl - half;
      y = y * hl - half;
    }
    const VI inside = (x > -one) & (x < wl) & (y > -one) & (y < hl);
    const V x0 = L::floor(inside ? x : zero), y0 = L::floor(inside ? y : zero);
    const V fx = x - x0, fy = y - y0, a = inside ? L::load(as + k) : zero;
    const VI x0in = x0 >= zero, x1in = x0 + one < wl, y0in = y0 >= zero, y1in = y0 + one < hl;
    const VI in0 = y0in & x0in, in1 = y0in & x1in, in2 = y1in & x0in, in3 = y1in & x1in;
    const V w0 = a * (one - fx) * (one - fy), w1 = a * fx * (one - fy);
    const V w2 = a * (one - fx) * fy, w3 = a * fx * fy;
    const VI start = L::load(ls + k), iw = __builtin_convertvector(wl, VI);
    const VI c0 = start + __builtin_convertvector(y0, VI) * iw + __builtin_convertvector(x0, VI);
    const V wc[4] = {in0 ? w0 : zero, in1 ? w1 : zero, in2 ? w2 : zero, in3 ? w3 : zero};
    const VI pc[4] = {in0 ? c0 : start, in1 ? c0 + 1 : start, in2 ? c0 + iw : start,
                      in3 ? c0 + iw + 1 : start};
    for (int c = 0; c < 4; ++c) {
      std::memcpy(w + c * np + k, &wc[c], sizeof(V));
      std::memcpy(pos + c * np + k, &pc[c], sizeof(VI));
    }
  }
}

// Rows [lo, hi) of (batch, query, head). With ``ref`` (batch × queries × levels × 2, pixels),
// ``loc`` holds offsets in pixels from each level's reference. Each row's points are first
// turned into corners (corners(), in vector registers), then the corners' value rows are
// summed, weighted, in registers of compile-time width W (0: the width known at run time only).
// On the reference model at 375 × 1242 (two threads, Intel Xeon of 2026-12-06), against one
// loop over the points with the corners' arithmetic scalar and a branch for each: an encoder
// layer's sampling timed alone 7.8-8.0 → 6.7-7.2 ms (processes in turn), inside the model
// unchanged (about 10 ms, its reads waiting on memory written just before); a decoder layer's
// (whole 256-wide rows) 2.2 → 1.7 ms and its 16-wide sampling 0.37 → 0.29 ms inside the model.
template <typename T, int64_t W>
void forward_rows(const T* __restrict__ value, const int64_t* shapes, const int64_t* starts,
                  const T* __restrict__ loc, const T* __restrict__ attn, T* __restrict__ out,
                  int64_t S, int64_t H, int64_t D, int64_t Q, int64_t L, int64_t P,
                  bool pixels, const T* __restrict__ ref, bool logits, int64_t lo,
                  int64_t hi) {
  using LT = Lanes<T>;
  using I = typename LT::I;
  const int64_t row = H * D, width = W > 0 ? W : D, n = L * P;
  const int64_t np = (n + LT::N - 1) / LT::N * LT::N;
  // Per point: level width, height, first position; per row of a block: x, y, attention,
  // and corners. A block's rows are read and stored first, then turned into corners, then
  // summed: a vector load of what scalar stores had just written waited for them to reach the
  // cache (27 % of the corners' time, row by row).
  constexpr int64_t R = 8;
  std::vector<T> buf(2 * np + R * 3 * np + R * 4 * np + (W > 0 ? 0 : width), T(0));
  T *lw = buf.data(), *lh = lw + np, *xs = lh + np, *ys = xs + R * np, *as = ys + R * np;
  T* w = as + R * np;  // R × 4 × np
  T* acc = w + R * 4 * np;
  std::vector<I> ints(np + R * 4 * np, I(0));
  I *ls = ints.data(), *pos = ls + np;
  for (int64_t k = 0; k < np; ++k) {
    const int64_t l = k < n ? k / P : 0;
    lh[k] = T(shapes[2 * l]);
    lw[k] = T(shapes[2 * l + 1]);
    ls[k] = I(starts[l]);
  }
  for (int64_t i0 = lo; i0 < hi; i0 += R) {
    const int64_t rows = std::min(R, hi - i0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const T* lp = loc + i * n * 2;
      const T* ap = attn + i * n;
      const T* rp = ref ? ref + i / H * L * 2 : nullptr;
      T *x = xs + r * np, *y = ys + r * np, *a = as + r * np;
      for (int64_t l = 0, k = 0; l < L; ++l) {
        const T rx = rp ? rp[2 * l] : T(0), ry = rp ? rp[2 * l + 1] : T(0);
        for (int64_t p = 0; p < P; ++p, ++k) {
          x[k] = rx + lp[2 * k];
          y[k] = ry + lp[2 * k + 1];
          if (!logits) a[k] = ap[k];
        }
      }
      if (logits) softmax_row(ap, a, n);
    }
    for (int64_t r = 0; r < rows; ++r)
      corners<T>(xs + r * np, ys + r * np, as + r * np, lw, lh, ls, np, !pixels,
                 w + r * 4 * np, pos + r * 4 * np);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r, b = i / (Q * H), h = i % H;
      const T* v = value + b * S * row + h * D;
      const T* wr = w + r * 4 * np;
      const I* pr = pos + r * 4 * np;
      if constexpr (W > 0 && W % LT::N == 0) {
        // Corners into separate sums (up to four, eight registers at most): one sum's chain
        // of dependent multiply-adds bounded the loop.
        constexpr int64_t C = W / LT::N, SETS = C >= 8 ? 1 : (C >= 4 ? 2 : 4);
        typename LT::V sum[SETS][C] = {};
        for (int64_t k = 0; k < n; ++k) {
          for (int c = 0; c < 4; ++c) {
            const T s = wr[c * np + k];
            const T* x = v + int64_t(pr[c * np + k]) * row;
            for (int64_t j = 0; j < C; ++j) sum[c % SETS][j] += s * LT::load(x + j * LT::N);
          }
        }
        for (int64_t j = 0; j < C; ++j) {
          if constexpr (SETS == 4) {
            sum[0][j] = (sum[0][j] + sum[1][j]) + (sum[2][j] + sum[3][j]);
          } else if constexpr (SETS == 2) {
            sum[0][j] += sum[1][j];
          }
        }
        std::memcpy(out + i * D, sum[0], sizeof sum[0]);
      } else {
        std::fill(acc, acc + width, T(0));
        for (int64_t k = 0; k < n; ++k) {
          for (int c = 0; c < 4; ++c) {
            const T s = wr[c * np + k];
            const T* x = v + int64_t(pr[c * np + k]) * row;
            for (int64_t d = 0; d < width; ++d) acc[d] += s * x[d];
          }
        }
        std::copy(acc, acc + width, out + i * D);
      }
    }
  }
}

template <typename T>
void forward(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc,
             const T* attn, T* out, int64_t B, int64_t S, int64_t H, int64_t D, int64_t Q,
             int64_t L, int64_t P, int64_t pixels, const T* ref, int64_t logits,
             int64_t threads) {
  parallel(B * Q * H, threads, [&](int64_t lo, int64_t hi) {
    by_width(D, [&](auto w) {
      forward_rows<T, decltype(w)::value>(value, shapes, starts, loc, attn, out, S, H, D, Q, L,
                                          P, pixels || ref, ref, logits != 0, lo, hi);
    });
  });
}

// Backward of the rows of (batch, head) pairs [lo, hi): gvalue, gloc and gattn arrive zeroed.
template <typename T, int64_t W>
void backward_pairs(const T* __restrict__ value, const int64_t* shapes, const int64_t* starts,
                    const T* __restrict__ loc, const T* __restrict__ attn,
                    const T* __restrict__ grad, T* __restrict__ gvalue, T* __restrict__ gloc,
                    T* __restrict__ gattn, int64_t S, int64_t H, int64_t D, int64_t Q,
                    int64_t L, int64_t P, int64_t lo, int64_t hi) {
  constexpr bool vector = Row<T, W>::kVector;
  const int64_t row = H * D, width = W > 0 ? W : D;
  T g[vector ? 1 : (W > 0 ? W : 1024)];
  Row<T, W> lanes;
  for (int64_t bh = lo; bh < hi; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t i = (b * Q + q) * H + h;
      if constexpr (vector) {
        lanes = Row<T, W>::load(grad + i * D);
      } else {
        std::copy(grad + i * D, grad + i * D + width, g);
      }
      const T* lp = loc + i * L * P * 2;
      const T* ap = attn + i * L * P;
      T* glp = gloc + i * L * P * 2;
      T* gap = gattn + i * L * P;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t hl = shapes[2 * l], wl = shapes[2 * l + 1];
        const int64_t base = (b * S + starts[l]) * row + h * D;
        for (int64_t p = 0; p < P; ++p, lp += 2, glp += 2, ++ap, ++gap) {
          const Point<T> pt(lp[0], lp[1], wl, hl);
          if (!pt.inside) continue;
          const T fx = pt.fx, fy = pt.fy, a = *ap;
          const T w[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
          const T wx[4] = {-(1 - fy), 1 - fy, -fy, fy};  // d w / d x
          const T wy[4] = {-(1 - fx), -fx, 1 - fx, fx};  // d w / d y
          T s = 0, dx = 0, dy = 0;
          // With vectors, the corners' products with the gradient row are weighted lane by
          // lane and each sum taken once per point.
          Row<T, W> ps{}, px{}, py{};
          for (int c = 0; c < 4; ++c) {
            const int64_t xx = pt.x0 + (c & 1), yy = pt.y0 + (c >> 1);
            if (xx < 0 || xx >= wl || yy < 0 || yy >= hl) continue;
            const int64_t off = base + (yy * wl + xx) * row;
            const T* vc = value + off;
            T* gvc = gvalue + off;
            const T k = a * w[c];
            if constexpr (vector) {
              const Row<T, W> prod = Row<T, W>::load(vc) * lanes;
              ps.add(w[c], prod);
              px.add(wx[c], prod);
              py.add(wy[c], prod);
              Row<T, W> gv = Row<T, W>::load(gvc);
              gv.add(k, lanes);
              gv.store(gvc);
            } else {
              T dot = 0;
              for (int64_t d = 0; d < width; ++d) {
                dot += vc[d] * g[d];
                gvc[d] += k * g[d];
              }
              s += w[c] * dot;
              dx += wx[c] * dot;
              dy += wy[c] * dot;
            }
          }
          if constexpr (vector) {
            s = ps.sum();
            dx = px.sum();
            dy = py.sum();
          }
          *gap = s;
          glp[0] = a * dx * T(wl);
          glp[1] = a * dy * T(hl);
        }
      }
    }
  }
}

template <typename T>
void backward(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc,
              const T* attn, const T* grad, T* gvalue, T* gloc, T* gattn, int64_t B,
              int64_t S, int64_t H, int64_t D, int64_t Q, int64_t L, int64_t P,
              int64_t threads) {
  parallel(B * H, threads, [&](int64_t lo, int64_t hi) {
    by_width(D, [&](auto w) {
      backward_pairs<T, decltype(w)::value>(value, shapes, starts, loc, attn, grad, gvalue,
                                            gloc, gattn, S, H, D, Q, L, P, lo, hi);
    });
  });
}

// One row of layer_norm(x + y): the sum written once, its mean and variance with LANES
// independent partial sums (vectorised as they stand; one running sum would be a chain the
// compiler must keep in order), then normalised and scaled. Width W fixed at compile time, or 0
// for n known at run time only.
template <typename T, int64_t W>
void add_norm_row(const T* x, const T* y, const T* w, const T* b, T* o, int64_t n, T eps) {
  constexpr int64_t LANES = 64 / sizeof(T);
  const int64_t N = W ? W : n;
  T part[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= N; i += LANES)
    for (int64_t j = 0; j < LANES; ++j) {
      o[i + j] = x[i + j] + y[i + j];
      part[j] += o[i + j];
    }
  T mean = 0;
  for (; i < N; ++i) {
    o[i] = x[i] + y[i];
    mean += o[i];
  }
  for (int64_t j = 0; j < LANES; ++j) mean += part[j];
  mean /= T(N);
  T var = 0;
  for (int64_t j = 0; j < LANES; ++j) part[j] = 0;
  for (i = 0; i + LANES <= N; i += LANES)
    for (int64_t j = 0; j < LANES; ++j) {
      const T d = o[i + j] - mean;
      part[j] += d * d;
    }
  for (; i < N; ++i) var += (o[i] - mean) * (o[i] - mean);
  for (int64_t j = 0; j < LANES; ++j) var += part[j];
  const T r = T(1) / std::sqrt(var / T(N) + eps);
  for (i = 0; i < N; ++i) o[i] = (o[i] - mean) * r * w[i] + b[i];
}

template <typename T>
void add_norm(const T* x, const T* y, const T* w, const T* b, T* out, int64_t rows, int64_t n,
              T eps, int64_t threads) {
  parallel(rows, threads, [&](int64_t lo, int64_t hi) {
    by_width(n, [&](auto width) {
      for (int64_t r = lo; r < hi; ++r)
        add_norm_row<T, decltype(width)::value>(x + r * n, y + r * n, w, b, out + r * n, n, eps);
    });
  });
}

}  // namespace

#define PRUNEKIT_MSDA(T, NAME)                                                              \
  extern "C" void NAME##_forward(const T* value, const int64_t* shapes,                     \
                                 const int64_t* starts, const T* loc, const T* attn, T* out, \
                                 int64_t B, int64_t S, int64_t H, int64_t D, int64_t Q,      \
                                 int64_t L, int64_t P, int64_t pixels, const T* ref,        \
                                 int64_t logits, int64_t threads) {                         \
    forward<T>(value, shapes, starts, loc, attn, out, B, S, H, D, Q, L, P, pixels, ref,      \
               logits, threads);                                                            \
  }                                                                                         \
  extern "C" void NAME##_backward(const T* value, const int64_t* shapes,                    \
                                  const int64_t* starts, const T* loc, const T* attn,       \
                                  const T* grad, T* gvalue, T* gloc, T* gattn, int64_t B,   \
                                  int64_t S, int64_t H, int64_t D, int64_t Q, int64_t L,    \
                                  int64_t P, int64_t threads) {                             \
    backward<T>(value, shapes, starts, loc, attn, grad, gvalue, gloc, gattn, B, S, H, D, Q, \
                L, P, threads);                                                             \
  }                                                                                         \
  extern "C" void NAME##_add_norm(const T* x, const T* y, const T* w, const T* b, T* out,  \
                                  int64_t rows, int64_t n, double eps, int64_t threads) {   \
    add_norm<T>(x, y, w, b, out, rows, n, T(eps), threads);                                  \
  }

PRUNEKIT_MSDA(float, msda_f32)
PRUNEKIT_MSDA(double, msda_f64)
"""

_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread"]
# Built into the library where PyTorch's threads are GNU OpenMP's: its loops then run on those
# threads. With threads of its own, each call woke a second thread while PyTorch's OpenMP
# thread still spun after the last operator (libgomp's default wait), three busy threads on two
# cores: on the reference Deformable DETR at 375 x 1242 (two threads) an encoder layer's
# sampling took 15 ms inside the model against 6.5 ms timed alone.
_OPENMP_FLAGS = ["-fopenmp", "-DPRUNEKIT_OPENMP"]
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit")


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") \
        or shutil.which("clang++")


def _cpu() -> str:
    """What ``-march=native`` compiles for: this CPU's model and instruction-set flags, so that
    a cache shared by different machines (a cluster's home directory) keeps one build per kind
    of CPU and never loads one that uses instructions this CPU lacks."""
    info = cpu_info("model name", "flags", "Features", "CPU part")
    if info is None:
        return platform.machine() + platform.processor()
    return "\n".join(f"{key}: {value}" for key, value in info.items())


def openmp() -> bool:
    """Whether PyTorch runs its threads on GNU OpenMP with ``libgomp.so.1`` loaded in this
    process, so that a library built with ``-fopenmp`` links that very runtime (the loader
    matches its ``libgomp.so.1`` to the one loaded) rather than a second one."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError):
        return False
    return True


def _flag_sets(cxx: str) -> list[list[str]]:
    """The flags to build with, in the order to try them: with OpenMP first where PyTorch's is
    GNU's and the compiler is GCC's (clang's ``-fopenmp`` links LLVM's runtime, a second one),
    then without (a GCC without its OpenMP library still builds the kernel)."""
    gcc = "g++" in Path(os.path.realpath(cxx)).name
    return ([_FLAGS + _OPENMP_FLAGS] if gcc and openmp() else []) + [_FLAGS]


def _build(cxx: str, flags: list[str], target: Path) -> None:
    """Compile into a temporary file beside ``target`` and rename it into place, so that
    processes building at once (torchrun's ranks, ``make -j``) never load half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "msda.cpp"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        subprocess.run([cxx, *flags, str(src), "-o", str(out)], check=True,
                       capture_output=True, text=True, timeout=300)
        os.replace(out, target)


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (after one line on stderr) when it
    cannot be built, and HF's path runs instead. Decided once per process (per ``$CXX``):
    every sampling call asks."""
    key = os.environ.get("CXX", "")
    if key in _loaded:
        return _loaded[key]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        cxx = _compiler()
        lib = None
        if cxx is None:
            print("prunekit: no C++ compiler (g++) for the deformable-sampling kernel; "
                  "Deformable DETR runs HF's slower grid_sample path (install g++ to speed "
                  "it up)", file=sys.stderr)
        else:
            error: Exception | None = None
            sets = _flag_sets(cxx)
            for i, flags in enumerate(sets):
                optional = i < len(sets) - 1  # a faster build with a fallback after it
                digest = hashlib.sha256("\0".join([SOURCE, cxx, *flags, _cpu()]).encode()) \
                    .hexdigest()
                target = cache_dir() / f"msda-{digest[:16]}.so"
                # An optional build (OpenMP) that failed once is not tried by every process.
                failed = target.with_suffix(".failed")
                if optional and failed.exists():
                    continue
                try:
                    if not target.exists():
                        _build(cxx, flags, target)
                    lib = ctypes.CDLL(str(target))
                    _declare(lib)
                    break
                except (OSError, subprocess.SubprocessError) as e:
                    error = e
                    if optional:
                        # Best effort: a cache it cannot write to still gets the fallback.
                        with contextlib.suppress(OSError):
                            failed.write_text(str(getattr(e, "stderr", None) or e))
            else:
                detail = getattr(error, "stderr", None) or str(error)
                print(f"prunekit: the deformable-sampling kernel did not build ({cxx}: "
                      f"{detail.strip().splitlines()[-1] if detail.strip() else error}); "
                      f"Deformable DETR runs HF's slower grid_sample path", file=sys.stderr)
                lib = None
        _loaded[key] = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int64
    for name in ("msda_f32", "msda_f64"):
        getattr(lib, f"{name}_forward").argtypes = [p] * 6 + [i] * 8 + [p, i, i]
        getattr(lib, f"{name}_forward").restype = None
        getattr(lib, f"{name}_backward").argtypes = [p] * 9 + [i] * 8
        getattr(lib, f"{name}_backward").restype = None
        getattr(lib, f"{name}_add_norm").argtypes = [p] * 5 + [i, i, ctypes.c_double, i]
        getattr(lib, f"{name}_add_norm").restype = None


_PREFIX = {torch.float32: "msda_f32", torch.float64: "msda_f64"}
MAX_WIDTH = 1024  # the kernel's largest head width (its per-row buffers)


def usable(*tensors: Tensor) -> bool:
    """Whether the kernel can run on these tensors here (CPU, float32 or float64 alike,
    plain tensors, the value first with heads of at most MAX_WIDTH channels, no compiler
    tracing)."""
    t0 = tensors[0]
    if t0.device.type != "cpu" or t0.dtype not in _PREFIX:
        return False
    if any(type(t) is not Tensor and not isinstance(t, torch.nn.Parameter) for t in tensors):
        return False  # fake or functional tensors of a tracer
    if any(t.device != t0.device or t.dtype != t0.dtype for t in tensors):
        return False
    if t0.shape[-1] > MAX_WIDTH:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return library() is not None


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _levels(shapes: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor]:
    """Each level's (height, width) and first position, as the kernel reads them."""
    sizes = torch.tensor(shapes, dtype=torch.int64).view(-1, 2)
    starts = torch.zeros(len(shapes), dtype=torch.int64)
    starts[1:] = (sizes[:, 0] * sizes[:, 1]).cumsum(0)[:-1]
    return sizes, starts


def _forward(value: Tensor, loc: Tensor, attn: Tensor, shapes: tuple[tuple[int, int], ...],
             out: Tensor, *, pixels: bool, reference: Tensor | None = None,
             logits: bool = False) -> None:
    b, s, h, d = value.shape
    q, levels, points = loc.shape[1], loc.shape[3], loc.shape[4]
    sizes, starts = _levels(shapes)
    fn = getattr(library(), _PREFIX[value.dtype] + "_forward")
    fn(_ptr(value), _ptr(sizes), _ptr(starts), _ptr(loc), _ptr(attn), _ptr(out),
       b, s, h, d, q, levels, points, int(pixels),
       None if reference is None else _ptr(reference), int(logits), torch.get_num_threads())


def _infer(name: str, value: Tensor, shapes: list[tuple[int, int]], loc: Tensor,
           weights: Tensor, reference: Tensor | None = None, logits: bool = False) -> Tensor:
    """The samples without gradients, locations in pixels (from ``reference`` if given),
    ``weights`` softmaxed over each row's levels × points first if ``logits``."""
    tensors = [t for t in (value, loc, weights, reference) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(f"{name} has no backward; use sample")
    value, loc, weights = value.contiguous(), loc.contiguous(), weights.contiguous()
    reference = None if reference is None else reference.contiguous()
    b, _, h, d = value.shape
    out = value.new_empty(b, loc.shape[1], h, d)
    _forward(value, loc, weights, tuple((int(y), int(x)) for y, x in shapes), out, pixels=True,
             reference=reference, logits=logits)
    return out.view(b, loc.shape[1], h * d)


class _Sample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, loc: Tensor, attn: Tensor,  # type: ignore[override]
                shapes: tuple[tuple[int, int], ...]) -> Tensor:
        value, loc, attn = value.contiguous(), loc.contiguous(), attn.contiguous()
        b, _, h, d = value.shape
        out = value.new_empty(b, loc.shape[1], h, d)
        _forward(value, loc, attn, shapes, out, pixels=False)
        ctx.save_for_backward(value, loc, attn)
        ctx.shapes = shapes
        return out.view(b, loc.shape[1], h * d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        value, loc, attn = ctx.saved_tensors
        sizes, starts = _levels(ctx.shapes)
        b, s, h, d = value.shape
        q, levels, points = loc.shape[1], loc.shape[3], loc.shape[4]
        grad = grad.contiguous()
        g_value, g_loc, g_attn = (torch.zeros_like(t) for t in (value, loc, attn))
        fn = getattr(library(), _PREFIX[value.dtype] + "_backward")
        fn(_ptr(value), _ptr(sizes), _ptr(starts), _ptr(loc), _ptr(attn), _ptr(grad),
           _ptr(g_value), _ptr(g_loc), _ptr(g_attn), b, s, h, d, q, levels, points,
           torch.get_num_threads())
        return g_value, g_loc, g_attn, None


def sample(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor,
           weights: Tensor) -> Tensor:
    """HF's ``multi_scale_deformable_attention`` through the kernel (call :func:`usable`
    first).

    Args:
        value: batch × positions × heads × width, every level's map flattened and concatenated.
        shapes: each level's (height, width).
        locations: batch × queries × heads × levels × points × 2, (x, y) as fractions of each
            level's map.
        weights: attention weights, batch × queries × heads × levels × points.

    Returns:
        batch × queries × (heads · width).
    """
    return _Sample.apply(value, locations, weights, tuple((int(h), int(w)) for h, w in shapes))


def sample_pixels(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor,
                  weights: Tensor) -> Tensor:
    """:func:`sample` with the locations already in ``grid_sample``'s pixel coordinates
    (fraction × size − 0.5), for inference: no gradients (call :func:`usable` first, with
    gradients off)."""
    return _infer("sample_pixels", value, shapes, pixels, weights)


def sample_offsets(value: Tensor, shapes: list[tuple[int, int]], reference: Tensor,
                   offsets: Tensor, weights: Tensor, *, logits: bool = False) -> Tensor:
    """:func:`sample_pixels` as a deformable attention layer with point references computes
    it, for inference, each sampling point's reference added to its offset in the kernel's
    loop: on the reference Deformable DETR at 375 × 1242 (9,792 encoder queries, two threads)
    that broadcast addition took about 5 ms of an encoder layer's 45 in PyTorch.

    Args:
        value: batch × positions × heads × width.
        shapes: each level's (height, width).
        reference: batch × queries × levels × 2, (x, y) in ``grid_sample``'s pixel
            coordinates (fraction × size − 0.5).
        offsets: batch × queries × heads × levels × points × 2, in pixels.
        weights: attention weights, batch × queries × heads × levels × points.
        logits: ``weights`` are the attention layer's logits, which the kernel softmaxes over
            each (query, head)'s levels × points as it reads them, as HF's layer does before
            sampling: inside the reference Deformable DETR (9,792 encoder queries, two
            threads) that softmax took about 1.1 ms of each encoder layer, a pass over the
            weights as long in a pruned model as in the dense one.

    Returns:
        batch × queries × (heads · width).
    """
    return _infer("sample_offsets", value, shapes, offsets, weights, reference, logits)


def add_norm(x: Tensor, residual: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """``norm(x + residual)``, the residual addition and the layer norm after it in one pass
    over the rows where the library runs (no gradients, a norm over the last dimension with
    weight and bias); PyTorch's two operators elsewhere. The same numbers to float rounding
    (the sums are taken in another order). Each encoder layer of Deformable DETR adds and
    normalises twice over every position (9,792 rows of 256 at 375 × 1242): two passes that
    read the sum back from memory, as wide in a filter-pruned model as in the dense one."""
    params = (norm.weight, norm.bias)
    if x.shape != residual.shape or norm.normalized_shape != (x.shape[-1],) \
            or any(p is None for p in params) \
            or (torch.is_grad_enabled() and any(t.requires_grad for t in (x, residual, *params))) \
            or not usable(x, residual, *params):
        return norm(x + residual)
    x, residual = x.contiguous(), residual.contiguous()
    weight, bias = norm.weight.contiguous(), norm.bias.contiguous()
    out = torch.empty_like(x)
    n = x.shape[-1]
    getattr(library(), _PREFIX[x.dtype] + "_add_norm")(
        _ptr(x), _ptr(residual), _ptr(weight), _ptr(bias), _ptr(out), x.numel() // max(n, 1), n,
        norm.eps, torch.get_num_threads())
    return out


def _hf_sampling() -> type:
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        MultiScaleDeformableAttention,
    )

    return MultiScaleDeformableAttention


class KernelSampling(_hf_sampling()):
    """HF's ``MultiScaleDeformableAttention`` (same arguments, same outputs) through the kernel
    where it can run (:func:`usable`), HF's own path elsewhere. A subclass, so that whatever
    looks for HF's module (the MACs formula of the sampling) still finds it."""

    def forward(self, value: Tensor, value_spatial_shapes: Tensor,
                value_spatial_shapes_list: list[tuple[int, int]], level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor,
                im2col_step: int = 64) -> Tensor:
        if usable(value, sampling_locations, attention_weights):
            return sample(value, value_spatial_shapes_list, sampling_locations,
                          attention_weights)
        return super().forward(value, value_spatial_shapes, value_spatial_shapes_list,
                               level_start_index, sampling_locations, attention_weights,
                               im2col_step)


def install(model: torch.nn.Module, *, kernel: bool = True) -> torch.nn.Module:
    """``model`` with every HF deformable sampling module run through the kernel
    (``kernel=False``: back to HF's own module, as an exporter must trace it)."""
    hf = _hf_sampling()
    for m in model.modules():
        attn = getattr(m, "attn", None)
        if isinstance(attn, hf):
            m.attn = KernelSampling() if kernel else hf()
    return model
