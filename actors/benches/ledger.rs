//! The usage ledger's sustained write rate: ROWS records handed to the
//! ledger's writer as fast as one producer can, for each batch size, until
//! the store holds them all; rows/s, on PostgreSQL (a schema of its own in
//! the test database, dropped at the end) and on the embedded SQLite file.
//!
//!     cargo bench --workspace --bench ledger -- [--rows 200000] [--batch-sizes 100,500,2000]
//!         [--store both|postgres|embedded] [--postgres-url URL]

use std::sync::Arc;
use std::time::{Duration, Instant};

use blaze_actors::auth::{EmbeddedStore, PostgresOptions, PostgresStore};
use blaze_actors::usage::{GovernanceStore, Ledger, LedgerOptions, UsageQuery, UsageRecord};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "ledger")]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    #[arg(long, default_value = "100,500,2000", value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    #[arg(long, default_value = "both")]
    store: String,
    #[arg(long, default_value = "postgresql://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// `cargo bench` passes it; nothing to do.
    #[arg(long, hide = true)]
    bench: bool,
}

fn record(index: usize) -> UsageRecord {
    UsageRecord {
        at: 1_800_000_000_000 + index as i64,
        request_id: format!("{index:032x}"),
        key_id: Some(format!("{:016x}", index % 50)),
        key_lineage: Some(format!("{:016x}", index % 50)),
        user_id: format!("{:016x}", index % 20),
        team: Some(format!("team-{}", index % 4)),
        model: "smollm2-135m-instruct".to_owned(),
        endpoint: "/v1/chat/completions".to_owned(),
        prompt_tokens: 40 + (index % 100) as u64,
        completion_tokens: 16,
        cached_tokens: 0,
        cache: "memory".to_owned(),
        status: 200,
        latency_ms: 1,
        first_token_ms: None,
        cost_micros: 3,
    }
}

async fn rows_held(store: &dyn GovernanceStore) -> u64 {
    let query = UsageQuery { start: 0, end: i64::MAX, ..UsageQuery::default() };
    store.usage_report(query).await.map(|rows| rows.first().map_or(0, |row| row.requests)).unwrap_or(0)
}

/// Rows/s for one store and batch size: the time from the first record
/// handed over to the last one written.
async fn measure(store: Arc<dyn GovernanceStore>, rows: usize, batch_size: usize) -> Result<f64, String> {
    let before = rows_held(store.as_ref()).await;
    let options = LedgerOptions {
        batch_size,
        flush_interval: Duration::from_millis(100),
        buffer: rows,
        retention_days: 0,
        prune_interval: Duration::from_secs(3600),
    };
    let ledger = Ledger::start(store.clone(), options);
    let started = Instant::now();
    for index in 0..rows {
        ledger.record(record(index));
    }
    ledger.flush().await;
    let elapsed = started.elapsed();
    let written = rows_held(store.as_ref()).await - before;
    if written != rows as u64 {
        return Err(format!("{written} rows written of {rows}"));
    }
    Ok(rows as f64 / elapsed.as_secs_f64())
}

#[expect(clippy::disallowed_methods, reason = "a bench's connection task lives with its runtime")]
async fn drop_schema(url: &str, schema: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        println!("ledger: {} rows per run, one producer, flush interval 100 ms", args.rows);
        if args.store == "both" || args.store == "postgres" {
            let schema = format!("blaze_ledger_bench_{}", uuid::Uuid::new_v4().simple());
            let options = PostgresOptions {
                url: args.postgres_url.clone(),
                schema: schema.clone(),
                min_connections: 1,
                max_connections: 4,
                wait_timeout: Duration::from_secs(5),
                create_timeout: Duration::from_secs(5),
                recycle_timeout: Duration::from_secs(5),
            };
            let store =
                PostgresStore::connect(&options).await.map_err(|error| format!("PostgreSQL: {error}"))?;
            let store: Arc<dyn GovernanceStore> = Arc::new(store);
            for &batch_size in &args.batch_sizes {
                let rate = measure(store.clone(), args.rows, batch_size).await?;
                println!("postgresql  batch {batch_size:>5}  {rate:>10.0} rows/s");
            }
            drop_schema(&args.postgres_url, &schema).await;
        }
        if args.store == "both" || args.store == "embedded" {
            let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
            let store = EmbeddedStore::open(&directory.path().join("identity.db"))
                .map_err(|error| error.to_string())?;
            let store: Arc<dyn GovernanceStore> = Arc::new(store);
            for &batch_size in &args.batch_sizes {
                let rate = measure(store.clone(), args.rows, batch_size).await?;
                println!("embedded    batch {batch_size:>5}  {rate:>10.0} rows/s");
            }
        }
        Ok(())
    })
}
