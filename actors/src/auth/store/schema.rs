//! The one schema and the SQL both backends run. Statements use `$1`
//! placeholders (PostgreSQL's); the embedded backend rewrites them to
//! SQLite's `?1`, so the text is shared and cannot drift.

/// Migrations, in order; `MIGRATIONS[n]` takes the schema to version n+1.
/// Applied once each, recorded in `blaze_schema_version`.
pub const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        status TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
        password_hash TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
        "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id),
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        revoked_at BIGINT,
        last_used_at BIGINT,
        replaced_by TEXT
    )",
        "CREATE INDEX api_keys_by_user ON api_keys (user_id, id)",
        "CREATE TABLE refresh_tokens (
        jti TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users (id),
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        revoked_at BIGINT
    )",
        "CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id)",
        "CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at)",
        "CREATE TABLE revocations (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (kind, subject)
    )",
        "CREATE INDEX revocations_by_expiry ON revocations (expires_at)",
    ],
    &[
        // Rate limits set on a user or a key; NULL takes the configured default.
        "ALTER TABLE users ADD COLUMN requests_per_minute BIGINT",
        "ALTER TABLE users ADD COLUMN tokens_per_minute BIGINT",
        "ALTER TABLE api_keys ADD COLUMN requests_per_minute BIGINT",
        "ALTER TABLE api_keys ADD COLUMN tokens_per_minute BIGINT",
    ],
    &[
        // The first key of a rotation chain: every key of a lineage spends
        // one budget and one guard score. NULL: the key is its own first.
        "ALTER TABLE api_keys ADD COLUMN lineage_id TEXT",
    ],
    &[
        // Governance: the team a user belongs to, one ledger row per
        // metered request, the append-only audit log, and quotas.
        "ALTER TABLE users ADD COLUMN team TEXT",
        "CREATE TABLE usage_records (
        at BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT,
        key_lineage TEXT,
        user_id TEXT NOT NULL,
        team TEXT,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cache TEXT NOT NULL,
        status INTEGER NOT NULL,
        latency_ms BIGINT NOT NULL,
        first_token_ms BIGINT,
        cost_micros BIGINT NOT NULL
    )",
        // Rows arrive in time order: one index, appended at its end.
        "CREATE INDEX usage_records_by_time ON usage_records (at)",
        // The rows summed per hour and per caller, model and endpoint, in
        // the same transaction as the rows: what reports and quotas read
        // (one row per group and hour, not per request). '' is "none".
        "CREATE TABLE usage_rollup (
        hour BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_lineage TEXT NOT NULL,
        team TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        requests BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        refused BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cost_micros BIGINT NOT NULL
    )",
        "CREATE UNIQUE INDEX usage_by_time_user ON usage_rollup (hour, user_id, key_id, key_lineage, team, model, endpoint)",
        "CREATE INDEX usage_by_time_key ON usage_rollup (hour, key_id)",
        "CREATE INDEX usage_by_user_time ON usage_rollup (user_id, hour)",
        "CREATE INDEX usage_by_key_time ON usage_rollup (key_id, hour)",
        "CREATE INDEX usage_by_lineage_time ON usage_rollup (key_lineage, hour)",
        "CREATE INDEX usage_by_team_time ON usage_rollup (team, hour)",
        "CREATE TABLE audit_log (
        id TEXT PRIMARY KEY,
        at BIGINT NOT NULL,
        actor_id TEXT,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        change TEXT NOT NULL,
        address TEXT,
        request_id TEXT
    )",
        "CREATE INDEX audit_by_time ON audit_log (at, id)",
        "CREATE INDEX audit_by_actor ON audit_log (actor_id, at)",
        // Users signed in through an identity provider: `issuer|subject`.
        "CREATE TABLE external_identities (
        external_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id),
        created_at BIGINT NOT NULL
    )",
        "CREATE TABLE quotas (
        scope TEXT NOT NULL CHECK (scope IN ('key', 'user', 'team')),
        subject TEXT NOT NULL,
        limits TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (scope, subject)
    )",
    ],
];

/// Statements one backend runs after the shared ones of a migration (by
/// its index in [`MIGRATIONS`]), where the two dialects differ: the audit
/// log refuses to be changed or emptied.
pub const SQLITE_EXTRA: &[(usize, &[&str])] = &[(
    3,
    &[
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
        "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    ],
)];
pub const POSTGRES_EXTRA: &[(usize, &[&str])] = &[(
    3,
    &[
        "CREATE FUNCTION blaze_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS \
         $body$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $body$",
        "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION blaze_audit_append_only()",
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log \
         FOR EACH STATEMENT EXECUTE FUNCTION blaze_audit_append_only()",
    ],
)];

/// The backend-only statements of migration `index`.
pub fn extra(table: &'static [(usize, &'static [&'static str])], index: usize) -> &'static [&'static str] {
    table.iter().find(|(at, _)| *at == index).map_or(&[], |(_, statements)| statements)
}

pub const CREATE_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS blaze_schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)";
pub const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM blaze_schema_version";
pub const RECORD_VERSION: &str = "INSERT INTO blaze_schema_version (version, applied_at) VALUES ($1, $2)";

const USER_COLUMNS: &str =
    "id, email, name, role, status, password_hash, created_at, updated_at, requests_per_minute, tokens_per_minute, team";
const KEY_COLUMNS: &str =
    "id, user_id, name, secret_hash, scopes, created_at, expires_at, revoked_at, last_used_at, replaced_by, \
     requests_per_minute, tokens_per_minute, COALESCE(lineage_id, id)";
/// The columns written: the selected ones with the lineage as stored.
const KEY_INSERT_COLUMNS: &str =
    "id, user_id, name, secret_hash, scopes, created_at, expires_at, revoked_at, last_used_at, replaced_by, \
     requests_per_minute, tokens_per_minute, lineage_id";

pub fn insert_user() -> String {
    format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
}
pub fn user_by_id() -> String {
    format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")
}
pub fn user_by_email() -> String {
    format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1")
}
pub fn users_after() -> String {
    format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2")
}
pub const COUNT_USERS: &str = "SELECT COUNT(*) FROM users";
pub const UPDATE_USER: &str =
    "UPDATE users SET name = $2, role = $3, status = $4, password_hash = $5, updated_at = $6, \
     requests_per_minute = $7, tokens_per_minute = $8, team = $9 WHERE id = $1";

pub fn insert_key() -> String {
    format!(
        "INSERT INTO api_keys ({KEY_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
}
pub fn key_by_id() -> String {
    format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1")
}
pub fn keys_after() -> String {
    format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2")
}
pub fn keys_of_user_after() -> String {
    format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3")
}
/// Keys that count against the limit: not revoked, not replaced, not expired.
pub const COUNT_ACTIVE_KEYS: &str = "SELECT COUNT(*) FROM api_keys WHERE user_id = $1 \
     AND revoked_at IS NULL AND replaced_by IS NULL AND (expires_at IS NULL OR expires_at > $2)";
pub const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
/// Replaces a usable key; touches nothing if it is not usable any more.
pub const RETIRE_KEY: &str = "UPDATE api_keys SET replaced_by = $2, \
     expires_at = CASE WHEN expires_at IS NULL OR expires_at > $3 THEN $3 ELSE expires_at END \
     WHERE id = $1 AND revoked_at IS NULL AND replaced_by IS NULL AND (expires_at IS NULL OR expires_at > $4)";
pub const TOUCH_KEY: &str =
    "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";

pub const INSERT_REFRESH: &str =
    "INSERT INTO refresh_tokens (jti, family_id, user_id, expires_at, used_at, revoked_at) \
     VALUES ($1, $2, $3, $4, NULL, NULL)";
pub const REFRESH_BY_JTI: &str =
    "SELECT jti, family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE jti = $1";
/// Spends a token once: a concurrent second use changes no row.
pub const SPEND_REFRESH: &str = "UPDATE refresh_tokens SET used_at = $2 \
     WHERE jti = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2";
pub const REVOKE_FAMILY: &str =
    "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE family_id = $1";

/// A later revocation of the same subject reaches further back and lasts
/// longer (a second password change must not keep the first one's time).
pub const INSERT_REVOCATION: &str = "INSERT INTO revocations (kind, subject, expires_at, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (kind, subject) DO UPDATE SET \
     expires_at = CASE WHEN excluded.expires_at > revocations.expires_at \
         THEN excluded.expires_at ELSE revocations.expires_at END, \
     created_at = CASE WHEN excluded.created_at > revocations.created_at \
         THEN excluded.created_at ELSE revocations.created_at END";
pub const REVOCATIONS_IN_FORCE: &str =
    "SELECT kind, subject, expires_at, created_at FROM revocations WHERE expires_at > $1";
pub const PRUNE_REVOCATIONS: &str = "DELETE FROM revocations WHERE expires_at <= $1";
pub const EXTERNAL_USER: &str = "SELECT user_id FROM external_identities WHERE external_id = $1";
pub const LINK_EXTERNAL: &str =
    "INSERT INTO external_identities (external_id, user_id, created_at) VALUES ($1, $2, $3)";
pub const PRUNE_REFRESH: &str = "DELETE FROM refresh_tokens WHERE expires_at <= $1";
