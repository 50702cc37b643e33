"""The pixel kernels (numba, compiled on first use and cached; no fast-math)."""

from __future__ import annotations

import numba
import numpy as np


# Each kernel walks one cell and one image row at a time with the per-cell values held
# in scalars, so that the innermost loop over x has no branches and compiles to SIMD.


@numba.njit(cache=True, inline="always")
def _ramp(d: float, inv_edge: float) -> float:
    """Soft inside-mask of a signed distance ``d`` (negative inside): a ramp one edge wide."""
    return min(max(0.5 - d * inv_edge, 0.0), 1.0)


@numba.njit(cache=True, inline="always")
def _bump(x: float) -> float:
    """A smooth bump of width ~1 around 0, exactly 0 beyond |x| = 1.58 (a cheap ``exp(-x²)``)."""
    t = max(1.0 - 0.4 * x * x, 0.0)
    return t * t


@numba.njit(cache=True, inline="always")
def _exp_neg(a: float) -> float:
    """``exp(-a)`` for ``a >= 0`` as ``(1 - a/1024)^1024`` (within 1 % up to a = 4; vectorises)."""
    e = max(1.0 - a * (1.0 / 1024.0), 0.0)
    for _ in range(10):
        e *= e
    return e


@numba.njit(cache=True)
def _outline_kernel(centre: np.ndarray, radius: np.ndarray, coef: np.ndarray, edge: float, d_out: np.ndarray,
                    body_out: np.ndarray) -> None:
    """Signed distance to ``r(θ) = R (1 + Σ_k p_k cos kθ + q_k sin kθ)`` (k = 2..5) and the soft body mask."""
    inv_edge, size = 1.0 / edge, d_out.shape[1]
    for i in range(radius.shape[0]):
        cx, cy, rad = centre[i, 0], centre[i, 1], radius[i]
        p2, q2, p3, q3 = coef[i, 0, 0] * rad, coef[i, 0, 1] * rad, coef[i, 1, 0] * rad, coef[i, 1, 1] * rad
        p4, q4, p5, q5 = coef[i, 2, 0] * rad, coef[i, 2, 1] * rad, coef[i, 3, 0] * rad, coef[i, 3, 1] * rad
        for y in range(size):
            dy, d_row, b_row = y - cy, d_out[i, y], body_out[i, y]
            for x in range(size):
                dx = x - cx
                r = np.sqrt(dx * dx + dy * dy)
                c1, s1 = dx / max(r, 1e-3), dy / max(r, 1e-3)
                c2, s2 = c1 * c1 - s1 * s1, 2.0 * c1 * s1
                c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
                c4, s4 = c3 * c1 - s3 * s1, s3 * c1 + c3 * s1
                c5, s5 = c4 * c1 - s4 * s1, s4 * c1 + c4 * s1
                d = r - rad - (p2 * c2 + q2 * s2 + p3 * c3 + q3 * s3 + p4 * c4 + q4 * s4 + p5 * c5 + q5 * s5)
                d_row[x], b_row[x] = d, _ramp(d, inv_edge)


@numba.njit(cache=True)
def _lobes_kernel(centre: np.ndarray, lobes: np.ndarray, edge: float, out: np.ndarray) -> None:
    """Max-combine soft ellipses ``(n, L, 8)`` (x, y, a, b, cos, sin, sqrt(a b), on) into ``out``, box by box."""
    inv_edge, size = 1.0 / edge, out.shape[1]
    for i in range(lobes.shape[0]):
        for j in range(lobes.shape[1]):
            lx, ly, a, b, co, si, g, on = lobes[i, j]
            if on == 0.0:
                continue
            cx, cy, reach, ia, ib = centre[i, 0] + lx, centre[i, 1] + ly, max(a, b) + 2 * edge, 1.0 / a, 1.0 / b
            x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
            for y in range(max(0, int(cy - reach)), min(size, int(cy + reach) + 2)):
                v, row = y - cy, out[i, y]
                for x in range(x0, x1):
                    u = x - cx
                    ur, vr = (u * co + v * si) * ia, (v * co - u * si) * ib
                    row[x] = max(row[x], _ramp((np.sqrt(ur * ur + vr * vr) - 1.0) * g, inv_edge))


@numba.njit(cache=True)
def _discs_kernel(discs: np.ndarray, edge: float, carve: bool, out: np.ndarray) -> None:
    """Soft discs ``(n, K, 4)`` (x, y, radius, pallor; radius <= 0 is off), box by box.

    ``carve=False``: max-combine them into ``out``, their centres dimmed by ``pallor``
    (the paler middle of a red cell); ``carve=True``: cut them out of ``out``.
    """
    inv_edge, size = 1.0 / edge, out.shape[1]
    for i in range(discs.shape[0]):
        for k in range(discs.shape[1]):
            cx, cy, rad, pallor = discs[i, k]
            if rad <= 0.0:
                continue
            reach, core = rad + 2 * edge, 1.0 / (0.55 * rad)
            x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
            for y in range(max(0, int(cy - reach)), min(size, int(cy + reach) + 2)):
                dy, row = y - cy, out[i, y]
                for x in range(x0, x1):
                    dist = np.sqrt((x - cx) ** 2 + dy * dy)
                    m = _ramp(dist - rad, inv_edge)
                    if carve:
                        row[x] *= 1.0 - m
                    else:
                        row[x] = max(row[x], m * (1.0 - pallor * max(0.0, 1.0 - (dist * core) ** 2)))


@numba.njit(cache=True)
def _blur_kernel(src: np.ndarray, w: np.ndarray, scale: float, out: np.ndarray) -> None:
    """Separable blur of ``(n, S, S)`` bytes by kernel ``w``, borders reflected: ``out = (blur - 127.5) * scale``."""
    n, size, r = src.shape[0], src.shape[1], (w.shape[0] - 1) // 2
    tmp = np.empty(size + 2 * r, np.float32)
    for i in range(n):
        for y in range(size):
            tmp[:] = 0.0
            for t in range(w.shape[0]):
                yy = y + t - r
                row, wt = src[i, -yy - 1 if yy < 0 else (2 * size - yy - 1 if yy >= size else yy)], w[t]
                for x in range(size):
                    tmp[x + r] += wt * row[x]
            for j in range(r):
                tmp[r - 1 - j], tmp[size + r + j] = tmp[r + min(j, size - 1)], tmp[size + r - 1 - min(j, size - 1)]
            orow = out[i, y]
            orow[:] = -127.5
            for t in range(w.shape[0]):
                wt = w[t]
                for x in range(size):
                    orow[x] += wt * tmp[x + t]
            for x in range(size):
                orow[x] *= scale


@numba.njit(cache=True)
def _upsample2(field: np.ndarray, size: int) -> np.ndarray:
    """Bilinear 2x upsampling of ``(n, h, h)`` fields to ``(n, size, size)`` (``size <= 2 h``)."""
    n, h = field.shape[0], field.shape[1]
    out, tmp = np.empty((n, size, size), np.float32), np.empty(h + 2, np.float32)
    for i in range(n):
        for y in range(size):
            j = y // 2
            k = max(j - 1, 0) if y % 2 == 0 else min(j + 1, h - 1)
            for x in range(h):
                tmp[x + 1] = 0.75 * field[i, j, x] + 0.25 * field[i, k, x]
            tmp[0], tmp[h + 1], row = tmp[1], tmp[h], out[i, y]
            for x in range(size // 2):
                row[2 * x], row[2 * x + 1] = 0.75 * tmp[x + 1] + 0.25 * tmp[x], 0.75 * tmp[x + 1] + 0.25 * tmp[x + 2]
            if size % 2:
                row[size - 1] = tmp[size // 2 + 1]
    return out


@numba.njit(cache=True)
def _ifc_kernel(d: np.ndarray, body: np.ndarray, nuc: np.ndarray, fine: np.ndarray, coarse: np.ndarray,
                cell: np.ndarray, k: np.ndarray, noise: np.ndarray, out: np.ndarray) -> None:
    """Bright-field (plane 0) and dark-field (plane 1) counts of a batch, with read and shot noise.

    ``cell`` ``(n, 7)``: nucleus and cytoplasm absorbance, chromatin clumping, halo,
    scatter, granule counts, granule threshold. ``k``: background, contrast, nucleus
    stain, halo stain, granularity, dark level, dark-field gain, 1 / edge, bright- and
    dark-field read noise, shot-noise factor. ``noise`` ``(n, 2, 2, S, S)`` int8 pairs.
    """
    bg, contrast, s_nuc, s_halo, s_gran, dark, gain, inv_edge, read0, read1, shot = k
    for i in range(d.shape[0]):
        nuc_abs, cyt_abs, clump, halo, scatter, granules, thr = cell[i]
        for y in range(d.shape[1]):
            dr, br, nr, fr, cr = d[i, y], body[i, y], nuc[i, y], fine[i, y], coarse[i, y]
            z00, z01, z10, z11, o0, o1 = noise[i, 0, 0, y], noise[i, 0, 1, y], noise[i, 1, 0, y], noise[i, 1, 1, y], \
                out[i, 0, y], out[i, 1, y]
            for x in range(d.shape[2]):
                b, nn, f, cl, e = br[x], nr[x], fr[x], cr[x], dr[x] * inv_edge
                tex = (1.0 - clump) * 0.12 * f + clump * 0.45 * cl
                absorb = cyt_abs * (b - nn) * (1.0 + 0.15 * cl) + nuc_abs * s_nuc * nn * (1.0 + tex)
                ring = halo * s_halo * (0.3 * _bump(e / 1.2 - 1.0) - 0.12 * _bump(e / 1.2 + 1.2))
                bf = bg * (1.0 - contrast * absorb + ring)
                grain = min(max((-f - thr) * 1.5, 0.0), 1.0) * b
                df = dark + gain * (scatter * (b * (1.0 + 0.25 * cl) + 0.4 * _bump(e)) + grain * granules * s_gran)
                bf += np.sqrt(read0 * read0 + shot * max(bf, 0.0)) * (z00[x] + z01[x] + 1.0) * (1.0 / 104.5)
                df += np.sqrt(read1 * read1 + shot * max(df, 0.0)) * (z10[x] + z11[x] + 1.0) * (1.0 / 104.5)
                o0[x], o1[x] = min(max(int(bf + 0.5), 0), 4095), min(max(int(df + 0.5), 0), 4095)


@numba.njit(cache=True)
def _smear_kernel(body: np.ndarray, nuc: np.ndarray, fine: np.ndarray, coarse: np.ndarray, nucleoli: np.ndarray,
                  vacuoles: np.ndarray, rbc: np.ndarray, cell: np.ndarray, od: np.ndarray, k: np.ndarray,
                  noise: np.ndarray, out: np.ndarray) -> None:
    """RGB of a batch: Beer-Lambert mix of the stains, white balance, camera noise, uint8.

    ``cell`` ``(n, 6)``: chromatin, clumping, cytoplasm density, granule threshold,
    coarse granules (0/1), granules over the nucleus (0/1). ``od`` ``(n, 5, 3)``: optical
    densities of nucleus, cytoplasm, granules, red cells and background. ``k``: R, G, B
    gain (times 255) and the noise level. ``noise`` ``(n, 3, S, S)`` int8.
    """
    for i in range(body.shape[0]):
        chromatin, clump, cyt_density, thr, coarse_grains, over = cell[i]
        o = od[i]
        for y in range(body.shape[1]):
            br, nr, fr, cr, lr, vr, rr = body[i, y], nuc[i, y], fine[i, y], coarse[i, y], nucleoli[i, y], \
                vacuoles[i, y], rbc[i, y]
            for x in range(body.shape[2]):
                b, nn, f, cl = br[x], nr[x], fr[x], cr[x]
                nl, cyt = lr[x] * nn, (b - nn) * (1.0 - vr[x])
                tex = max(1.0 + (1.0 - clump) * 0.15 * f + clump * 0.55 * cl, 0.15)
                grain = min(max((-(coarse_grains * cl + (1.0 - coarse_grains) * f) - thr) * 2.0, 0.0), 1.0)
                cn, cg = nn * chromatin * tex * (1.0 - 0.7 * nl), grain * (over * b + (1.0 - over) * cyt)
                cc, cb = cyt * cyt_density * (1.0 + 0.1 * cl) + 0.3 * nl, rr[x] * (1.0 - b)
                for c in range(3):
                    a = o[4, c] + cn * o[0, c] + cc * o[1, c] + cg * o[2, c] + cb * o[3, c]
                    v = k[c] * _exp_neg(a) + k[3] * (noise[i, c, y, x] + 0.5) * (1.0 / 73.9)
                    out[i, c, y, x] = min(max(int(v + 0.5), 0), 255)
