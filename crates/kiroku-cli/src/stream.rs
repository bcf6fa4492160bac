//! `kiroku stream FILE`: plays a WAV file to a gateway as a live client would (paced at
//! `--speed` × real time), shows the live caption line (captions, then the interim tail)
//! and replaces it with each utterance's final, one line a sentence.
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
        let decoded =
            kiroku_audio::decode_wav(std::io::BufReader::new(file)).map_err(|e| open_error(&e))?;
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

/// One caption as received (the bench measures caption latency from these).
#[derive(Debug, Clone, Serialize)]
struct ReceivedCaption {
    result_seq: u64,
    /// Milliseconds after the first frame was due.
    arrival_ms: f64,
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
    captions: Vec<ReceivedCaption>,
    server_stats: Option<ServerStats>,
    /// The stream's trace (every connection of it sends a `traceparent` in it).
    trace_id: String,
    /// When a worker took the session after the gateway had said it was queued (ms
    /// from the start); absent when it was never queued.
    queue_left_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct ServerStats {
    finals: u32,
    final_latency_p50_ms: u32,
    final_latency_p95_ms: u32,
    caption_latency_p50_ms: u32,
    caption_latency_p95_ms: u32,
}

/// What survives a reconnect.
struct Progress {
    /// One trace for the whole stream, reconnects included (W3C, 32 hex digits).
    trace_id: String,
    acked_seq: u64,
    last_final_seq: u64,
    resume_token: Option<String>,
    finals: Vec<ReceivedFinal>,
    captions_received: Vec<ReceivedCaption>,
    first_interim_ms: Option<f64>,
    server_stats: Option<ServerStats>,
    language: String,
    session_languages: Vec<String>,
    captions: Captions,
    /// The gateway said no worker has taken the session yet.
    queued: bool,
    queue_left_ms: Option<f64>,
}

/// The caption line on stdout.
///
/// On a terminal, one live line is redrawn in place: the captions of the utterance being
/// spoken (stable), then the interim tail (dimmed). When the utterance's final arrives it
/// replaces that line and is printed for good, so the screen ends up with the minutes,
/// one utterance a line. The live line never wraps: it shows the newest part that fits
/// the terminal's width (read at each redraw, so a resized terminal is followed), because
/// a wrapped line cannot be rewritten in place with `\r`. Notices (reconnects, the
/// detected language) clear the live line, print on their own line, and redraw it.
/// Piped, only finals are printed, one line each, as they arrive.
#[derive(Debug, Default)]
struct Captions {
    enabled: bool,
    tty: bool,
    /// Stable caption text of the open utterance, and the start of its first word.
    line: String,
    line_start_ms: Option<u64>,
    interim: String,
    /// Something is drawn on the live row.
    drawn: bool,
}

impl Captions {
    /// Columns used when the width cannot be read.
    const FALLBACK_COLUMNS: usize = 80;

    fn add_caption(&mut self, segment: &Segment) {
        if !self.enabled || !self.tty {
            return;
        }
        self.line_start_ms.get_or_insert(segment.start_ms);
        // Japanese captions join without a space, English with one.
        self.line = kiroku_core::transcript::join_words([self.line.as_str(), &segment.text]);
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

    /// An utterance final: it replaces the live line and stays on screen.
    fn add_final(&mut self, segment: &Segment) {
        if !self.enabled {
            return;
        }
        self.clear_row();
        println!(
            "[{} → {}] {}",
            clock(segment.start_ms),
            clock(segment.end_ms),
            segment.text
        );
        let _ = std::io::stdout().flush();
        self.line.clear();
        self.line_start_ms = None;
        self.interim.clear();
    }

    /// Prints `message` on stderr on its own line, keeping the live line intact.
    fn notice(&mut self, message: &str) {
        self.clear_row();
        eprintln!("{message}");
        self.redraw();
    }

    fn columns() -> usize {
        console::Term::stdout()
            .size_checked()
            .map_or(Self::FALLBACK_COLUMNS, |(_, columns)| usize::from(columns))
    }

    fn redraw(&mut self) {
        use kiroku_core::transcript::{display_columns, last_columns};
        if !self.enabled || !self.tty {
            return;
        }
        if self.line.is_empty() && self.interim.is_empty() {
            self.clear_row();
            return;
        }
        let prefix = format!("[{}] ", clock(self.line_start_ms.unwrap_or(0)));
        // One column less than the width: a character in the last column makes some
        // terminals wrap at once.
        let room = Self::columns()
            .saturating_sub(1)
            .saturating_sub(display_columns(&prefix));
        let interim = self.interim.trim();
        let spaced = !self.line.is_empty()
            && !interim.is_empty()
            && kiroku_core::transcript::needs_space(&self.line, interim);
        let gap = usize::from(spaced);
        // The newest columns: all of the interim that fits, then the end of the line.
        let interim_shown = last_columns(interim, room);
        let line_room = room.saturating_sub(display_columns(interim_shown) + gap);
        let line_shown = last_columns(&self.line, line_room);
        let gap = if spaced && !line_shown.is_empty() {
            " "
        } else {
            ""
        };
        print!("\r\x1b[K{prefix}{line_shown}{gap}\x1b[2m{interim_shown}\x1b[0m");
        let _ = std::io::stdout().flush();
        self.drawn = true;
    }

    /// Clears the live row (the cursor stays at its start).
    fn clear_row(&mut self) {
        if self.tty && self.drawn {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
            self.drawn = false;
        }
    }

    /// Ends the display (before other output, and at the end): captions no final
    /// replaced stay on screen as they were.
    fn close(&mut self) {
        if !self.enabled {
            return;
        }
        self.interim.clear();
        if self.tty && !self.line.is_empty() {
            self.redraw();
            println!();
            self.drawn = false;
        } else {
            self.clear_row();
        }
        self.line.clear();
        self.line_start_ms = None;
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
        trace_id: uuid::Uuid::new_v4().simple().to_string(),
        acked_seq: 0,
        last_final_seq: 0,
        resume_token: None,
        finals: Vec::new(),
        captions_received: Vec::new(),
        first_interim_ms: None,
        server_stats: None,
        language: String::new(),
        session_languages: Vec::new(),
        captions: Captions {
            enabled: args.format == OutputFormat::Txt,
            tty,
            ..Captions::default()
        },
        queued: false,
        queue_left_ms: None,
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
                progress.captions.notice(&format!(
                    "kiroku stream: {why}; reconnecting to {next} (attempt {reconnects})"
                ));
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
            captions: progress.captions_received.clone(),
            server_stats: progress.server_stats.clone(),
            trace_id: progress.trace_id.clone(),
            queue_left_ms: progress.queue_left_ms,
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
    let sender = spawn_sender(args, audio, config, progress.acked_seq + 1, origin, tx).await;

    // Fetched per attempt: a long meeting outlives an access token.
    let credential = crate::credentials::credential().await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    crate::credentials::attach(request.metadata_mut(), &credential);
    // The gateway's spans join the stream's trace: this connection is a span of it.
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    if let Ok(value) = format!("00-{}-{span_id}-01", progress.trace_id).parse() {
        request
            .metadata_mut()
            .insert(kiroku_core::trace::TRACEPARENT, value);
    }
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
            Some(Ok(message)) => progress.receive(message, args, origin),
        }
    };
    sender.abort();
    outcome
}

fn request(request: stream_transcribe_request::Request) -> StreamTranscribeRequest {
    StreamTranscribeRequest {
        request: Some(request),
    }
}

/// Sends `config`, then the frames from `first_seq` on the original timeline (a
/// reconnect re-sends what was not acknowledged at once, then keeps the real-time pace),
/// then end of stream, and keeps the request stream open until the server closes the
/// call.
async fn spawn_sender(
    args: &Args,
    audio: &ClientAudio,
    config: api::StreamConfig,
    first_seq: u64,
    origin: Instant,
    tx: mpsc::Sender<StreamTranscribeRequest>,
) -> tokio::task::JoinHandle<()> {
    // Buffered before the call starts, so config is the first message.
    let _ = tx
        .send(request(stream_transcribe_request::Request::Config(config)))
        .await;
    let frames: Vec<Vec<u8>> =
        audio.frames[(first_seq as usize - 1).min(audio.frames.len())..].to_vec();
    let frame_period = Duration::from_secs_f64(f64::from(args.frame_ms) / 1000.0 / args.speed);
    tokio::spawn(async move {
        for (index, data) in frames.into_iter().enumerate() {
            let seq = first_seq + index as u64;
            let due = origin + frame_period * (seq - 1) as u32;
            tokio::time::sleep_until(due.into()).await;
            let frame = api::AudioFrame { data, seq };
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
}

impl Progress {
    /// One message from the gateway: session state, acks, results and stats.
    fn receive(&mut self, message: api::StreamTranscribeResponse, args: &Args, origin: Instant) {
        use stream_transcribe_response::Response as R;
        let arrival_ms = origin.elapsed().as_secs_f64() * 1000.0;
        match message.response {
            Some(R::Session(info)) => self.session(info, args, arrival_ms),
            Some(R::AudioAck(ack)) => {
                self.acked_seq = self.acked_seq.max(ack.acked_seq);
            }
            // Results already replaced by a final (or received before a reconnect) are
            // dropped.
            Some(R::Result(result)) if result.result_seq <= self.last_final_seq => {
                if !is_final(&result) {
                    self.first_interim_ms.get_or_insert(arrival_ms);
                }
            }
            Some(R::Result(result)) if is_final(&result) => {
                self.last_final_seq = result.result_seq;
                if self.language.is_empty() {
                    self.language = result.language.clone();
                }
                let segment = to_segment(result.segment.unwrap_or_default());
                self.captions.add_final(&segment);
                self.finals.push(ReceivedFinal {
                    result_seq: result.result_seq,
                    arrival_ms,
                    language: result.language.clone(),
                    segment,
                });
            }
            Some(R::Result(result)) => {
                self.first_interim_ms.get_or_insert(arrival_ms);
                let segment = to_segment(result.segment.unwrap_or_default());
                if result.kind == api::ResultKind::Caption as i32 {
                    self.captions.add_caption(&segment);
                    self.captions_received.push(ReceivedCaption {
                        result_seq: result.result_seq,
                        arrival_ms,
                        segment,
                    });
                } else {
                    self.captions.set_interim(segment.text);
                }
            }
            Some(R::Stats(stats)) => {
                self.server_stats = Some(ServerStats {
                    finals: stats.finals,
                    final_latency_p50_ms: stats.final_latency_p50_ms,
                    final_latency_p95_ms: stats.final_latency_p95_ms,
                    caption_latency_p50_ms: stats.caption_latency_p50_ms,
                    caption_latency_p95_ms: stats.caption_latency_p95_ms,
                });
            }
            Some(R::BookmarkAck(_)) | None => {}
        }
    }

    /// The session's state: resume token, queued or not, the language.
    fn session(&mut self, info: api::SessionInfo, args: &Args, arrival_ms: f64) {
        self.resume_token = Some(info.resume_token);
        if info.queued != self.queued {
            self.queued = info.queued;
            if !info.queued {
                self.queue_left_ms = Some(arrival_ms);
            }
            self.captions.notice(if info.queued {
                "kiroku stream: every transcription worker is busy: queued \
                 (audio is kept and transcribed once a worker is free)"
            } else {
                "kiroku stream: a worker took the session"
            });
        }
        self.session_languages.push(info.language.clone());
        if !info.language.is_empty() && info.language != self.language {
            if args.language.as_deref().is_none_or(|l| l == "auto") {
                self.captions.notice(&format!(
                    "kiroku stream: language detected: {}",
                    info.language
                ));
            }
            self.language = info.language;
        }
    }
}

/// An utterance final. A server from before result kinds sets only `is_final`.
fn is_final(result: &api::StreamingResult) -> bool {
    result.kind == api::ResultKind::Final as i32
        || (result.kind == api::ResultKind::Unspecified as i32 && result.is_final)
}

/// Statuses worth a reconnect (the session survives them) versus errors to report.
/// `ABORTED` is not retried: the gateway sends it when the tenant's minutes were erased
/// while the stream ran, and the session is gone (docs/api.md, "Errors").
fn classify(status: tonic::Status) -> Result<String> {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            if !status.message().starts_with(kiroku_gateway::WORKER_FAILED) =>
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

fn print_stats(progress: &Progress, args: &Args, reconnects: u32) {
    // A final's latency: its arrival − when its utterance's last word ended.
    let mut finals: Vec<f64> = progress
        .finals
        .iter()
        .filter_map(|f| {
            let last = f.segment.words.last()?;
            Some(f.arrival_ms - last.end_ms as f64 / args.speed)
        })
        .collect();
    finals.sort_by(f64::total_cmp);
    let words: usize = progress.finals.iter().map(|f| f.segment.words.len()).sum();
    // A word is first shown by its caption, or by its final when no caption held it
    // (the tail of an utterance, decoded only by the final): by end time, each word
    // counts once, at its first showing.
    let mut shown: Vec<(f64, &Segment)> = progress
        .captions_received
        .iter()
        .map(|c| (c.arrival_ms, &c.segment))
        .chain(progress.finals.iter().map(|f| (f.arrival_ms, &f.segment)))
        .collect();
    shown.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut shown_until_ms = 0;
    let mut first_shown: Vec<f64> = Vec::new();
    for (arrival_ms, segment) in shown {
        for word in &segment.words {
            if word.end_ms > shown_until_ms {
                shown_until_ms = word.end_ms;
                first_shown.push(arrival_ms - word.end_ms as f64 / args.speed);
            }
        }
    }
    first_shown.sort_by(f64::total_cmp);
    eprintln!(
        "finals {}  captions {}  words {words}  reconnects {reconnects}",
        progress.finals.len(),
        progress.captions_received.len(),
    );
    eprintln!("trace id {}", progress.trace_id);
    let line = |name: &str, latencies: &[f64]| {
        eprintln!(
            "{name}: p50 {:.0} ms  p95 {:.0} ms  max {:.0} ms",
            kiroku_core::metrics::percentile(latencies, 0.5),
            kiroku_core::metrics::percentile(latencies, 0.95),
            latencies.last().copied().unwrap_or(f64::NAN)
        );
    };
    line(
        "caption latency (client, word end → first shown)",
        &first_shown,
    );
    line("final latency (client, utterance end → final)", &finals);
    if let Some(first) = progress.first_interim_ms {
        eprintln!("first caption or interim after {first:.0} ms");
    }
    if let Some(server) = &progress.server_stats {
        eprintln!(
            "gateway-measured caption latency: p50 {} ms  p95 {} ms",
            server.caption_latency_p50_ms, server.caption_latency_p95_ms
        );
        eprintln!(
            "gateway-measured final latency: p50 {} ms  p95 {} ms",
            server.final_latency_p50_ms, server.final_latency_p95_ms
        );
    }
}

#[cfg(test)]
mod classify_tests {
    use super::classify;

    #[test]
    fn a_dropped_connection_is_retried_and_an_erased_session_is_not() {
        assert!(classify(tonic::Status::unavailable("connection reset")).is_ok());
        assert!(classify(tonic::Status::internal("h2 protocol error")).is_ok());
        let erased = classify(tonic::Status::aborted(
            "the tenant's minutes were erased while this ran",
        ));
        assert!(
            erased.is_err_and(|e| e.to_string().contains("erased")),
            "an erased session must end the client, not reconnect"
        );
        assert!(classify(tonic::Status::internal("the worker failed (ref 1a2b3c4d)")).is_err());
        assert!(classify(tonic::Status::invalid_argument("bad rate")).is_err());
    }
}
