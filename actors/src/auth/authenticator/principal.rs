//! The outcome of authentication, in one place for every caller of it
//! (HTTP, WebSocket, the token exchange): who the caller is and what
//! they may do, or why they are not let in.

use std::time::Duration;

use crate::auth::scopes;
use crate::auth::store::{Limits, Role};

/// Why a request was not authenticated; each is a reason label of
/// `blaze_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
    /// A token with a bad signature, bad claims or an unknown kid.
    Invalid,
    /// A refresh token presented as an access token, or the reverse.
    WrongType,
    Disabled,
    BadPassword,
    StoreUnavailable,
    /// Too many failures from this address, account or key id: refused
    /// for this long without checking (429).
    CoolingDown(Duration),
    /// Every password hashing thread is busy and the queue is full (429).
    Busy,
    /// A key not in the cache, presented from an address that is cooling
    /// down and has spent its store reads for this second (429).
    NotCached,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Unknown => "unknown",
            Failure::Revoked => "revoked",
            Failure::Expired => "expired",
            Failure::Invalid => "invalid",
            Failure::WrongType => "wrong_type",
            Failure::Disabled => "disabled",
            Failure::BadPassword => "bad_password",
            Failure::StoreUnavailable => "store_unavailable",
            Failure::CoolingDown(_) => "cooling_down",
            Failure::Busy => "busy",
            Failure::NotCached => "not_cached",
        }
    }

    /// A failure that guessing produces (an unknown key, a bad signature,
    /// a wrong password): what cool-downs count. An expired, revoked or
    /// missing credential is no guess, and never cools anyone down.
    pub fn is_guess(self) -> bool {
        matches!(
            self,
            Failure::Malformed
                | Failure::Unknown
                | Failure::Invalid
                | Failure::WrongType
                | Failure::BadPassword
        )
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey {
        key_id: String,
    },
    Token {
        jti: String,
        sid: String,
        expires_at: i64,
        origin: SignInOrigin,
    },
    /// An access token of the configured identity provider.
    Provider {
        subject: String,
        expires_at: i64,
    },
}

/// What a sign-in (a token pair and its refreshes) was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInOrigin {
    Key(String),
    Password,
}

impl SignInOrigin {
    /// The `src` claim's text.
    pub(super) fn claim(&self) -> String {
        match self {
            SignInOrigin::Key(id) => format!("key:{id}"),
            SignInOrigin::Password => "password".to_owned(),
        }
    }

    pub(super) fn parse(claim: &str) -> Option<Self> {
        match claim.strip_prefix("key:") {
            Some(id) if !id.is_empty() => Some(SignInOrigin::Key(id.to_owned())),
            Some(_) => None,
            None => (claim == "password").then_some(SignInOrigin::Password),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub scopes: Vec<String>,
    pub credential: Credential,
    /// The budgets set on the key, else on the user; unset ones take the
    /// configured defaults.
    pub limits: Limits,
    /// The rotation chain of the key this caller came with (directly, or
    /// through a sign-in made with it).
    pub lineage: Option<String>,
    /// The user's team, for usage and quotas.
    pub team: Option<String>,
}

impl Principal {
    /// The key the caller came with (directly, or through a sign-in made
    /// with it).
    pub fn key_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey { key_id } => Some(key_id),
            Credential::Token { origin: SignInOrigin::Key(key_id), .. } => Some(key_id),
            Credential::Token { origin: SignInOrigin::Password, .. } | Credential::Provider { .. } => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// An admin acting with the admin scope: may manage other users' keys.
    pub fn administers(&self) -> bool {
        self.is_admin() && self.grants("admin")
    }

    /// Whether the caller's scopes allow `scope`.
    pub fn grants(&self, scope: &str) -> bool {
        scopes::grant(&self.scopes, scope)
    }

    /// Whose budgets and guard score the caller spends: the key's lineage
    /// (every key of a rotation chain and every sign-in made with one of
    /// them), else the user.
    pub fn subject(&self) -> String {
        match &self.lineage {
            Some(lineage) => format!("key:{lineage}"),
            None => format!("user:{}", self.user_id),
        }
    }
}
