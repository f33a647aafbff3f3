//! People who use the admin UI: users with a role and an argon2 password
//! hash, their login sessions, and the activity log every change made
//! through the UI or the API is written to.
//!
//! Roles are ordered: a `viewer` reads; an `editor` also manages contacts,
//! templates, segments, campaigns and automations; an `admin` also manages
//! users and the queue. The API's bearer token acts as an admin.
//!
//! A session is a random token in the browser's cookie; the store keeps
//! only its SHA-256 ([`token_key`]), so a copy of the store opens no
//! session. Each session carries its own CSRF token for the UI's forms.

use std::fmt;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::store::{Store, StoreError};

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page; changes nothing.
    Viewer,
    /// Manages contacts, templates, segments, campaigns and automations.
    Editor,
    /// Also manages users and the queue.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Role, UserError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(UserError::BadRole(other.to_string())),
        }
    }
}

/// A user of the admin UI.
#[derive(Clone, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// Argon2id hash in PHC form.
    pub hash: String,
    /// When the user was created (ms).
    pub created: i64,
    /// When the password was last set (ms).
    pub password_set: i64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A logged-in session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The user's name.
    pub user: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When it began (ms).
    pub created: i64,
    /// When it ends (ms).
    pub expires: i64,
}

/// One change, as the activity log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    /// When (ms).
    pub at: i64,
    /// Who: a user's name, or `api` for the bearer token.
    pub who: String,
    /// What: the method and the endpoint (`POST campaign_action start`).
    pub action: String,
    /// On which object (`campaign:3`), when it names one.
    #[serde(default)]
    pub object: Option<String>,
    /// The outcome's status code.
    pub status: u16,
    /// Why, where the change asks for a reason (removing a suppression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What can go wrong with users.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is empty, too long or has characters outside `[a-z0-9._-]`.
    #[error("user name `{0}`: use 1 to 64 of a-z, 0-9, `.`, `_`, `-`")]
    BadName(String),
    /// Unknown role.
    #[error("role `{0}` is not one of: admin, editor, viewer")]
    BadRole(String),
    /// Too short a password.
    #[error("the password must have at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    /// Name taken.
    #[error("user `{0}` already exists")]
    Exists(String),
    /// No such user.
    #[error("no user `{0}`")]
    NotFound(String),
    /// The last admin cannot be removed or demoted.
    #[error("`{0}` is the last admin: add another admin first")]
    LastAdmin(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a user name.
pub fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UserError::BadName(name.to_string()))
    }
}

/// Hashes a password with argon2id and a random salt (slow on purpose:
/// call it off the async threads).
pub fn hash_password(password: &str) -> Result<String, UserError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UserError::WeakPassword);
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches a stored hash (constant time in the hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash no password matches, verified against when the user does not
/// exist so that a wrong name costs the same time as a wrong password.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// A new random token (256 bits, base64url).
pub fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The store key of a session token: its SHA-256, hex.
pub fn token_key(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

async fn hashed(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| UserError::Hash(e.to_string()))?
}

/// Adds a user.
pub async fn add(
    store: &Store,
    name: &str,
    role: Role,
    password: String,
    now: i64,
) -> Result<User, UserError> {
    check_name(name)?;
    let hash = hashed(password).await?;
    let user = User {
        name: name.to_string(),
        role,
        hash,
        created: now,
        password_set: now,
    };
    let u = user.clone();
    store
        .write(move |w| {
            if w.user_for_write(&u.name)?.is_some() {
                return Ok(Err(UserError::Exists(u.name.clone())));
            }
            w.put_user(&u)?;
            Ok(Ok(()))
        })
        .await??;
    Ok(user)
}

/// Changes a user's password and/or role; a new password ends their
/// sessions. The last admin keeps the admin role.
pub async fn update(
    store: &Store,
    name: &str,
    role: Option<Role>,
    password: Option<String>,
    now: i64,
) -> Result<User, UserError> {
    let hash = match password {
        Some(p) => Some(hashed(p).await?),
        None => None,
    };
    let name = name.to_string();
    store
        .write(move |w| {
            let Some(mut u) = w.user_for_write(&name)? else {
                return Ok(Err(UserError::NotFound(name)));
            };
            if let Some(r) = role {
                if u.role == Role::Admin && r != Role::Admin && admins(w)? == 1 {
                    return Ok(Err(UserError::LastAdmin(name)));
                }
                u.role = r;
            }
            if let Some(h) = hash {
                u.hash = h;
                u.password_set = now;
                w.delete_sessions_of(&name)?;
            }
            w.put_user(&u)?;
            Ok(Ok(u))
        })
        .await?
}

fn admins(w: &crate::store::WriteTables<'_>) -> Result<usize, StoreError> {
    Ok(w.users_for_write()?
        .iter()
        .filter(|u| u.role == Role::Admin)
        .count())
}

/// Removes a user (and their sessions); the last admin stays.
pub async fn remove(store: &Store, name: &str) -> Result<(), UserError> {
    let name = name.to_string();
    store
        .write(move |w| {
            let Some(u) = w.user_for_write(&name)? else {
                return Ok(Err(UserError::NotFound(name)));
            };
            if u.role == Role::Admin && admins(w)? == 1 {
                return Ok(Err(UserError::LastAdmin(name)));
            }
            w.delete_user(&name)?;
            Ok(Ok(()))
        })
        .await?
}

/// Checks a name and password; on success opens a session of `ttl_ms` and
/// returns its token (for the cookie) with the session.
pub async fn login(
    store: &Store,
    name: &str,
    password: String,
    now: i64,
    ttl_ms: i64,
) -> Result<Option<(String, Session, User)>, UserError> {
    let user = {
        let n = name.to_string();
        store.read(move |r| r.user(&n)).await?
    };
    let hash = user.as_ref().map(|u| u.hash.clone());
    // Hashing (the dummy hash's first use included) runs off the async
    // threads.
    let ok = tokio::task::spawn_blocking(move || match &hash {
        Some(h) => verify_password(h, &password),
        None => verify_password(dummy_hash(), &password),
    })
    .await
    .unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        return Ok(None);
    };
    let token = new_token();
    let session = Session {
        user: user.name.clone(),
        csrf: new_token(),
        created: now,
        expires: now.saturating_add(ttl_ms),
    };
    let (key, s) = (token_key(&token), session.clone());
    store.write(move |w| w.put_session(&key, &s, now)).await?;
    Ok(Some((token, session, user)))
}

/// The live session a cookie's token names, with its user (who may have
/// been removed since: then `None`).
pub async fn session(
    store: &Store,
    token: &str,
    now: i64,
) -> Result<Option<(Session, User)>, StoreError> {
    let key = token_key(token);
    store
        .read(move |r| {
            let Some(s) = r.session(&key)? else {
                return Ok(None);
            };
            if s.expires <= now {
                return Ok(None);
            }
            Ok(r.user(&s.user)?.map(|u| (s, u)))
        })
        .await
}

/// Ends the session a token names.
pub async fn logout(store: &Store, token: &str) -> Result<(), StoreError> {
    let key = token_key(token);
    store.write(move |w| w.delete_session(&key)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap_or_default();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password("garbage", "x"));
        assert!(matches!(
            hash_password("short"),
            Err(UserError::WeakPassword)
        ));
    }

    #[test]
    fn names_and_roles_are_checked() {
        assert!(check_name("ana.k_2-x").is_ok());
        for bad in ["", "Ana", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!("editor".parse::<Role>().ok(), Some(Role::Editor));
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Admin > Role::Editor && Role::Editor > Role::Viewer);
    }

    #[tokio::test]
    async fn a_session_ends_when_it_expires_and_at_logout() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        add(
            &store,
            "ana",
            Role::Editor,
            "a long enough password".into(),
            0,
        )
        .await?;
        assert!(
            login(&store, "ana", "wrong password!".into(), 0, 1000)
                .await?
                .is_none()
        );
        let (token, s, _) = login(&store, "ana", "a long enough password".into(), 0, 1000)
            .await?
            .ok_or("no session")?;
        assert_eq!(s.expires, 1000);
        assert!(session(&store, &token, 999).await?.is_some());
        assert!(session(&store, &token, 1000).await?.is_none(), "expired");
        let (token, ..) = login(&store, "ana", "a long enough password".into(), 2000, 1000)
            .await?
            .ok_or("no session")?;
        assert!(session(&store, &token, 2500).await?.is_some());
        logout(&store, &token).await?;
        assert!(session(&store, &token, 2500).await?.is_none(), "logged out");
        // A new password ends every session of the user.
        let (token, ..) = login(&store, "ana", "a long enough password".into(), 3000, 1000)
            .await?
            .ok_or("no session")?;
        update(
            &store,
            "ana",
            None,
            Some("another long password".into()),
            3100,
        )
        .await?;
        assert!(
            session(&store, &token, 3200).await?.is_none(),
            "password changed"
        );
        store.close();
        Ok(())
    }

    #[test]
    fn tokens_are_random_and_keys_hide_them() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_key(&a).len(), 64);
        assert_ne!(token_key(&a), a);
    }
}
