//! `kiroku stream FILE`: plays a WAV file to a gateway as a live client would (paced at
//! `--speed` × real time), shows the interim caption live and each final line.
//!
//! A resilient client: when the connection or gateway fails it reconnects (to the next
//! `--gateway` in the list), resumes the session with its token, receives the finals it
//! missed and re-sends the frames the gateway had not acknowledged.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use kiroku_core::transcript::{Segment, Transcript, Word};
use kiroku_proto::transcribe::v1::{
    self as api, StreamTranscribeRequest, stream_transcribe_request, stream_transcribe_response,
    transcription_client::TranscriptionClient,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::InputError;

/// Where `kiroku up` serves by default.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:50051";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Txt,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAV file to stream.
    file: PathBuf,
    /// Gateway URL; a comma-separated list is tried in turn on reconnects.
    #[arg(long, env = "KIROKU_GATEWAY", default_value = DEFAULT_GATEWAY)]
    gateway: String,
    /// Pace: 1 = real time, 2 = twice as fast.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// txt: each final as a line; json: the whole transcript at the end, in the shape
    /// of `kiroku transcribe --format json`.
    #[arg(long, short, value_enum, default_value = "txt")]
    format: OutputFormat,
    /// Print latency figures to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Audio per frame in milliseconds (at most 200).
    #[arg(long, default_value_t = 100)]
    frame_ms: u32,
    /// Spoken language (ISO 639-1).
    #[arg(long)]
    language: Option<String>,
    /// Meeting the stream belongs to.
    #[arg(long)]
    meeting: Option<String>,
    /// Do not ask for interim results.
    #[arg(long)]
    no_interim: bool,
    /// Reconnect attempts before giving up.
    #[arg(long, default_value_t = 8)]
    max_reconnects: u32,
    /// Write per-word arrival times and the transcript as JSON (benchmarks).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The audio as the client sends it.
struct ClientAudio {
    format: api::AudioFormat,
    frames: Vec<Vec<u8>>,
    duration_ms: u64,
}

fn load_audio(path: &PathBuf, frame_ms: u32) -> Result<ClientAudio> {
    let open_error = |e: &dyn std::fmt::Display| InputError(format!("{}: {e}", path.display()));
    let reader = hound::WavReader::open(path).map_err(|e| open_error(&e))?;
    let spec = reader.spec();
    // 16-bit PCM at a rate the gateway takes goes as is (the gateway resamples);
    // anything else is converted to 16 kHz mono here.
    let direct = spec.sample_format == hound::SampleFormat::Int
        && spec.bits_per_sample == 16
        && spec.channels <= 2
        && kiroku_gateway::SUPPORTED_RATES_HZ.contains(&spec.sample_rate);
    let (rate, channels, pcm): (u32, u32, Vec<i16>) = if direct {
        let samples: Result<Vec<i16>, _> = reader.into_samples::<i16>().collect();
        (
            spec.sample_rate,
            u32::from(spec.channels),
            samples.map_err(|e| open_error(&e))?,
        )
    } else {
        drop(reader);
        let file = std::fs::File::open(path).map_err(|e| open_error(&e))?;
        let decoded = kiroku_engine::audio::decode_wav(std::io::BufReader::new(file))
            .map_err(|e| open_error(&e))?;
        let pcm = decoded
            .samples
            .iter()
            .map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
            .collect();
        (16_000, 1, pcm)
    };
    let per_frame = (rate * frame_ms / 1000) as usize * channels as usize;
    let frames: Vec<Vec<u8>> = pcm
        .chunks(per_frame.max(channels as usize))
        .map(|chunk| chunk.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect();
    Ok(ClientAudio {
        format: api::AudioFormat {
            encoding: api::AudioEncoding::Linear16 as i32,
            sample_rate_hz: rate,
            channels,
        },
        duration_ms: pcm.len() as u64 * 1000 / u64::from(rate * channels),
        frames,
    })
}

/// One final as received.
#[derive(Debug, Clone, Serialize)]
struct ReceivedFinal {
    result_seq: u64,
    /// Milliseconds after the first frame was due.
    arrival_ms: f64,
    /// The language the final was decoded in.
    language: String,
    segment: Segment,
}

#[derive(Debug, Serialize)]
struct Report {
    speed: f64,
    reconnects: u32,
    first_interim_ms: Option<f64>,
    /// Languages the session info announced, in order (a stream that asked for
    /// detection gets a second session info with the detected language).
    session_languages: Vec<String>,
    finals: Vec<ReceivedFinal>,
    server_stats: Option<ServerStats>,
}

#[derive(Debug, Clone, Serialize)]
struct ServerStats {
    finals: u32,
    final_latency_p50_ms: u32,
    final_latency_p95_ms: u32,
}

/// What survives a reconnect.
struct Progress {
    acked_seq: u64,
    last_final_seq: u64,
    resume_token: Option<String>,
    finals: Vec<ReceivedFinal>,
    first_interim_ms: Option<f64>,
    server_stats: Option<ServerStats>,
    language: String,
    session_languages: Vec<String>,
    captions: Captions,
}

/// Caption lines on stdout. On a terminal, finals of one utterance join into one line
/// (a final that starts within 600 ms of the previous one's end continues it), redrawn in
/// place with the interim tail dimmed after it. Piped, each final is its own line, printed
/// as it arrives.
#[derive(Debug, Default)]
struct Captions {
    enabled: bool,
    tty: bool,
    /// (start ms, end ms, text) of the open line.
    line: Option<(u64, u64, String)>,
    interim: String,
}

impl Captions {
    /// Columns of the one terminal row the open line and the interim tail share: a
    /// full-width (Japanese) character takes two, so they are counted, not characters.
    const ROW_COLUMNS: usize = 100;

    fn add_final(&mut self, segment: &Segment) {
        if !self.enabled {
            return;
        }
        if !self.tty {
            // Piped: one line per final as soon as it arrives (scripts and tests read it).
            println!(
                "[{} → {}] {}",
                clock(segment.start_ms),
                clock(segment.end_ms),
                segment.text
            );
            let _ = std::io::stdout().flush();
            return;
        }
        match &mut self.line {
            Some((_, end, text)) if segment.start_ms <= *end + 600 => {
                *end = segment.end_ms;
                // Japanese finals join without a space, English with one.
                *text = kiroku_core::transcript::join_words([text.as_str(), &segment.text]);
            }
            _ => {
                self.finish_line();
                let text = segment.text.trim().to_string();
                self.line = Some((segment.start_ms, segment.end_ms, text));
            }
        }
        self.interim.clear();
        self.redraw();
    }

    fn set_interim(&mut self, text: String) {
        if !self.enabled || !self.tty {
            return;
        }
        self.interim = text;
        self.redraw();
    }

    fn redraw(&self) {
        use kiroku_core::transcript::{display_columns, last_columns};
        if !self.tty {
            return;
        }
        let mut shown = String::new();
        if let Some((start, _, text)) = &self.line {
            shown = format!("[{}] {text}", clock(*start));
        }
        // One terminal row: the newest columns of the line, then of the interim.
        let line = last_columns(&shown, Self::ROW_COLUMNS);
        let room = Self::ROW_COLUMNS.saturating_sub(display_columns(line) + 1);
        let interim = last_columns(self.interim.trim(), room);
        print!("\r\x1b[K{line} \x1b[2m{interim}\x1b[0m");
        let _ = std::io::stdout().flush();
    }

    /// Prints the open line for good.
    fn finish_line(&mut self) {
        if self.tty {
            print!("\r\x1b[K");
        }
        if let Some((start, end, text)) = self.line.take() {
            println!("[{} → {}] {text}", clock(start), clock(end));
        }
        let _ = std::io::stdout().flush();
    }

    /// Ends the display (before other output, and at the end).
    fn close(&mut self) {
        if self.enabled {
            self.interim.clear();
            self.finish_line();
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    if !(args.speed > 0.0 && args.speed <= 1000.0) {
        return Err(InputError("--speed must be above 0 and at most 1000".into()).into());
    }
    if !(10..=200).contains(&args.frame_ms) {
        return Err(InputError("--frame-ms must be between 10 and 200".into()).into());
    }
    let audio = load_audio(&args.file, args.frame_ms)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(stream(args, audio))
}

enum Attempt {
    Closed,
    Reconnect(String),
}

async fn stream(args: Args, audio: ClientAudio) -> Result<()> {
    let gateways: Vec<String> = args
        .gateway
        .split(',')
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    if gateways.is_empty() {
        return Err(InputError("--gateway is empty".into()).into());
    }
    let tty = std::io::stdout().is_terminal();
    let mut progress = Progress {
        acked_seq: 0,
        last_final_seq: 0,
        resume_token: None,
        finals: Vec::new(),
        first_interim_ms: None,
        server_stats: None,
        language: String::new(),
        session_languages: Vec::new(),
        captions: Captions {
            enabled: args.format == OutputFormat::Txt,
            tty,
            ..Captions::default()
        },
    };
    let origin = Instant::now();
    let mut reconnects = 0u32;
    loop {
        let gateway = &gateways[reconnects as usize % gateways.len()];
        match attempt(&args, &audio, gateway, origin, &mut progress).await {
            Ok(Attempt::Closed) => break,
            Ok(Attempt::Reconnect(why)) => {
                if reconnects >= args.max_reconnects {
                    bail!("giving up after {reconnects} reconnects: {why}");
                }
                reconnects += 1;
                let next = &gateways[reconnects as usize % gateways.len()];
                progress.captions.close();
                eprintln!("kiroku stream: {why}; reconnecting to {next} (attempt {reconnects})");
                tokio::time::sleep(Duration::from_millis(300 * u64::from(reconnects.min(5)))).await;
            }
            Err(error) => {
                progress.captions.close();
                return Err(error);
            }
        }
    }
    progress.captions.close();
    let transcript = Transcript {
        duration_ms: audio.duration_ms,
        text: kiroku_core::transcript::join_words(
            progress.finals.iter().map(|f| f.segment.text.as_str()),
        ),
        language: progress.language.clone(),
        segments: progress.finals.iter().map(|f| f.segment.clone()).collect(),
    };
    if args.format == OutputFormat::Json {
        println!("{}", transcript.to_json());
    }
    if args.stats {
        print_stats(&progress, &args, reconnects);
    }
    if let Some(path) = &args.report {
        let report = Report {
            speed: args.speed,
            reconnects,
            first_interim_ms: progress.first_interim_ms,
            session_languages: progress.session_languages.clone(),
            finals: progress.finals.clone(),
            server_stats: progress.server_stats.clone(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One connection: returns when the session closed, or when it must reconnect.
async fn attempt(
    args: &Args,
    audio: &ClientAudio,
    gateway: &str,
    origin: Instant,
    progress: &mut Progress,
) -> Result<Attempt> {
    let endpoint = tonic::transport::Endpoint::from_shared(gateway.to_string())
        .map_err(|_| InputError(format!("gateway URL {gateway:?} is not valid")))?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => {
            return Ok(Attempt::Reconnect(format!(
                "cannot connect to {gateway}: {error}"
            )));
        }
    };
    let mut client = TranscriptionClient::new(channel);
    let (tx, rx) = mpsc::channel::<StreamTranscribeRequest>(64);
    let config = api::StreamConfig {
        audio_format: Some(audio.format),
        options: Some(api::RecognitionOptions {
            language: args.language.clone().unwrap_or_default(),
            word_timestamps: true,
            ..Default::default()
        }),
        interim_results: !args.no_interim,
        meeting_id: args.meeting.clone().unwrap_or_default(),
        resume_token: progress.resume_token.clone().unwrap_or_default(),
        resume_after_result_seq: progress.last_final_seq,
        labels: Default::default(),
    };
    let send = |request| StreamTranscribeRequest {
        request: Some(request),
    };
    // Buffered before the call starts, so config is the first message.
    let _ = tx
        .send(send(stream_transcribe_request::Request::Config(config)))
        .await;

    // Frames are due on the original timeline: a reconnect re-sends what was not
    // acknowledged at once, then keeps the real-time pace.
    let first_seq = progress.acked_seq + 1;
    let frames: Vec<Vec<u8>> =
        audio.frames[(first_seq as usize - 1).min(audio.frames.len())..].to_vec();
    let frame_period = Duration::from_secs_f64(f64::from(args.frame_ms) / 1000.0 / args.speed);
    let sender = tokio::spawn(async move {
        for (index, data) in frames.into_iter().enumerate() {
            let seq = first_seq + index as u64;
            let due = origin + frame_period * (seq - 1) as u32;
            tokio::time::sleep_until(due.into()).await;
            let frame = api::AudioFrame { data, seq };
            if tx
                .send(send(stream_transcribe_request::Request::Audio(frame)))
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
            .send(send(stream_transcribe_request::Request::Control(end)))
            .await;
        // Keep the request stream open until the server closes the call.
        tx.closed().await;
    });

    // Fetched per attempt: a long meeting outlives an access token.
    let credential = crate::credentials::credential().await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    crate::credentials::attach(request.metadata_mut(), &credential);
    let response = client.stream_transcribe(request).await;
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            sender.abort();
            return classify(status).map(Attempt::Reconnect);
        }
    };
    let outcome = loop {
        match inbound.next().await {
            None => break Ok(Attempt::Closed),
            Some(Err(status)) => break classify(status).map(Attempt::Reconnect),
            Some(Ok(message)) => {
                use stream_transcribe_response::Response as R;
                match message.response {
                    Some(R::Session(info)) => {
                        progress.resume_token = Some(info.resume_token);
                        progress.session_languages.push(info.language.clone());
                        if !info.language.is_empty() && info.language != progress.language {
                            if args.language.as_deref().is_none_or(|l| l == "auto") {
                                eprintln!("kiroku stream: language detected: {}", info.language);
                            }
                            progress.language = info.language;
                        }
                    }
                    Some(R::AudioAck(ack)) => {
                        progress.acked_seq = progress.acked_seq.max(ack.acked_seq);
                    }
                    Some(R::Result(result)) if result.is_final => {
                        if result.result_seq <= progress.last_final_seq {
                            continue;
                        }
                        progress.last_final_seq = result.result_seq;
                        if progress.language.is_empty() {
                            progress.language = result.language.clone();
                        }
                        let segment = to_segment(result.segment.unwrap_or_default());
                        progress.captions.add_final(&segment);
                        progress.finals.push(ReceivedFinal {
                            result_seq: result.result_seq,
                            arrival_ms: origin.elapsed().as_secs_f64() * 1000.0,
                            language: result.language.clone(),
                            segment,
                        });
                    }
                    Some(R::Result(interim)) => {
                        progress
                            .first_interim_ms
                            .get_or_insert(origin.elapsed().as_secs_f64() * 1000.0);
                        progress
                            .captions
                            .set_interim(interim.segment.map(|s| s.text).unwrap_or_default());
                    }
                    Some(R::Stats(stats)) => {
                        progress.server_stats = Some(ServerStats {
                            finals: stats.finals,
                            final_latency_p50_ms: stats.final_latency_p50_ms,
                            final_latency_p95_ms: stats.final_latency_p95_ms,
                        });
                    }
                    Some(R::BookmarkAck(_)) | None => {}
                }
            }
        }
    };
    sender.abort();
    outcome
}

/// Statuses worth a reconnect (the session survives them) versus errors to report.
fn classify(status: tonic::Status) -> Result<String> {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
            if !status.message().starts_with("the worker failed") =>
        {
            Ok(format!("{:?}: {}", status.code(), status.message()))
        }
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition | Code::NotFound => {
            Err(InputError(format!(
                "gateway refused the stream: {:?}: {}",
                status.code(),
                status.message()
            ))
            .into())
        }
        code => bail!("stream failed: {code:?}: {}", status.message()),
    }
}

pub(crate) fn to_segment(segment: api::Segment) -> Segment {
    Segment {
        start_ms: segment.start_ms,
        end_ms: segment.end_ms,
        text: segment.text,
        words: segment
            .words
            .into_iter()
            .map(|w| Word {
                text: w.text,
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                probability: w.probability,
            })
            .collect(),
    }
}

fn clock(ms: u64) -> String {
    format!(
        "{:02}:{:02}.{}",
        ms / 60_000,
        ms / 1000 % 60,
        ms % 1000 / 100
    )
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn print_stats(progress: &Progress, args: &Args, reconnects: u32) {
    // Latency of a word: when its final arrived − when its end was played (the
    // audio's timeline at --speed, from the first frame).
    let mut latencies: Vec<f64> = progress
        .finals
        .iter()
        .flat_map(|f| {
            f.segment
                .words
                .iter()
                .map(move |w| f.arrival_ms - w.end_ms as f64 / args.speed)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let words = latencies.len();
    eprintln!(
        "finals {}  words {words}  reconnects {reconnects}",
        progress.finals.len()
    );
    eprintln!(
        "final latency (client, word end → final): p50 {:.0} ms  p95 {:.0} ms  max {:.0} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(first) = progress.first_interim_ms {
        eprintln!("first interim after {first:.0} ms");
    }
    if let Some(server) = &progress.server_stats {
        eprintln!(
            "gateway-measured final latency: p50 {} ms  p95 {} ms",
            server.final_latency_p50_ms, server.final_latency_p95_ms
        );
    }
}
