//! numpy, as diffusers uses it: `linspace`, `arange`, `round`, `interp` in
//! f64 (numpy's own arithmetic, which is plain IEEE and so the same on every
//! CPU), and numpy's float32 `log`, which is not: diffusers takes
//! `np.log` of f32 sigma tables, and numpy computes that with its own
//! vectorised kernel (AVX2+FMA3 and AVX-512F share one algorithm), whose
//! results differ from a correctly rounded log (and from glibc's `logf`) in
//! the last bit for about one value in twenty.

/// `np.linspace(start, stop, num)` (endpoint included), numpy's arithmetic.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let mut out: Vec<f64> = (0..num)
        .map(|i| {
            let i = i as f64;
            if num > 1 {
                let step = delta / div;
                if step != 0.0 {
                    i * step + start
                } else {
                    i / div * delta + start
                }
            } else {
                i * delta + start
            }
        })
        .collect();
    if num > 1 {
        out[num - 1] = stop;
    }
    out
}

/// `np.arange(start, stop, step)` for a float step.
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// `np.round`: halves go to the even neighbour.
pub fn round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation on integer knots.
pub fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// numpy's float32 `np.log` on x86-64 machines with AVX2 and FMA3 or
/// AVX-512F: range reduction to a mantissa in [sqrt(1/2), sqrt(2)), a
/// (5, 5) rational minimax approximation of log(1 + y) evaluated with fused
/// multiply-adds, plus `exponent * ln 2` (numpy's
/// `loops_exponent_log.dispatch.c.src`, reimplemented here lane by lane).
/// `f32::mul_add` is an exact fused multiply-add on every target, so the
/// result is the same bits numpy produces. Within 3.83 ulp of the true log.
pub fn log_f32(x: f32) -> f32 {
    // numpy's constants (npy_simd_data.h) as it writes them: like C's float
    // literals, Rust rounds each decimal straight to the nearest f32
    #[allow(clippy::excessive_precision)]
    const P: [f32; 6] = [
        0.0,
        9.999999999999998702752e-01,
        2.112677543073053063722e+00,
        1.480000633576506585156e+00,
        3.808837741388407920751e-01,
        2.589979117907922693523e-02,
    ];
    #[allow(clippy::excessive_precision)]
    const Q: [f32; 6] = [
        1.0,
        2.612677543073109236779e+00,
        2.453006071784736363091e+00,
        9.864942958519418960339e-01,
        1.546476374983906719538e-01,
        5.875095403124574342950e-03,
    ];
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return -f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x == f32::INFINITY {
        return x;
    }
    // exponent and mantissa in [0.5, 1); subnormals are scaled by 2^100 first
    let (scaled, shift) = if x < f32::MIN_POSITIVE {
        (x * f32::from_bits(0x7180_0000), 100.0)
    } else {
        (x, 0.0)
    };
    let bits = scaled.to_bits();
    let mut exponent = ((bits >> 23) as i32 - 126) as f32 - shift;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | (126 << 23));
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m = m + m;
        exponent -= 1.0;
    }
    let y = m - 1.0;
    let horner = |c: &[f32; 6]| {
        c[..5]
            .iter()
            .rev()
            .fold(c[5], |acc, &coef| acc.mul_add(y, coef))
    };
    let poly = horner(&P) / horner(&Q);
    exponent.mul_add(std::f32::consts::LN_2, poly)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_helpers() {
        assert_eq!(linspace(0.0, 1.0, 1), vec![0.0]);
        assert_eq!(linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(
            arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(round(0.5), 0.0);
        assert_eq!(round(1.5), 2.0);
        assert_eq!(round(498.5), 498.0);
        assert_eq!(interp(1.5, &[0.0, 1.0, 3.0]), 2.0);
        assert_eq!(interp(7.0, &[0.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn log_f32_is_close_to_the_true_log() {
        for x in [1e-30f32, 1e-3, 0.5, 0.7, 1.0, 2.0, 14.6, 4096.0, 1e30] {
            let exact = (x as f64).ln();
            let ulp = (exact.abs() as f32).max(f32::MIN_POSITIVE) * f32::EPSILON;
            assert!((log_f32(x) as f64 - exact).abs() <= 4.0 * ulp as f64, "{x}");
        }
        assert_eq!(log_f32(1.0), 0.0);
        assert_eq!(log_f32(0.0), f32::NEG_INFINITY);
        assert!(log_f32(-1.0).is_nan());
        // a subnormal takes the scaled path
        assert!((log_f32(1e-40) as f64 - (1e-40f64).ln()).abs() < 1e-4);
    }
}
