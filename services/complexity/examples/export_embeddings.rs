//! Writes one JSON line per row of a JSONL of prompts: `id`, the MiniLM
//! embedding of its truncated text (`v`), whether a built-in rule fired
//! (`rule`) and the tokens kept (`ntok`). Input to the head analysis in
//! services/router/analysis/.
//!
//! cargo run --release -p triage-complexity --example export_embeddings -- IN.jsonl OUT.jsonl

use std::io::Write;

use triage_complexity::dataset::read_rows;
use triage_complexity::scorer::{Scorer, ScorerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: export_embeddings IN.jsonl OUT.jsonl".into());
    };
    let scorer = Scorer::new(ScorerConfig::default())?;
    let rows = read_rows(std::path::Path::new(input))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    let mut done = 0;
    for chunk in rows.chunks(32) {
        let prepared = chunk
            .iter()
            .map(|r| scorer.prepare(&r.text()))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&[u32]> = prepared.iter().map(|p| p.tokens.ids.as_slice()).collect();
        let vectors = scorer.model().embed(&ids)?;
        for ((row, v), p) in chunk.iter().zip(vectors).zip(&prepared) {
            let line = serde_json::json!({
                "id": row.id, "v": v, "rule": p.rule.is_some(), "ntok": p.tokens.ids.len()
            });
            writeln!(out, "{line}")?;
        }
        done += chunk.len();
        eprint!("\rembedded {done}/{}", rows.len());
    }
    eprintln!();
    Ok(())
}
