//! API keys, the pepper that hashes them, and passwords: what a secret
//! looks like, how it is made, and how it is checked without storing it.
//!
//! A key is `blz_<id>_<secret>`: 16 hex digits of id (the store's primary
//! key, safe to log) and 64 hex digits (256 bits) of secret from the
//! operating system's CSPRNG. Only HMAC-SHA256(pepper, key) is stored, and
//! it is compared in constant time.

use argon2::Argon2;
use argon2::{PasswordHasher, PasswordVerifier};
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "blz_";
const ID_HEX_LEN: usize = 16;
const SECRET_HEX_LEN: usize = 64;
/// The whole key's length: prefix, id, separator, secret.
pub const KEY_LEN: usize = KEY_PREFIX.len() + ID_HEX_LEN + 1 + SECRET_HEX_LEN;
/// The shortest pepper accepted: 32 bytes.
pub const MIN_PEPPER_LEN: usize = 32;

/// A key as the client presents it, parsed but not yet checked.
#[derive(Clone, Copy)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    whole: &'a str,
}

impl<'a> PresentedKey<'a> {
    /// `None` when the text is not shaped like a Blaze key.
    pub fn parse(text: &'a str) -> Option<Self> {
        if text.len() != KEY_LEN {
            return None;
        }
        let rest = text.strip_prefix(KEY_PREFIX)?;
        let (id, secret) = rest.split_at_checked(ID_HEX_LEN)?;
        let secret = secret.strip_prefix('_')?;
        let lower_hex = |part: &str| part.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        (secret.len() == SECRET_HEX_LEN && lower_hex(id) && lower_hex(secret))
            .then_some(Self { id, whole: text })
    }
}

/// A freshly made key: the text is shown to its owner once, then dropped.
pub struct NewKey {
    pub id: String,
    pub text: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "NewKey {{ id: {}, text: [redacted] }}", self.id)
    }
}

/// Random bytes from the operating system; `None` only if it has none to
/// give, which callers turn into an error rather than a weak secret.
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).ok()?;
    Some(bytes)
}

/// A new random id: 16 hex digits.
pub fn random_id() -> Option<String> {
    random_bytes::<8>().map(hex::encode)
}

/// A new key with a random id and secret.
pub fn generate_key() -> Option<NewKey> {
    let id = random_id()?;
    let secret = hex::encode(random_bytes::<32>()?);
    let text = format!("{KEY_PREFIX}{id}_{secret}");
    Some(NewKey { id, text })
}

/// Hashes keys with the server's pepper; only the hash is stored.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl KeyHasher {
    pub fn new(pepper: &[u8]) -> Result<Self, String> {
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(format!("the pepper must be at least {MIN_PEPPER_LEN} bytes"));
        }
        let mac = Hmac::<Sha256>::new_from_slice(pepper).map_err(|error| error.to_string())?;
        Ok(Self { mac })
    }

    /// The stored form of a key: hex of HMAC-SHA256(pepper, key).
    pub fn hash(&self, key: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether the presented key matches the stored hash, in constant time.
    pub fn matches(&self, key: PresentedKey<'_>, stored_hash: &str) -> bool {
        let mut mac = self.mac.clone();
        mac.update(key.whole.as_bytes());
        let computed = mac.finalize().into_bytes();
        let Ok(stored) = hex::decode(stored_hash) else { return false };
        stored.len() == computed.len() && bool::from(computed.as_slice().ct_eq(&stored))
    }
}

/// An argon2id hash of a password, in the PHC string format.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = random_bytes::<16>().ok_or("the system has no randomness")?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| error.to_string())
}

/// Whether a password matches its argon2id hash (constant time inside).
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordVerifier::<str>::verify_password(&Argon2::default(), password.as_bytes(), stored).is_ok()
}

/// A stand-in hash checked when the email is unknown, so that an unknown
/// email takes as long as a wrong password and the timing tells nothing.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password anyone has").unwrap_or_default())
}
