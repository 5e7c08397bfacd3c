//! `classguard user add|list|passwd`: staff accounts of the review page. Passwords come from a
//! prompt (not echoed) or the first line of `--password-file`, and are stored only as argon2id
//! hashes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use crate::review::auth::{hash_password, Role, MIN_PASSWORD_CHARS};
use crate::review::ReviewError;
use crate::store::{AuditEntry, NewUser, Store, StoreError, UserChange, UserRow};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("account name must be 1-64 characters of letters, digits, '.', '_' or '-', not {0:?}")]
    BadName(String),
    #[error("{0}")]
    BadRole(String),
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("the two passwords differ")]
    Mismatch,
    #[error("reading the password from {what}: {source}")]
    ReadPassword {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Hash(#[from] ReviewError),
    #[error("no account named {0:?}")]
    NotFound(String),
}

fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UserError::BadName(name.to_string()))
    }
}

fn check_password(p: &str) -> Result<(), UserError> {
    if p.chars().count() < MIN_PASSWORD_CHARS {
        Err(UserError::ShortPassword)
    } else {
        Ok(())
    }
}

/// The first line of `file`, or a password typed twice at a prompt (echo off on a terminal; a
/// line of standard input otherwise).
pub fn read_password(file: Option<&Path>) -> Result<String, UserError> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|source| UserError::ReadPassword {
            what: f.display().to_string(),
            source,
        })?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    let read = |prompt: &str| {
        prompt_hidden(prompt).map_err(|source| UserError::ReadPassword {
            what: "standard input".into(),
            source,
        })
    };
    let first = read("password: ")?;
    if std::io::stdin().is_terminal() && read("again: ")? != first {
        return Err(UserError::Mismatch);
    }
    Ok(first)
}

fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
    }
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0, which is a terminal here.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let echo_off = tty && unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if echo_off {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a termios read from the same fd, with one flag cleared.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if echo_off {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
        eprintln!();
    }
    r?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn add(store: &Store, name: &str, role: &str, password: &str) -> Result<UserRow, UserError> {
    check_name(name)?;
    let role: Role = role.parse().map_err(UserError::BadRole)?;
    check_password(password)?;
    let row = store.review_add_user(&NewUser {
        name: name.to_string(),
        role: role.as_str().to_string(),
        password_hash: hash_password(password)?,
    })?;
    store.review_audit(&AuditEntry {
        user_id: None,
        action: "user_added".into(),
        item_id: None,
        detail: format!("user {} role {} (command line)", row.id, row.role),
    })?;
    Ok(row)
}

/// Sets a new password and clears any lockout.
pub fn set_password(store: &Store, name: &str, password: &str) -> Result<(), UserError> {
    check_password(password)?;
    let user = store
        .review_user_by_name(name)?
        .ok_or_else(|| UserError::NotFound(name.to_string()))?;
    store.review_update_user(
        user.id,
        &UserChange {
            password_hash: Some(hash_password(password)?),
            unlock: true,
            ..Default::default()
        },
    )?;
    store.review_audit(&AuditEntry {
        user_id: None,
        action: "password_set".into(),
        item_id: None,
        detail: format!("user {} (command line)", user.id),
    })?;
    Ok(())
}

/// One line per account: name, role, state (never a hash).
pub fn list(store: &Store) -> Result<String, UserError> {
    let now = crate::store::now_ms();
    let mut out = String::from("NAME\tROLE\tSTATE\n");
    for u in store.review_list_users()? {
        let state = if u.disabled {
            "disabled"
        } else if u.locked_until_ms > now {
            "locked"
        } else {
            "active"
        };
        out.push_str(&format!("{}\t{}\t{state}\n", u.name, u.role));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_checked_hashed_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        assert!(matches!(
            add(&store, "a b", "reviewer", "long enough pw"),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            add(&store, "ann", "root", "long enough pw"),
            Err(UserError::BadRole(_))
        ));
        assert!(matches!(
            add(&store, "ann", "lead", "short"),
            Err(UserError::ShortPassword)
        ));
        let u = add(&store, "ann", "lead", "long enough pw").unwrap();
        assert_eq!(u.role, "lead");
        assert!(u.password_hash.starts_with("$argon2id$"));
        assert!(!u.password_hash.contains("long enough pw"));
        assert!(matches!(
            add(&store, "ann", "reviewer", "long enough pw"),
            Err(UserError::Store(StoreError::UserExists(_)))
        ));
        set_password(&store, "ann", "another long one").unwrap();
        let after = store.review_user_by_name("ann").unwrap().unwrap();
        assert!(crate::review::auth::verify_password(
            &after.password_hash,
            "another long one"
        ));
        assert!(matches!(
            set_password(&store, "bob", "another long one"),
            Err(UserError::NotFound(_))
        ));
        assert_eq!(
            list(&store).unwrap(),
            "NAME\tROLE\tSTATE\nann\tlead\tactive\n"
        );
    }

    #[test]
    fn password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "first line secret\nsecond\n").unwrap();
        assert_eq!(read_password(Some(&f)).unwrap(), "first line secret");
        assert!(matches!(
            read_password(Some(&dir.path().join("missing"))),
            Err(UserError::ReadPassword { .. })
        ));
    }
}
