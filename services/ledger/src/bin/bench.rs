//! `triage-ledger-bench`: the ledger's benchmarks, against the real NATS
//! and Postgres, each in its own throwaway database and NATS namespace.
//!
//! - `ingest`: insert throughput end to end, from events sitting in
//!   `llm.usage` to committed ledger rows (plus rollups), in events/s;
//! - `queries`: report and exporter query times at N ledger rows (default
//!   10 million, generated in SQL with generate_series, not through NATS),
//!   against the rollups and, for comparison, against the raw table.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use triage_ledger::report::{self, Dimension, ReportSpec};
use triage_ledger::snapshot::{self, LedgerSnapshot, SnapshotOptions};
use triage_ledger::writer::{Writer, WriterConfig, WriterMetrics};
use triage_ledger::Store;
use triage_protocol::{Encoding, Namespace, StreamKind, Tier, Usage, UsageEvent, UsageStatus};

/// Benchmarks of the Triage ledger (see services/ledger/README.md for the
/// numbers measured on the development machine).
#[derive(Debug, Parser)]
#[command(name = "triage-ledger-bench")]
struct Cli {
    /// Postgres server; a database `triage_bench_<random>` is created on it
    /// and dropped afterwards (unless --keep).
    #[arg(
        long,
        env = "TRIAGE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/triage"
    )]
    database_url: String,
    /// NATS server (the default comes from $TRIAGE_NATS_URL, else the local server).
    #[arg(long, default_value_t = triage_bus::default_nats_url())]
    nats_url: String,
    /// Keep the benchmark database (its name is printed).
    #[arg(long)]
    keep: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Events/s from llm.usage to committed rows.
    Ingest {
        /// Events to book.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events per transaction.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// Publish while the writer runs (sustained rate) instead of
        /// loading llm.usage first (drain rate).
        #[arg(long)]
        concurrent: bool,
        /// Ledger rows to generate before ingesting (insert cost grows with
        /// index size).
        #[arg(long, default_value_t = 0)]
        preload_rows: u64,
    },
    /// Report and exporter query times at N rows.
    Queries {
        /// Ledger rows to generate.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Days the rows are spread over, ending now.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Distinct tenants.
        #[arg(long, default_value_t = 50)]
        tenants: u32,
        /// Runs of each query (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Also time the same report computed from the raw table.
        #[arg(long)]
        raw: bool,
    },
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{db}?{q}"),
        None => format!("{host}/{db}"),
    }
}

struct BenchDb {
    name: String,
    admin: String,
    pool: PgPool,
}

impl BenchDb {
    async fn create(server: &str) -> anyhow::Result<BenchDb> {
        let name = format!("triage_bench_{:08x}", rand::random::<u32>());
        let admin = with_database(server, "postgres");
        let admin_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .context("connecting to Postgres")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin_pool)
            .await?;
        admin_pool.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&with_database(server, &name))
            .await?;
        let store = Store::from_pool(pool.clone());
        store.migrate().await?;
        for p in triage_ledger::config::reference_prices() {
            store.ensure_price(&p, "bench").await?;
        }
        eprintln!("database {name}");
        Ok(BenchDb { name, admin, pool })
    }

    async fn drop(self, keep: bool) -> anyhow::Result<()> {
        self.pool.close().await;
        if keep {
            eprintln!("kept database {}", self.name);
            return Ok(());
        }
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin)
            .await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await?;
        Ok(())
    }
}

/// Fills ledger_entries with `rows` plausible rows over `days` days ending
/// now (3 of 4 on tier 1, two models per tier, `tenants` tenants, 2% errors,
/// 1% cancelled), priced like the writer prices them, then rebuilds the
/// rollups and analyzes.
async fn generate(pool: &PgPool, rows: u64, days: u32, tenants: u32) -> anyhow::Result<()> {
    let chunk = 1_000_000u64;
    let started = Instant::now();
    let mut from = 1u64;
    while from <= rows {
        let to = (from + chunk - 1).min(rows);
        sqlx::query(
            r#"
            INSERT INTO ledger_entries (request_id, attempt, tenant, tier, model, status, error_code,
                prompt_tokens, completion_tokens, tokens_estimated, input_cost, output_cost, cost,
                baseline_cost, price_id, baseline_price_id, score, reasons, ttft_ms, total_ms, finished_at)
            SELECT 'bench-' || g, 1, 'tenant-' || (g % $4), x.tier,
                   CASE x.tier WHEN 1 THEN 'llama-8b-' || (g % 2) ELSE 'llama-70b-' || (g % 2) END,
                   x.status, CASE x.status WHEN 'error' THEN 'backend_unavailable' END,
                   x.p, x.c, g % 10 = 0,
                   x.p * x.price / 1000, x.c * x.price / 1000, (x.p + x.c) * x.price / 1000,
                   (x.p + x.c) * 0.0012 / 1000,
                   x.tier, 2, (g % 1000) / 1000.0, ARRAY['embedding=0.5'],
                   CASE WHEN x.status = 'ok' THEN 20 + g % 300 END, 200 + g % 5000,
                   now() - make_interval(days => $3) + (g::float8 / $5) * make_interval(days => $3)
            FROM generate_series($1::int8, $2::int8) AS g,
                 LATERAL (SELECT CASE WHEN g % 4 = 0 THEN 2 ELSE 1 END::int2 AS tier,
                                 CASE WHEN g % 50 = 0 THEN 'error' WHEN g % 97 = 0 THEN 'cancelled' ELSE 'ok' END AS status,
                                 (50 + g % 1500)::int4 AS p, (10 + g % 400)::int4 AS c,
                                 CASE WHEN g % 4 = 0 THEN 0.0012 ELSE 0.00015 END AS price) AS x
            "#,
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(days as i32)
        .bind(tenants as i64)
        .bind(rows as f64)
        .execute(pool)
        .await?;
        eprintln!(
            "  generated {to} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    let t = Instant::now();
    sqlx::query("SELECT ledger_rebuild_rollups()")
        .execute(pool)
        .await?;
    eprintln!("  rollups rebuilt ({:.0} s)", t.elapsed().as_secs_f64());
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

struct Timing {
    name: String,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    rows: usize,
}

async fn time_query<F, Fut>(name: &str, runs: usize, mut f: F) -> anyhow::Result<Timing>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    // One unmeasured run warms the cache, as a steady scrape would.
    let rows = f().await?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing {
        name: name.to_string(),
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        rows,
    })
}

async fn queries(
    pool: &PgPool,
    rows: u64,
    days: u32,
    tenants: u32,
    runs: usize,
    raw: bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    generate(pool, rows, days, tenants).await?;
    let generation = t.elapsed();
    let sizes: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT relname::text, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)) FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC",
    )
    .fetch_all(pool)
    .await?;

    let today = Utc::now().date_naive();
    let spec = ReportSpec {
        from: today - chrono::Duration::days(29),
        to: today,
        by: vec![Dimension::Day, Dimension::Tier],
        tier: None,
        tenant: None,
        model: None,
    };
    let options = SnapshotOptions::default();
    let now = Utc::now();
    let midnight = snapshot::utc_midnight(now);
    let longest = options
        .windows
        .iter()
        .map(|(_, d)| d.as_secs_f64())
        .fold(0.0, f64::max);

    let mut timings = Vec::new();
    timings.push(
        time_query(
            "report: 30 days by day and tier (ledger_daily)",
            runs,
            || async { Ok(report::run(pool, &spec).await?.rows.len()) },
        )
        .await?,
    );
    let by_tenant = ReportSpec {
        by: vec![Dimension::Tenant],
        ..spec.clone()
    };
    timings.push(
        time_query("report: 30 days by tenant", runs, || async {
            Ok(report::run(pool, &by_tenant).await?.rows.len())
        })
        .await?,
    );
    let everything = ReportSpec {
        by: vec![
            Dimension::Day,
            Dimension::Tier,
            Dimension::Model,
            Dimension::Tenant,
            Dimension::Status,
        ],
        ..spec.clone()
    };
    timings.push(
        time_query(
            "report: 30 days by day, tier, model, tenant, status",
            runs,
            || async { Ok(report::run(pool, &everything).await?.rows.len()) },
        )
        .await?,
    );
    timings.push(
        time_query("exporter: totals (usage_totals)", runs, || async {
            Ok(sqlx::query(snapshot::sql::TOTALS)
                .fetch_all(pool)
                .await?
                .len())
        })
        .await?,
    );
    timings.push(
        time_query(
            "exporter: windows 5m/15m/1h/24h (usage_minute)",
            runs,
            || async {
                Ok(sqlx::query(snapshot::sql::WINDOWS)
                    .bind(now)
                    .bind(longest)
                    .fetch_all(pool)
                    .await?
                    .len())
            },
        )
        .await?,
    );
    timings.push(
        time_query(
            "exporter: today vs 7 trailing days (usage_minute)",
            runs,
            || async {
                Ok(sqlx::query(snapshot::sql::SPEND_BY_DAY)
                    .bind(now)
                    .bind(midnight)
                    .bind(7i32)
                    .fetch_all(pool)
                    .await?
                    .len())
            },
        )
        .await?,
    );
    timings.push(
        time_query("exporter: last event", runs, || async {
            Ok(sqlx::query(snapshot::sql::LAST_EVENT)
                .fetch_all(pool)
                .await?
                .len())
        })
        .await?,
    );
    timings.push(
        time_query(
            "exporter: whole snapshot (all of the above)",
            runs,
            || async {
                Ok(LedgerSnapshot::load(pool, now, &options)
                    .await?
                    .totals
                    .len())
            },
        )
        .await?,
    );
    if raw {
        let raw_sql = "SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, tier, count(*), sum(prompt_tokens),
                sum(completion_tokens), sum(cost), sum(baseline_cost)
            FROM ledger_entries
            WHERE finished_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2";
        let from = midnight - chrono::Duration::days(29);
        timings.push(
            time_query(
                "raw table: 30 days by day and tier (BRIN on finished_at)",
                runs.min(3),
                || async { Ok(sqlx::query(raw_sql).bind(from).fetch_all(pool).await?.len()) },
            )
            .await?,
        );
        // The same query with the BRIN index out of the planner's reach.
        let options = (*pool.connect_options())
            .clone()
            .options([("enable_bitmapscan", "off")]);
        let seq_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        timings.push(
            time_query("raw table: same, sequential scan", runs.min(3), || async {
                Ok(sqlx::query(raw_sql)
                    .bind(from)
                    .fetch_all(&seq_pool)
                    .await?
                    .len())
            })
            .await?,
        );
        seq_pool.close().await;
    }

    println!("\nLedger query benchmark: {rows} rows over {days} days, {tenants} tenants");
    println!(
        "generation (SQL generate_series + rollup rebuild + VACUUM ANALYZE): {:.0} s",
        generation.as_secs_f64()
    );
    println!(
        "\n{:<60} {:>10} {:>10} {:>10} {:>8}",
        "query", "median ms", "min ms", "max ms", "rows"
    );
    for t in &timings {
        println!(
            "{:<60} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            t.name, t.median_ms, t.min_ms, t.max_ms, t.rows
        );
    }
    println!("\n{:<24} {:>12} {:>10}", "table", "rows", "size");
    for (name, n, size) in sizes {
        println!("{name:<24} {n:>12} {size:>10}");
    }
    Ok(())
}

fn bench_event(i: usize, now_ms: u64) -> UsageEvent {
    let tier = if i.is_multiple_of(4) {
        Tier::Large
    } else {
        Tier::Small
    };
    UsageEvent {
        version: 1,
        id: format!("{:016x}-{i}", now_ms),
        attempt: 1,
        tenant: Some(format!("tenant-{}", i % 50)),
        tier,
        model: match tier {
            Tier::Small => "llama-8b".into(),
            Tier::Large => "llama-70b".into(),
        },
        usage: Usage {
            prompt_tokens: 50 + (i % 1500) as u32,
            completion_tokens: 10 + (i % 400) as u32,
            estimated: false,
        },
        status: UsageStatus::Ok,
        score: Some((i % 1000) as f64 / 1000.0),
        reasons: vec!["embedding=0.42".into(), "rule:code_fence".into()],
        ttft_ms: Some(35.0),
        total_ms: 820.0,
        finished_at_ms: now_ms - 60_000 + (i as u64 % 60_000),
        error_code: None,
        judged: None,
    }
}

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    events: &[UsageEvent],
) -> anyhow::Result<()> {
    // Up to 5000 publishes in flight, their acks awaited together: the
    // load phase must not be what the benchmark measures.
    for chunk in events.chunks(5000) {
        let publishes = chunk.iter().map(|e| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(
                triage_protocol::headers::CONTENT_TYPE,
                triage_protocol::headers::MSGPACK_MIME,
            );
            h.insert(triage_protocol::headers::MSG_ID, e.msg_id().as_str());
            // As the workers do: each event carries its request's trace.
            let traceparent = format!(
                "00-{:032x}-{:016x}-01",
                rand::random::<u128>(),
                rand::random::<u64>() | 1
            );
            h.insert(triage_protocol::headers::TRACEPARENT, traceparent.as_str());
            let payload = triage_protocol::encode(Encoding::MsgPack, e).into();
            triage_bus::publish::once(js, subject, h, payload)
        });
        futures::future::try_join_all(publishes).await?;
    }
    Ok(())
}

async fn ingest(
    cli: &Cli,
    db: &BenchDb,
    events: usize,
    batch_size: usize,
    concurrent: bool,
    preload_rows: u64,
) -> anyhow::Result<()> {
    if preload_rows > 0 {
        eprintln!("preloading {preload_rows} rows");
        generate(&db.pool, preload_rows, 90, 50).await?;
    }
    let client = async_nats::connect(&cli.nats_url)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client.clone());
    let ns = Namespace::new(format!("bench{:08x}", rand::random::<u32>()))?;
    let result = ingest_run(
        cli,
        db,
        &client,
        &js,
        &ns,
        events,
        batch_size,
        concurrent,
        preload_rows,
    )
    .await;
    // The benchmark's streams go, whatever happened.
    let stream_names: Vec<String> = [StreamKind::Usage, StreamKind::Dead]
        .iter()
        .map(|k| ns.stream_name(*k))
        .collect();
    for n in stream_names {
        let _ = js.delete_stream(&n).await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn ingest_run(
    cli: &Cli,
    db: &BenchDb,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    events: usize,
    batch_size: usize,
    concurrent: bool,
    preload_rows: u64,
) -> anyhow::Result<()> {
    let mut streams = triage_bus::StreamsConfig::default();
    // JetStream reserves max_bytes up front on a shared server: ask for
    // what the run needs (events are ~300 bytes).
    streams.usage.max_bytes = ((events as i64) * 1024).max(64 << 20);
    streams.dead.max_bytes = 64 << 20;
    for kind in [StreamKind::Usage, StreamKind::Dead] {
        triage_bus::streams::ensure_stream(
            js,
            triage_bus::streams::desired_config(ns, kind, &streams),
        )
        .await?;
    }
    let now_ms = triage_protocol::now_ms();
    let batch: Vec<UsageEvent> = (0..events).map(|i| bench_event(i, now_ms)).collect();
    let config = WriterConfig {
        batch_size,
        prefetch: batch_size * 2,
        max_ack_pending: (batch_size * 20) as i64,
        ..WriterConfig::default()
    };
    let store = Store::connect_lazy(
        &with_database(&cli.database_url, &db.name),
        4,
        Duration::from_secs(5),
    )?;
    let metrics = WriterMetrics::default();
    let shutdown = CancellationToken::new();

    let started;
    let publish_secs;
    let publisher;
    if concurrent {
        let writer = Writer::new(
            store,
            client.clone(),
            ns.clone(),
            config.clone(),
            metrics.clone(),
        );
        let handle = tokio::spawn(writer.run(shutdown.clone()));
        started = Instant::now();
        let js2 = js.clone();
        let subject = ns.usage();
        publisher = Some(tokio::spawn(async move {
            publish(&js2, &subject, &batch).await
        }));
        publish_secs = None;
        wait_booked(&metrics, events).await;
        shutdown.cancel();
        handle.await??;
    } else {
        let t = Instant::now();
        publish(js, &ns.usage(), &batch).await?;
        publish_secs = Some(t.elapsed().as_secs_f64());
        let writer = Writer::new(
            store,
            client.clone(),
            ns.clone(),
            config.clone(),
            metrics.clone(),
        );
        started = Instant::now();
        let handle = tokio::spawn(writer.run(shutdown.clone()));
        wait_booked(&metrics, events).await;
        shutdown.cancel();
        handle.await??;
        publisher = None;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(p) = publisher {
        p.await??;
    }
    let rows: i64 = sqlx::query_scalar("SELECT sum(requests)::bigint FROM usage_totals")
        .fetch_one(&db.pool)
        .await?;
    anyhow::ensure!(
        rows as u64 == events as u64 + preload_rows,
        "expected {} booked rows in the rollup, found {rows}",
        events as u64 + preload_rows
    );
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(&db.pool)
        .await?;

    println!(
        "\nLedger ingest benchmark ({})",
        if concurrent {
            "publishing while booking"
        } else {
            "draining a loaded llm.usage"
        }
    );
    if let Some(p) = publish_secs {
        println!(
            "published {events} events in {p:.1} s ({:.0} events/s)",
            events as f64 / p
        );
    }
    println!(
        "booked {events} events in {elapsed:.2} s: {:.0} events/s (batch size {batch_size}, {} batches; ledger now {raw} rows)",
        events as f64 / elapsed,
        metrics.batches.get()
    );
    let (sum, count) = histogram_sum_count(&metrics);
    if count > 0 {
        println!(
            "mean commit time per batch: {:.1} ms",
            sum / count as f64 * 1000.0
        );
    }
    Ok(())
}

fn histogram_sum_count(metrics: &WriterMetrics) -> (f64, u64) {
    // prometheus-client exposes histogram internals only through encoding.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return (0.0, 0);
    }
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("triage_ledger_commit_seconds_sum"),
        value("triage_ledger_commit_seconds_count") as u64,
    )
}

async fn wait_booked(metrics: &WriterMetrics, events: usize) {
    loop {
        let done = metrics.events_with("booked") + metrics.events_with("duplicate");
        if done >= events as u64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The service's own telemetry (OpenTelemetry layer included), so the
    // writer's per-event trace spans cost here what they cost in production.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "info,sqlx=error");
    }
    triage_runtime::telemetry::init(
        "triage-ledger-bench",
        triage_runtime::telemetry::LogFormat::Text,
    );
    let db = BenchDb::create(&cli.database_url).await?;
    let result = match &cli.command {
        Command::Ingest {
            events,
            batch_size,
            concurrent,
            preload_rows,
        } => ingest(&cli, &db, *events, *batch_size, *concurrent, *preload_rows).await,
        Command::Queries {
            rows,
            days,
            tenants,
            runs,
            raw,
        } => queries(&db.pool, *rows, *days, *tenants, *runs, *raw).await,
    };
    db.drop(cli.keep).await?;
    result
}
