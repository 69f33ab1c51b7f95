//! SPDY/3.1 framing, as Kubernetes' streaming requests use it: kubectl 1.29 and older upgrade
//! `exec`, `attach` and `port-forward` to SPDY/3.1 (kubelet speaks it through moby's
//! spdystream), and open one stream per channel (error, stdin, stdout, stderr, resize), told
//! apart by a `streamtype` header.
//!
//! Only what that use needs: control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING,
//! GOAWAY, HEADERS and WINDOW_UPDATE, and data frames. Name/value header blocks are compressed
//! with zlib over the whole session in each direction, seeded with SPDY/3's dictionary
//! ([`dictionary`]). Flow control is not enforced (neither does spdystream).

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version in every control frame.
const VERSION: u16 = 3;

/// Control frame types.
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// The flag that ends the sender's half of a stream.
pub const FLAG_FIN: u8 = 0x01;

/// The largest frame payload accepted (the length field allows 16 MiB; nothing in exec or
/// attach comes near this).
const MAX_PAYLOAD: usize = 1 << 20;

/// The largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control frame: its type, flags and payload.
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    /// A data frame of `stream`.
    Data {
        stream: u32,
        flags: u8,
        payload: Vec<u8>,
    },
}

/// Reads the next frame; `None` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(invalid(format!(
            "a SPDY frame of {len} bytes (at most {MAX_PAYLOAD})"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version} (this speaks 3)")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(Frame::Control {
            kind,
            flags,
            payload,
        }))
    } else {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        Ok(Some(Frame::Data {
            stream,
            flags,
            payload,
        }))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Frame head fields after the first 32 bits: flags and a 24-bit length.
fn flags_and_length(out: &mut Vec<u8>, flags: u8, len: usize) {
    debug_assert!(len < 1 << 24);
    out.push(flags);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
}

/// A control frame of `kind` with `payload`.
pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    flags_and_length(&mut out, flags, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A data frame of `stream` (with [`FLAG_FIN`] when `fin`).
pub fn data(stream: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    flags_and_length(&mut out, if fin { FLAG_FIN } else { 0 }, payload.len());
    out.extend_from_slice(payload);
    out
}

/// The stream id that a SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS or WINDOW_UPDATE payload
/// starts with.
pub fn stream_of(payload: &[u8]) -> io::Result<u32> {
    match payload.get(..4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff),
        None => Err(invalid(
            "a SPDY control frame too short for its stream id".into(),
        )),
    }
}

/// SPDY/3's header compression dictionary: length-prefixed header names and values, then a
/// run of common status lines, dates and content types.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505",
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
        "application/xhtml+xml,text/plain,text/javascript,",
        "publicprivatemax-age=gzip,deflate,sdch",
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for w in WORDS {
        out.extend_from_slice(&(w.len() as u32).to_be_bytes());
        out.extend_from_slice(w.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// One session's header compression: a zlib stream each way, seeded with [`dictionary`].
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
    dictionary: Vec<u8>,
}

impl std::fmt::Debug for HeaderCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCodec").finish_non_exhaustive()
    }
}

impl Default for HeaderCodec {
    fn default() -> Self {
        HeaderCodec::new()
    }
}

impl HeaderCodec {
    /// A codec at the start of a session.
    pub fn new() -> HeaderCodec {
        let dictionary = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary)
            .expect("a fresh zlib stream takes a dictionary");
        HeaderCodec {
            inflate: Decompress::new(true),
            deflate,
            dictionary,
        }
    }

    /// Decompresses and parses the name/value block that ends a SYN_STREAM, SYN_REPLY or
    /// HEADERS frame. Names come lower-cased, as SPDY sends them; a value holding several
    /// (NUL-separated) stays as it came.
    pub fn decode(&mut self, block: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut plain: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if plain.len() == plain.capacity() {
                if plain.len() >= MAX_HEADER_BLOCK {
                    return Err(invalid("a SPDY header block over 64 KiB".into()));
                }
                plain.reserve(plain.len());
            }
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before) as usize..];
            match result {
                // Room left over: everything this block holds is out.
                Ok(Status::StreamEnd) => break,
                Ok(_) if plain.len() < plain.capacity() => break,
                Ok(_) => continue,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| invalid(format!("SPDY header dictionary: {e}")))?;
                }
                Err(e) => return Err(invalid(format!("SPDY header block: {e}"))),
            }
        }
        parse_block(&plain)
    }

    /// Compresses `headers` into a name/value block (names lower-cased).
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            for s in [name.as_str(), value] {
                plain.extend_from_slice(&(s.len() as u32).to_be_bytes());
                plain.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            if out.len() == out.capacity() {
                out.reserve(64);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("compressing into memory cannot fail");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once every byte went in and the flush left room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// Parses a decompressed name/value block.
fn parse_block(mut b: &[u8]) -> io::Result<Vec<(String, String)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
        if b.len() < n {
            return Err(invalid("a SPDY header block ends early".into()));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn length(b: &mut &[u8]) -> io::Result<usize> {
        let n = take(b, 4)?;
        Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
    }
    let count = length(&mut b)?;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = length(&mut b)?;
        let name = String::from_utf8_lossy(take(&mut b, n)?).into_owned();
        let n = length(&mut b)?;
        let value = String::from_utf8_lossy(take(&mut b, n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// A SYN_REPLY for `stream` with `block` (from [`HeaderCodec::encode`]).
pub fn syn_reply(stream: u32, block: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + block.len());
    payload.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(block);
    control(SYN_REPLY, 0, &payload)
}

/// A GOAWAY naming the last stream this side processed, with status OK.
pub fn goaway(last_stream: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8);
    payload.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &payload)
}

/// A SYN_STREAM opening `stream` with `block` (clients open streams; this is for tests and
/// for clients written on top of this module).
pub fn syn_stream(stream: u32, block: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(10 + block.len());
    payload.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    payload.extend_from_slice(block);
    control(SYN_STREAM, 0, &payload)
}

/// The header block of a SYN_STREAM payload (after stream id, associated stream id, priority
/// and slot).
pub fn syn_stream_block(payload: &[u8]) -> io::Result<&[u8]> {
    payload
        .get(10..)
        .ok_or_else(|| invalid("a SPDY SYN_STREAM too short for its header block".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adler-32, as zlib's DICTID names a dictionary.
    fn adler32(b: &[u8]) -> u32 {
        let (mut a, mut s) = (1u32, 0u32);
        for &x in b {
            a = (a + x as u32) % 65521;
            s = (s + a) % 65521;
        }
        (s << 16) | a
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // The DICTID SPDY/3 peers put in their zlib streams.
        assert_eq!(adler32(&d), 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip_across_a_session() {
        let (mut client, mut server) = (HeaderCodec::new(), HeaderCodec::new());
        for kind in ["error", "stdin", "stdout", "stderr"] {
            let block = client.encode(&[("streamType", kind), ("x", "")]);
            let headers = server.decode(&block).unwrap();
            assert_eq!(
                headers,
                vec![
                    ("streamtype".to_string(), kind.to_string()),
                    ("x".into(), "".into())
                ]
            );
        }
        // The first block names the dictionary (FDICT, then its Adler-32).
        let first = HeaderCodec::new().encode(&[]);
        assert_eq!(first[1] & 0x20, 0x20);
        assert_eq!(&first[2..6], &0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn big_header_blocks_decode_and_bad_ones_are_errors() {
        let (mut client, mut server) = (HeaderCodec::new(), HeaderCodec::new());
        let long = "v".repeat(20_000);
        let block = client.encode(&[("a", &long)]);
        assert_eq!(server.decode(&block).unwrap()[0].1, long);
        let mut other = HeaderCodec::new();
        assert!(other.decode(b"not zlib at all").is_err());
        assert!(parse_block(&[0, 0, 0, 2, 0, 0, 0, 1, b'a']).is_err());
    }

    #[tokio::test]
    async fn frames_are_read_as_written() {
        let mut wire = Vec::new();
        wire.extend(data(5, true, b"hello"));
        wire.extend(control(PING, 0, &7u32.to_be_bytes()));
        wire.extend(syn_reply(3, b"block"));
        let mut r = wire.as_slice();
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::Data {
                stream: 5,
                flags: FLAG_FIN,
                payload: b"hello".to_vec()
            })
        );
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::Control {
                kind: PING,
                flags: 0,
                payload: 7u32.to_be_bytes().to_vec()
            })
        );
        let Some(Frame::Control { kind, payload, .. }) = read_frame(&mut r).await.unwrap() else {
            panic!("a control frame");
        };
        assert_eq!((kind, stream_of(&payload).unwrap()), (SYN_REPLY, 3));
        assert_eq!(&payload[4..], b"block");
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
        // A version 2 control frame and an oversized frame are errors.
        let mut v2 = control(PING, 0, &[0; 4]);
        v2[1] = 2;
        assert!(read_frame(&mut v2.as_slice()).await.is_err());
        let huge = [0u8, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut huge.as_slice()).await.is_err());
    }
}
