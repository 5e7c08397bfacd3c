//! Webhooks: when a verdict is final, the token's URL gets a signed POST, at least once.
//!
//! The event row is written in the store before any attempt (so a crash between the verdict and
//! the POST still delivers), with an event id stable across retries for the receiver to
//! deduplicate. Headers (docs/service.md):
//! - `ClassGuard-Event-Id`: the stable id
//! - `ClassGuard-Timestamp`: unix seconds of this attempt
//! - `ClassGuard-Signature`: `v1=` + hex HMAC-SHA256(secret, timestamp + "." + body)
//!
//! Failed attempts are retried with exponential backoff (1 s doubling to 1 h) up to
//! [`MAX_ATTEMPTS`]. `https://` URLs are verified against the system's trust store (rustls with
//! the platform's roots; `SSL_CERT_FILE` names another bundle); plain `http://` is for
//! receivers on the same host or network.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::Shared;
use crate::store::{DeliveryRow, Store, StoreError};
use crate::verdict::Verdict;

pub const MAX_ATTEMPTS: i64 = 15;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `v1=<hex>` over `timestamp.body`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for every delivery: HTTP/1.1 over TLS (verified) or plain TCP, by URL scheme.
fn https_client() -> std::io::Result<WebhookClient> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Backoff before attempt `attempts + 1`.
pub fn backoff(attempts: i64) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 12)).min(Duration::from_secs(3600))
}

/// Queues the `verdict.final` event of a recording (once per recording) if its token has a URL.
pub fn queue(
    store: &Store,
    token_id: i64,
    recording_id: &str,
    verdict: &Verdict,
) -> Result<(), StoreError> {
    let Some(token) = store.token_by_id(token_id)? else {
        return Ok(());
    };
    let Some(url) = token.webhook_url else {
        return Ok(());
    };
    let event_id = format!("evt-{recording_id}-verdict");
    let body = serde_json::json!({
        "event_id": event_id,
        "type": "verdict.final",
        "recording_id": recording_id,
        "decision": verdict.decision.as_str(),
        "verdict": verdict,
    })
    .to_string();
    store.enqueue_delivery(&event_id, token_id, recording_id, &url, &body)?;
    Ok(())
}

/// The sender: every half second, attempts the deliveries that are due.
pub fn start(state: Shared) {
    tokio::spawn(async move {
        let client = match https_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("webhooks disabled: no TLS trust store: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = crate::store::now_ms();
            let Ok(due) = state.db(move |s| s.due_deliveries(now, 32)).await else {
                continue;
            };
            for d in due {
                let result = attempt(&state, &client, &d).await;
                let (st, id) = (state.clone(), d.id);
                match result {
                    Ok(()) => {
                        st.metrics.webhook_deliveries.add(1);
                        let _ = st.db(move |s| s.delivery_done(id)).await;
                        tracing::info!(recording = %d.recording_id, event = %d.event_id, "webhook delivered");
                    }
                    Err(e) => {
                        st.metrics.webhook_failures.add(1);
                        let next = (d.attempts + 1 < MAX_ATTEMPTS).then(|| {
                            crate::store::now_ms() + backoff(d.attempts).as_millis() as i64
                        });
                        tracing::warn!(recording = %d.recording_id, event = %d.event_id,
                            attempt = d.attempts + 1, giving_up = next.is_none(), "webhook failed: {e}");
                        let _ = st.db(move |s| s.delivery_failed(id, next, &e)).await;
                    }
                }
            }
        }
    });
}

async fn attempt(state: &Shared, client: &WebhookClient, d: &DeliveryRow) -> Result<(), String> {
    if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
        return Err("webhook URLs must be http:// or https://".into());
    }
    let token_id = d.token_id;
    let secret = match state.db(move |s| s.token_by_id(token_id)).await {
        Ok(Some(t)) => t.webhook_secret,
        Ok(None) => return Err("token is gone".into()),
        Err(e) => return Err(e.message),
    };
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let req = hyper::Request::post(&d.url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("classguard/", env!("CARGO_PKG_VERSION")),
        )
        .header("classguard-event-id", &d.event_id)
        .header("classguard-timestamp", ts.to_string())
        .header("classguard-signature", signature(&secret, ts, &d.body))
        .body(Full::new(Bytes::from(d.body.clone())))
        .map_err(|e| format!("bad webhook URL: {e}"))?;
    match tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(req)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(format!("request: {e}")),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("receiver answered {}", resp.status())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_reference_hmac() {
        // Reference: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature("whsec_test", 1_700_000_000, "{\"a\":1}");
        assert_eq!(
            sig,
            "v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(sig, signature("whsec_other", 1_700_000_000, "{\"a\":1}"));
        assert_ne!(sig, signature("whsec_test", 1_700_000_001, "{\"a\":1}"));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(3600));
    }
}
