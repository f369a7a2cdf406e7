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

/// What making a secret (a pepper's hasher, a key, an id, a password hash)
/// can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the system has no randomness")]
    NoRandomness,
    #[error("the pepper must be at least {MIN_PEPPER_LEN} bytes")]
    ShortPepper,
    #[error("cannot hash the password: {0}")]
    PasswordHash(argon2::password_hash::Error),
    #[error("the password hashing thread stopped")]
    HashingStopped,
}

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
    pub fn new(pepper: &[u8]) -> Result<Self, SecretError> {
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(SecretError::ShortPepper);
        }
        // HMAC takes a key of any length: this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(pepper).map_err(|_| SecretError::ShortPepper)?;
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
        // Decoded onto the stack: this runs on every request with a key.
        let mut stored = [0u8; 32];
        if computed.len() != stored.len() || hex::decode_to_slice(stored_hash, &mut stored).is_err() {
            return false;
        }
        bool::from(computed.as_slice().ct_eq(&stored))
    }
}

/// An argon2id hash of a password, in the PHC string format.
pub fn hash_password(password: &str) -> Result<String, SecretError> {
    let salt = random_bytes::<16>().ok_or(SecretError::NoRandomness)?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(SecretError::PasswordHash)
}

/// Whether a password matches its argon2id hash (constant time inside).
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordVerifier::<str>::verify_password(&Argon2::default(), password.as_bytes(), stored).is_ok()
}

/// Argon2 work memory one thread reuses from check to check: a busy
/// hashing thread holds one buffer (~19 MiB) instead of allocating one per
/// check, which the allocator would keep in its arenas.
#[derive(Default)]
pub struct PasswordMemory(Vec<argon2::Block>);

/// The most work memory a stored hash may ask for (64 MiB): Blaze's own
/// hashes use 19 MiB; a larger one is refused rather than allocated.
const MOST_PASSWORD_BLOCKS: usize = 64 * 1024;

impl PasswordMemory {
    fn blocks(&mut self, count: usize) -> &mut [argon2::Block] {
        if self.0.len() < count {
            self.0.resize(count, argon2::Block::default());
        }
        &mut self.0[..count]
    }
}

/// Whether a password matches its argon2 hash (PHC string), computed in
/// `memory`; the outputs are compared in constant time.
pub fn verify_password_in(memory: &mut PasswordMemory, password: &str, stored: &str) -> bool {
    use argon2::password_hash::phc::{Output, PasswordHash};
    use argon2::{Algorithm, Params, Version};
    let Ok(hash) = PasswordHash::new(stored) else { return false };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(hash.algorithm.as_str()), Params::try_from(&hash))
    else {
        return false;
    };
    let Ok(version) = Version::try_from(hash.version.unwrap_or(u32::from(Version::default()))) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
    if params.block_count() > MOST_PASSWORD_BLOCKS {
        return false;
    }
    let count = params.block_count();
    let mut output = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    argon2
        .hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), &mut output, memory.blocks(count))
        .is_ok()
        && Output::new(&output).is_ok_and(|computed| computed == *expected)
}

/// A stand-in hash checked when the email is unknown, so that an unknown
/// email takes as long as a wrong password and the timing tells nothing.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password anyone has").unwrap_or_default())
}
