//! NATS alone, without Kiroku's gateway and worker: the latency of the audio path's two
//! hops (JetStream publish → ack, stored → delivered to an ordered consumer) and of a
//! core NATS message (the interim path), at the rates `kiroku bench-plumbing` offers.
//! Tells whether a plumbing tail is NATS's (with the same client library and consumer
//! code as Kiroku: `kiroku_core::nats::{publish_durable, Follower}`) or Kiroku's own.
//!
//! ```text
//! cargo run --release -p kiroku-core --example jetstream_latency -- \
//!     [--nats nats://127.0.0.1:4222] [--streams 100] [--seconds 10] [--rate 10] [--bytes 3200]
//! ```
//!
//! Each of `--streams` publishers sends `--rate` messages a second of `--bytes` bytes
//! (3,200: 100 ms of 16 kHz 16-bit audio), the next one only after the previous is
//! stored, as the gateway does; one ordered consumer per publisher follows it, as a
//! worker does; a second set of publishers sends the same on core NATS to one
//! subscriber. Publishers and consumers use two connections (gateway and worker). A
//! throwaway stream (file storage, one replica) is created and deleted.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use futures::StreamExt as _;
use kiroku_core::nats::{Follower, publish_durable};
use tokio::sync::mpsc;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A payload of `bytes` bytes that starts with the send time.
fn stamped(bytes: usize) -> Bytes {
    let mut payload = vec![0u8; bytes.max(8)];
    payload[..8].copy_from_slice(&now_ns().to_le_bytes());
    Bytes::from(payload)
}

/// Milliseconds since the send time in `payload`.
fn age_ms(payload: &[u8]) -> Option<f64> {
    let sent = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some(now_ns().saturating_sub(sent) as f64 / 1e6)
}

fn summary(name: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    let at = |q| kiroku_core::metrics::percentile(&samples, q);
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        samples.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut nats = "nats://127.0.0.1:4222".to_string();
    let (mut streams, mut seconds, mut rate, mut bytes) = (100usize, 10u64, 10u64, 3200usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nats" => nats = value,
            "--streams" => streams = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--rate" => rate = value.parse()?,
            "--bytes" => bytes = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let publisher = async_nats::connect(&nats).await.context("connecting")?;
    let consumer = async_nats::connect(&nats).await.context("connecting")?;
    let js = jetstream::new(publisher.clone());
    let name = format!("LATPROBE_{}", std::process::id());
    let prefix = format!("latprobe.{}", std::process::id());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.js.>")],
            storage: StorageType::File,
            max_age: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .context("creating the probe stream")?;

    let (publish_tx, mut publish_rx) = mpsc::unbounded_channel::<f64>();
    let (deliver_tx, mut deliver_rx) = mpsc::unbounded_channel::<f64>();
    let (core_tx, mut core_rx) = mpsc::unbounded_channel::<f64>();
    let mut core_sub = consumer.subscribe(format!("{prefix}.core.>")).await?;
    let core_task = tokio::spawn(async move {
        while let Some(message) = core_sub.next().await {
            if let Some(age) = age_ms(&message.payload) {
                let _ = core_tx.send(age);
            }
        }
    });
    let mut followers = Vec::new();
    for i in 0..streams {
        let mut follower = Follower::new(
            consumer.clone(),
            stream.clone(),
            format!("{prefix}.js.{i}"),
            "latprobe",
            0,
        )
        .await?;
        let deliver_tx = deliver_tx.clone();
        followers.push(tokio::spawn(async move {
            loop {
                let message = follower.next().await;
                if let Some(age) = age_ms(&message.payload) {
                    let _ = deliver_tx.send(age);
                }
            }
        }));
    }
    let period = Duration::from_micros(1_000_000 / rate.max(1));
    let frames = seconds * rate;
    let mut publishers = Vec::new();
    for i in 0..streams {
        let js = js.clone();
        let core = publisher.clone();
        let publish_tx = publish_tx.clone();
        let (js_subject, core_subject) = (format!("{prefix}.js.{i}"), format!("{prefix}.core.{i}"));
        // Publishers start spread over one period, as streams of a meeting service do.
        let offset = period.mul_f64(i as f64 / streams as f64);
        publishers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            for _ in 0..frames {
                ticks.tick().await;
                let began = Instant::now();
                let payload = stamped(bytes);
                let build = || jetstream::message::PublishMessage::build().payload(payload.clone());
                let first = js
                    .send_publish(js_subject.clone(), build())
                    .await
                    .map_err(|e| kiroku_core::nats::NatsError(e.to_string()));
                if publish_durable(&js, &js_subject, build, Some(first))
                    .await
                    .is_ok()
                {
                    let _ = publish_tx.send(began.elapsed().as_secs_f64() * 1e3);
                }
                let _ = core.publish(core_subject.clone(), stamped(bytes)).await;
            }
        }));
    }
    drop((publish_tx, deliver_tx));
    for task in publishers {
        task.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for task in followers {
        task.abort();
    }
    core_task.abort();
    let drain = |rx: &mut mpsc::UnboundedReceiver<f64>| {
        let mut all = Vec::new();
        while let Ok(v) = rx.try_recv() {
            all.push(v);
        }
        all
    };
    println!(
        "{streams} streams × {rate}/s × {bytes} B for {seconds} s ({})",
        publisher.server_info().version
    );
    println!("| hop | messages | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    summary("JetStream publish → ack", drain(&mut publish_rx));
    summary("JetStream publish → delivered", drain(&mut deliver_rx));
    summary("core NATS publish → delivered", drain(&mut core_rx));
    js.delete_stream(&name)
        .await
        .context("deleting the probe stream")?;
    Ok(())
}
