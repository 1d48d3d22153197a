//! The encoder's numeric kernels on plain row-major `f32` buffers: a dense
//! layer through the `gemm` crate (its AVX-512 kernels, feature `x86-v4`),
//! layer norm, GELU and softmax.
//!
//! `exp` and `erf` are polynomials instead of libm calls so that the loops
//! vectorise (libm's scalar calls were a third of a 512-token pass); both
//! are within a few float roundings of the exact functions (unit tests).
//! Every row is computed in the same order whatever the other rows are, so
//! a text's vector does not depend on its batch companions.

use rayon::prelude::*;

/// Rows of a layer's activations handed to one rayon task.
const ROWS_PER_TASK: usize = 8;

/// Runs `f` compiled for AVX-512 where the CPU has it, so the kernels
/// inlined into it vectorise 16 wide (the build targets baseline x86-64,
/// 4 wide). Both give the same bits: no multiply-add is fused either way.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(f) };
        }
    }
    f()
}

/// How the matrix products use the threads: every thread of rayon's pool.
pub(crate) fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A dense layer `y = x·Wᵀ + b`, W kept transposed (inputs × outputs,
/// row-major) so the product reads it along rows.
pub(crate) struct Dense {
    weight_t: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl Dense {
    /// From PyTorch's layout: `weight` is outputs × inputs, row-major.
    pub(crate) fn from_torch(weight: &[f32], bias: Vec<f32>) -> Self {
        let outputs = bias.len();
        let inputs = weight.len() / outputs.max(1);
        assert_eq!(
            weight.len(),
            inputs * outputs,
            "weight is not outputs × inputs"
        );
        let mut weight_t = vec![0f32; weight.len()];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, w) in row.iter().enumerate() {
                weight_t[i * outputs + o] = *w;
            }
        }
        Self {
            weight_t,
            bias,
            inputs,
        }
    }

    /// Output width.
    pub(crate) fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// `x` holds rows of `inputs` values; returns the rows of `outputs`.
    pub(crate) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (k, n) = (self.inputs, self.outputs());
        assert_eq!(x.len() % k, 0, "input rows are not {k} wide");
        let m = x.len() / k;
        // The bias is the product's starting value, which saves a pass.
        let mut y = Vec::with_capacity(m * n);
        for _ in 0..m {
            y.extend_from_slice(&self.bias);
        }
        // SAFETY: x is m×k, weight_t k×n and y m×n, all row-major and of
        // exactly those lengths, and y does not alias either input.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                self.weight_t.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
        y
    }
}

/// Layer normalisation over each row, with learned scale and shift.
pub(crate) struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(weight: Vec<f32>, bias: Vec<f32>, eps: f32) -> Self {
        assert_eq!(weight.len(), bias.len());
        Self { weight, bias, eps }
    }

    /// `x ← norm(x)`, row by row.
    pub(crate) fn norm(&self, x: &mut [f32]) {
        let dim = self.weight.len();
        x.par_chunks_mut(dim * ROWS_PER_TASK).for_each(|rows| {
            wide(|| {
                for row in rows.chunks_exact_mut(dim) {
                    self.norm_row(row);
                }
            })
        });
    }

    /// `x ← norm(x + residual)`, row by row (the transformer's residual
    /// connection and its norm in one pass).
    pub(crate) fn add_and_norm(&self, x: &mut [f32], residual: &[f32]) {
        assert_eq!(x.len(), residual.len());
        let dim = self.weight.len();
        let chunk = dim * ROWS_PER_TASK;
        x.par_chunks_mut(chunk)
            .zip(residual.par_chunks(chunk))
            .for_each(|(rows, res)| {
                wide(|| {
                    for (row, r) in rows.chunks_exact_mut(dim).zip(res.chunks_exact(dim)) {
                        for (a, b) in row.iter_mut().zip(r) {
                            *a += b;
                        }
                        self.norm_row(row);
                    }
                })
            });
    }

    #[inline(always)]
    fn norm_row(&self, row: &mut [f32]) {
        let n = row.len() as f32;
        let mean = lane_sum(row) / n;
        for v in row.iter_mut() {
            *v -= mean;
        }
        let var = lane_sum_squares(row) / n;
        let scale = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = *v * scale * w + b;
        }
    }
}

/// Lanes of the fixed-order partial sums (one AVX-512 register).
const LANES: usize = 16;

/// Sum in `LANES` interleaved partial sums, then those in order: the same
/// order on every call, and one that vectorises.
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    lane_fold(xs, |x| x)
}

#[inline(always)]
fn lane_sum_squares(xs: &[f32]) -> f32 {
    lane_fold(xs, |x| x * x)
}

#[inline(always)]
fn lane_fold(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += f(*x);
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += a;
    }
    for x in tail {
        total += f(*x);
    }
    total
}

/// `x ← x·Φ(x)`, the exact (erf) GELU BERT uses, in parallel.
pub(crate) fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|part| {
        wide(|| {
            for v in part.iter_mut() {
                *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        })
    });
}

/// In-place softmax of one row (inline: call it inside [`wide`]).
#[inline(always)]
pub(crate) fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for (m, x) in lanes.iter_mut().zip(c) {
            *m = m.max(*x);
        }
    }
    for m in lanes {
        max = max.max(m);
    }
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lane_sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `eˣ` for the softmax's `x ≤ 0` (valid for |x| < 87): 2ⁿ·e^r with
/// n = round(x·log₂e), |r| ≤ ln2/2, and Cephes' degree-5 polynomial for
/// e^r; within 2 ulp of libm.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 87.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // t's low mantissa bits hold n (two's complement) after the ROUND add.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    er * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// The error function: a rational approximation on [-4, 4] (the one
/// Eigen and XLA use for f32), ±1 beyond, where erf rounds to ±1 anyway.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64: exact to ~1e-11 on [-4, 4].
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut sum) = (x, 0.0);
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_the_series() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let want = erf_reference(x.clamp(-4.0, 4.0) as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "erf off by {worst}");
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        for i in -87_000..=20_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp off by a relative {worst}");
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let before = row.clone();
        softmax(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        let (a, b) = (before[3] as f64, before[5] as f64);
        let ratio = (row[3] / row[5]) as f64;
        assert!((ratio / (a - b).exp() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn gelu_is_x_phi_x() {
        let mut xs = vec![-3.0f32, -1.0, 0.0, 0.5, 2.0];
        gelu(&mut xs);
        let want = [-0.004_049_7, -0.158_655_25, 0.0, 0.345_731_14, 1.954_5];
        for (g, w) in xs.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn dense_is_x_times_w_transposed_plus_b() {
        // W is 2 outputs × 3 inputs in PyTorch's layout.
        let d = Dense::from_torch(&[1.0, 2.0, 3.0, 0.0, -1.0, 0.5], vec![0.5, -1.0]);
        let y = d.forward(&[1.0, 1.0, 1.0, 2.0, 0.0, -2.0]);
        assert_eq!(y, vec![6.5, -1.5, -3.5, -2.0]);
    }

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let n = LayerNorm::new(vec![1.0; 4], vec![0.0; 4], 1e-12);
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0];
        n.add_and_norm(&mut x, &[0.0; 8]);
        for row in x.chunks(4) {
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        }
    }
}
