//! `classguard token create|list|revoke`: API tokens of the service. A token is printed once;
//! the store keeps only its sha256.

use crate::service::auth::{new_token, token_hash};
use crate::store::{Store, StoreError, TokenRow};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("token name must be 1-100 characters of letters, digits, '-', '_' or '.', not {0:?}")]
    BadName(String),
    #[error("webhook URL must be an http:// or https:// URL with a host, not {0:?}")]
    BadWebhook(String),
    #[error("no live token named {0:?}")]
    NotFound(String),
}

/// What `token create` prints once.
pub struct Created {
    pub row: TokenRow,
    pub token: String,
    pub webhook_secret: String,
}

pub fn create(store: &Store, name: &str, webhook: Option<&str>) -> Result<Created, TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(TokenError::BadName(name.to_string()));
    }
    if let Some(url) = webhook {
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or("");
        if host.is_empty() || host.starts_with('/') || url.chars().any(char::is_whitespace) {
            return Err(TokenError::BadWebhook(url.to_string()));
        }
    }
    let (token, webhook_secret) = new_token();
    let row = store.create_token(name, &token_hash(&token), webhook, &webhook_secret)?;
    Ok(Created {
        row,
        token,
        webhook_secret,
    })
}

/// One line per token: name, created (unix seconds), state, webhook.
pub fn list(store: &Store) -> Result<String, TokenError> {
    let mut out = String::from("NAME\tCREATED\tSTATE\tWEBHOOK\n");
    for t in store.list_tokens()? {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            t.name,
            t.created_at,
            if t.revoked { "revoked" } else { "active" },
            t.webhook_url.as_deref().unwrap_or("-")
        ));
    }
    Ok(out)
}

pub fn revoke(store: &Store, name: &str) -> Result<(), TokenError> {
    if store.revoke_token(name)? {
        Ok(())
    } else {
        Err(TokenError::NotFound(name.to_string()))
    }
}
