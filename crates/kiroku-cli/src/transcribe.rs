//! `kiroku transcribe FILE`: decode a WAV file, run the engine, print the transcript.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use kiroku_audio::{AudioError, decode_wav};
use kiroku_core::transcript::Format;
use kiroku_engine::engine::EngineError;
use kiroku_engine::{Engine, EngineConfig, TranscribeOptions};

use crate::InputError;
use crate::config::default_model_path;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAV file (PCM 8/16/24/32-bit or float, 1–8 channels, 8–192 kHz).
    file: PathBuf,
    /// Output format.
    #[arg(long, short, default_value = "txt")]
    format: Format,
    /// Model: an installed model's name (tiny.en, base, base-q8_0, …: `kiroku model
    /// list`) or the path of a ggml file [default: tiny.en].
    #[arg(long, value_name = "NAME|PATH")]
    model: Option<String>,
    /// Beam width; 1 decodes greedily.
    #[arg(long, default_value_t = 1)]
    beam: u32,
    /// Inference threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Spoken language (ISO 639-1, or "auto" to detect with a multilingual model).
    #[arg(long)]
    language: Option<String>,
    /// Vocabulary or context that biases recognition, e.g. names and jargon.
    #[arg(long)]
    prompt: Option<String>,
    /// Decode the file whole, in Whisper's own 30 s windows, instead of cut at its
    /// pauses into pieces decoded with the audio before them (as live minutes are; see
    /// docs/streaming.md, "Files"). Local only.
    #[arg(long, conflicts_with = "remote")]
    whole: bool,
    /// Encoder context in 20 ms frames (64–1500) for a whole-file decode (implies
    /// --whole: pieces size their own); smaller is faster on short audio.
    #[arg(long)]
    audio_ctx: Option<u32>,
    /// Voice activity detector that cuts the file at its pauses: energy, silero (`kiroku
    /// model fetch --model silero-vad`; see docs/streaming.md) or auto (silero when
    /// installed).
    #[arg(long, default_value = "energy", value_parser = ["auto", "silero", "energy"])]
    vad: String,
    /// Use flash attention (less memory; slower on CPU). Implies --whole: whisper.cpp
    /// has no DTW word times with it, and cutting the file into pieces needs them.
    #[arg(long)]
    flash_attn: bool,
    /// Print load and decode times and the real-time factor to stderr.
    #[arg(long)]
    timings: bool,
    /// Send the file to a Kiroku cluster instead of decoding here: the gateway URL
    /// [default when given without a value: http://127.0.0.1:50051]. Signs in with the
    /// cached login or KIROKU_API_KEY. Files up to 64 MiB.
    #[arg(long, num_args = 0..=1, default_missing_value = "http://127.0.0.1:50051")]
    remote: Option<String>,
    /// The meeting the file belongs to (remote only; its consent policy applies).
    #[arg(long, requires = "remote")]
    meeting: Option<String>,
}

/// The gateway's limit on one file (`Limits::max_file_bytes`).
const MAX_REMOTE_BYTES: u64 = 64 * 1024 * 1024;

fn remote(args: &Args, gateway: &str) -> Result<()> {
    use kiroku_proto::transcribe::v1 as api;
    let size = std::fs::metadata(&args.file)
        .map_err(|e| InputError(format!("cannot open {}: {e}", args.file.display())))?
        .len();
    if size > MAX_REMOTE_BYTES {
        return Err(InputError(format!(
            "{} is {size} bytes; the gateway takes files up to {MAX_REMOTE_BYTES} bytes",
            args.file.display()
        ))
        .into());
    }
    let wav = std::fs::read(&args.file)
        .map_err(|e| InputError(format!("cannot read {}: {e}", args.file.display())))?;
    let request = api::TranscribeRequest {
        source: Some(api::transcribe_request::Source::Wav(wav)),
        options: Some(api::RecognitionOptions {
            language: args.language.clone().unwrap_or_default(),
            prompt: args.prompt.clone().unwrap_or_default(),
            beam_size: args.beam,
            word_timestamps: true,
            ..Default::default()
        }),
        meeting_id: args.meeting.clone().unwrap_or_default(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let response = runtime.block_on(async {
        let credential = crate::credentials::credential().await?;
        let channel = tonic::transport::Endpoint::from_shared(gateway.to_string())
            .map_err(|_| InputError(format!("gateway URL {gateway:?} is not valid")))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {gateway}: {e}"))?;
        let mut client = api::transcription_client::TranscriptionClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(MAX_REMOTE_BYTES as usize + 64 * 1024);
        let mut request = tonic::Request::new(request);
        crate::credentials::attach(request.metadata_mut(), &credential);
        client.transcribe(request).await.map_err(|status| {
            let message = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::ResourceExhausted => anyhow::Error::new(InputError(message)),
                _ => anyhow::anyhow!(message),
            }
        })
    })?;
    let response = response.into_inner();
    let transcript = kiroku_core::transcript::Transcript {
        duration_ms: response.duration_ms,
        text: response.text,
        language: response.language,
        segments: response
            .segments
            .into_iter()
            .map(crate::stream::to_segment)
            .collect(),
    };
    print!("{}", transcript.render(args.format));
    if args.timings
        && let Some(stats) = response.stats
    {
        eprintln!(
            "timings: audio_s={:.2} processing_ms={} rtf={:.4} model={}",
            transcript.duration_ms as f64 / 1000.0,
            stats.processing_ms,
            stats.real_time_factor,
            stats.model
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if let Some(gateway) = args.remote.clone() {
        return remote(&args, &gateway);
    }
    let started = Instant::now();
    let file = std::fs::File::open(&args.file)
        .map_err(|e| InputError(format!("cannot open {}: {e}", args.file.display())))?;
    let pcm = decode_wav(std::io::BufReader::new(file)).map_err(|e| match e {
        AudioError::Io(io) => {
            anyhow::Error::new(io).context(format!("reading {}", args.file.display()))
        }
        other => InputError(format!("{}: {other}", args.file.display())).into(),
    })?;
    let decoded = started.elapsed();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores);
    if threads == 0 {
        return Err(InputError("--threads must be at least 1".into()).into());
    }
    if threads > cores {
        tracing::warn!(
            threads,
            cores,
            "more inference threads than cores: ggml threads spin, expect a large slowdown"
        );
    }
    let model_path = match &args.model {
        Some(model) => crate::model::resolve(model)?,
        None => default_model_path(),
    };
    let mut config = EngineConfig::new(model_path);
    config.threads = threads;
    config.flash_attn = args.flash_attn;
    let engine = Engine::load(&config).map_err(engine_error)?;
    let loaded = started.elapsed();

    let bar = crate::progress_bar(100, "transcribing");
    let progress_bar = bar.clone();
    let options = TranscribeOptions {
        language: args.language,
        beam_size: args.beam.max(1),
        prompt: args.prompt,
        audio_ctx: args.audio_ctx,
        ..Default::default()
    };
    let duration_ms = pcm.duration_ms();
    let progress: kiroku_engine::engine::ProgressFn =
        Box::new(move |percent| progress_bar.set_position(percent.clamp(0, 100) as u64));
    // With --flash-attn, `transcribe_file` decodes whole by itself (no DTW word times).
    let transcript = if args.whole || args.audio_ctx.is_some() {
        engine.transcribe(pcm.samples, options, Some(progress))
    } else {
        let vad = kiroku_engine::vad::choose(&args.vad, &crate::config::model_dir())
            .map_err(engine_error)?;
        kiroku_engine::file::transcribe_file(&engine, &pcm.samples, options, vad, Some(progress))
    }
    .map_err(engine_error)?;
    bar.finish_and_clear();
    let done = started.elapsed();
    print!("{}", transcript.render(args.format));
    if args.timings {
        let decode_s = (done - loaded).as_secs_f64();
        eprintln!(
            "timings: audio_s={:.2} wav_decode_ms={} model_load_ms={} transcribe_ms={} rtf={:.4} threads={threads}",
            duration_ms as f64 / 1000.0,
            decoded.as_millis(),
            (loaded - decoded).as_millis(),
            (done - loaded).as_millis(),
            decode_s / (duration_ms as f64 / 1000.0),
        );
    }
    Ok(())
}

/// Engine errors caused by the user's choices exit with 2; failures inside exit with 1.
fn engine_error(error: EngineError) -> anyhow::Error {
    match error {
        EngineError::ModelMissing(_)
        | EngineError::ModelLoad(_)
        | EngineError::InvalidOption(_)
        | EngineError::VadLoad(..) => InputError(error.to_string()).into(),
        other => anyhow::Error::new(other).context("transcription failed"),
    }
}
