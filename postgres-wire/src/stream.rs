//! The socket to PostgreSQL, encrypted or not, with its read and write buffers: messages are
//! written into `write` and sent together; answers are parsed out of `read`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection's socket.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl Stream {
    pub(crate) fn is_encrypted(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The socket and its buffers.
pub(crate) struct Io {
    pub(crate) stream: Stream,
    read: BytesMut,
    /// Messages written and not sent yet.
    pub(crate) write: BytesMut,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffers: they hold rows, and during the login a password message.
        f.debug_struct("Io")
            .field("stream", &self.stream)
            .field("read", &self.read.len())
            .field("write", &self.write.len())
            .finish()
    }
}

impl Io {
    pub(crate) fn new(stream: Stream) -> Self {
        Io {
            stream,
            read: BytesMut::with_capacity(8 * 1024),
            write: BytesMut::with_capacity(1024),
        }
    }

    /// Sends everything written so far.
    pub(crate) async fn send(&mut self) -> io::Result<()> {
        let result = self.stream.write_all(&self.write).await;
        self.write.clear();
        result?;
        self.stream.flush().await
    }

    /// The next whole message already read, if any.
    pub(crate) fn parse(&mut self) -> io::Result<Option<Message>> {
        Message::parse(&mut self.read)
    }

    /// Reads what the socket has; `0` once the server closed it.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        self.read.reserve(8 * 1024);
        self.stream.read_buf(&mut self.read).await
    }
}
