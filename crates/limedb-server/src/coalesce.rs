//! Writing queued frames to a socket in as few system calls as possible, shared by both ends of
//! the internal protocol.
//!
//! A writer task receives frames from a channel, encodes every frame that is ready into one
//! buffer and writes the buffer with one call. When only one frame is ready it yields to the
//! runtime once first, so that tasks about to queue a frame can do so: under load this turns
//! one write per frame into one write per dozens of frames, at the cost of one scheduler pass.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The writer writes once this many bytes are buffered, even if more frames are ready.
pub const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Writes every item received on `items` (encoded by `encode`) to `writer` until the channel
/// closes (then it returns `Ok`) or a write fails.
pub async fn write_coalesced<T, W>(
    writer: &mut W,
    items: &mut mpsc::Receiver<T>,
    encode: impl Fn(T, &mut BytesMut),
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(64 * 1024);
    while let Some(item) = items.recv().await {
        encode(item, &mut out);
        let mut frames = 1;
        let mut yielded = false;
        while out.len() < WRITE_BATCH_BYTES {
            match items.try_recv() {
                Ok(item) => {
                    encode(item, &mut out);
                    frames += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) if frames == 1 && !yielded => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        writer.write_all(&out).await?;
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn everything_sent_is_written_in_order() {
        let (tx, mut rx) = mpsc::channel::<u32>(1024);
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            write_coalesced(&mut client, &mut rx, |n, out| {
                out.extend_from_slice(&n.to_le_bytes())
            })
            .await
        });
        for n in 0..10_000u32 {
            tx.send(n).await.expect("send");
        }
        drop(tx);
        writer.await.expect("join").expect("write");
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut bytes)
            .await
            .expect("read");
        let got: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    }
}
