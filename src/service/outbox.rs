//! Scale-out mode: hands audit jobs from the store to the queue.
//!
//! A job row is written in the same transaction as its recording (nothing is lost if `serve`
//! dies right after answering), and this outbox publishes it once the recording has stored
//! bytes: a live upload's job goes out with its first bytes, so a worker audits it while it
//! arrives. The message id is the job's (`Nats-Msg-Id`), so a publish repeated after a crash
//! between the queue's acknowledgement and `mark_published` is dropped by the queue as a
//! duplicate instead of auditing twice.

use std::time::Duration;

use super::Shared;
use crate::queue::JobQueue;

/// What a worker is told: which job, for which recording (everything else is in the store).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobMessage {
    pub job: i64,
    pub recording: String,
}

impl JobMessage {
    /// The queue's deduplication id of this job.
    pub fn msg_id(&self) -> String {
        format!("job-{}-{}", self.job, self.recording)
    }
}

/// How often the outbox looks for publishable jobs when nothing wakes it.
const SWEEP: Duration = Duration::from_millis(500);

pub fn start(state: Shared, queue: JobQueue) {
    tokio::spawn(async move {
        loop {
            // Woken by stored bytes, or by the sweep (jobs of a previous run, missed wake-ups).
            let _ = tokio::time::timeout(SWEEP, state.outbox.notified()).await;
            loop {
                let jobs = match state.db(|s| s.unpublished_jobs(64)).await {
                    Ok(j) => j,
                    Err(e) => {
                        tracing::warn!("outbox: reading jobs: {}", e.message);
                        break;
                    }
                };
                if jobs.is_empty() {
                    break;
                }
                let mut failed = false;
                for job in jobs {
                    let msg = JobMessage {
                        job: job.id,
                        recording: job.recording_id.clone(),
                    };
                    let payload = match serde_json::to_vec(&msg) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(recording = %job.recording_id, "outbox: {e}");
                            continue;
                        }
                    };
                    match queue.publish(&msg.msg_id(), payload.into()).await {
                        Ok(p) => {
                            let id = job.id;
                            if let Err(e) = state.db(move |s| s.mark_published(id)).await {
                                tracing::warn!("outbox: marking job published: {}", e.message);
                            }
                            state.metrics.jobs_published.add(1);
                            tracing::info!(recording = %job.recording_id, duplicate = p.duplicate, "job queued");
                        }
                        Err(e) => {
                            // The queue is down: the job stays in the outbox for the next sweep.
                            tracing::warn!(recording = %job.recording_id, "outbox: publishing: {e}");
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    tokio::time::sleep(SWEEP).await;
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_messages_round_trip_and_have_one_id_per_job() {
        let m = JobMessage {
            job: 7,
            recording: "rec-abc".into(),
        };
        let back: JobMessage = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.msg_id(), "job-7-rec-abc");
    }
}
