//! The approximation against a real tokenizer over real prompts: the
//! documented error bound of `triage_token_estimate::count`.
//!
//! The tokenizer is all-MiniLM-L6-v2's WordPiece (the router's, fetched by
//! the set-up into `$TRIAGE_CACHE/models`); the prompts are the routing data
//! (`data/` in the repository, or `$TRIAGE_DATA_DIR`). Either missing fails
//! the test with what to do: it never skips.

use std::path::PathBuf;

use triage_complexity::dataset::read_rows;
use triage_complexity::{ModelFiles, Truncator};

/// The whole file's estimate is within this fraction of the real count.
const TOTAL_BOUND: f64 = 0.10;
/// Most prompts are within this fraction each…
const PROMPT_BOUND: f64 = 0.25;
/// …this share of them at least…
const PROMPT_SHARE: f64 = 0.90;
/// …and none is off by more than this factor either way.
const WORST_FACTOR: f64 = 2.0;

fn data_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("TRIAGE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"));
    dir.join(name)
}

fn tokenizer() -> Truncator {
    let files = ModelFiles::default_minilm();
    if let Err(e) = files.check() {
        panic!("{e}");
    }
    // The length limit only matters for truncation, not for counting.
    Truncator::from_file(&files.tokenizer(), 512).unwrap()
}

/// (estimated, real) token counts of each prompt of a data file.
fn counts(real: &Truncator, file: &str) -> Vec<(u32, u32)> {
    let path = data_file(file);
    let rows = read_rows(&path).unwrap_or_else(|e| {
        panic!("{e} (the routing data: data/ in the repository, or set TRIAGE_DATA_DIR)")
    });
    assert!(
        rows.len() >= 100,
        "{}: only {} rows",
        path.display(),
        rows.len()
    );
    rows.iter()
        .map(|row| {
            row.chat_messages().iter().fold((0, 0), |(e, r), m| {
                let counted = real.count_tokens(&m.content).unwrap() as u32;
                (e + triage_token_estimate::count(&m.content), r + counted)
            })
        })
        .collect()
}

fn check_bounds(file: &str, counts: &[(u32, u32)]) {
    let (estimated, real): (u64, u64) = counts
        .iter()
        .fold((0, 0), |(e, r), &(pe, pr)| (e + pe as u64, r + pr as u64));
    let total = estimated as f64 / real as f64;
    let mut ratios: Vec<f64> = counts
        .iter()
        .map(|&(e, r)| e as f64 / r.max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let within = ratios
        .iter()
        .filter(|q| (**q - 1.0).abs() <= PROMPT_BOUND)
        .count() as f64
        / ratios.len() as f64;
    let (worst_low, worst_high) = (ratios[0], ratios[ratios.len() - 1]);
    eprintln!(
        "{file}: {} prompts, estimate/real over the file {total:.3}, {:.1}% of prompts within \
         ±{:.0}%, per prompt {worst_low:.2}..{worst_high:.2}",
        ratios.len(),
        within * 100.0,
        PROMPT_BOUND * 100.0
    );
    assert!(
        (total - 1.0).abs() <= TOTAL_BOUND,
        "{file}: the estimate is {total:.3} of the real count"
    );
    assert!(
        within >= PROMPT_SHARE,
        "{file}: only {:.1}% of prompts within ±{:.0}%",
        within * 100.0,
        PROMPT_BOUND * 100.0
    );
    assert!(
        worst_low >= 1.0 / WORST_FACTOR && worst_high <= WORST_FACTOR,
        "{file}: a prompt is off by more than {WORST_FACTOR}x ({worst_low:.2}..{worst_high:.2})"
    );
}

#[test]
fn estimate_is_within_the_documented_bound_of_a_real_tokenizer() {
    let real = tokenizer();
    for file in ["routing-dev.jsonl", "prompt-lengths.jsonl"] {
        check_bounds(file, &counts(&real, file));
    }
}
