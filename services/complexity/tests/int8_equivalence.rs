//! The int8 encoder against the f32 one on the dev prompts (the test set,
//! shipped in `data/`): the shipped scorer and the transformer path alone
//! must give the same tier on at least 99% of prompts, and ROC AUC against
//! the dev labels within 0.005 (issue 16's rule for a quantised path).
//!
//! Needs the model and the static table (the set-up fetches and builds
//! them); fails with a message saying so when they are missing.

use triage_complexity::calibration::roc_auc;
use triage_complexity::dataset::{data_dir, read_rows};
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::static_embedding::{load_or_distill, FirstStageConfig, StaticTable};
use triage_complexity::{ModelFiles, Precision};

/// Transformer-path prompts compared (all of them take minutes unoptimised).
const TRANSFORMER_PROMPTS: usize = 300;

/// Without AVX-512 VNNI or AVX2 the int8 kernel is a scalar loop (the same
/// integer sums, several times slower): the comparison then takes a
/// smaller sample so it fits the test time limit.
const SCALAR_SHIPPED_PROMPTS: usize = 400;
const SCALAR_TRANSFORMER_PROMPTS: usize = 100;

fn scorer(precision: Precision, first_stage: bool) -> Scorer {
    Scorer::new(ScorerConfig {
        precision: precision.into(),
        cache_capacity: 0,
        first_stage: FirstStageConfig {
            enabled: first_stage,
            ..Default::default()
        },
        ..ScorerConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh)"))
}

/// (score, tier 2?) of every text.
fn decisions(scorer: &Scorer, texts: &[&str]) -> Vec<(f64, bool)> {
    texts
        .chunks(32)
        .flat_map(|chunk| scorer.score_texts(chunk))
        .map(|d| d.map(|d| (d.score, d.tier2)).expect("scored"))
        .collect()
}

fn compare(what: &str, first_stage: bool, texts: &[&str], labels: &[bool]) {
    let f32 = decisions(&scorer(Precision::F32, first_stage), texts);
    let int8 = decisions(&scorer(Precision::Int8, first_stage), texts);
    let same = f32.iter().zip(&int8).filter(|(a, b)| a.1 == b.1).count();
    let same_share = same as f64 / texts.len() as f64;
    let auc = |d: &[(f64, bool)]| {
        let scores: Vec<f64> = d.iter().map(|x| x.0).collect();
        roc_auc(&scores, labels).expect("both classes")
    };
    let (a32, a8) = (auc(&f32), auc(&int8));
    println!(
        "{what}: {} prompts, same tier {same} ({:.2}%), AUC f32 {a32:.4} int8 {a8:.4}",
        texts.len(),
        100.0 * same_share
    );
    assert!(same_share >= 0.99, "{what}: same tier on {same_share:.4}");
    assert!((a32 - a8).abs() <= 0.005, "{what}: AUC {a32:.4} vs {a8:.4}");
}

#[test]
fn int8_gives_the_same_tier_and_auc_as_f32_on_dev_prompts() {
    let rows = read_rows(&data_dir().join("routing-dev.jsonl")).expect("routing-dev.jsonl");
    let rows: Vec<_> = rows.iter().filter(|r| r.label_tier.is_some()).collect();
    let texts: Vec<String> = rows.iter().map(|r| r.text()).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.label_tier == Some(2)).collect();
    let (shipped, transformer) = if triage_complexity::int8_has_fast_kernel() {
        (texts.len(), TRANSFORMER_PROMPTS)
    } else {
        println!("no AVX-512 VNNI or AVX2 here: the scalar int8 kernel, on a sample");
        (SCALAR_SHIPPED_PROMPTS, SCALAR_TRANSFORMER_PROMPTS)
    };
    let s = shipped.min(texts.len());
    compare("shipped scorer", true, &texts[..s], &labels[..s]);
    let n = transformer.min(texts.len());
    compare("transformer path", false, &texts[..n], &labels[..n]);
}

/// What is fit outside the router (the verifier's answer vectors, which the
/// worker embeds in f32) comes from `Scorer::f32_model`: an int8 scorer's
/// is a separate f32 model giving exactly the f32 scorer's vectors, and an
/// f32 scorer's is its own model.
#[test]
fn an_int8_scorer_embeds_answers_in_f32() {
    let f32 = scorer(Precision::F32, false);
    let int8 = scorer(Precision::Int8, false);
    assert_eq!(int8.model().precision(), Precision::Int8);
    let answer = int8
        .prepare("The answer is (C): the mitochondria.")
        .unwrap();
    let ids = [answer.tokens.ids.as_slice()];
    let from_int8 = int8.f32_model().unwrap();
    assert_eq!(from_int8.precision(), Precision::F32);
    assert_eq!(
        from_int8.embed(&ids).unwrap(),
        f32.model().embed(&ids).unwrap()
    );
    assert_ne!(
        int8.model().embed(&ids).unwrap(),
        f32.model().embed(&ids).unwrap(),
        "the int8 vectors should differ, or this test shows nothing"
    );
    assert!(std::ptr::eq(f32.f32_model().unwrap(), f32.model()));
    assert!(
        std::ptr::eq(int8.f32_model().unwrap(), from_int8),
        "loaded once"
    );
}

/// The static table is always distilled in f32: one distilled through an
/// int8 model holds the f32 model's token vectors (the ones the shipped
/// first-stage head was fit on), not the int8 model's, so an int8 router
/// that finds no table never saves a different one for later runs.
#[test]
fn an_int8_model_distils_the_f32_static_table() {
    let files = ModelFiles::default_minilm();
    let f32 = scorer(Precision::F32, false);
    let int8 = scorer(Precision::Int8, false);
    let ids = f32.prepare("hello").unwrap().tokens.ids;
    let (cls, sep) = (ids[0], ids[ids.len() - 1]);
    let dir = tempfile::tempdir().unwrap();
    let fresh = load_or_distill(int8.model(), &files, &dir.path().join("table.bin")).unwrap();
    // The first tokens through each model, as reference.
    let first = 2000;
    let by_f32 = StaticTable::distill(f32.model(), first, cls, sep).unwrap();
    let by_int8 = StaticTable::distill(int8.model(), first, cls, sep).unwrap();
    let mut differs = 0;
    for t in 0..first as u32 {
        assert_eq!(fresh.embed(&[t]), by_f32.embed(&[t]), "token {t}");
        differs += usize::from(by_int8.embed(&[t]) != by_f32.embed(&[t]));
    }
    assert!(
        differs > first / 2,
        "int8 and f32 rows should differ, or this test shows nothing ({differs})"
    );
}
