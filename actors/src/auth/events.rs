//! Identity events between replicas: a key changed (revoked, rotated), a
//! user changed (role, status), a token or sign-in revoked. Every event is
//! applied locally at once, then published so other replicas apply it too:
//! through Redis pub/sub when `storage.redis_url` is set, PostgreSQL
//! LISTEN/NOTIFY when only the database is shared, and nowhere else for
//! the embedded default (one process).

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::PubsubInterface;
use fred::prelude::Client;
use serde::{Deserialize, Serialize};

use super::store::Revocation;
use crate::redis::{client_builder, ChannelSubscription, Connection, Delivery, RedisError};

/// Why a subscription to other replicas' events cannot open (the caller
/// retries).
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The channel every replica listens on (Redis channel, PostgreSQL
/// notification channel).
pub const CHANNEL: &str = "blaze_auth";

/// How long any one Redis call may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuthEvent {
    KeyChanged { id: String },
    UserChanged { id: String },
    Revoked { revocation: Revocation },
}

/// Where events go to reach other replicas.
#[derive(Clone)]
pub enum EventBus {
    /// One process: applying locally is all there is.
    Local,
    /// The connection is kept up (and retried while Redis is down) for as
    /// long as any copy of the bus lives.
    Redis { client: Client, _connection: Arc<Connection> },
    /// NOTIFY through the store's pool.
    Postgres,
}

impl EventBus {
    /// A Redis publisher; it connects in the background and keeps trying,
    /// so a Redis that is down at start-up delays nothing and is used once
    /// it is up. Must be called within the Tokio runtime.
    pub fn redis(url: &str) -> Result<Self, RedisError> {
        let client = client_builder(url, REDIS_TIMEOUT)?.build()?;
        let connection = Arc::new(Connection::open(&client));
        Ok(Self::Redis { client, _connection: connection })
    }

    /// Sends an event to the other replicas. Failures are logged: the
    /// periodic resync and the cache lifetimes bound what they cost.
    pub async fn publish(&self, event: &AuthEvent, postgres: Option<&deadpool_postgres::Pool>) {
        let Ok(payload) = serde_json::to_string(event) else { return };
        let result = match self {
            EventBus::Local => Ok(()),
            EventBus::Redis { client, .. } => client
                .publish::<i64, _, _>(CHANNEL, payload)
                .await
                .map(drop)
                .map_err(|error| error.to_string()),
            EventBus::Postgres => match postgres {
                Some(pool) => notify(pool, &payload).await,
                None => Err("no database pool".to_owned()),
            },
        };
        if let Err(error) = result {
            metrics::counter!("blaze_auth_event_publish_failures_total").increment(1);
            tracing::warn!(error, "cannot publish an identity event; other replicas catch up on resync");
        }
    }
}

async fn notify(pool: &deadpool_postgres::Pool, payload: &str) -> Result<(), String> {
    let client = pool.get().await.map_err(|error| error.to_string())?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map(drop)
        .map_err(|error| error.to_string())
}

/// What a subscription yields.
pub enum Incoming {
    Event(AuthEvent),
    /// The connection came back after a loss: events may have been missed,
    /// so the caller drops its caches and reloads revocations.
    Resync,
}

/// A live subscription: yields events published by any replica.
pub enum Subscription {
    Redis(ChannelSubscription),
    Postgres {
        _client: tokio_postgres::Client,
        notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
        task: tokio::task::JoinHandle<()>,
    },
}

impl Subscription {
    pub async fn redis(url: &str) -> Result<Self, SubscribeError> {
        Ok(Self::Redis(ChannelSubscription::open(url, CHANNEL, REDIS_TIMEOUT).await?))
    }

    /// A dedicated connection (not from the pool) that LISTENs.
    pub async fn postgres(config: tokio_postgres::Config) -> Result<Self, SubscribeError> {
        let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
        let (sender, notifications) = tokio::sync::mpsc::unbounded_channel();
        #[expect(
            clippy::disallowed_methods,
            reason = "tracked: the handle is kept and aborted when the listener is dropped"
        )]
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |context| connection.poll_message(context));
            while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
                if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                    if sender.send(notification.payload().to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(Self::Postgres { _client: client, notifications, task })
    }

    /// The next event; `None` when the subscription is lost (the caller
    /// resubscribes and resyncs).
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            let payload = match self {
                Subscription::Redis(subscription) => match subscription.next().await? {
                    Delivery::Message(text) => Some(text),
                    Delivery::Reconnected => return Some(Incoming::Resync),
                },
                Subscription::Postgres { notifications, .. } => Some(notifications.recv().await?),
            };
            match payload.as_deref().map(serde_json::from_str::<AuthEvent>) {
                Some(Ok(event)) => return Some(Incoming::Event(event)),
                _ => tracing::warn!("ignored an identity event that does not parse"),
            }
        }
    }

    pub async fn close(self) {
        match self {
            Subscription::Redis(subscription) => subscription.close().await,
            Subscription::Postgres { task, .. } => task.abort(),
        }
    }
}
