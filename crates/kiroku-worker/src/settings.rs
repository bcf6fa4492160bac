//! `kiroku serve worker`'s settings: each flag with its environment variable and its
//! default, turned into a [`WorkerConfig`] by [`WorkerSettings::config`]. Which files
//! `--model` and `--vad` name is the caller's to resolve (model names and the model
//! folder belong to the command line), handed in as the engine and the detector.

use kiroku_core::settings::{CommonSettings, InvalidSetting, seconds};
use kiroku_engine::vad::Vad;

use crate::{EngineKind, WorkerConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Model: an installed model's name (tiny.en, base, base-q8_0, …: `kiroku model
    /// list`) or the path of a ggml file [default: tiny.en].
    #[arg(long, env = "KIROKU_MODEL", value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// A second model for the minutes: utterance finals and files are decoded with it,
    /// captions with --model (e.g. tiny.en captions, base finals). Default: --model for
    /// everything. See docs/streaming.md, "Two models".
    #[arg(long, env = "KIROKU_FINAL_MODEL", value_name = "NAME|PATH")]
    pub final_model: Option<String>,
    /// Inference threads across all slots [default: all cores].
    #[arg(long, env = "KIROKU_WORKER_THREADS")]
    pub threads: Option<usize>,
    /// Decodes at once (alone, a decode gets every thread; under load each gets
    /// threads/slots).
    #[arg(long, env = "KIROKU_WORKER_SLOTS", default_value_t = 1)]
    pub slots: usize,
    /// Sessions this worker runs at once.
    #[arg(long, env = "KIROKU_WORKER_SESSIONS",
          default_value_t = crate::DEFAULT_MAX_SESSIONS)]
    pub sessions: usize,
    /// Seconds without a progress ack before a job moves to another worker.
    #[arg(long, env = "KIROKU_WORKER_ACK_WAIT_S",
          default_value_t = crate::DEFAULT_ACK_WAIT.as_secs_f64())]
    pub ack_wait_s: f64,
    /// Below --sessions, take a new session only while no running live stream's
    /// caption lag (peak of the last 10 s) is over this many seconds, and the newest
    /// session has run 3 s; otherwise the job waits for another worker. 0: only
    /// --sessions.
    #[arg(long, env = "KIROKU_WORKER_ADMIT_MAX_LAG_S",
          default_value_t = crate::DEFAULT_ADMIT_MAX_LAG.as_secs_f64())]
    pub admit_max_lag_s: f64,
    /// Admin HTTP address (/healthz, /readyz, /metrics); port 0 picks a free one.
    #[arg(
        long,
        env = "KIROKU_WORKER_ADMIN_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub admin_listen: String,
    /// Streaming policy: decode again after this much new audio (ms). Shorter commits
    /// sooner and costs more CPU per stream.
    #[arg(long, env = "KIROKU_WORKER_STEP_MS")]
    pub step_ms: Option<u32>,
    /// Streaming policy: show a word as a caption without waiting for a second decode
    /// to agree once a decode heard this much audio after it (ms; 0: agreement only;
    /// always off in Japanese and Chinese). Under load, when decodes come seconds apart,
    /// it keeps captions from lagging by two decodes, and an utterance's last decoded
    /// words are shown when it ends, not with its final (0 turns both off); the minutes
    /// (utterance finals) do not depend on it.
    #[arg(long, env = "KIROKU_WORKER_CAPTION_SETTLE_MS",
          default_value_t = kiroku_engine::streaming::PolicyConfig::default().settle_ms)]
    pub caption_settle_ms: u32,
    /// Voice activity detector that finds the pauses ending utterances: energy (a level
    /// threshold, which background noise defeats), silero (Silero VAD, `kiroku model
    /// fetch --model silero-vad`; finds pauses in noise, but lost sentences of a clean
    /// meeting's minutes: docs/streaming.md) or auto (silero when installed).
    #[arg(long, env = "KIROKU_VAD", default_value = "energy",
          value_parser = ["auto", "silero", "energy"])]
    pub vad: String,
    /// `whisper`, or `null-benchmark`: BENCHMARK ONLY, no inference (plumbing runs).
    #[arg(long, default_value = "whisper")]
    pub engine: String,
    /// The worker pool this worker serves: the gateways' KIROKU_SESSION_ROUTES send
    /// sessions to pools by language (e.g. tiny.en workers in `english`, base workers
    /// in `multilingual`).
    #[arg(long, env = "KIROKU_WORKER_POOL", default_value = kiroku_core::nats::DEFAULT_POOL)]
    pub pool: String,
}

impl WorkerSettings {
    /// The worker's configuration with this engine and voice activity detector, checked
    /// ([`WorkerConfig::validate`]).
    pub fn config(&self, engine: EngineKind, vad: Vad) -> Result<WorkerConfig, InvalidSetting> {
        let common = &self.common;
        let mut config = WorkerConfig::new(common.nats.clone(), common.layout()?, engine);
        config.retention = common.retention();
        config.resume_window = common.resume_window();
        config.max_sessions = self.sessions;
        kiroku_core::nats::check_token("pool", &self.pool).map_err(|e| InvalidSetting {
            setting: "--pool / KIROKU_WORKER_POOL",
            problem: e.to_string(),
        })?;
        config.pool = self.pool.clone();
        config.ack_wait = seconds("--ack-wait-s / KIROKU_WORKER_ACK_WAIT_S", self.ack_wait_s)?;
        config.admit_max_lag = seconds(
            "--admit-max-lag-s / KIROKU_WORKER_ADMIT_MAX_LAG_S",
            self.admit_max_lag_s,
        )?;
        if let Some(step_ms) = self.step_ms {
            config.policy.step_ms = step_ms;
        }
        config.policy.settle_ms = self.caption_settle_ms;
        config.validate()?;
        config.policy.vad = vad;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn config(args: &[&str]) -> Result<WorkerConfig, InvalidSetting> {
        kiroku_core::settings::parse::<WorkerSettings>(args)
            .expect("flags parse")
            .config(EngineKind::NullForBenchmarks, Vad::Energy)
    }

    #[test]
    fn flags_reach_the_configuration_and_bad_ones_name_their_flag() {
        let config =
            config(&["--sessions", "6", "--ack-wait-s", "2.5", "--step-ms", "500"]).expect("valid");
        assert_eq!(config.max_sessions, 6);
        assert_eq!(config.ack_wait, std::time::Duration::from_millis(2500));
        assert_eq!(config.policy.step_ms, 500);
        let settle = self::config(&["--caption-settle-ms", "1500"]).expect("valid");
        assert_eq!(settle.policy.settle_ms, 1500);
        let error = self::config(&["--caption-settle-ms", "20000"]).expect_err("too long");
        assert!(error.setting.starts_with("--caption-settle-ms"));
        let defaults = self::config(&[]).expect("the defaults are valid");
        assert_eq!(defaults.max_sessions, crate::DEFAULT_MAX_SESSIONS);

        let error = self::config(&["--ack-wait-s=-1"]).expect_err("negative");
        assert_eq!(error.setting, "--ack-wait-s / KIROKU_WORKER_ACK_WAIT_S");
        let error = self::config(&["--pool", "a.b"]).expect_err("a pool is one token");
        assert_eq!(error.setting, "--pool / KIROKU_WORKER_POOL");
        let error = self::config(&["--sessions", "0"]).expect_err("no sessions");
        assert!(error.setting.starts_with("--sessions"));
    }
}
