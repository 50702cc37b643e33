"""CUDA raw kernels (cupy) for the GPU transform. UNVERIFIED: written without a device.

The kernels are one-thread-per-event ports of the numba code in :mod:`.neighbors`,
:mod:`.fuzzy` and :mod:`.sgd`, and draw negative samples with the same counter-based
hash (splitmix64 of ``(seed, event, epoch, edge, sample)``), so CPU and GPU agree up
to the last-bit differences of ``exp``/``pow`` between libm and CUDA. The module is
compiled with ``--fmad=false`` so that no multiply-add is contracted behind our back.
Only this module and :func:`.neighbors.knn_gpu` import cupy, lazily.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["MAX_K", "topk_merge", "exact_distances", "resort", "fuzzy_init", "layout"]

MAX_K = 128
_BLOCK = 128

_SOURCE = r"""
#define MAX_K 128

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long event_key(unsigned long long seed, unsigned long long ev) {
    const unsigned long long G = 0x9E3779B97F4A7C15ULL;
    return mix64(mix64(seed * G + G) ^ ev);
}

__device__ __forceinline__ long long rand_below(unsigned long long key, unsigned long long epoch,
        unsigned long long edge, unsigned long long sample, unsigned long long n) {
    unsigned long long h = mix64(key ^ ((epoch << 40) | (edge << 20) | sample));
    return (long long)(((h >> 32) * n) >> 32);
}

__device__ __forceinline__ double clip4(double v) { return v > 4.0 ? 4.0 : (v < -4.0 ? -4.0 : v); }

extern "C" __global__ void topk_merge(const float* dot_t, const float* xx, const float* yy, int rows,
        int m, int col0, int k, float* best_d, int* best_i) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    float bd[MAX_K]; int bi[MAX_K];
    for (int p = 0; p < k; ++p) { bd[p] = best_d[(long long)i * k + p]; bi[p] = best_i[(long long)i * k + p]; }
    float xi = xx[i];
    for (int j = 0; j < m; ++j) {
        float v = xi + yy[j] - 2.0f * dot_t[(long long)j * rows + i];
        if (v < bd[k - 1]) {
            int p = k - 1;
            while (p > 0 && bd[p - 1] > v) { bd[p] = bd[p - 1]; bi[p] = bi[p - 1]; --p; }
            bd[p] = v; bi[p] = col0 + j;
        }
    }
    for (int p = 0; p < k; ++p) { best_d[(long long)i * k + p] = bd[p]; best_i[(long long)i * k + p] = bi[p]; }
}

extern "C" __global__ void exact_distances(const float* x, const float* y, const int* idx, long long total,
        int k, int d, float* out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    long long i = t / k;
    long long j = idx[t];
    double s = 0.0;
    for (int c = 0; c < d; ++c) {
        double diff = (double)x[i * d + c] - (double)y[j * d + c];
        s += diff * diff;
    }
    out[t] = (float)sqrt(s);
}

extern "C" __global__ void resort(float* dist, int* idx, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float* dr = dist + (long long)i * k; int* ir = idx + (long long)i * k;
    for (int j = 1; j < k; ++j) {
        float dv = dr[j]; int iv = ir[j]; int p = j;
        while (p > 0 && (dr[p - 1] > dv || (dr[p - 1] == dv && ir[p - 1] > iv))) { dr[p] = dr[p - 1]; ir[p] = ir[p - 1]; --p; }
        dr[p] = dv; ir[p] = iv;
    }
}

__device__ float rho_of(const float* row, int k, double lc) {
    int nnz = 0;
    for (int j = 0; j < k; ++j) nnz += row[j] > 0.0f;
    int index = (int)floor(lc);
    double interp = lc - index;
    float rho = 0.0f;
    if (nnz >= lc) {
        int seen = 0; float prev = 0.0f, cur = 0.0f, first = 0.0f;
        for (int j = 0; j < k; ++j) {
            if (!(row[j] > 0.0f)) continue;
            if (seen == 0) first = row[j];
            if (seen == index - 1) prev = row[j];
            if (seen == index) cur = row[j];
            ++seen;
        }
        if (index > 0) {
            rho = prev;
            if (interp > 1e-5) rho += (float)(interp * (cur - prev));
        } else if (nnz > 0) {
            rho = (float)(interp * first);
        }
    } else if (nnz > 0) {
        for (int j = 0; j < k; ++j) if (row[j] > rho) rho = row[j];
    }
    return rho;
}

__device__ double sigma_of(const float* row, int k, float rho, double target) {
    double lo = 0.0, hi = 1.0 / 0.0, mid = 1.0;
    const double fmax = 3.4028234663852886e38;
    for (int it = 0; it < 64; ++it) {
        double psum = 0.0;
        for (int j = 1; j < k; ++j) {
            float d = row[j] - rho;
            psum += d > 0.0f ? exp(-((double)d / mid)) : 1.0;
        }
        if (fabs(psum - target) < 1e-5) break;
        if (psum > target) { hi = mid; mid = (lo + hi) / 2.0; }
        else { lo = mid; mid = hi >= fmax ? mid * 2.0 : (lo + hi) / 2.0; }
    }
    return mid;
}

extern "C" __global__ void fuzzy_init(const int* idx, const float* dists, const float* emb, int n, int k,
        double target, double lc, double mean_distances, float* weights, float* init) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* row = dists + (long long)i * k; const int* ir = idx + (long long)i * k;
    float* w = weights + (long long)i * k;
    float rho = rho_of(row, k, lc);
    float sig = (float)sigma_of(row, k, rho, target);
    double rmean = 0.0;
    for (int j = 0; j < k; ++j) rmean += row[j];
    double floor_v = 1e-3 * (rho > 0.0f ? rmean / k : mean_distances);
    if (sig < floor_v) sig = (float)floor_v;
    float total = 0.0f; int snap = -1;
    for (int j = 0; j < k; ++j) {
        float v = 0.0f;
        if (ir[j] >= 0) {
            float d = row[j] - rho;
            v = (d <= 0.0f || sig == 0.0f) ? 1.0f : expf(-(d / sig));
        }
        w[j] = v;
        if (ir[j] >= 0 && v > 0.0f) {
            total += v;
            if (v == 1.0f && (snap < 0 || ir[j] < snap)) snap = ir[j];
        }
    }
    float ox = 0.0f, oy = 0.0f;
    if (snap >= 0) { ox = emb[2LL * snap]; oy = emb[2LL * snap + 1]; }
    else if (total == 0.0f) { ox = 0.0f / 0.0f; oy = ox; }
    else {
        for (int j = 0; j < k; ++j) {
            if (ir[j] < 0 || !(w[j] > 0.0f)) continue;
            float f = w[j] / total;
            ox += f * emb[2LL * ir[j]]; oy += f * emb[2LL * ir[j] + 1];
        }
    }
    init[2LL * i] = ox; init[2LL * i + 1] = oy;
}

extern "C" __global__ void layout(float* pos, const int* idx, const double* eps, const float* ref, int n, int k,
        unsigned long long n_ref, unsigned long long seed, unsigned long long offset, int n_epochs,
        double a, double b, double gamma, double alpha0, double neg_rate) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float cx = pos[2LL * i], cy = pos[2LL * i + 1];
    if (isnan(cx)) return;
    const int* ir = idx + (long long)i * k; const double* er = eps + (long long)i * k;
    double next_s[MAX_K], next_neg[MAX_K];
    for (int e = 0; e < k; ++e) { next_s[e] = er[e]; next_neg[e] = er[e] / neg_rate; }
    unsigned long long key = event_key(seed, offset + (unsigned long long)i);
    double alpha = alpha0;
    for (int ep = 0; ep < n_epochs; ++ep) {
        for (int e = 0; e < k; ++e) {
            if (er[e] <= 0.0 || next_s[e] > ep) continue;
            int t = ir[e];
            float dx = cx - ref[2LL * t], dy = cy - ref[2LL * t + 1];
            float d2 = dx * dx + dy * dy;
            double g = 0.0;
            if (d2 > 0.0f) g = -2.0 * a * b * pow((double)d2, b - 1.0) / (a * pow((double)d2, b) + 1.0);
            cx = (float)((double)cx + clip4(g * dx) * alpha);
            cy = (float)((double)cy + clip4(g * dy) * alpha);
            next_s[e] += er[e];
            double eneg = er[e] / neg_rate;
            int n_neg = (int)((ep - next_neg[e]) / eneg);
            for (int p = 0; p < n_neg; ++p) {
                long long r = rand_below(key, (unsigned long long)ep, (unsigned long long)e, (unsigned long long)p, n_ref);
                float rx = cx - ref[2LL * r], ry = cy - ref[2LL * r + 1];
                float r2 = rx * rx + ry * ry;
                if (r2 > 0.0f) {
                    double gr = 2.0 * gamma * b / ((0.001 + r2) * (a * pow((double)r2, b) + 1.0));
                    if (gr > 0.0) {
                        cx = (float)((double)cx + clip4(gr * rx) * alpha);
                        cy = (float)((double)cy + clip4(gr * ry) * alpha);
                    }
                }
            }
            next_neg[e] += n_neg * eneg;
        }
        alpha = alpha0 * (1.0 - (double)ep / (double)n_epochs);
    }
    pos[2LL * i] = cx; pos[2LL * i + 1] = cy;
}
"""


@functools.cache
def _module() -> Any:
    """Compile the kernels once per process."""
    import cupy as cp

    return cp.RawModule(code=_SOURCE, options=("--std=c++14", "--fmad=false"))


def _launch(name: str, n_threads: int, args: tuple) -> None:
    """Launch kernel ``name`` with one thread per item."""
    if n_threads > 0:
        _module().get_function(name)(((n_threads + _BLOCK - 1) // _BLOCK,), (_BLOCK,), args)


def _check_k(k: int) -> None:
    if k > MAX_K:
        raise ValueError(f"the GPU kernels support n_neighbors <= {MAX_K}, got {k}")


def topk_merge(dot_t: Any, xx: Any, yy: Any, col0: int, best_d: Any, best_i: Any) -> None:
    """Merge a ``(tile, rows)`` block of dot products into running sorted top-k lists (in place)."""
    rows, k = best_d.shape
    _check_k(k)
    args = (dot_t, xx, yy, np.int32(rows), np.int32(dot_t.shape[0]), np.int32(col0), np.int32(k), best_d, best_i)
    _launch("topk_merge", rows, args)


def exact_distances(x: Any, y: Any, idx: Any) -> Any:
    """``||x[i] - y[idx[i, j]]||`` for all ``(i, j)``, float64 sums, float32 out."""
    import cupy as cp

    out = cp.empty(idx.shape, dtype=cp.float32)
    total = idx.size
    _launch("exact_distances", total, (x, y, idx, np.int64(total), np.int32(idx.shape[1]), np.int32(x.shape[1]), out))
    return out


def resort(dist: Any, idx: Any) -> None:
    """Sort each row by (distance, index) in place."""
    _launch("resort", dist.shape[0], (dist, idx, np.int32(dist.shape[0]), np.int32(dist.shape[1])))


def fuzzy_init(idx: Any, dists: Any, emb: Any, k: float, local_connectivity: float, mean_distances: float) -> tuple[Any, Any]:
    """Membership weights ``(n, k)`` and initial coordinates ``(n, 2)`` (see :mod:`.fuzzy`)."""
    import cupy as cp

    n, kk = idx.shape
    weights = cp.empty((n, kk), dtype=cp.float32)
    init = cp.empty((n, 2), dtype=cp.float32)
    args = (idx, dists, emb, np.int32(n), np.int32(kk), np.float64(np.log2(k)), np.float64(local_connectivity),
            np.float64(mean_distances), weights, init)
    _launch("fuzzy_init", n, args)
    return weights, init


def layout(
    init: Any, ref: Any, idx: Any, eps: Any, *, n_epochs: int, a: float, b: float, gamma: float,
    initial_alpha: float, negative_sample_rate: float, seed: int, event_offset: int = 0,
) -> Any:
    """SGD of new events against the fixed reference embedding (see :func:`.sgd.optimize_layout`)."""
    import cupy as cp

    _check_k(idx.shape[1])
    pos = cp.array(init, dtype=cp.float32, order="C", copy=True)
    args = (pos, idx, eps, ref, np.int32(pos.shape[0]), np.int32(idx.shape[1]), np.uint64(ref.shape[0]),
            np.uint64(seed), np.uint64(event_offset), np.int32(n_epochs), np.float64(a), np.float64(b),
            np.float64(gamma), np.float64(initial_alpha), np.float64(negative_sample_rate))
    _launch("layout", pos.shape[0], args)
    return pos
