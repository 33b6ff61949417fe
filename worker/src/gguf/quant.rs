//! GGML tensor types and dequantization to f32, following ggml's reference `dequantize_row_*`
//! (ggml-quants.c): same block layouts, same arithmetic in f32, so results are bit-identical.

use std::fmt;

use half::{bf16, f16};

/// A GGML tensor type (the `type` of a GGUF tensor info).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    /// A type id this reader does not know.
    Unknown(u32),
}

/// The types [`dequantize`] handles, for error messages.
pub const SUPPORTED_NAMES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

const QK_K: usize = 256;

impl GgmlType {
    /// The type with GGML id `id` (`ggml_type` in ggml.h).
    pub fn from_id(id: u32) -> Self {
        use GgmlType::*;
        match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            other => Unknown(other),
        }
    }

    /// (elements per block, bytes per block), or `None` for an unknown type.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        use GgmlType::*;
        Some(match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            Q2_K => (QK_K, 84),
            Q3_K => (QK_K, 110),
            Q4_K => (QK_K, 144),
            Q5_K => (QK_K, 176),
            Q6_K => (QK_K, 210),
            Q8_K => (QK_K, 292),
            IQ2_XXS => (QK_K, 66),
            IQ2_XS => (QK_K, 74),
            IQ3_XXS => (QK_K, 98),
            IQ1_S => (QK_K, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (QK_K, 110),
            IQ2_S => (QK_K, 82),
            IQ4_XS => (QK_K, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            F64 => (1, 8),
            IQ1_M => (QK_K, 56),
            BF16 => (1, 2),
            TQ1_0 => (QK_K, 54),
            TQ2_0 => (QK_K, 66),
            MXFP4 => (32, 17),
            Unknown(_) => return None,
        })
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_supported(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K
        )
    }

    /// Bytes that `n` elements take, or `None` for an unknown type or a partial block.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (block, size) = self.block_layout()?;
        n.is_multiple_of(block as u64)
            .then(|| n / block as u64 * size as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Unknown(id) => write!(f, "unknown type id {id}"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error("type {0} cannot be dequantized (supported: {SUPPORTED_NAMES})")]
    Unsupported(GgmlType),
    #[error("{elements} elements are not a whole number of {ty} blocks of {block}")]
    PartialBlock {
        ty: GgmlType,
        elements: usize,
        block: usize,
    },
    #[error("{ty}: {elements} elements need {expected} bytes, got {got}")]
    WrongSize {
        ty: GgmlType,
        elements: usize,
        expected: usize,
        got: usize,
    },
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`; `dst.len()` elements must be exactly what
/// `src` holds.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), DequantError> {
    if !ty.is_supported() {
        return Err(DequantError::Unsupported(ty));
    }
    let (block, size) = ty.block_layout().ok_or(DequantError::Unsupported(ty))?;
    if !dst.len().is_multiple_of(block) {
        return Err(DequantError::PartialBlock {
            ty,
            elements: dst.len(),
            block,
        });
    }
    let expected = dst.len() / block * size;
    if src.len() != expected {
        return Err(DequantError::WrongSize {
            ty,
            elements: dst.len(),
            expected,
            got: src.len(),
        });
    }
    let blocks = src.chunks_exact(size).zip(dst.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(s, d)| d[0] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(s, d)| d[0] = half16(s, 0)),
        GgmlType::BF16 => blocks
            .for_each(|(s, d)| d[0] = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(s, d)| q8_0(s, d)),
        GgmlType::Q4_0 => blocks.for_each(|(s, d)| q4_0(s, d)),
        GgmlType::Q4_1 => blocks.for_each(|(s, d)| q4_1(s, d)),
        GgmlType::Q5_0 => blocks.for_each(|(s, d)| q5_0(s, d)),
        GgmlType::Q5_1 => blocks.for_each(|(s, d)| q5_1(s, d)),
        GgmlType::Q4_K => blocks.for_each(|(s, d)| q4_k(s, d)),
        GgmlType::Q5_K => blocks.for_each(|(s, d)| q5_k(s, d)),
        GgmlType::Q6_K => blocks.for_each(|(s, d)| q6_k(s, d)),
        _ => unreachable!("is_supported() covers the arms above"),
    }
    Ok(())
}

#[inline]
fn half16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// `block_q8_0`: f16 d, 32 × i8.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half16(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

/// `block_q4_0`: f16 d, 16 bytes of nibbles; low nibbles are elements 0..16, high 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half16(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1`: f16 d, f16 m, 16 bytes of nibbles.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half16(b, 0), half16(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `block_q5_0`: f16 d, u32 of fifth bits, 16 bytes of nibbles.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1`: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half16(b, 0), half16(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((q & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half16(b, 0), half16(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (n, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &qs[32 * n..32 * n + 32];
        let (sc, m) = scale_min_k4(2 * n, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * n + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        for l in 0..32 {
            chunk[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K`: f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes of fifth bits, 128 of nibbles.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half16(b, 0), half16(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (n, chunk) in y.chunks_exact_mut(64).enumerate() {
        let ql = &qs[32 * n..32 * n + 32];
        let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
        let (sc, m) = scale_min_k4(2 * n, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * n + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            chunk[l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - m1;
            chunk[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
        }
    }
}

/// `block_q6_K`: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 × i8 scales, f16 d.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half16(b, 208);
    for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            chunk[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            chunk[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            chunk[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            chunk[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_layouts_match_ggml() {
        assert_eq!(GgmlType::from_id(12), GgmlType::Q4_K);
        assert_eq!(GgmlType::from_id(30), GgmlType::BF16);
        assert_eq!(GgmlType::from_id(99), GgmlType::Unknown(99));
        assert_eq!(GgmlType::Q6_K.block_layout(), Some((256, 210)));
        assert_eq!(GgmlType::Q5_0.bytes_for(64), Some(44));
        assert_eq!(GgmlType::Q5_0.bytes_for(40), None);
        assert_eq!(GgmlType::Unknown(99).to_string(), "unknown type id 99");
    }

    #[test]
    fn wrong_sizes_and_unsupported_types_are_errors_not_panics() {
        let mut out = vec![0f32; 32];
        assert_eq!(
            dequantize(GgmlType::Q2_K, &[0; 84], &mut out),
            Err(DequantError::Unsupported(GgmlType::Q2_K))
        );
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
            Err(DequantError::WrongSize { .. })
        ));
        let mut odd = vec![0f32; 31];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut odd),
            Err(DequantError::PartialBlock { .. })
        ));
    }

    #[test]
    fn q8_0_by_hand() {
        // d = 0.5 (f16 0x3800), values -128, -1, 0, 1, 127, then zeros
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&0x3800u16.to_le_bytes());
        for (i, v) in [-128i8, -1, 0, 1, 127].iter().enumerate() {
            b[2 + i] = *v as u8;
        }
        let mut out = vec![9f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut out).unwrap();
        assert_eq!(&out[..6], &[-64.0, -0.5, 0.0, 0.5, 63.5, 0.0]);
    }
}
