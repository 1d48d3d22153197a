//! Writes the vectors the router computes for each row of a JSONL of
//! prompts, in the format of [`triage_complexity::vector_file`]: the MiniLM
//! embedding of its truncated text (`v`), the first stage's static vector
//! (`s`), the prompt-form features (`f`), whether a built-in rule fired and
//! the tokens kept. `triage-router train|calibrate --vectors` read it, and
//! so does the analysis in services/router/analysis/.
//!
//! cargo run --release -p triage-complexity --example export_embeddings -- IN.jsonl OUT.jsonl [--static-only|--answers|--answer-form]
//!
//! `--static-only` leaves `v` empty: seconds instead of minutes, for the
//! first stage alone. `--answers` embeds each row's `small_response`
//! instead, the way the verifier does (its last characters,
//! [`triage_complexity::verifier::tail_tokens`]), with `s` and `f` empty;
//! `triage-router train-verifier|calibrate --answer-vectors` read it. Rows
//! without a response are skipped. `--answer-form` writes in `f` only the
//! verifier's features that need no model pass (answer form, answer
//! checks, the question's prompt form), for the analysis scripts.

use triage_complexity::dataset::read_rows;
use triage_complexity::prompt_form::form_features;
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::static_embedding::content;
use triage_complexity::vector_file::{write_vectors, VectorRow};
use triage_complexity::verifier::{tail_tokens, VerifierInput};
use triage_complexity::PrecisionSetting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, output, flag) = match args.as_slice() {
        [_, i, o] => (i, o, ""),
        [_, i, o, flag]
            if ["--static-only", "--answers", "--answer-form"].contains(&flag.as_str()) =>
        {
            (i, o, flag.as_str())
        }
        _ => return Err(
            "usage: export_embeddings IN.jsonl OUT.jsonl [--static-only|--answers|--answer-form]"
                .into(),
        ),
    };
    let rows = read_rows(std::path::Path::new(input))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    if flag == "--answer-form" {
        return export_answer_form(&rows, &mut out);
    }
    // Exported vectors feed head fitting (train --vectors), always in f32.
    let scorer = Scorer::new(ScorerConfig {
        precision: PrecisionSetting::F32,
        ..ScorerConfig::default()
    })?;
    if flag == "--answers" {
        return export_answers(&scorer, &rows, &mut out);
    }
    let static_only = flag == "--static-only";
    let mut done = 0;
    for chunk in rows.chunks(32) {
        let prepared = chunk
            .iter()
            .map(|r| scorer.prepare(&r.text()))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&[u32]> = prepared.iter().map(|p| p.tokens.ids.as_slice()).collect();
        let vectors = if static_only {
            vec![Vec::new(); ids.len()]
        } else {
            scorer.model().embed(&ids)?
        };
        let lines: Vec<VectorRow> = chunk
            .iter()
            .zip(vectors)
            .zip(&prepared)
            .map(|((row, v), p)| VectorRow {
                id: row.id.clone(),
                v,
                s: scorer
                    .first_stage()
                    .map(|fs| fs.table().embed(content(&p.tokens.ids))),
                f: Some(form_features(&p.tokens.text).to_vec()),
                rule: p.rule.is_some(),
                ntok: p.tokens.ids.len(),
            })
            .collect();
        write_vectors(&mut out, &lines)?;
        done += chunk.len();
        eprint!("\rembedded {done}/{}", rows.len());
    }
    eprintln!();
    Ok(())
}

/// The verifier's features without a model pass.
const ANSWER_FEATURES: VerifierInput = VerifierInput {
    checks: true,
    question_form: true,
    logprobs: false,
    embedding: false,
};

/// `--answer-form`: the verifier's features without a model pass.
fn export_answer_form(
    rows: &[triage_complexity::dataset::PromptRow],
    out: &mut impl std::io::Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let lines: Vec<VectorRow> = rows
        .iter()
        .filter_map(|r| Some((r, r.small_response.as_deref()?)))
        .map(|(row, answer)| VectorRow {
            id: row.id.clone(),
            v: Vec::new(),
            s: None,
            f: Some(ANSWER_FEATURES.build(&row.text(), answer, &[], None)),
            rule: false,
            ntok: 0,
        })
        .collect();
    write_vectors(out, &lines)?;
    out.flush()?;
    Ok(())
}

/// `--answers`: the verifier's answer-tail vectors.
fn export_answers(
    scorer: &Scorer,
    rows: &[triage_complexity::dataset::PromptRow],
    out: &mut impl std::io::Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let answered: Vec<_> = rows
        .iter()
        .filter_map(|r| Some((r, r.small_response.as_deref()?)))
        .collect();
    let mut done = 0;
    for chunk in answered.chunks(32) {
        let tokens = chunk
            .iter()
            .map(|(_, a)| tail_tokens(scorer.truncator(), a))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        let vectors = scorer.model().embed(&ids)?;
        let lines: Vec<VectorRow> = chunk
            .iter()
            .zip(vectors)
            .zip(&tokens)
            .map(|(((row, _), v), t)| VectorRow {
                id: row.id.clone(),
                v,
                s: None,
                f: None,
                rule: false,
                ntok: t.ids.len(),
            })
            .collect();
        write_vectors(out, &lines)?;
        done += chunk.len();
        eprint!("\rembedded {done}/{} answers", answered.len());
    }
    eprintln!();
    Ok(())
}
