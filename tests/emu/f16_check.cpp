// Exhaustive check of the host path of the f16 conversions in kernels/common.cuh (the
// emulated kernels' replacement for the inline PTX cvt) against the compiler's own IEEE
// binary16 conversions (_Float16, round to nearest even):
//   - f16 -> f32 for all 65,536 bit patterns (NaNs: NaN-ness and sign);
//   - f32 -> f16 for every f32 bit pattern (2^32; NaNs: NaN-ness and sign).
// Exits 1 printing the first mismatches.
#include "shim.h"
#include "../../kernels/common.cuh"

#include <stdio.h>

static bool same_h(rr_u16 a, rr_u16 b) {
    const bool na = (a & 0x7fffu) > 0x7c00u, nb = (b & 0x7fffu) > 0x7c00u;
    return (na || nb) ? (na && nb && (a & 0x8000u) == (b & 0x8000u)) : a == b;
}

int main() {
    unsigned long long bad = 0;
    for (unsigned h = 0; h < 65536; ++h) {
        _Float16 x;
        rr_u16 hh = (rr_u16)h;
        memcpy(&x, &hh, 2);
        const float want = (float)x, got = rr_h2f(hh);
        const bool ok = (want != want) ? (got != got && __float_as_uint(got) >> 31 == h >> 15)
                                       : __float_as_uint(want) == __float_as_uint(got);
        if (!ok && bad++ < 8) printf("h2f %#06x: got %a want %a\n", h, got, want);
    }
    unsigned long long n = 0;
    for (unsigned long long u = 0; u <= 0xffffffffull; ++u) {
        const float f = __uint_as_float((unsigned)u);
        const _Float16 w = (_Float16)f;
        rr_u16 want;
        memcpy(&want, &w, 2);
        const rr_u16 got = rr_f2h(f);
        if (!same_h(got, want) && bad++ < 16) printf("f2h %#010llx (%a): got %#06x want %#06x\n", u, f, got, want);
        ++n;
    }
    printf("f16 host conversions: 65536 f16->f32 and %llu f32->f16 checked, %llu mismatches\n", n, bad);
    return bad ? 1 : 0;
}
