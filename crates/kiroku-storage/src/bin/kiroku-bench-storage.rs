//! `make bench-storage`: how fast the storage service persists finals, and how fast it
//! searches a tenant with many hours of minutes, each beside a baseline in the same run.
//!
//! - persist: finals stored through the consumer's own path (`store::persist_final`:
//!   tenant transaction, data-key unwrap, AES-256-GCM seal, blind-index terms, insert),
//!   versus the same rows inserted in plaintext with no index (the cost of encryption
//!   and the index);
//! - search: `store::search` (blind index, GIN, read through `kiroku_search` outside
//!   row-level security) over the whole tenant, p50/p95, versus
//!   PostgreSQL full-text search (`tsvector`, GIN) over the same text in plaintext, both
//!   returning the first 20 hits in meeting order.
//!
//! Runs against PostgreSQL (`KIROKU_DATABASE_URL`, the schema owner) in a schema of its
//! own, dropped at the end. The synthetic minutes are sentences over a 3,000-word
//! vocabulary with a Zipf-like spread.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use kiroku_core::db::{DatabaseConfig, Db};
use kiroku_core::metrics::percentile;
use kiroku_proto::transcribe::v1 as api;
use kiroku_storage::crypto::{DataKey, LocalKeyProvider};
use kiroku_storage::store::{self, Final, Keys};
use uuid::Uuid;

struct Args {
    database_url: String,
    meetings: usize,
    segments: usize,
    measured: usize,
    searches: usize,
    /// Leave the bench schema in place (to look at query plans); prints its name.
    keep_schema: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        database_url: std::env::var("KIROKU_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/kiroku".into()),
        meetings: 1000,
        segments: 720,
        measured: 3000,
        searches: 200,
        keep_schema: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> {
            it.next()
                .context("a number after the flag")?
                .parse()
                .context("a number")
        };
        if flag == "--keep-schema" {
            args.keep_schema = true;
            continue;
        }
        match flag.as_str() {
            "--meetings" => args.meetings = value()?,
            "--segments-per-meeting" => args.segments = value()?,
            "--measured-finals" => args.measured = value()?,
            "--searches" => args.searches = value()?,
            other => anyhow::bail!(
                "unknown flag {other}: --meetings N --segments-per-meeting N --measured-finals N --searches N --keep-schema"
            ),
        }
    }
    Ok(args)
}

/// A deterministic pseudo-random stream (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Zipf-like index below `n`: small indices far more often.
    fn word(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

fn vocabulary() -> Vec<String> {
    let syllables = [
        "ka", "ri", "to", "ne", "su", "mo", "la", "pe", "di", "ro", "an", "el", "or", "us", "im",
        "ba",
    ];
    (0..3000)
        .map(|i| {
            let mut word = String::new();
            let mut n = i + 16;
            while n > 0 {
                word.push_str(syllables[n % 16]);
                n /= 16;
            }
            word
        })
        .collect()
}

fn sentence(rng: &mut Rng, words: &[String]) -> String {
    let n = 8 + (rng.next() % 10) as usize;
    (0..n)
        .map(|_| words[rng.word(words.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let schema = format!("bench_storage_{}", Uuid::new_v4().simple());
    let config = DatabaseConfig::new(&args.database_url, &schema, kiroku_storage::APP_ROLE);
    kiroku_core::db::migrate(&config, &kiroku_storage::MIGRATOR).await?;
    let db = Db::connect(&config).await?;
    let owner = sqlx::PgPool::connect(&args.database_url).await?;
    let result = run(&args, &db, &owner, &schema).await;
    if args.keep_schema {
        println!("kept schema {schema}");
    } else {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&owner)
            .await?;
    }
    result
}

async fn run(args: &Args, db: &Db, owner: &sqlx::PgPool, schema: &str) -> anyhow::Result<()> {
    let keys = Keys::new(Arc::new(LocalKeyProvider::from_hex(
        &LocalKeyProvider::generate_hex()?,
    )?));
    let tenant = Uuid::new_v4();
    let words = vocabulary();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let total = args.meetings * args.segments;
    println!(
        "kiroku storage benchmark: {} meetings x {} segments ({} finals, about {} hours of minutes)",
        args.meetings,
        args.segments,
        total,
        total * 5 / 3600
    );

    // Persist: the consumer's path, 8 at a time (what max_ack_pending allows and more).
    let texts: Vec<String> = (0..total).map(|_| sentence(&mut rng, &words)).collect();
    let measured = args.measured.min(total);
    let started = Instant::now();
    let mut next = 0;
    while next < measured {
        let batch: Vec<usize> = (next..(next + 8).min(measured)).collect();
        next += batch.len();
        let futures = batch.iter().map(|&i| {
            let (db, keys, text) = (db.clone(), keys.clone(), texts[i].clone());
            async move {
                let segment = api::Segment {
                    start_ms: (i % args.segments) as u64 * 5000,
                    end_ms: (i % args.segments) as u64 * 5000 + 4800,
                    text,
                    ..Default::default()
                };
                let session = format!("s{}", i / args.segments);
                store::persist_final(
                    &db,
                    &keys,
                    &Final {
                        tenant,
                        session_id: &session,
                        meeting_id: &format!("m{}", i / args.segments),
                        result_seq: (i % args.segments) as u64 + 1,
                        language: "en",
                        segment: &segment,
                    },
                )
                .await
            }
        });
        for result in futures::future::join_all(futures).await {
            result?;
        }
    }
    let persist_rate = measured as f64 / started.elapsed().as_secs_f64();

    // Baseline: the same rows in plaintext, one transaction each, no index.
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".plain (meeting text, seq bigint, text text, \
         PRIMARY KEY (meeting, seq))"
    ))
    .execute(owner)
    .await?;
    let started = Instant::now();
    let mut next = 0;
    while next < measured {
        let batch: Vec<usize> = (next..(next + 8).min(measured)).collect();
        next += batch.len();
        let futures = batch.iter().map(|&i| {
            let sql = format!("INSERT INTO \"{schema}\".plain VALUES ($1, $2, $3)");
            let text = texts[i].clone();
            async move {
                let mut tx = owner.begin().await?;
                sqlx::query(&sql)
                    .bind(format!("m{}", i / args.segments))
                    .bind((i % args.segments) as i64)
                    .bind(text)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
        });
        for result in futures::future::join_all(futures).await {
            result?;
        }
    }
    let plain_rate = measured as f64 / started.elapsed().as_secs_f64();

    // The rest of the tenant, loaded in bulk (sealed and indexed as the service does).
    let load = Instant::now();
    let key = {
        let mut tx = db.tenant_tx(tenant).await?;
        let key = keys.get(&mut tx, tenant, true).await?.context("data key")?;
        tx.commit().await?;
        key
    };
    bulk_load(db, &key, tenant, args, &texts[measured..], measured).await?;
    let mut plain_rest = measured;
    while plain_rest < total {
        let end = (plain_rest + 2000).min(total);
        let (meetings, seqs): (Vec<String>, Vec<i64>) = (plain_rest..end)
            .map(|i| {
                (
                    format!("m{}", i / args.segments),
                    (i % args.segments) as i64,
                )
            })
            .unzip();
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".plain SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])"
        ))
        .bind(&meetings)
        .bind(&seqs)
        .bind(&texts[plain_rest..end])
        .execute(owner)
        .await?;
        plain_rest = end;
    }
    sqlx::query(&format!(
        "CREATE INDEX ON \"{schema}\".plain USING gin (to_tsvector('simple', text))"
    ))
    .execute(owner)
    .await?;
    // Statistics, as autovacuum would gather them (one statement per query: sqlx
    // prepares each).
    for table in ["plain", "segments", "segment_terms", "meetings"] {
        sqlx::query(&format!("ANALYZE \"{schema}\".{table}"))
            .execute(owner)
            .await?;
    }
    println!("(loaded the rest in {:.0} s)", load.elapsed().as_secs_f64());

    // Search: one and two words, from common to rare.
    let queries: Vec<String> = (0..args.searches)
        .map(|i| {
            let a = &words[rng.word(words.len())];
            if i % 2 == 0 {
                a.clone()
            } else {
                format!("{a} {}", words[rng.word(words.len())])
            }
        })
        .collect();
    let mut ours = Vec::new();
    for query in &queries {
        let started = Instant::now();
        store::search(db, &keys, tenant, query, 20).await?;
        ours.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut baseline = Vec::new();
    for query in &queries {
        let started = Instant::now();
        sqlx::query(&format!(
            "SELECT meeting, seq, text FROM \"{schema}\".plain \
             WHERE to_tsvector('simple', text) @@ plainto_tsquery('simple', $1) \
             ORDER BY meeting DESC, seq LIMIT 20"
        ))
        .bind(query)
        .fetch_all(owner)
        .await?;
        baseline.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ours.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);

    println!();
    println!("| what | kiroku (encrypted, blind index) | baseline (plaintext) |");
    println!("|---|---|---|");
    println!(
        "| finals persisted per second ({measured} finals, 8 concurrent) | {persist_rate:.0} | {plain_rate:.0} (plain INSERT, no index) |"
    );
    println!(
        "| search latency p50 / p95 ms ({} queries, first 20 hits in meeting order) | {:.1} / {:.1} | {:.1} / {:.1} (tsvector GIN) |",
        queries.len(),
        percentile(&ours, 0.5),
        percentile(&ours, 0.95),
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.95)
    );
    Ok(())
}

/// Inserts `texts` as finals `offset..` in batches, sealed and indexed like
/// `persist_final`, without the per-final transaction.
async fn bulk_load(
    db: &Db,
    key: &DataKey,
    tenant: Uuid,
    args: &Args,
    texts: &[String],
    offset: usize,
) -> anyhow::Result<()> {
    let mut tx = db.tenant_tx(tenant).await?;
    for m in 0..args.meetings {
        sqlx::query(
            "INSERT INTO meetings (tenant_id, meeting_id, title) VALUES ($1, $2, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(format!("m{m}"))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sessions (tenant_id, session_id, meeting_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(format!("s{m}"))
        .bind(format!("m{m}"))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    for (chunk_index, chunk) in texts.chunks(2000).enumerate() {
        let mut sessions = Vec::new();
        let mut seqs = Vec::new();
        let mut meetings = Vec::new();
        let mut starts = Vec::new();
        let mut sealed = Vec::new();
        let mut terms = Vec::new();
        for (j, text) in chunk.iter().enumerate() {
            let i = offset + chunk_index * 2000 + j;
            let (session, seq) = (
                format!("s{}", i / args.segments),
                (i % args.segments) as i64 + 1,
            );
            let segment = api::Segment {
                start_ms: (seq as u64 - 1) * 5000,
                end_ms: (seq as u64 - 1) * 5000 + 4800,
                text: text.clone(),
                ..Default::default()
            };
            let aad = kiroku_storage::crypto::aad(tenant, "segment", &format!("{session}:{seq}"));
            sealed.push(key.seal(&prost::Message::encode_to_vec(&segment), &aad)?);
            // One string per row: the terms joined, split again in SQL.
            terms.push(store::index_tokens(key, text).join(" "));
            meetings.push(format!("m{}", i / args.segments));
            starts.push(segment.start_ms as i64);
            sessions.push(session);
            seqs.push(seq);
        }
        let ends: Vec<i64> = starts.iter().map(|s| s + 4800).collect();
        let mut tx = db.tenant_tx(tenant).await?;
        sqlx::query(
            "INSERT INTO segments (tenant_id, session_id, result_seq, meeting_id, start_ms, end_ms,
                 sealed, meeting_started_at)
             SELECT $1, s, q, m, a, b, c, (SELECT started_at FROM meetings WHERE meeting_id = m)
             FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[],
                         $7::bytea[]) AS x(s, q, m, a, b, c)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&sessions)
        .bind(&seqs)
        .bind(&meetings)
        .bind(&starts)
        .bind(&ends)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "SELECT kiroku_index_segment(s, q, string_to_array(t, ' '))
             FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS x(s, q, t)",
        )
        .bind(&sessions)
        .bind(&seqs)
        .bind(&terms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}
