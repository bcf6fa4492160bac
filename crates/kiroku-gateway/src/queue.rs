//! A live session waiting for a worker.
//!
//! A worker takes a session job only while it has room (`--sessions`, and streams that
//! keep up: `kiroku_worker::has_headroom`); otherwise the job waits in `SESSIONS` for
//! another worker, and the gateway keeps acknowledging the client's audio. The worker
//! that takes a session says so on the session's core NATS subject
//! (`TranscriptResult.worker_running`), at the start and in answer to every presence
//! message. Until then the gateway counts: after [`NOTICE_AFTER`] the client gets its
//! `SessionInfo` again with `queued` set (and once more with `queued` false when a
//! worker takes it); a new session still waiting after the queue timeout is refused
//! with `RESOURCE_EXHAUSTED` and `RetryInfo`, and its job and audio are withdrawn so no
//! worker transcribes a stream its client was told had failed. A resumed session is
//! never refused: it belongs to a meeting already under way (after a worker crash its
//! job waits for the ack timeout), so it is only reported as queued.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::Shared;

/// How long a session waits for a worker before its client is told it is queued.
pub(crate) const NOTICE_AFTER: Duration = Duration::from_secs(2);

/// The `RetryInfo` of a stream refused for want of a worker.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What is due for a session no worker has taken yet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing yet.
    Wait,
    /// Tell the client it is queued.
    TellQueued,
    /// Refuse the stream.
    Refuse,
}

/// Whether a worker has taken the session, and what the client was told.
#[derive(Debug)]
pub(crate) struct WorkerWait {
    taken: bool,
    told: bool,
    notice_at: Instant,
    /// `None`: never refused (a resumed session).
    refuse_at: Option<Instant>,
}

impl WorkerWait {
    pub(crate) fn new(now: Instant, queue_timeout: Duration, refusable: bool) -> Self {
        Self {
            taken: false,
            told: false,
            notice_at: now + NOTICE_AFTER,
            refuse_at: refusable.then(|| now + queue_timeout),
        }
    }

    /// When the next step is due; `None` once a worker took the session.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        if self.taken {
            return None;
        }
        match (self.told, self.refuse_at) {
            (false, Some(refuse_at)) => Some(self.notice_at.min(refuse_at)),
            (false, None) => Some(self.notice_at),
            (true, refuse_at) => refuse_at,
        }
    }

    /// The step due at `now` (each notice is given once).
    pub(crate) fn due(&mut self, now: Instant) -> Step {
        if self.taken {
            return Step::Wait;
        }
        if self.refuse_at.is_some_and(|at| now >= at) {
            return Step::Refuse;
        }
        if !self.told && now >= self.notice_at {
            self.told = true;
            return Step::TellQueued;
        }
        Step::Wait
    }

    /// A worker said it runs the session: `true` when the client, told it was queued,
    /// must now be told it no longer is.
    pub(crate) fn taken(&mut self) -> bool {
        let tell = self.told && !self.taken;
        self.taken = true;
        tell
    }
}

/// The refusal of a new session no worker took within the queue timeout, after its job
/// and audio are withdrawn (best effort: a job a worker fetched at this very moment
/// runs, finds no audio and closes when no client comes back).
pub(crate) async fn refuse(shared: &Shared, tenant: &str, session: &str, job_seq: u64) -> Status {
    let layout = &shared.config.layout;
    let queue_timeout = shared.config.queue_timeout;
    match shared.js.get_stream(layout.sessions_stream()).await {
        Ok(sessions) => {
            if let Err(error) = sessions.delete_message(job_seq).await {
                tracing::debug!(%error, "withdrawing the queued job");
            }
        }
        Err(error) => tracing::warn!(%error, "withdrawing the queued job: no SESSIONS"),
    }
    if let Err(error) = shared
        .audio
        .purge()
        .filter(layout.audio_subject(tenant, session))
        .await
    {
        tracing::warn!(%error, "discarding the refused session's audio");
    }
    tracing::info!(
        queue_timeout_s = queue_timeout.as_secs(),
        "no worker took the session: refused"
    );
    kiroku_core::status::resource_exhausted(
        format!(
            "no transcription worker was free for {} s (every worker is at capacity); \
             the session and its audio were discarded: open a new stream",
            queue_timeout.as_secs()
        ),
        RETRY_AFTER,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_waiting_session_is_told_once_then_refused() {
        let start = Instant::now();
        let mut wait = WorkerWait::new(start, TIMEOUT, true);
        assert_eq!(wait.next_at(), Some(start + NOTICE_AFTER));
        assert_eq!(wait.due(start + Duration::from_secs(1)), Step::Wait);
        assert_eq!(wait.due(start + NOTICE_AFTER), Step::TellQueued);
        assert_eq!(wait.due(start + NOTICE_AFTER), Step::Wait, "told once");
        assert_eq!(wait.next_at(), Some(start + TIMEOUT));
        assert_eq!(wait.due(start + TIMEOUT), Step::Refuse);
    }

    #[test]
    fn a_worker_ends_the_wait_and_is_reported_only_after_a_queued_notice() {
        let start = Instant::now();
        let mut quick = WorkerWait::new(start, TIMEOUT, true);
        assert!(!quick.taken(), "never told queued: nothing to take back");
        assert_eq!(quick.next_at(), None);
        assert_eq!(
            quick.due(start + TIMEOUT),
            Step::Wait,
            "taken: never refused"
        );

        let mut slow = WorkerWait::new(start, TIMEOUT, true);
        assert_eq!(slow.due(start + NOTICE_AFTER), Step::TellQueued);
        assert!(slow.taken(), "told queued: tell it is taken");
        assert!(!slow.taken(), "once");
    }

    #[test]
    fn a_resumed_session_is_reported_queued_but_never_refused() {
        let start = Instant::now();
        let mut wait = WorkerWait::new(start, TIMEOUT, false);
        assert_eq!(wait.due(start + NOTICE_AFTER), Step::TellQueued);
        assert_eq!(wait.next_at(), None, "nothing more is due");
        assert_eq!(wait.due(start + TIMEOUT * 10), Step::Wait);
    }

    #[test]
    fn a_queue_timeout_shorter_than_the_notice_refuses_first() {
        let start = Instant::now();
        let short = Duration::from_secs(1);
        let mut wait = WorkerWait::new(start, short, true);
        assert_eq!(wait.next_at(), Some(start + short));
        assert_eq!(wait.due(start + short), Step::Refuse);
    }
}
