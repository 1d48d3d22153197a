//! Multi-head self-attention over unpadded sequences. Each task is one
//! block of a sequence's queries for one head: QKᵀ scaled in the product,
//! softmax in place, then ·V written straight into its slot of the
//! output; tasks run in parallel. No sequence is padded and no mask is
//! needed, so a short prompt in a batch costs what it costs alone.
//!
//! Why blocks: a 512-token sequence's whole score matrix is 1 MiB per
//! head, larger than a core's L2, so the softmax and the ·V product read
//! it back from L3; a block of [`QUERY_BLOCK`] queries' scores stays in L2
//! between the three steps, and short batches get more tasks to share.

use rayon::prelude::*;

use crate::kernels::{softmax, wide};

/// Queries per task: their scores against 512 keys take 128 KiB.
const QUERY_BLOCK: usize = 64;

/// Where a sequence's rows are in a batch's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// First row.
    pub start: usize,
    /// Rows (tokens).
    pub len: usize,
}

/// The output rows, written by several tasks at once.
struct Output(*mut f32);

// SAFETY: tasks write disjoint regions (see `attention`), and the buffer
// outlives them (rayon's `for_each` returns only when all are done).
unsafe impl Sync for Output {}

impl Output {
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// One task: queries `rows` (offsets inside `span`) of one head.
#[derive(Debug, Clone, Copy)]
struct Task {
    span: Span,
    head: usize,
    first: usize,
    rows: usize,
}

/// Every (sequence, head, query block), in a fixed order.
fn tasks(spans: &[Span], heads: usize) -> Vec<Task> {
    let mut out = Vec::new();
    for &span in spans {
        for first in (0..span.len).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(span.len - first);
            out.extend((0..heads).map(|head| Task {
                span,
                head,
                first,
                rows,
            }));
        }
    }
    out
}

/// `qkv` holds each token's query, key and value side by side (rows of
/// 3 × heads × head_dim); returns the attention output, rows of
/// heads × head_dim, in the same row order.
pub(crate) fn attention(qkv: &[f32], spans: &[Span], heads: usize, head_dim: usize) -> Vec<f32> {
    let width = heads * head_dim;
    let rows = qkv.len() / (3 * width);
    assert_eq!(
        qkv.len(),
        rows * 3 * width,
        "qkv rows are not 3 × {width} wide"
    );
    assert!(spans.iter().all(|s| s.start + s.len <= rows));
    let mut out = vec![0f32; rows * width];
    let output = Output(out.as_mut_ptr());
    let scale = 1.0 / (head_dim as f32).sqrt();
    tasks(spans, heads).into_par_iter().for_each(|task| {
        let (l, d, m) = (task.span.len, head_dim, task.rows);
        let mut scores = vec![0f32; m * l];
        let rs = (3 * width) as isize;
        let keys = task.span.start * 3 * width + task.head * head_dim;
        // SAFETY: every pointer stays inside qkv (rows start..start+len,
        // columns of this head) or scores; the task writes only rows
        // start+first..start+first+rows, columns head·d..(head+1)·d of
        // `out`, which no other task (another head, another query block,
        // or another span: spans do not overlap) writes.
        unsafe {
            let k = qkv.as_ptr().add(keys + width);
            let v = k.add(width);
            let q = qkv.as_ptr().add(keys + task.first * 3 * width);
            // scores (m×l) = scale · Q (m×d) · Kᵀ (d×l)
            gemm::gemm(
                m,
                l,
                d,
                scores.as_mut_ptr(),
                1,
                l as isize,
                false,
                q,
                1,
                rs,
                k,
                rs,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            wide(|| {
                for row in scores.chunks_exact_mut(l) {
                    softmax(row);
                }
            });
            let first_row = task.span.start + task.first;
            let dst = output.ptr().add(first_row * width + task.head * d);
            // out (m×d) = P (m×l) · V (l×d)
            gemm::gemm(
                m,
                d,
                l,
                dst,
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                l as isize,
                v,
                1,
                rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out plainly, one sequence.
    fn naive(qkv: &[f32], span: Span, heads: usize, d: usize) -> Vec<f32> {
        let w = heads * d;
        let at = |r: usize, part: usize, h: usize, i: usize| {
            qkv[(span.start + r) * 3 * w + part * w + h * d + i]
        };
        let mut out = vec![0f32; span.len * w];
        for h in 0..heads {
            for i in 0..span.len {
                let s: Vec<f64> = (0..span.len)
                    .map(|j| {
                        (0..d)
                            .map(|x| (at(i, 0, h, x) * at(j, 1, h, x)) as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    let v: f64 = (0..span.len)
                        .map(|j| e[j] / z * at(j, 2, h, x) as f64)
                        .sum();
                    out[i * w + h * d + x] = v as f32;
                }
            }
        }
        out
    }

    /// Inputs for `rows` tokens: a fixed pattern in [-1, 1).
    fn pattern(rows: usize, heads: usize, d: usize, step: usize, modulus: usize) -> Vec<f32> {
        (0..rows * 3 * heads * d)
            .map(|i| ((i * step % modulus) as f32 / (modulus / 2) as f32) - 1.0)
            .collect()
    }

    /// Runs attention over `spans` and checks every sequence against the
    /// plain formula; returns the output.
    fn checked(qkv: &[f32], spans: &[Span], heads: usize, d: usize) -> Vec<f32> {
        let got = attention(qkv, spans, heads, d);
        let w = heads * d;
        for &span in spans {
            let want = naive(qkv, span, heads, d);
            let part = &got[span.start * w..(span.start + span.len) * w];
            for (g, x) in part.iter().zip(&want) {
                assert!((g - x).abs() < 1e-5, "{g} vs {x}");
            }
        }
        got
    }

    #[test]
    fn matches_the_plain_formula_per_sequence() {
        let (heads, d) = (3, 4);
        let qkv = pattern(7, heads, d, 37, 101);
        let got = checked(
            &qkv,
            &[Span { start: 0, len: 5 }, Span { start: 5, len: 2 }],
            heads,
            d,
        );
        // A sequence alone gives the same bits as inside the batch.
        let w = heads * d;
        let alone = attention(&qkv[5 * 3 * w..], &[Span { start: 0, len: 2 }], heads, d);
        assert_eq!(alone, got[5 * w..].to_vec());
    }

    #[test]
    fn query_blocks_give_the_plain_formula_for_a_long_sequence() {
        // Longer than one block, with a ragged last block, beside a short one.
        let (heads, d) = (2, 4);
        let len = QUERY_BLOCK * 2 + 7;
        let spans = [Span { start: 0, len: 3 }, Span { start: 3, len }];
        checked(&pattern(3 + len, heads, d, 53, 97), &spans, heads, d);
    }
}
