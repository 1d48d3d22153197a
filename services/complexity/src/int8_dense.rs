//! A dense layer `y = x·Wᵀ + b` in 8-bit integers, for CPUs with AVX-512
//! VNNI (`vpdpbusd`: 64 byte products summed into 16 lanes per
//! instruction, four times the multiply-adds of an f32 FMA).
//!
//! - Weights: one symmetric scale per output (`max |w| / 127`), stored in
//!   VNNI order: per block of 16 outputs, per group of 4 inputs, the 16×4
//!   bytes one 512-bit register holds.
//! - Activations: one symmetric scale per row, quantised at each call and
//!   shifted by +128 into `u8` (the instruction multiplies unsigned by
//!   signed bytes); the shift is taken back out with each output's weight
//!   sum.
//! - Each row is computed alone, in the same order whatever the other rows
//!   are, so a text's vector does not depend on its batch companions.
//!
//! CPUs with AVX2 but not VNNI run the same sums with `vpmaddubsw` on
//! `|w|` (kept beside the weights) times the signed activation signed by
//! `w` (which cannot saturate: |x|, |w| ≤ 127) and `vpmaddwd`, adding the
//! shift back; others
//! run scalar code (the reference the unit tests compare against). All
//! three give bit for bit the same result.

use rayon::prelude::*;

/// Outputs per VNNI block (one 512-bit register of `i32` sums).
const BLOCK: usize = 16;
/// Blocks computed together: with [`TILE_ROWS`] rows, 16 accumulators.
const BLOCKS_PER_STEP: usize = 4;
/// Rows computed together, sharing every weight load.
const TILE_ROWS: usize = 4;
/// Inputs summed by one instruction per lane.
const GROUP: usize = 4;

/// The quantised layer.
pub(crate) struct Int8Dense {
    /// VNNI-ordered weights: `outputs_padded / 16` blocks of
    /// `inputs_padded / 4` groups of 64 bytes.
    packed: Vec<i8>,
    /// `|packed|`, for the AVX2 kernel (its multiply takes one unsigned
    /// operand).
    magnitude: Vec<u8>,
    /// Per output: the weight scale.
    scale: Vec<f32>,
    /// Per output: 128 × the sum of its quantised weights (the shift).
    shift: Vec<i32>,
    bias: Vec<f32>,
    inputs: usize,
    inputs_padded: usize,
    outputs_padded: usize,
}

impl Int8Dense {
    /// From PyTorch's layout: `weight` is outputs × inputs, row-major.
    pub(crate) fn from_torch(weight: &[f32], bias: Vec<f32>) -> Self {
        let outputs = bias.len();
        let inputs = weight.len() / outputs.max(1);
        assert_eq!(
            weight.len(),
            inputs * outputs,
            "weight is not outputs × inputs"
        );
        let inputs_padded = inputs.div_ceil(GROUP) * GROUP;
        let step = BLOCK * BLOCKS_PER_STEP;
        let outputs_padded = outputs.div_ceil(step) * step;
        let mut scale = vec![1f32; outputs_padded];
        let mut shift = vec![0i32; outputs_padded];
        let mut packed = vec![0i8; outputs_padded * inputs_padded];
        let groups = inputs_padded / GROUP;
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            let max = row.iter().fold(0f32, |m, w| m.max(w.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale[o] = s;
            let (block, lane) = (o / BLOCK, o % BLOCK);
            let mut sum = 0i32;
            for (i, w) in row.iter().enumerate() {
                let q = (w / s).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(q);
                let at = ((block * groups + i / GROUP) * BLOCK + lane) * GROUP + i % GROUP;
                packed[at] = q;
            }
            shift[o] = 128 * sum;
        }
        let magnitude = packed.iter().map(|w| w.unsigned_abs()).collect();
        Self {
            packed,
            magnitude,
            scale,
            shift,
            bias,
            inputs,
            inputs_padded,
            outputs_padded,
        }
    }

    /// Output width.
    pub(crate) fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// `x` holds rows of `inputs` values; returns the rows of `outputs`.
    pub(crate) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let k = self.inputs;
        assert_eq!(x.len() % k, 0, "input rows are not {k} wide");
        let m = x.len() / k;
        let n = self.outputs();
        let mut y = vec![0f32; m * n];
        let (vnni, avx2) = (has_vnni(), has_avx2());
        y.par_chunks_mut(TILE_ROWS * n)
            .zip(x.par_chunks(TILE_ROWS * k))
            .for_each(|(y, x)| {
                let (q, row_scale) = self.quantise_rows(x);
                let sums = if vnni {
                    // SAFETY: the CPU has AVX-512F, BW and VNNI (checked above).
                    unsafe { self.sums_vnni(&q, row_scale.len()) }
                } else if avx2 {
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { self.sums_avx2(&q, row_scale.len()) }
                } else {
                    self.sums_scalar(&q, row_scale.len())
                };
                self.dequantise(&sums, &row_scale, y);
            });
        y
    }

    /// Up to [`TILE_ROWS`] rows as shifted `u8` (padding inputs are 128,
    /// i.e. zero) and their scales. Rounds half up by truncating `x + 128.5`
    /// (always positive): `f32::round` is a libm call per value on the
    /// baseline x86-64 target, which made quantising cost more than the
    /// products it saved.
    fn quantise_rows(&self, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let rows = x.len() / self.inputs;
        let mut q = vec![128u8; TILE_ROWS * self.inputs_padded];
        let mut scales = Vec::with_capacity(rows);
        crate::kernels::wide(|| {
            for (r, row) in x.chunks_exact(self.inputs).enumerate() {
                let max = max_abs(row);
                let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                let inv = 1.0 / s;
                let out = &mut q[r * self.inputs_padded..][..self.inputs];
                for (o, v) in out.iter_mut().zip(row) {
                    *o = (v * inv + 128.5).clamp(1.0, 255.0) as u8;
                }
                scales.push(s);
            }
        });
        (q, scales)
    }

    /// `y = (sum - shift) · row scale · weight scale + bias`.
    fn dequantise(&self, sums: &[i32], row_scale: &[f32], y: &mut [f32]) {
        let n = self.outputs();
        crate::kernels::wide(|| {
            for (r, (out, s)) in y.chunks_exact_mut(n).zip(row_scale).enumerate() {
                let sums = &sums[r * self.outputs_padded..][..n];
                let parts = sums
                    .iter()
                    .zip(&self.shift)
                    .zip(&self.scale)
                    .zip(&self.bias);
                for (o, (((sum, shift), scale), bias)) in out.iter_mut().zip(parts) {
                    *o = (sum - shift) as f32 * (s * scale) + bias;
                }
            }
        });
    }

    /// The integer sums, [`TILE_ROWS`] × `outputs_padded`, in plain code.
    fn sums_scalar(&self, q: &[u8], rows: usize) -> Vec<i32> {
        let groups = self.inputs_padded / GROUP;
        let mut sums = vec![0i32; TILE_ROWS * self.outputs_padded];
        for r in 0..rows {
            let xq = &q[r * self.inputs_padded..][..self.inputs_padded];
            for o in 0..self.outputs_padded {
                let (block, lane) = (o / BLOCK, o % BLOCK);
                let mut acc = 0i32;
                for g in 0..groups {
                    let w = &self.packed[((block * groups + g) * BLOCK + lane) * GROUP..][..GROUP];
                    for j in 0..GROUP {
                        acc += i32::from(xq[g * GROUP + j]) * i32::from(w[j]);
                    }
                }
                sums[r * self.outputs_padded + o] = acc;
            }
        }
        sums
    }

    /// The same sums with `vpdpbusd`: per step of 64 outputs, up to 4
    /// rows × 4 blocks of accumulators, each weight register used by every
    /// row.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn sums_vnni(&self, q: &[u8], rows: usize) -> Vec<i32> {
        let mut sums = vec![0i32; TILE_ROWS * self.outputs_padded];
        match rows {
            1 => self.tile_vnni::<1>(q, &mut sums),
            2 => self.tile_vnni::<2>(q, &mut sums),
            3 => self.tile_vnni::<3>(q, &mut sums),
            _ => self.tile_vnni::<TILE_ROWS>(q, &mut sums),
        }
        sums
    }

    /// [`Self::sums_vnni`] for `R` rows: a constant, so the accumulators
    /// stay in registers (a loop bound known only at run time spilled them
    /// to the stack on every instruction).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_vnni<const R: usize>(&self, q: &[u8], sums: &mut [i32]) {
        use std::arch::x86_64::*;
        let groups = self.inputs_padded / GROUP;
        let step_bytes = groups * BLOCK * GROUP;
        let x = q.as_ptr();
        for step in 0..self.outputs_padded / (BLOCK * BLOCKS_PER_STEP) {
            let w = self
                .packed
                .as_ptr()
                .add(step * BLOCKS_PER_STEP * step_bytes);
            let mut acc = [[_mm512_setzero_si512(); BLOCKS_PER_STEP]; R];
            for g in 0..groups {
                let at = |b: usize| w.add(b * step_bytes + g * BLOCK * GROUP) as *const _;
                let wv = [
                    _mm512_loadu_si512(at(0)),
                    _mm512_loadu_si512(at(1)),
                    _mm512_loadu_si512(at(2)),
                    _mm512_loadu_si512(at(3)),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xr = x.add(r * self.inputs_padded + g * GROUP) as *const i32;
                    let xv = _mm512_set1_epi32(xr.read_unaligned());
                    for b in 0..BLOCKS_PER_STEP {
                        acc[b] = _mm512_dpbusd_epi32(acc[b], xv, wv[b]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (b, v) in acc.iter().enumerate() {
                    let o = (step * BLOCKS_PER_STEP + b) * BLOCK;
                    let at = sums.as_mut_ptr().add(r * self.outputs_padded + o);
                    _mm512_storeu_si512(at as *mut _, *v);
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn sums_vnni(&self, q: &[u8], rows: usize) -> Vec<i32> {
        self.sums_scalar(q, rows)
    }

    /// The same sums with AVX2: per block of 16 outputs (two registers),
    /// up to 4 rows of accumulators sharing each weight load. `x - 128`
    /// (a flip of the top bit, once per tile) is the signed activation;
    /// `|w|` times `x` signed by `w` is `x·w` in `vpmaddubsw`, whose pair
    /// sums stay within `i16` (2 × 127 × 127); the shift `128 · Σw` is
    /// added back so the sums are those of the unsigned activations, as in
    /// the others. Taking the sign from the weights (fixed, so `|w|` is
    /// stored) rather than from the activations saves recomputing `|x|`
    /// for every block of outputs.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sums_avx2(&self, q: &[u8], rows: usize) -> Vec<i32> {
        let signed: Vec<u8> = q.iter().map(|b| b ^ 0x80).collect();
        let mut sums = vec![0i32; TILE_ROWS * self.outputs_padded];
        match rows {
            1 => self.tile_avx2::<1>(&signed, &mut sums),
            2 => self.tile_avx2::<2>(&signed, &mut sums),
            3 => self.tile_avx2::<3>(&signed, &mut sums),
            _ => self.tile_avx2::<TILE_ROWS>(&signed, &mut sums),
        }
        for r in 0..rows.min(TILE_ROWS) {
            let row = &mut sums[r * self.outputs_padded..][..self.outputs_padded];
            for (s, shift) in row.iter_mut().zip(&self.shift) {
                *s += shift;
            }
        }
        sums
    }

    /// [`Self::sums_avx2`] for `R` rows of signed activations (as bytes),
    /// before the shift.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2<const R: usize>(&self, signed: &[u8], sums: &mut [i32]) {
        use std::arch::x86_64::*;
        let groups = self.inputs_padded / GROUP;
        let block_bytes = groups * BLOCK * GROUP;
        let ones = _mm256_set1_epi16(1);
        let x = signed.as_ptr();
        for block in 0..self.outputs_padded / BLOCK {
            let w = self.packed.as_ptr().add(block * block_bytes);
            let m = self.magnitude.as_ptr().add(block * block_bytes);
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for g in 0..groups {
                let o = g * BLOCK * GROUP;
                let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
                let sign = [
                    load(w.add(o) as *const u8),
                    load(w.add(o + 32) as *const u8),
                ];
                let size = [load(m.add(o)), load(m.add(o + 32))];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xr = x.add(r * self.inputs_padded + g * GROUP) as *const i32;
                    let xv = _mm256_set1_epi32(xr.read_unaligned());
                    for h in 0..2 {
                        let pairs = _mm256_maddubs_epi16(size[h], _mm256_sign_epi8(xv, sign[h]));
                        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (h, v) in acc.iter().enumerate() {
                    let at = sums
                        .as_mut_ptr()
                        .add(r * self.outputs_padded + block * BLOCK + h * 8);
                    _mm256_storeu_si256(at as *mut __m256i, *v);
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn sums_avx2(&self, q: &[u8], rows: usize) -> Vec<i32> {
        self.sums_scalar(q, rows)
    }
}

/// The largest magnitude in `xs`, in 16 lanes so that it vectorises.
#[inline(always)]
fn max_abs(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, x) in lanes.iter_mut().zip(c) {
            *m = m.max(x.abs());
        }
    }
    tail.iter().chain(&lanes).fold(0f32, |m, x| m.max(x.abs()))
}

/// Whether this CPU runs [`Int8Dense::sums_avx2`].
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs [`Int8Dense::sums_vnni`].
pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Dense;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn vnni_and_scalar_sums_are_identical() {
        if !has_vnni() {
            return; // nothing to compare on this CPU; the scalar path is the one used
        }
        // Sizes that are not multiples of the blocks, and 1 to 4 rows.
        let (k, n) = (37, 70);
        let layer = Int8Dense::from_torch(&values(k * n, 1), values(n, 2));
        for rows in 1..=TILE_ROWS {
            let (q, _) = layer.quantise_rows(&values(rows * k, 3 + rows as u32));
            // SAFETY: checked has_vnni above.
            let fast = unsafe { layer.sums_vnni(&q, rows) };
            assert_eq!(fast, layer.sums_scalar(&q, rows), "{rows} rows");
        }
    }

    #[test]
    fn avx2_and_scalar_sums_are_identical() {
        if !has_avx2() {
            return; // nothing to compare on this CPU
        }
        // Extreme weights and activations too: outputs 0 and 1 have every
        // weight at +127 and -127, rows 0 and 1 every activation at
        // +127 and -127 (after the shift), so every pair sum is ±2·127·127,
        // the largest vpmaddubsw can hold: an unsigned-times-signed
        // product of the shifted bytes (up to 255·127 each) would saturate.
        let (k, n) = (37, 70);
        let mut w = values(k * n, 1);
        w[..k].fill(1.0);
        w[k..2 * k].fill(-1.0);
        let layer = Int8Dense::from_torch(&w, values(n, 2));
        for rows in 1..=TILE_ROWS {
            let mut x = values(rows * k, 3 + rows as u32);
            x[..k].fill(1.0);
            if rows > 1 {
                x[k..2 * k].fill(-1.0);
            }
            let (q, _) = layer.quantise_rows(&x);
            // SAFETY: checked has_avx2 above.
            let fast = unsafe { layer.sums_avx2(&q, rows) };
            assert_eq!(fast, layer.sums_scalar(&q, rows), "{rows} rows");
        }
    }

    #[test]
    fn close_to_the_f32_layer() {
        let (k, n, m) = (384, 128, 9);
        let (w, b, x) = (values(k * n, 7), values(n, 8), values(m * k, 9));
        let exact = Dense::from_torch(&w, b.clone()).forward(&x);
        let approx = Int8Dense::from_torch(&w, b).forward(&x);
        let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = exact
            .iter()
            .zip(&approx)
            .fold(0f32, |a, (e, q)| a.max((e - q).abs()));
        // Two 8-bit roundings per product, summed over 384 inputs.
        assert!(worst < 0.02 * scale, "worst error {worst} against {scale}");
    }

    #[test]
    fn a_row_does_not_depend_on_its_companions() {
        let (k, n) = (64, 64);
        let layer = Int8Dense::from_torch(&values(k * n, 4), values(n, 5));
        let row = values(k, 6);
        let alone = layer.forward(&row);
        let mut batch = values(6 * k, 11);
        batch[2 * k..3 * k].copy_from_slice(&row);
        let together = layer.forward(&batch);
        assert_eq!(alone[..], together[2 * n..3 * n]);
    }

    #[test]
    fn zero_rows_and_weights_give_the_bias() {
        let layer = Int8Dense::from_torch(&[0.0; 8], vec![0.5, -1.0]);
        assert_eq!(layer.forward(&[0.0; 4]), [0.5, -1.0]);
    }
}
