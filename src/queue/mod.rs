//! The scale-out job queue: one JetStream work-queue stream, one durable pull consumer.
//!
//! `serve --queue nats://...` publishes one job per recording ([`JobQueue::publish`]); any
//! number of `worker` processes pull them ([`JobQueue::next`]), audit, store the verdict and
//! only then [`Delivery::ack`]. A worker that dies mid-job never acks, so the server hands the
//! job to another worker after `ack_wait`: delivery is at least once, and the caller makes the
//! verdict write idempotent. The message id (the recording id) lets the server drop a second
//! publish of the same job within `duplicate_window`, so a retried upload does not audit twice.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::PublishErrorKind,
    stream::{self, RetentionPolicy, StorageType},
    AckKind,
};
use bytes::Bytes;
use futures_util::StreamExt;

/// How long `connect` keeps retrying the stream/consumer set-up (server starting, JetStream
/// not ready yet) before it reports the last failure.
const SETUP_RETRY: Duration = Duration::from_secs(30);
/// How long `publish` keeps retrying a transient failure (server restarting) before an error.
const PUBLISH_RETRY: Duration = Duration::from_secs(30);
/// Extra time `next` waits past the pull request's expiry for the server's end-of-batch
/// status, so a dead server cannot make it hang.
const PULL_GRACE: Duration = Duration::from_secs(1);
/// The server drops pull requests that expire in under a millisecond or so; keep a floor.
const MIN_PULL_WAIT: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid queue configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream stream {stream} / consumer {consumer} on {url}: {detail}")]
    Setup {
        url: String,
        stream: String,
        consumer: String,
        detail: String,
    },
    #[error("job message id must not be empty (it is what deduplicates a job)")]
    EmptyMsgId,
    #[error("cannot publish job {msg_id} to stream {stream}: {source}")]
    Publish {
        stream: String,
        msg_id: String,
        #[source]
        source: jetstream::context::PublishError,
    },
    #[error("cannot pull a job from consumer {consumer} of stream {stream}: {source}")]
    Pull {
        stream: String,
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("job from stream {stream} has no JetStream metadata: {detail}")]
    Metadata { stream: String, detail: String },
    #[error("cannot read the state of consumer {consumer} of stream {stream}: {source}")]
    Depth {
        stream: String,
        consumer: String,
        #[source]
        source: jetstream::context::ConsumerInfoError,
    },
    #[error("cannot {action} job {sequence} of stream {stream}: {source}")]
    Ack {
        action: &'static str,
        stream: String,
        sequence: u64,
        #[source]
        source: async_nats::Error,
    },
}

/// Where the queue lives and how it redelivers. [`QueueConfig::new`] gives the production
/// defaults; tests shorten `ack_wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// One or more server URLs, comma-separated (`nats://host:4222`).
    pub url: String,
    pub stream: String,
    /// The one subject the stream captures; every job is published to it.
    pub subject: String,
    /// The durable consumer all workers share (a work-queue stream allows only one
    /// unfiltered consumer, and sharing it is what spreads jobs over workers).
    pub consumer: String,
    /// How long a worker may hold a job without ack or progress before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries per job before the server gives up on it; -1 = unlimited.
    pub max_deliver: i64,
    /// How long the server remembers message ids for deduplication.
    pub duplicate_window: Duration,
}

impl QueueConfig {
    pub fn new(url: &str) -> Self {
        QueueConfig {
            url: url.to_string(),
            stream: "CLASSGUARD_JOBS".to_string(),
            subject: "classguard.jobs".to_string(),
            consumer: "audit-workers".to_string(),
            ack_wait: Duration::from_secs(60),
            max_deliver: 4,
            duplicate_window: Duration::from_secs(24 * 3600),
        }
    }

    /// Rejects what the server would reject later with a vaguer message (or accept and
    /// misbehave: a wildcard subject cannot be published to, a zero ack_wait means the
    /// server default).
    fn validate(&self) -> Result<(), QueueError> {
        let bad = |m: String| Err(QueueError::Config(m));
        if self.url.trim().is_empty() {
            return bad("empty NATS URL".into());
        }
        self.server_addrs()?;
        for (what, name) in [("stream", &self.stream), ("consumer", &self.consumer)] {
            if !valid_name(name) {
                return bad(format!(
                    "{what} name {name:?} must be non-empty without '.', '*', '>', '/', '\\' or whitespace"
                ));
            }
        }
        if !valid_subject(&self.subject) {
            return bad(format!(
                "subject {:?} must be dot-separated non-empty tokens without wildcards or whitespace",
                self.subject
            ));
        }
        if self.ack_wait < Duration::from_millis(100) {
            return bad(format!("ack_wait {:?} is under 100 ms", self.ack_wait));
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return bad(format!(
                "max_deliver {} must be positive or -1 (unlimited)",
                self.max_deliver
            ));
        }
        if self.duplicate_window.is_zero() {
            return bad(
                "duplicate_window must not be zero (it would disable deduplication)".into(),
            );
        }
        Ok(())
    }

    /// The comma-separated server list (the client itself parses one address per string).
    fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, QueueError> {
        self.url
            .split(',')
            .map(|part| {
                async_nats::ServerAddr::from_str(part.trim())
                    .map_err(|e| QueueError::Config(format!("NATS URL {:?}: {e}", redacted(part))))
            })
            .collect()
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        }
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        }
    }
}

/// The URL list for logs and errors: credentials (`nats://user:pass@host`) replaced.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let part = part.trim();
            let (scheme, rest) = part.split_once("://").unwrap_or(("", part));
            let shown = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_string(),
            };
            if scheme.is_empty() {
                shown
            } else {
                format!("{scheme}://{shown}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A stream or consumer name as the server accepts it (it becomes a subject token).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// A literal subject: publishing to a wildcard is not possible.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
}

/// Delay before retry `attempt` (0 = right away): 50 ms doubling to a 2 s cap, so a restarted
/// server is found again within about 2 s without hammering it while it is down.
fn backoff(attempt: usize) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let exp = (attempt - 1).min(6) as u32;
    Duration::from_millis(50u64 << exp).min(Duration::from_secs(2))
}

/// Whether a publish failure may go away by itself (server restarting, connection being
/// re-established, JetStream not ready: "no responders" reads as StreamNotFound). A message
/// that is too large never will.
fn publish_is_transient(kind: PublishErrorKind) -> bool {
    !matches!(
        kind,
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}

/// The queue handle: cheap to clone, one connection shared by all clones.
#[derive(Clone)]
pub struct JobQueue {
    js: jetstream::Context,
    consumer: PullConsumer,
    cfg: Arc<QueueConfig>,
}

/// The server's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The server already held a message with this id (within `duplicate_window`), so
    /// nothing new was stored. Also true when an earlier attempt of the same `publish` call
    /// reached the server but its answer was lost to a reconnect.
    pub duplicate: bool,
    /// Stream sequence of the stored message (of the original, for a duplicate).
    pub sequence: u64,
}

/// Messages not yet delivered, and delivered but not yet acked (being worked on, or
/// waiting for redelivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub pending: u64,
    pub ack_pending: u64,
}

impl JobQueue {
    /// Connects and creates-or-updates the stream and the durable pull consumer. The client
    /// retries the initial connect and every reconnect forever (a worker may start before
    /// NATS); the set-up itself is retried for up to 30 s, then its last failure is
    /// returned. Safe to call from several processes at once: creating an identical stream
    /// or consumer is a no-op on the server, and a lost race is retried as an update.
    pub async fn connect(cfg: &QueueConfig) -> Result<JobQueue, QueueError> {
        cfg.validate()?;
        let url = redacted(&cfg.url);
        let events_url = url.clone();
        let client = async_nats::ConnectOptions::new()
            .name("classguard")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(backoff)
            .event_callback(move |event| {
                let url = events_url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(%url, "queue connected"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%url, "queue disconnected; reconnecting")
                        }
                        other => tracing::warn!(%url, event = %other, "queue connection event"),
                    }
                }
            })
            .connect(cfg.server_addrs()?)
            .await
            .map_err(|source| QueueError::Connect {
                url: url.clone(),
                source,
            })?;
        let js = jetstream::new(client);

        let deadline = Instant::now() + SETUP_RETRY;
        let mut attempt = 0;
        let consumer = loop {
            match Self::set_up(&js, cfg).await {
                Ok(consumer) => break consumer,
                Err(detail) => {
                    attempt += 1;
                    let delay = backoff(attempt);
                    if Instant::now() + delay >= deadline {
                        return Err(QueueError::Setup {
                            url,
                            stream: cfg.stream.clone(),
                            consumer: cfg.consumer.clone(),
                            detail,
                        });
                    }
                    tracing::debug!(%url, %detail, attempt, "queue set-up failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        Ok(JobQueue {
            js,
            consumer,
            cfg: Arc::new(cfg.clone()),
        })
    }

    async fn set_up(js: &jetstream::Context, cfg: &QueueConfig) -> Result<PullConsumer, String> {
        js.create_or_update_stream(cfg.stream_config())
            .await
            .map_err(|e| format!("stream: {e}"))?;
        js.create_consumer_on_stream(cfg.consumer_config(), cfg.stream.as_str())
            .await
            .map_err(|e| format!("consumer: {e}"))
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// Publishes one job with header `Nats-Msg-Id: msg_id` and waits for the server's PubAck
    /// (only then is the job durable). Transient failures are retried for up to 30 s; a
    /// retry cannot store the job twice, the id deduplicates it.
    pub async fn publish(&self, msg_id: &str, payload: Bytes) -> Result<Published, QueueError> {
        if msg_id.is_empty() {
            return Err(QueueError::EmptyMsgId);
        }
        let deadline = Instant::now() + PUBLISH_RETRY;
        let mut attempt = 0;
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
            let result = match self
                .js
                .publish_with_headers(self.cfg.subject.clone(), headers, payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) => {
                    return Ok(Published {
                        duplicate: ack.duplicate,
                        sequence: ack.sequence,
                    })
                }
                Err(source) => {
                    attempt += 1;
                    let delay = backoff(attempt);
                    if !publish_is_transient(source.kind()) || Instant::now() + delay >= deadline {
                        return Err(QueueError::Publish {
                            stream: self.cfg.stream.clone(),
                            msg_id: msg_id.to_string(),
                            source,
                        });
                    }
                    tracing::debug!(msg_id, error = %source, attempt, "job publish failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Pulls at most one job, waiting up to `wait` for one; `Ok(None)` when none came. While
    /// the server is down this returns `Ok(None)` or an error after about `wait` + 1 s; once
    /// the connection is back the next call works again (the pull is a fresh request each
    /// time, nothing is left stuck).
    pub async fn next(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let wait = wait.max(MIN_PULL_WAIT);
        let pull_error = |source: async_nats::Error| QueueError::Pull {
            stream: self.cfg.stream.clone(),
            consumer: self.cfg.consumer.clone(),
            source,
        };
        let pulled = tokio::time::timeout(wait + PULL_GRACE, async {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| pull_error(Box::new(e)))?;
            batch.next().await.transpose().map_err(pull_error)
        })
        .await;
        match pulled {
            Err(_) | Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Some(msg))) => Delivery::new(msg, &self.cfg).map(Some),
        }
    }

    /// Jobs waiting + in flight, from the consumer's state on the server.
    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|source| QueueError::Depth {
                stream: self.cfg.stream.clone(),
                consumer: self.cfg.consumer.clone(),
                source,
            })?;
        Ok(QueueDepth {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
        })
    }
}

/// One delivery of a job. Cheap to clone and Send + Sync, so a timer task can send
/// [`Delivery::progress`] while the job runs elsewhere. Every reply waits for the server's
/// confirmation (double ack), so a reply lost to a disconnect is an error, not silence.
#[derive(Clone)]
pub struct Delivery {
    pub payload: Bytes,
    /// 1 on the first delivery, counting redeliveries.
    pub delivered: u64,
    pub stream_sequence: u64,
    /// The `Nats-Msg-Id` the job was published with.
    pub msg_id: Option<String>,
    /// This is the last delivery the consumer allows (`delivered >= max_deliver`): if the job
    /// fails now the server will not hand it out again, so the worker should record the
    /// failure (dead-letter) rather than nak.
    pub last_attempt: bool,
    msg: Arc<jetstream::Message>,
    stream: Arc<str>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("stream", &self.stream)
            .field("stream_sequence", &self.stream_sequence)
            .field("delivered", &self.delivered)
            .field("msg_id", &self.msg_id)
            .field("last_attempt", &self.last_attempt)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Delivery {
    fn new(msg: jetstream::Message, cfg: &QueueConfig) -> Result<Delivery, QueueError> {
        let meta = |detail: String| QueueError::Metadata {
            stream: cfg.stream.clone(),
            detail,
        };
        let (delivered, stream_sequence) = {
            let info = msg.info().map_err(|e| meta(e.to_string()))?;
            let delivered = u64::try_from(info.delivered)
                .map_err(|_| meta(format!("delivery count {}", info.delivered)))?;
            (delivered, info.stream_sequence)
        };
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string());
        Ok(Delivery {
            payload: msg.payload.clone(),
            delivered,
            stream_sequence,
            msg_id,
            last_attempt: is_last_attempt(delivered, cfg.max_deliver),
            msg: Arc::new(msg),
            stream: Arc::from(cfg.stream.as_str()),
        })
    }

    /// Tells the server the job is still being worked on (+WPI): restarts its ack_wait.
    pub async fn progress(&self) -> Result<(), QueueError> {
        self.reply(AckKind::Progress, "send progress for").await
    }

    /// Done: the server removes the job from the work queue.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.reply(AckKind::Ack, "ack").await
    }

    /// Not done: redeliver (after `delay`, or as soon as a worker asks).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), QueueError> {
        self.reply(AckKind::Nak(delay), "nak").await
    }

    /// Never deliver this job again (it cannot succeed).
    pub async fn term(&self) -> Result<(), QueueError> {
        self.reply(AckKind::Term, "terminate").await
    }

    async fn reply(&self, kind: AckKind, action: &'static str) -> Result<(), QueueError> {
        self.msg
            .double_ack_with(kind)
            .await
            .map_err(|source| QueueError::Ack {
                action,
                stream: self.stream.to_string(),
                sequence: self.stream_sequence,
                source,
            })
    }
}

fn is_last_attempt(delivered: u64, max_deliver: i64) -> bool {
    u64::try_from(max_deliver).is_ok_and(|max| max > 0 && delivered >= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = QueueConfig::new("nats://127.0.0.1:4222");
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        assert_eq!(c.stream, "CLASSGUARD_JOBS");
        assert_eq!(c.subject, "classguard.jobs");
        assert_eq!(c.consumer, "audit-workers");
        assert_eq!(c.ack_wait, Duration::from_secs(60));
        assert_eq!(c.max_deliver, 4);
        assert_eq!(c.duplicate_window, Duration::from_secs(86_400));
        c.validate().unwrap();
    }

    #[test]
    fn server_side_config_follows_the_queue_config() {
        let c = QueueConfig::new("nats://127.0.0.1:4222");
        let s = c.stream_config();
        assert_eq!(s.name, "CLASSGUARD_JOBS");
        assert_eq!(s.subjects, vec!["classguard.jobs".to_string()]);
        assert_eq!(s.retention, RetentionPolicy::WorkQueue);
        assert_eq!(s.storage, StorageType::File);
        assert_eq!(s.duplicate_window, Duration::from_secs(86_400));
        let k = c.consumer_config();
        assert_eq!(k.durable_name.as_deref(), Some("audit-workers"));
        assert_eq!(k.ack_policy, AckPolicy::Explicit);
        assert_eq!(k.ack_wait, Duration::from_secs(60));
        assert_eq!(k.max_deliver, 4);
        assert_eq!(k.deliver_policy, DeliverPolicy::All);
        // No filter: the stream has one subject, and a filter in the create subject is a
        // 2.10-only API.
        assert!(k.filter_subject.is_empty());
    }

    #[test]
    fn validation_rejects_what_the_server_would() {
        let ok = QueueConfig::new("nats://a:4222, nats://b:4222");
        ok.validate().unwrap();
        assert_eq!(ok.server_addrs().unwrap().len(), 2);
        QueueConfig::new("127.0.0.1:4222").validate().unwrap();
        type Change = fn(&mut QueueConfig);
        let cases: [(&str, Change); 14] = [
            ("url", |c| c.url = " ".into()),
            ("url", |c| c.url = "nats://host:notaport".into()),
            ("url", |c| c.url = "http://host:4222".into()),
            ("stream", |c| c.stream = "JOBS.A".into()),
            ("stream", |c| c.stream = String::new()),
            ("consumer", |c| c.consumer = "a b".into()),
            ("consumer", |c| c.consumer = "a*".into()),
            ("subject", |c| c.subject = "classguard.*".into()),
            ("subject", |c| c.subject = "classguard.>".into()),
            ("subject", |c| c.subject = "classguard..jobs".into()),
            ("ack_wait", |c| c.ack_wait = Duration::ZERO),
            ("max_deliver", |c| c.max_deliver = 0),
            ("max_deliver", |c| c.max_deliver = -2),
            ("duplicate_window", |c| c.duplicate_window = Duration::ZERO),
        ];
        for (field, change) in cases {
            let mut c = ok.clone();
            change(&mut c);
            match c.validate() {
                Err(QueueError::Config(m)) => {
                    assert!(m.to_lowercase().contains(field), "{field}: {m}")
                }
                other => panic!("{field}: {c:?} gave {other:?}"),
            }
        }
        let mut unlimited = ok.clone();
        unlimited.max_deliver = -1;
        unlimited.validate().unwrap();
    }

    #[test]
    fn credentials_stay_out_of_logs() {
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("nats://u:secret@a:4222, tls://tok@b:4222,c:4222"),
            "nats://***@a:4222,tls://***@b:4222,c:4222"
        );
        assert_eq!(redacted("u:p@host"), "***@host");
    }

    #[test]
    fn backoff_starts_at_once_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        let mut last = Duration::ZERO;
        for a in 0..100 {
            let d = backoff(a);
            assert!(d >= last && d <= Duration::from_secs(2), "{a}: {d:?}");
            last = d;
        }
        assert_eq!(backoff(usize::MAX), Duration::from_secs(2));
    }

    #[test]
    fn only_permanent_publish_failures_stop_the_retry() {
        assert!(publish_is_transient(PublishErrorKind::TimedOut));
        assert!(publish_is_transient(PublishErrorKind::BrokenPipe));
        assert!(publish_is_transient(PublishErrorKind::StreamNotFound));
        assert!(publish_is_transient(PublishErrorKind::MaxAckPending));
        assert!(!publish_is_transient(PublishErrorKind::MaxPayloadExceeded));
    }

    #[test]
    fn last_attempt() {
        assert!(!is_last_attempt(1, 4));
        assert!(!is_last_attempt(3, 4));
        assert!(is_last_attempt(4, 4));
        assert!(is_last_attempt(5, 4));
        assert!(!is_last_attempt(1_000, -1));
        assert!(is_last_attempt(1, 1));
    }

    #[test]
    fn handles_cross_threads() {
        fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        send_sync_clone::<Delivery>();
        send_sync_clone::<JobQueue>();
        fn error<T: std::error::Error + Send + Sync + 'static>() {}
        error::<QueueError>();
    }
}
