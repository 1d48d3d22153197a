//! The candle embedding against sentence-transformers' vectors (made once
//! by `scripts/make_minilm_reference.py`), and its determinism.
//!
//! Needs the model in `$TRIAGE_CACHE/models/all-MiniLM-L6-v2` (the set-up
//! fetches it); fails with a message saying so when it is missing.

use triage_complexity::embedding::cosine;
use triage_complexity::{MiniLm, ModelFiles, Truncator};

#[derive(serde::Deserialize)]
struct Fixture {
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    text: String,
    tokens_untruncated: usize,
    vector: Vec<f32>,
}

fn load() -> (MiniLm, Truncator, Fixture) {
    let files = ModelFiles::default_minilm();
    if let Err(e) = files.check() {
        panic!("{e}");
    }
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let model = MiniLm::load(&files).unwrap();
    let truncator = Truncator::from_file(&files.tokenizer(), fixture.max_seq_length).unwrap();
    (model, truncator, fixture)
}

#[test]
fn matches_sentence_transformers_alone_and_batched() {
    let (model, truncator, fixture) = load();
    let inputs: Vec<_> = fixture
        .items
        .iter()
        .map(|item| truncator.truncate(&item.text).unwrap())
        .collect();
    for (item, input) in fixture.items.iter().zip(&inputs) {
        let counted = truncator.count_tokens(&item.text).unwrap() + 2;
        assert_eq!(
            counted,
            item.tokens_untruncated,
            "token count of {:?}",
            &item.text[..20.min(item.text.len())]
        );
        assert_eq!(
            input.truncated,
            item.tokens_untruncated > fixture.max_seq_length
        );
        assert_eq!(
            input.ids.len(),
            item.tokens_untruncated.min(fixture.max_seq_length)
        );
    }
    let ids: Vec<&[u32]> = inputs.iter().map(|t| t.ids.as_slice()).collect();
    let batched = model.embed(&ids).unwrap();
    for (i, item) in fixture.items.iter().enumerate() {
        let alone = model.embed(&ids[i..=i]).unwrap().remove(0);
        let c = cosine(&alone, &item.vector);
        assert!(c >= 0.999, "item {i}: cosine {c} < 0.999");
        assert_eq!(alone.len(), 384);
        // Batch companions do not change a vector, bit for bit.
        assert_eq!(
            alone.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            batched[i].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "item {i} differs between batch and alone"
        );
    }
}

#[test]
fn vectors_do_not_depend_on_batch_composition() {
    let (model, truncator, fixture) = load();
    let ids: Vec<Vec<u32>> = fixture
        .items
        .iter()
        .map(|item| truncator.truncate(&item.text).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let forward = model.embed(&refs).unwrap();
    let mut reversed_refs = refs.clone();
    reversed_refs.reverse();
    let mut reversed = model.embed(&reversed_refs).unwrap();
    reversed.reverse();
    // Repeats: the same text many times in one call, as a burst would.
    let repeated = model.embed(&[refs[0]; 7]).unwrap();
    for (a, b) in forward.iter().zip(&reversed) {
        assert_eq!(bits(a), bits(b));
    }
    for r in &repeated {
        assert_eq!(bits(r), bits(&forward[0]));
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
