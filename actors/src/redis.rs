//! The one way Blaze's actors make a Redis client (an explicit timeout on
//! every call and on connecting, one attempt per command, callers decide
//! what a failure means, and a reconnect policy that never gives up), and
//! subscribe to a pub/sub channel.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Client, Config, ReconnectPolicy};

/// What a Redis call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis_url: {0}")]
    InvalidUrl(fred::error::Error),
    #[error("{0}")]
    Redis(#[from] fred::error::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A script answered in a shape its caller does not know.
    #[error("the {script} script answered {numbers} numbers")]
    UnexpectedReply { script: &'static str, numbers: usize },
}

/// A Redis call bounded by `timeout`, its error made a [`RedisError`].
pub async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = fred::prelude::FredResult<T>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(RedisError::Timeout(timeout)),
    }
}

pub fn client_builder(url: &str, timeout: Duration) -> Result<Builder, RedisError> {
    let config = Config::from_url(url).map_err(RedisError::InvalidUrl)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|connection| {
            connection.connection_timeout = timeout;
            connection.internal_command_timeout = timeout;
            connection.max_command_attempts = 1;
        })
        .with_performance_config(|performance| performance.default_command_timeout = timeout)
        .set_policy(ReconnectPolicy::new_constant(0, 250));
    Ok(builder)
}

/// A client's connection, kept up in the background: the first attempt
/// is made at once, and if it fails (Redis down when Blaze starts; the
/// reconnect policy covers only connections that were up) it is made again
/// every 250 ms. Dropping it stops the attempts.
pub struct Connection {
    task: tokio::task::AbortHandle,
}

impl Connection {
    pub fn open(client: &Client) -> Self {
        let client = client.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "tracked: the handle is kept and aborted when its owner is dropped"
        )]
        let task = tokio::spawn(async move {
            loop {
                // Resolves only when the connection ends for good.
                if let Ok(Ok(())) = client.connect().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self { task: task.abort_handle() }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a channel subscription yields.
pub enum Delivery {
    Message(String),
    /// The connection came back after a loss: messages may have been
    /// missed meanwhile.
    Reconnected,
}

/// A subscription to one pub/sub channel on a connection of its own,
/// resubscribed after each reconnection.
pub struct ChannelSubscription {
    client: SubscriberClient,
    messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    resubscribe: tokio::task::JoinHandle<()>,
}

impl ChannelSubscription {
    pub async fn open(url: &str, channel: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = client_builder(url, timeout)?.build_subscriber_client()?;
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        client.init().await?;
        let resubscribe = client.manage_subscriptions();
        client.subscribe(channel).await?;
        Ok(Self { client, messages, reconnects, resubscribe })
    }

    /// The next delivery; `None` when the subscription is lost for good.
    pub async fn next(&mut self) -> Option<Delivery> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(message) => match message.value.as_string() {
                        Some(text) => return Some(Delivery::Message(text)),
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => return Some(Delivery::Reconnected),
                    Err(RecvError::Closed) => return None,
                },
                reconnected = self.reconnects.recv() => match reconnected {
                    Ok(_) | Err(RecvError::Lagged(_)) => return Some(Delivery::Reconnected),
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    pub async fn close(self) {
        self.resubscribe.abort();
        let _ = self.client.quit().await;
    }
}
