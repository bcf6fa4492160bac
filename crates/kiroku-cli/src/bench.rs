//! `kiroku bench-plumbing` (hidden; `make bench-stream` runs it): many concurrent
//! streams against a cluster whose workers run the BENCHMARK-ONLY null engine
//! (`kiroku serve worker --engine null-benchmark`), which answers every audio frame
//! with an interim carrying the frame's seq. The time from sending a frame to that
//! interim is the latency the plumbing adds (gateway → JetStream → worker → NATS →
//! gateway → client), without any inference.
//!
//! Besides every frame's latency it reports the steady state (frames after each
//! stream's first second) and each stream's first frame apart: a first frame waits
//! while its session starts (the job is queued, a worker takes it and starts following
//! the stream's audio), which at 100 streams started within 100 ms is most of the 1%
//! slowest frames and is not per-frame plumbing.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use kiroku_proto::transcribe::v1::{
    self as api, StreamTranscribeRequest, stream_transcribe_request, stream_transcribe_response,
    transcription_client::TranscriptionClient,
};
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Gateway URL.
    #[arg(long, default_value = crate::stream::DEFAULT_GATEWAY)]
    gateway: String,
    /// Concurrent streams.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Audio seconds per stream (sent in real time).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Audio per frame in milliseconds.
    #[arg(long, default_value_t = 100)]
    frame_ms: u64,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> Result<()> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(args.gateway.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", args.gateway))?,
        );
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.streams {
        let channel = channels[index % channels.len()].clone();
        let seconds = args.seconds;
        let frame_ms = args.frame_ms;
        // Spread the starts over one frame period, as real clients would be.
        let offset = Duration::from_micros(index as u64 * frame_ms * 1000 / args.streams as u64);
        tasks.spawn(async move {
            tokio::time::sleep(offset).await;
            one_stream(channel, seconds, frame_ms).await
        });
    }
    let mut latencies = Vec::new();
    let mut steady = Vec::new();
    let mut first_frames = Vec::new();
    let warmup_frames = 1000 / args.frame_ms.max(1);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(stream_latencies)) => {
                for (seq, latency) in stream_latencies {
                    latencies.push(latency);
                    if seq == 1 {
                        first_frames.push(latency);
                    }
                    if seq > warmup_frames {
                        steady.push(latency);
                    }
                }
            }
            Ok(Err(error)) => {
                failed += 1;
                first_error.get_or_insert(error.to_string());
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error.to_string());
            }
        }
    }
    let elapsed = started.elapsed();
    let (all, steady, first) = (
        Quantiles::of(latencies),
        Quantiles::of(steady),
        Quantiles::of(first_frames),
    );
    let expected = args.streams as u64 * args.seconds * 1000 / args.frame_ms;
    // One line of JSON for the benchmark script, then a human line.
    println!(
        "{{\"streams\":{},\"frames_expected\":{expected},\"frames_answered\":{},\"failed_streams\":{failed},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\"steady\":{},\"first_frame\":{},\"elapsed_s\":{:.1}}}",
        args.streams,
        all.count,
        all.p50,
        all.p99,
        all.max,
        steady.json(),
        first.json(),
        elapsed.as_secs_f64()
    );
    eprintln!(
        "{} streams: {} of {expected} frames answered, per-frame latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; \
         after each stream's first second p50 {:.2} ms p99 {:.2} ms max {:.2} ms; first frame p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        args.streams,
        all.count,
        all.p50,
        all.p99,
        all.max,
        steady.p50,
        steady.p99,
        steady.max,
        first.p50,
        first.p99,
        first.max
    );
    if let Some(error) = first_error {
        eprintln!("{failed} streams failed; first error: {error}");
    }
    Ok(())
}

/// Nearest-rank quantiles of latencies in milliseconds (NaN when there are none).
struct Quantiles {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let pick = |q| kiroku_core::metrics::percentile(&values, q);
        Self {
            count: values.len(),
            p50: pick(0.5),
            p99: pick(0.99),
            max: pick(1.0),
        }
    }

    fn json(&self) -> String {
        // NaN is not JSON: no frames gives nulls.
        let number = |v: f64| {
            if v.is_finite() {
                format!("{v:.2}")
            } else {
                "null".to_string()
            }
        };
        format!(
            "{{\"frames\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
            self.count,
            number(self.p50),
            number(self.p99),
            number(self.max)
        )
    }
}

/// One paced stream; (seq, latency in milliseconds) of each answered frame.
async fn one_stream(
    channel: tonic::transport::Channel,
    seconds: u64,
    frame_ms: u64,
) -> Result<Vec<(u64, f64)>> {
    let mut client = TranscriptionClient::new(channel);
    let credential = crate::credentials::credential().await?;
    let (tx, rx) = mpsc::channel(16);
    let request = |r| StreamTranscribeRequest { request: Some(r) };
    let config = api::StreamConfig {
        audio_format: Some(api::AudioFormat {
            encoding: api::AudioEncoding::Linear16 as i32,
            sample_rate_hz: 16_000,
            channels: 1,
        }),
        interim_results: true,
        ..Default::default()
    };
    tx.send(request(stream_transcribe_request::Request::Config(config)))
        .await?;
    let frames = seconds * 1000 / frame_ms;
    let samples = (16 * frame_ms) as usize;
    let sent_at = std::sync::Arc::new(std::sync::Mutex::new(vec![
        None::<Instant>;
        frames as usize + 1
    ]));
    let sender = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for seq in 1..=frames {
                tokio::time::sleep_until(start + Duration::from_millis((seq - 1) * frame_ms)).await;
                if let Ok(mut sent) = sent_at.lock() {
                    sent[seq as usize] = Some(Instant::now());
                }
                let frame = api::AudioFrame {
                    data: vec![0u8; samples * 2],
                    seq,
                };
                if tx
                    .send(request(stream_transcribe_request::Request::Audio(frame)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let end = api::Control {
                action: Some(api::control::Action::EndOfStream(api::EndOfStream {})),
            };
            let _ = tx
                .send(request(stream_transcribe_request::Request::Control(end)))
                .await;
            tx.closed().await;
        })
    };
    let mut inbound = client
        .stream_transcribe({
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            crate::credentials::attach(request.metadata_mut(), &credential);
            request
        })
        .await?
        .into_inner();
    let mut latencies = Vec::new();
    while let Some(message) = inbound.next().await {
        let message = message?;
        if let Some(stream_transcribe_response::Response::Result(result)) = message.response
            && !result.is_final
        {
            let now = Instant::now();
            let seq: u64 = result
                .segment
                .map(|s| s.text)
                .unwrap_or_default()
                .parse()
                .unwrap_or(0);
            let sent = sent_at
                .lock()
                .ok()
                .and_then(|sent| sent.get(seq as usize).copied().flatten());
            if let Some(sent) = sent {
                latencies.push((seq, now.duration_since(sent).as_secs_f64() * 1000.0));
            }
        }
    }
    sender.abort();
    if latencies.is_empty() {
        bail!("no interim came back: are the workers running the null-benchmark engine?");
    }
    Ok(latencies)
}
