//! `triage-deadletters`: list, show and re-drive Triage's dead letters.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use triage_bus::NatsConfig;
use triage_deadletters::letter::{readable_payload, LIST_HEADER};
use triage_deadletters::{DeadLetters, Filter};

/// Operates on `llm.dead`, where every Triage service puts what it could
/// not process (payload and headers verbatim, `Triage-Dead-*` headers
/// saying why). Letters are named by their sequence number in the stream.
///
/// Connection: defaults, then the TOML file given with --config, then
/// TRIAGE_DEADLETTERS_NATS__<KEY> environment variables (URL, USER,
/// PASSWORD, TOKEN, CREDS_FILE, PREFIX); TRIAGE_NATS_URL sets the default
/// URL. See services/deadletters/README.md.
#[derive(Debug, Parser)]
#[command(name = "triage-deadletters", version)]
struct Cli {
    /// TOML file with a `[nats]` table (url, user, password, token,
    /// creds_file, prefix).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One line per letter, oldest first: seq, time, code, service, subject, reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON lines instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// A letter's headers and payload (MessagePack shown as JSON).
    Show {
        /// The letter's sequence number (from `list`).
        seq: u64,
    },
    /// Publish letters back to their Triage-Dead-Subject with their original
    /// headers (Triage-Dead-* removed), then delete them from llm.dead.
    Redrive {
        /// Sequence numbers to re-drive.
        seqs: Vec<u64>,
        /// Every letter the filter selects (instead of sequence numbers).
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Say what would be re-driven, publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Only this Triage-Dead-Code (e.g. invalid_request, backend_unavailable).
    #[arg(long)]
    code: Option<String>,
    /// Only this Triage-Dead-Service (router, worker-tier1, ledger, …).
    #[arg(long)]
    service: Option<String>,
    /// Only letters newer than this (e.g. 30m, 2h, 1d).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only letters older than this (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    before: Option<Duration>,
    /// At most this many letters.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        let now = chrono::Utc::now().timestamp();
        let ago = |d: &Duration| now - i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
        Filter {
            code: self.code.clone(),
            service: self.service.clone(),
            since: self.since.as_ref().map(ago),
            until: self.before.as_ref().map(ago),
        }
    }
}

/// The settings: the NATS connection only.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    nats: NatsConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config: Config = triage_runtime::load(cli.config.as_deref(), "TRIAGE_DEADLETTERS_")?;
    let ns = config.nats.namespace()?;
    let client = triage_bus::connect(&config.nats).await?;
    let dead = DeadLetters::open(client, ns).await?;
    match cli.command {
        Command::List { filter, json } => {
            let letters = dead.list(&filter.filter(), filter.limit).await?;
            if !json {
                println!("{LIST_HEADER}");
            }
            for l in &letters {
                if json {
                    println!("{}", serde_json::to_string(l)?);
                } else {
                    println!("{}", l.line());
                }
            }
            eprintln!("{} letter(s)", letters.len());
        }
        Command::Show { seq } => {
            let m = dead.get(seq).await?;
            println!("seq: {seq}\nsubject: {}", m.subject);
            for (name, values) in m.headers.iter() {
                for v in values {
                    println!("{name}: {}", v.as_str());
                }
            }
            println!("\n{}", readable_payload(&m.headers, &m.payload));
        }
        Command::Redrive {
            seqs,
            all,
            filter,
            dry_run,
        } => redrive(&dead, seqs, all, &filter, dry_run).await?,
    }
    Ok(())
}

async fn redrive(
    dead: &DeadLetters,
    seqs: Vec<u64>,
    all: bool,
    filter: &FilterArgs,
    dry_run: bool,
) -> anyhow::Result<()> {
    let seqs = match (all, seqs.is_empty()) {
        (true, _) => dead
            .list(&filter.filter(), filter.limit)
            .await?
            .into_iter()
            .map(|l| l.seq)
            .collect(),
        (false, false) => seqs,
        (false, true) => {
            anyhow::bail!("name the letters to re-drive (sequence numbers) or pass --all")
        }
    };
    let mut done = 0;
    for seq in seqs {
        if dry_run {
            let m = dead.get(seq).await?;
            let to = m.headers.get(triage_protocol::headers::DEAD_SUBJECT);
            println!("would re-drive {seq} to {}", to.map_or("?", |v| v.as_str()));
            continue;
        }
        let letter = dead
            .redrive(seq)
            .await
            .with_context(|| format!("re-driving {seq} ({done} re-driven before it)"))?;
        println!("re-drove {seq} to {}", letter.subject);
        done += 1;
    }
    eprintln!("{done} letter(s) re-driven");
    Ok(())
}
