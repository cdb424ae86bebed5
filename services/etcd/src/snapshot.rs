//! Moving a snapshot stream from etcd to a reader, chunk by chunk.

use crate::client::EtcdClient;
use crate::error::{EtcdError, Operation};
use tokio::sync::mpsc;

/// Snapshot chunks in flight between etcd and the reader: the back-pressure
/// that keeps the database out of memory.
pub(crate) const SNAPSHOT_CHUNKS_BUFFERED: usize = 4;

/// One chunk of a snapshot and how many bytes etcd says are still to come.
pub(crate) struct Chunk {
    pub blob: Vec<u8>,
    pub remaining_bytes: u64,
}

/// Where chunks come from: etcd's stream, or a scripted one in tests.
pub(crate) trait ChunkSource {
    /// The next chunk, or `None` when the stream ended.
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, EtcdError>;
    /// The stream's failure when it ended before etcd's last chunk.
    fn cut(&self, received_bytes: u64) -> EtcdError;
}

pub(crate) struct EtcdSnapshot {
    pub stream: etcd_client::SnapshotStreaming,
    pub client: EtcdClient,
}

impl ChunkSource for EtcdSnapshot {
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, EtcdError> {
        let message = self.client.call(Operation::ReadSnapshot, self.stream.message()).await?;
        Ok(message.map(|m| Chunk { blob: m.blob().to_vec(), remaining_bytes: m.remaining_bytes() }))
    }

    fn cut(&self, received_bytes: u64) -> EtcdError {
        EtcdError::SnapshotCut {
            operation: Operation::ReadSnapshot,
            endpoints: self.client.endpoint.label(),
            received_bytes,
        }
    }
}

/// Sends every chunk to `chunks` until etcd's last one (remaining 0). A
/// failure, or an end before the last chunk, is sent as the final item. Stops
/// when the reader goes away.
pub(crate) async fn pump(mut source: impl ChunkSource, chunks: mpsc::Sender<Result<Vec<u8>, EtcdError>>) {
    let mut received_bytes: u64 = 0;
    let mut complete = false;
    loop {
        let next = match source.next_chunk().await {
            Ok(Some(chunk)) => {
                received_bytes += chunk.blob.len() as u64;
                complete = chunk.remaining_bytes == 0;
                Ok(chunk.blob)
            }
            Ok(None) if complete => return,
            Ok(None) => Err(source.cut(received_bytes)),
            Err(err) => Err(err),
        };
        let failed = next.is_err();
        if chunks.send(next).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Chunks as given, then the end of the stream; counts what was asked for.
    struct Scripted {
        chunks: VecDeque<(&'static [u8], u64)>,
        asked: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn new(chunks: &[(&'static [u8], u64)]) -> (Self, Arc<AtomicUsize>) {
            let asked = Arc::new(AtomicUsize::new(0));
            (Self { chunks: chunks.iter().copied().collect(), asked: asked.clone() }, asked)
        }
    }

    impl ChunkSource for Scripted {
        async fn next_chunk(&mut self) -> Result<Option<Chunk>, EtcdError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(self.chunks.pop_front().map(|(blob, remaining_bytes)| Chunk { blob: blob.to_vec(), remaining_bytes }))
        }

        fn cut(&self, received_bytes: u64) -> EtcdError {
            EtcdError::SnapshotCut {
                operation: Operation::ReadSnapshot,
                endpoints: "scripted".to_owned(),
                received_bytes,
            }
        }
    }

    async fn collect(source: Scripted) -> Vec<Result<Vec<u8>, EtcdError>> {
        let (chunks, mut receiver) = mpsc::channel(SNAPSHOT_CHUNKS_BUFFERED);
        tokio::spawn(pump(source, chunks));
        let mut items = Vec::new();
        while let Some(item) = receiver.recv().await {
            items.push(item);
        }
        items
    }

    #[tokio::test]
    async fn a_complete_stream_yields_its_chunks_and_nothing_else() {
        let (source, _) = Scripted::new(&[(b"ab", 3), (b"cde", 0)]);

        let items = collect(source).await;

        let chunks: Vec<Vec<u8>> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks, [b"ab".to_vec(), b"cde".to_vec()]);
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_the_last_chunk_ends_with_an_error() {
        let (source, _) = Scripted::new(&[(b"ab", 3)]);

        let mut items = collect(source).await;

        let last = items.pop().unwrap().unwrap_err();
        assert!(matches!(last, EtcdError::SnapshotCut { received_bytes: 2, .. }), "{last:?}");
        assert_eq!(items.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [b"ab".to_vec()]);
    }

    #[tokio::test]
    async fn the_pump_stops_when_the_reader_goes_away() {
        let many: Vec<(&'static [u8], u64)> = (0..100).map(|n| (&b"x"[..], 100 - n)).collect();
        let (source, asked) = Scripted::new(&many);
        let (chunks, mut receiver) = mpsc::channel(1);
        let pumping = tokio::spawn(pump(source, chunks));

        receiver.recv().await.unwrap().unwrap();
        drop(receiver);
        pumping.await.unwrap();

        assert!(asked.load(Ordering::SeqCst) < 5, "asked for {} chunks", asked.load(Ordering::SeqCst));
    }
}
