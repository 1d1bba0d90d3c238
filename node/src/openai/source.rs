//! Where tokens come from. The frontend never calls the engine directly: it asks a
//! [`TokenSource`], which is the local engine today and a remote decode worker (with leases and
//! migration) later, so the HTTP layer stays the same when generation moves elsewhere.

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use stator_gpu::engine::{EngineHandle, SubmitError};
use stator_gpu::request::{EngineEvent, GenerateRequest};

/// The events of one generation. Dropping the stream cancels the generation wherever it runs.
pub type EngineEvents = BoxStream<'static, EngineEvent>;

/// Why a generation could not be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// The worker's admission queue is full; the client should retry shortly.
    #[error("the request queue is full")]
    Overloaded,
    #[error("the prompt has {tokens} tokens, the limit is {max}")]
    PromptTooLong { tokens: usize, max: usize },
    #[error("invalid generation request: {0}")]
    Invalid(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// No worker can take the request right now (no decode worker up, lease not granted).
    #[error("no worker is available: {0}")]
    Unavailable(String),
}

/// Starts generations somewhere and streams their events back.
pub trait TokenSource: Send + Sync + 'static {
    /// Starts generating `req` and returns its events. The stream ends after `Finished` or
    /// `Failed`; dropping it early cancels the sequence and frees its KV blocks.
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<EngineEvents, GenerateError>>;
}

impl From<SubmitError> for GenerateError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::QueueFull { .. } => Self::Overloaded,
            SubmitError::PromptTooLong { tokens, max } => Self::PromptTooLong { tokens, max },
            SubmitError::Invalid(message) => Self::Invalid(message),
            SubmitError::Shutdown => Self::ShuttingDown,
        }
    }
}

impl From<crate::worker::wire::Rejection> for GenerateError {
    fn from(rejection: crate::worker::wire::Rejection) -> Self {
        use crate::worker::wire::Rejection;
        match rejection {
            Rejection::QueueFull => Self::Overloaded,
            Rejection::PromptTooLong { tokens, max } => Self::PromptTooLong { tokens, max },
            Rejection::Invalid(message) => Self::Invalid(message),
            Rejection::ShuttingDown => Self::ShuttingDown,
        }
    }
}

/// The engine in this process.
impl TokenSource for EngineHandle {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<EngineEvents, GenerateError>> {
        let submitted = self.submit(req).map_err(GenerateError::from);
        Box::pin(async move {
            let events = submitted?;
            // The unfold owns the engine's stream, so dropping ours drops theirs (= cancel).
            Ok(stream::unfold(events, |mut events| async move {
                let event = events.next().await?;
                Some((event, events))
            })
            .boxed())
        })
    }
}
