//! The semantic cache's entries shared by replicas through Redis: each new
//! entry is appended to its route's list (trimmed to the index's bound)
//! and published; every replica loads the lists at start and after a
//! reconnection, and inserts what is published meanwhile. The answers
//! themselves are in the response cache's Redis tier.

use std::time::Duration;

use base64::Engine as _;
use fred::interfaces::{ListInterface, PubsubInterface};
use fred::prelude::Client;
use serde::{Deserialize, Serialize};

use super::semantic::SemanticEntry;
use crate::redis::{bounded, client_builder, ChannelSubscription, Connection, Delivery, RedisError};

const CHANNEL: &str = "blaze:semantic:v1";

fn list_key(route: &str) -> String {
    format!("{CHANNEL}:{route}")
}

/// An entry as it travels.
#[derive(Serialize, Deserialize)]
struct Shared {
    route: String,
    fingerprint: u64,
    text: String,
    /// The vector's little-endian f32s, base64.
    vector: String,
}

impl Shared {
    fn of(route: &str, entry: &SemanticEntry) -> Self {
        let bytes: Vec<u8> = entry.vector.iter().flat_map(|value| value.to_le_bytes()).collect();
        Self {
            route: route.to_owned(),
            fingerprint: entry.fingerprint,
            text: entry.text.to_string(),
            vector: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn entry(self) -> Option<(String, SemanticEntry)> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(self.vector).ok()?;
        if bytes.len() % 4 != 0 {
            return None;
        }
        let vector = bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        Some((self.route, SemanticEntry { fingerprint: self.fingerprint, text: self.text.into(), vector }))
    }
}

fn parse(text: &str) -> Option<(String, SemanticEntry)> {
    serde_json::from_str::<Shared>(text).ok()?.entry()
}

/// The connection entries are written and loaded through.
pub struct SemanticShare {
    client: Client,
    _connection: Connection,
    url: String,
    timeout: Duration,
}

/// What a replica hears from the others.
pub enum SemanticNews {
    Entry(String, SemanticEntry),
    /// Entries may have been missed: load the lists again.
    Reload,
}

impl SemanticShare {
    pub fn open(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = client_builder(url, timeout)?.build()?;
        let connection = Connection::open(&client);
        Ok(Self { client, _connection: connection, url: url.to_owned(), timeout })
    }

    /// Appends an entry of `route` (its list kept to `max_entries`) and
    /// tells the other replicas.
    pub async fn publish(
        &self,
        route: &str,
        entry: &SemanticEntry,
        max_entries: usize,
    ) -> Result<(), RedisError> {
        let text = serde_json::to_string(&Shared::of(route, entry)).unwrap_or_default();
        let key = list_key(route);
        let _: i64 = bounded(self.timeout, self.client.rpush(&key, text.clone())).await?;
        let _: () = bounded(self.timeout, self.client.ltrim(&key, -(max_entries as i64), -1)).await?;
        let _: i64 = bounded(self.timeout, self.client.publish(CHANNEL, text)).await?;
        Ok(())
    }

    /// Every entry of `route` kept in Redis, oldest first.
    pub async fn load(&self, route: &str) -> Result<Vec<SemanticEntry>, RedisError> {
        let texts: Vec<String> =
            bounded(self.timeout * 10, self.client.lrange(list_key(route), 0, -1)).await?;
        Ok(texts
            .iter()
            .filter_map(|text| parse(text))
            .filter(|(from, _)| from == route)
            .map(|(_, entry)| entry)
            .collect())
    }

    /// Hears the other replicas for as long as the process lives, handing
    /// each piece of news to `apply`; subscribes again when the
    /// subscription is lost.
    pub async fn listen(&self, apply: impl AsyncFn(SemanticNews)) {
        let mut failures = 0u32;
        loop {
            match ChannelSubscription::open(&self.url, CHANNEL, self.timeout).await {
                Ok(mut subscription) => {
                    failures = 0;
                    apply(SemanticNews::Reload).await;
                    while let Some(delivery) = subscription.next().await {
                        match delivery {
                            Delivery::Message(text) => match parse(&text) {
                                Some((route, entry)) => apply(SemanticNews::Entry(route, entry)).await,
                                None => tracing::warn!("ignored a semantic cache entry that does not parse"),
                            },
                            Delivery::Reconnected => apply(SemanticNews::Reload).await,
                        }
                    }
                    subscription.close().await;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(%error, "cannot subscribe to the semantic cache's entries; retrying");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
