//! The K-quants' super-blocks of 256 values, each value's bits found where
//! `gguf.quants` finds them (its numpy reshapes written out as indices) and
//! combined in the same f32 operations, in the same order.

use crate::quants::f16_at;

/// Q2_K: scales[16], qs[64], d, dmin.
pub(crate) fn q2_k(block: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let (scales, qs) = (&block[..16], &block[16..80]);
    let (d, dmin) = (f16_at(block, 80), f16_at(block, 82));
    (0..256).map(move |k| {
        let j = k / 16;
        let dl = d * f32::from(scales[j] & 0x0F);
        let ml = dmin * f32::from(scales[j] >> 4);
        let (h, s, l) = (k / 128, (k % 128) / 32, k % 32);
        let q = (qs[h * 32 + l] >> (2 * s)) & 3;
        dl * f32::from(q) - ml
    })
}

/// Q3_K: hmask[32], qs[64], scales[12] (6-bit, packed), d.
pub(crate) fn q3_k(block: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let (hmask, qs, packed) = (&block[..32], &block[32..96], &block[96..108]);
    let d = f16_at(block, 108);
    let scale = move |j: usize| {
        let low = (packed[j % 8] >> (4 * (j / 8))) & 0x0F;
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 0x03;
        f32::from((low | (high << 4)) as i8 - 32)
    };
    (0..256).map(move |k| {
        let dl = d * scale(k / 16);
        let (h, s, l) = (k / 128, (k % 128) / 32, k % 32);
        let low = ((qs[h * 32 + l] >> (2 * s)) & 3) as i8;
        // the high bit's offset applies where the mask bit is 0
        let high = (((hmask[l] >> (k / 32)) & 1) ^ 1) as i8;
        dl * f32::from(low - (high << 2))
    })
}

/// Q4_K and Q5_K: d, dmin, scales[12] (6-bit scales and minimums, packed),
/// then (Q5_K) qh[32], and qs[128].
pub(crate) fn q45_k(block: &[u8], five_bit: bool) -> impl Iterator<Item = f32> + '_ {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let packed = &block[4..16];
    let (qh, qs) = match five_bit {
        true => (Some(&block[16..48]), &block[48..176]),
        false => (None, &block[16..144]),
    };
    let scale_min = move |j: usize| {
        let (dq, mq, md) = (&packed[..4], &packed[4..8], &packed[8..12]);
        match j < 4 {
            true => (dq[j] & 0x3F, mq[j] & 0x3F),
            false => {
                let i = j - 4;
                (
                    (md[i] & 0x0F) | ((dq[i] >> 2) & 0x30),
                    (md[i] >> 4) | ((mq[i] >> 2) & 0x30),
                )
            }
        }
    };
    (0..256).map(move |k| {
        let j = k / 32;
        let (sc, m) = scale_min(j);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        let (h, t, l) = (k / 64, (k % 64) / 32, k % 32);
        let low = (qs[h * 32 + l] >> (4 * t)) & 0x0F;
        let high = qh.map_or(0, |qh| (qh[l] >> j) & 1);
        dj * f32::from(low | (high << 4)) - mj
    })
}

/// Q6_K: ql[128], qh[64], scales[16] (signed), d.
pub(crate) fn q6_k(block: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    (0..256).map(move |f| {
        let dj = d * f32::from(scales[f / 16] as i8);
        let (h, r) = (f / 128, f % 128);
        let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        dj * f32::from((low | (high << 4)) as i8 - 32)
    })
}
