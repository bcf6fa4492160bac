//! `kiroku admin dead-letters`: the messages the audit and storage services' durable
//! consumers set aside (`DEADLETTER`, see `kiroku_core::nats::consume_durable`), listed
//! with why, and replayed to where they came from once the cause is fixed (service
//! operator; reads NATS directly).

use anyhow::{Context as _, Result};
use async_nats::jetstream;
use kiroku_core::nats::{
    DEAD_DELIVERIES_HEADER, DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER, DEFAULT_NATS_URL,
    DEFAULT_ROOT, Layout,
};

use crate::runtime;

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    #[arg(long, env = "KIROKU_NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats: String,
    /// Cluster root of the streams.
    #[arg(long, env = "KIROKU_CLUSTER", default_value = DEFAULT_ROOT)]
    pub cluster: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Every message set aside: sequence, consumer, original subject, deliveries, reason.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Publishes messages again to their original subject and removes them from the
    /// dead-letter stream (stores are idempotent: one stored meanwhile is not doubled).
    Replay {
        #[command(flatten)]
        target: Target,
        /// Only this message (its sequence in `list`); default: every one.
        #[arg(long)]
        seq: Option<u64>,
    },
}

/// One dead letter as `list` shows it.
struct Letter {
    seq: u64,
    consumer: String,
    subject: String,
    deliveries: String,
    reason: String,
    payload: bytes::Bytes,
}

async fn letters(js: &jetstream::Context, layout: &Layout) -> Result<Vec<Letter>> {
    let stream = js
        .get_stream(layout.dead_letter_stream())
        .await
        .context("opening the dead-letter stream")?;
    let mut letters = Vec::new();
    let mut next = 1u64;
    loop {
        let message = match stream
            .direct_get_next_for_subject(format!("{}.dead.>", layout.root()), Some(next))
            .await
        {
            Ok(message) => message,
            Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                break;
            }
            Err(error) => return Err(error).context("reading the dead-letter stream"),
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        letters.push(Letter {
            seq: message.sequence,
            consumer: message
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string(),
            subject: header(DEAD_SUBJECT_HEADER),
            deliveries: header(DEAD_DELIVERIES_HEADER),
            reason: header(DEAD_REASON_HEADER),
            payload: message.payload.clone(),
        });
        next = message.sequence + 1;
    }
    Ok(letters)
}

pub fn run(command: DeadLetterCommand) -> Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let target = match &command {
            DeadLetterCommand::List { target } | DeadLetterCommand::Replay { target, .. } => target,
        };
        let layout = Layout::new(&target.cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = kiroku_core::nats::connect(&target.nats, "kiroku-admin")
            .await
            .with_context(|| format!("connecting to NATS at {}", target.nats))?;
        let js = jetstream::new(client);
        let letters = letters(&js, &layout).await?;
        match command {
            DeadLetterCommand::List { .. } => {
                if letters.is_empty() {
                    println!("no dead letters");
                }
                for l in &letters {
                    println!(
                        "{:>6}  {:<8} {}  deliveries {}  {}",
                        l.seq, l.consumer, l.subject, l.deliveries, l.reason
                    );
                }
            }
            DeadLetterCommand::Replay { seq, .. } => {
                let stream = js.get_stream(layout.dead_letter_stream()).await?;
                let mut replayed = 0;
                for l in letters.iter().filter(|l| seq.is_none_or(|s| s == l.seq)) {
                    if l.subject.is_empty() {
                        eprintln!("  {}: no original subject, left in place", l.seq);
                        continue;
                    }
                    js.publish(l.subject.clone(), l.payload.clone())
                        .await
                        .with_context(|| format!("replaying {}", l.seq))?
                        .await
                        .with_context(|| format!("replaying {}: not stored", l.seq))?;
                    stream
                        .delete_message(l.seq)
                        .await
                        .with_context(|| format!("removing {} after its replay", l.seq))?;
                    replayed += 1;
                }
                println!("replayed {replayed} dead letters");
            }
        }
        Ok(())
    })
}
