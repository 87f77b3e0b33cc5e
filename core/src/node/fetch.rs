//! Getting content a region does not hold ("cold data") from regions that do.

use std::ops::Range;

use crate::Result;
use crate::store::content::ContentRef;

/// Makes byte ranges of content locally present: fetches the missing chunks
/// from a region that holds them, verifies each against the content's manifest
/// (whose hash is the content id), and stores them in the local content store.
#[tonic::async_trait]
pub trait ChunkSource: Send + Sync {
    /// Ensures the bytes `range` of `content` are present locally. Cancel-safe:
    /// chunks stored before cancellation stay stored and verified.
    async fn ensure(&self, content: ContentRef, range: Range<u64>) -> Result<()>;
}
