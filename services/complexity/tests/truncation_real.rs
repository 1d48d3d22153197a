//! Truncation with MiniLM's real tokenizer on the 200 long prompts of
//! `data/prompt-lengths.jsonl`: the windowed fast path must keep
//! exactly the first tokens a full tokenisation gives.

use std::path::PathBuf;

use tokenizers::Tokenizer;
use triage_complexity::dataset::read_rows;
use triage_complexity::{ModelFiles, Truncator};

fn data_file() -> PathBuf {
    triage_complexity::dataset::data_dir().join("prompt-lengths.jsonl")
}

#[test]
fn long_prompts_keep_exactly_their_first_tokens() {
    let files = ModelFiles::default_minilm();
    if let Err(e) = files.check() {
        panic!("{e}");
    }
    let path = data_file();
    let rows = read_rows(&path)
        .unwrap_or_else(|e| panic!("{e} (TRIAGE_DATA_DIR overrides the repository's data/)"));
    assert_eq!(rows.len(), 200);
    let mut full = Tokenizer::from_file(files.tokenizer()).unwrap();
    full.with_truncation(None).unwrap();
    full.with_padding(None);
    for max_tokens in [128, 512] {
        let truncator = Truncator::from_file(&files.tokenizer(), max_tokens).unwrap();
        let mut truncated = 0;
        for row in &rows {
            let text = row.text();
            let all = full.encode(text.as_str(), true).unwrap();
            let all_ids = all.get_ids();
            let out = truncator.truncate(&text).unwrap();
            let keep = (all_ids.len() - 2).min(max_tokens - 2);
            assert_eq!(
                &out.ids[1..out.ids.len() - 1],
                &all_ids[1..1 + keep],
                "{}",
                row.id
            );
            assert_eq!(out.ids.len(), keep + 2);
            assert_eq!(out.truncated, all_ids.len() > max_tokens, "{}", row.id);
            // The kept text re-tokenises to the same tokens.
            let again = truncator.truncate(&out.text).unwrap();
            assert_eq!(again.ids, out.ids, "{}", row.id);
            truncated += usize::from(out.truncated);
        }
        // Every prompt is over 2,000 characters: most exceed 128 tokens.
        assert!(truncated > 0);
    }
}
