//! Internal-protocol frames on a socket, shared by both ends: [`FrameReader`] turns a byte
//! stream into frames, [`write_coalesced`] writes queued frames in as few system calls as it can.
//!
//! The writer receives frames from a channel, encodes every frame that is ready into one buffer
//! and writes the buffer with one call. When only one frame is ready it yields to the runtime
//! once first, so that tasks about to queue a frame can do so: under load this turns one write
//! per frame into one write per dozens of frames, at the cost of one scheduler pass.

use bytes::BytesMut;
use limedb_proto::{decode, Frame, ProtoError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The read buffer grows in steps of this size.
const READ_CHUNK: usize = 64 * 1024;

/// Why reading frames stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed (or closed in the middle of a frame).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid frame; the stream cannot be trusted any more.
    #[error("malformed frame: {0}")]
    Malformed(#[from] ProtoError),
}

/// Reads frames from a byte stream, checking each length against a limit before buffering it.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `reader`, refusing frames longer than `max_frame_bytes`.
    pub fn new(reader: R, max_frame_bytes: usize) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame_bytes,
        }
    }

    /// The next frame, or `None` when the peer closed the stream between frames. Cancel-safe:
    /// bytes already read stay buffered for the next call.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, self.max_frame_bytes)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
        }
    }
}

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
    use bytes::Bytes;
    use limedb_proto::Request;

    #[tokio::test]
    async fn reader_yields_frames_then_none_and_flags_a_cut_frame() {
        let mut bytes = BytesMut::new();
        for id in 1..=3 {
            Frame::request(
                id,
                Request::Get {
                    key: Bytes::from("k"),
                },
            )
            .encode(&mut bytes);
        }
        let whole = bytes.to_vec();
        let mut reader = FrameReader::new(&whole[..], 1024);
        for id in 1..=3 {
            assert_eq!(
                reader.next().await.expect("frame").map(|f| f.request_id),
                Some(id)
            );
        }
        assert!(reader.next().await.expect("clean end").is_none());

        let cut = &whole[..whole.len() - 1];
        let mut reader = FrameReader::new(cut, 1024);
        for _ in 0..2 {
            assert!(reader.next().await.expect("frame").is_some());
        }
        assert!(matches!(reader.next().await, Err(ReadError::Io(_))));

        let mut reader = FrameReader::new(&b"garbage, not a frame at all"[..], 1024);
        assert!(matches!(reader.next().await, Err(ReadError::Malformed(_))));
    }

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
