//! The encryption around a system backup: a versioned header, a key derived from the
//! operator's passphrase with argon2id, and XChaCha20-Poly1305 in the STREAM construction
//! (RustCrypto `aead-stream`, big-endian 32-bit counter with a last-chunk flag). Every chunk
//! carries the whole header as associated data, so a changed header, a changed, dropped,
//! repeated or reordered chunk, and a file cut at any point (including at a chunk boundary)
//! all fail authentication.
//!
//! File layout (big-endian):
//! `MAGIC(16) version(2) kdf(1) aead(1) m_cost_kib(4) t_cost(4) p_cost(4) salt(16) nonce(19)
//! chunk_size(4) created_at(8) verifier(32)`, then the chunks: each `chunk_size + 16` bytes
//! except the last, which is shorter (it holds fewer than `chunk_size` plaintext bytes,
//! possibly none).
//!
//! The argon2id output is 64 bytes: the first half is the AEAD key, the second half a
//! passphrase verifier kept in the header (the approach of WinZip AES' password verification
//! value), so a wrong passphrase is told apart from a damaged file before any chunk is read.

use std::io::{self, Read, Write};

use aead_stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 16] = b"RAMPART-SYSBAK\n\0";
pub const FORMAT_VERSION: u16 = 1;
const KDF_ARGON2ID: u8 = 1;
const AEAD_XCHACHA20POLY1305_STREAM_BE32: u8 = 1;
pub const HEADER_LEN: usize = 16 + 2 + 1 + 1 + 4 + 4 + 4 + 16 + 19 + 4 + 8 + 32;
const TAG_LEN: usize = 16;
pub const DEFAULT_CHUNK: u32 = 64 * 1024;

/// Cost of the passphrase derivation. Stored in each file, so it can grow without breaking
/// older backups; bounded when read so a forged header cannot make a restore eat the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's first argon2id choice: 19 MiB is its floor; 64 MiB, 3 passes costs well under a
    /// second here and once per backup.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;
const MAX_CHUNK: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a Rampart system backup (the file does not start with the backup header)")]
    NotABackup,
    #[error("the file ends inside its header: it is truncated")]
    TruncatedHeader,
    #[error("backup format version {0} is not supported by this binary (it reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("the header is damaged: {0}")]
    BadHeader(&'static str),
    #[error("wrong passphrase (or a damaged header): the passphrase does not match this backup")]
    WrongPassphrase,
    #[error(
        "the file is damaged: chunk {chunk} (at byte {offset}) fails authentication (changed, reordered or corrupted data)"
    )]
    Damaged { chunk: u64, offset: u64 },
    #[error("the file is truncated: it ends after chunk {chunk} without its final chunk")]
    Truncated { chunk: u64 },
    #[error("the file has data after its final chunk (appended or corrupted)")]
    TrailingData,
    #[error("key derivation: {0}")]
    Kdf(String),
    #[error("operating system random source: {0}")]
    Random(String),
    #[error("encryption failed")]
    Encrypt,
}

impl EnvelopeError {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// The plain header: nothing secret, enough to list and identify a backup without its
/// passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub kdf: KdfParams,
    pub salt: [u8; 16],
    pub nonce: [u8; 19],
    pub chunk_size: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub verifier: [u8; 32],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        let mut put = |b: &[u8]| {
            w[..b.len()].copy_from_slice(b);
            w = &mut std::mem::take(&mut w)[b.len()..];
        };
        put(MAGIC);
        put(&self.version.to_be_bytes());
        put(&[KDF_ARGON2ID, AEAD_XCHACHA20POLY1305_STREAM_BE32]);
        put(&self.kdf.m_cost_kib.to_be_bytes());
        put(&self.kdf.t_cost.to_be_bytes());
        put(&self.kdf.p_cost.to_be_bytes());
        put(&self.salt);
        put(&self.nonce);
        put(&self.chunk_size.to_be_bytes());
        put(&self.created_at.to_be_bytes());
        put(&self.verifier);
        out
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, EnvelopeError> {
        if &b[..16] != MAGIC {
            return Err(EnvelopeError::NotABackup);
        }
        let mut at = 16;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let u32_at = |s: &[u8]| u32::from_be_bytes(s.try_into().expect("4 bytes"));
        let version = u16::from_be_bytes(take(2).try_into().expect("2 bytes"));
        if version != FORMAT_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let algs = take(2);
        if algs != [KDF_ARGON2ID, AEAD_XCHACHA20POLY1305_STREAM_BE32] {
            return Err(EnvelopeError::BadHeader("unknown key derivation or cipher"));
        }
        let kdf = KdfParams {
            m_cost_kib: u32_at(take(4)),
            t_cost: u32_at(take(4)),
            p_cost: u32_at(take(4)),
        };
        if kdf.m_cost_kib > MAX_M_COST_KIB || kdf.t_cost > MAX_T_COST || kdf.p_cost > MAX_P_COST || kdf.p_cost == 0 {
            return Err(EnvelopeError::BadHeader("key derivation cost out of bounds"));
        }
        let salt = take(16).try_into().expect("16 bytes");
        let nonce = take(19).try_into().expect("19 bytes");
        let chunk_size = u32_at(take(4));
        if !(1024..=MAX_CHUNK).contains(&chunk_size) {
            return Err(EnvelopeError::BadHeader("chunk size out of bounds"));
        }
        let created_at = i64::from_be_bytes(take(8).try_into().expect("8 bytes"));
        let verifier = take(32).try_into().expect("32 bytes");
        Ok(Header {
            version,
            kdf,
            salt,
            nonce,
            chunk_size,
            created_at,
            verifier,
        })
    }

    /// Reads and decodes the header at the start of `r`.
    pub fn read_from(r: &mut impl Read) -> Result<Header, io::Error> {
        let mut buf = [0u8; HEADER_LEN];
        let n = read_full(r, &mut buf)?;
        if n < MAGIC.len() || (n < HEADER_LEN && buf[..MAGIC.len()] != MAGIC[..]) {
            return Err(EnvelopeError::NotABackup.into_io());
        }
        if n < HEADER_LEN {
            return Err(EnvelopeError::TruncatedHeader.into_io());
        }
        Header::decode(&buf).map_err(EnvelopeError::into_io)
    }
}

/// argon2id(passphrase, salt) → (AEAD key, verifier).
fn derive(
    passphrase: &[u8],
    salt: &[u8; 16],
    kdf: KdfParams,
) -> Result<(Zeroizing<[u8; 32]>, [u8; 32]), EnvelopeError> {
    let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(64))
        .map_err(|e| EnvelopeError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 64]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| EnvelopeError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out[..32]);
    let mut verifier = [0u8; 32];
    verifier.copy_from_slice(&out[32..]);
    Ok((key, verifier))
}

fn random<const N: usize>() -> Result<[u8; N], EnvelopeError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| EnvelopeError::Random(e.to_string()))?;
    Ok(b)
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encrypts everything written to it; [`EncryptWriter::finish`] writes the final chunk.
pub struct EncryptWriter<W: Write> {
    inner: W,
    stream: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: [u8; HEADER_LEN],
    chunk: usize,
    buf: Zeroizing<Vec<u8>>,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header (fresh salt and nonce) and returns the writer of the plaintext.
    pub fn new(
        mut inner: W,
        passphrase: &[u8],
        kdf: KdfParams,
        chunk_size: u32,
        created_at: i64,
    ) -> Result<EncryptWriter<W>, io::Error> {
        let salt = random::<16>().map_err(EnvelopeError::into_io)?;
        let nonce = random::<19>().map_err(EnvelopeError::into_io)?;
        let (key, verifier) = derive(passphrase, &salt, kdf).map_err(EnvelopeError::into_io)?;
        let header = Header {
            version: FORMAT_VERSION,
            kdf,
            salt,
            nonce,
            chunk_size,
            created_at,
            verifier,
        };
        let aad = header.encode();
        inner.write_all(&aad)?;
        let key: &[u8; 32] = &key;
        let cipher = XChaCha20Poly1305::new(key.into());
        let stream = EncryptorBE32::from_aead(cipher, (&nonce).into());
        Ok(EncryptWriter {
            inner,
            stream: Some(stream),
            aad,
            chunk: chunk_size as usize,
            buf: Zeroizing::new(Vec::with_capacity(chunk_size as usize + TAG_LEN)),
        })
    }

    fn seal_full_chunk(&mut self) -> io::Result<()> {
        let stream = self.stream.as_mut().expect("not finished");
        stream
            .encrypt_next_in_place(&self.aad, &mut *self.buf)
            .map_err(|_| EnvelopeError::Encrypt.into_io())?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals the last chunk (fewer than `chunk_size` bytes, possibly none) and returns the
    /// underlying writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        let stream = self.stream.take().expect("finish once");
        stream
            .encrypt_last_in_place(&self.aad, &mut *self.buf)
            .map_err(|_| EnvelopeError::Encrypt.into_io())?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        // A full buffer is never the last chunk: the last one is always shorter, so the
        // reader knows which is which from the length alone.
        if self.buf.len() == self.chunk {
            self.seal_full_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts and authenticates a backup as it is read. Errors are `io::Error`s of kind
/// `InvalidData` wrapping an [`EnvelopeError`] (see [`envelope_error`]). Authentication of the
/// end of the stream happens only when the final chunk is read: read to the end.
pub struct DecryptReader<R: Read> {
    inner: R,
    header: Header,
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: [u8; HEADER_LEN],
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    chunks: u64,
    done: bool,
}

impl<R: Read> DecryptReader<R> {
    /// Reads the header and checks the passphrase against its verifier.
    pub fn new(mut inner: R, passphrase: &[u8]) -> io::Result<DecryptReader<R>> {
        let header = Header::read_from(&mut inner)?;
        let (key, verifier) = derive(passphrase, &header.salt, header.kdf).map_err(EnvelopeError::into_io)?;
        if !bool::from(verifier.ct_eq(&header.verifier)) {
            return Err(EnvelopeError::WrongPassphrase.into_io());
        }
        let key: &[u8; 32] = &key;
        let cipher = XChaCha20Poly1305::new(key.into());
        let stream = DecryptorBE32::from_aead(cipher, (&header.nonce).into());
        Ok(DecryptReader {
            aad: header.encode(),
            buf: Zeroizing::new(Vec::with_capacity(header.chunk_size as usize + TAG_LEN)),
            header,
            inner,
            stream: Some(stream),
            pos: 0,
            chunks: 0,
            done: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let full = self.header.chunk_size as usize + TAG_LEN;
        self.buf.clear();
        self.buf.resize(full, 0);
        self.pos = 0;
        let n = read_full(&mut self.inner, &mut self.buf)?;
        self.buf.truncate(n);
        let offset = HEADER_LEN as u64 + self.chunks * full as u64;
        let damaged = EnvelopeError::Damaged {
            chunk: self.chunks,
            offset,
        };
        if n == full {
            self.stream
                .as_mut()
                .expect("not done")
                .decrypt_next_in_place(&self.aad, &mut *self.buf)
                .map_err(|_| damaged.into_io())?;
        } else if n == 0 && self.chunks > 0 {
            return Err(EnvelopeError::Truncated { chunk: self.chunks - 1 }.into_io());
        } else if n < TAG_LEN {
            return Err(EnvelopeError::Truncated { chunk: self.chunks }.into_io());
        } else {
            // A short chunk must be the final one: a file cut inside a chunk fails here too,
            // because that chunk was sealed as "not last".
            self.stream
                .take()
                .expect("not done")
                .decrypt_last_in_place(&self.aad, &mut *self.buf)
                .map_err(|_| damaged.into_io())?;
            let mut extra = [0u8; 1];
            if read_full(&mut self.inner, &mut extra)? != 0 {
                return Err(EnvelopeError::TrailingData.into_io());
            }
            self.done = true;
        }
        self.chunks += 1;
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The envelope error inside an I/O error, if that is what it is.
pub fn envelope_error(e: &io::Error) -> Option<&EnvelopeError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<EnvelopeError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests exercise the construction, not the cost.
    const FAST: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn seal(plain: &[u8], chunk: u32) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), b"correct horse battery", FAST, chunk, 1_700_000_000).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    fn open(file: &[u8], pass: &[u8]) -> Result<Vec<u8>, io::Error> {
        let mut r = DecryptReader::new(file, pass)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn kind(e: io::Error) -> String {
        let env = envelope_error(&e).unwrap_or_else(|| panic!("not an envelope error: {e}"));
        format!("{env:?}").split([' ', '{', '(']).next().unwrap().to_string()
    }

    fn plaintext(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn spec_14_2_1_round_trip_at_every_chunk_boundary() {
        for n in [0, 1, 1023, 1024, 1025, 2048, 5000] {
            let p = plaintext(n);
            let f = seal(&p, 1024);
            assert_eq!(f.len(), HEADER_LEN + n + (n / 1024 + 1) * TAG_LEN, "n={n}");
            assert_eq!(open(&f, b"correct horse battery").unwrap(), p, "n={n}");
        }
    }

    #[test]
    fn spec_14_2_1_header_is_versioned_and_round_trips() {
        let f = seal(b"x", 1024);
        let h = Header::read_from(&mut &f[..]).unwrap();
        assert_eq!(h.version, FORMAT_VERSION);
        assert_eq!(h.created_at, 1_700_000_000);
        assert_eq!(h.kdf, FAST);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let mut v2 = f.clone();
        v2[17] = 2;
        assert_eq!(
            kind(open(&v2, b"correct horse battery").unwrap_err()),
            "UnsupportedVersion"
        );
    }

    #[test]
    fn spec_14_2_1_wrong_passphrase_is_named() {
        let f = seal(&plaintext(3000), 1024);
        assert_eq!(kind(open(&f, b"wrong").unwrap_err()), "WrongPassphrase");
    }

    #[test]
    fn spec_14_2_1_any_flipped_byte_after_the_magic_fails() {
        let f = seal(&plaintext(2500), 1024);
        for i in 16..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x40;
            let e = open(&g, b"correct horse battery").expect_err(&format!("byte {i} flipped went unnoticed"));
            assert!(envelope_error(&e).is_some(), "byte {i}: {e}");
        }
    }

    #[test]
    fn spec_14_2_1_truncation_anywhere_fails() {
        let f = seal(&plaintext(2048 + 100), 1024);
        for len in 0..f.len() {
            let e = open(&f[..len], b"correct horse battery")
                .expect_err(&format!("truncated to {len} bytes went unnoticed"));
            assert!(envelope_error(&e).is_some(), "len {len}: {e}");
        }
        // Cut exactly after a full chunk: named as truncation, not as damage.
        let cut = HEADER_LEN + 2 * (1024 + TAG_LEN);
        assert_eq!(
            kind(open(&f[..cut], b"correct horse battery").unwrap_err()),
            "Truncated"
        );
    }

    #[test]
    fn spec_14_2_1_reordered_or_appended_chunks_fail() {
        let f = seal(&plaintext(3000), 1024);
        let c = 1024 + TAG_LEN;
        let mut swapped = f[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&f[HEADER_LEN + c..HEADER_LEN + 2 * c]);
        swapped.extend_from_slice(&f[HEADER_LEN..HEADER_LEN + c]);
        swapped.extend_from_slice(&f[HEADER_LEN + 2 * c..]);
        assert_eq!(kind(open(&swapped, b"correct horse battery").unwrap_err()), "Damaged");
        let mut appended = f.clone();
        appended.push(0);
        assert!(open(&appended, b"correct horse battery").is_err());
    }

    #[test]
    fn spec_14_2_1_not_a_backup_is_named() {
        assert_eq!(
            kind(open(b"hello world, this is not a backup", b"p").unwrap_err()),
            "NotABackup"
        );
        let f = seal(b"x", 1024);
        assert_eq!(kind(open(&f[..40], b"p").unwrap_err()), "TruncatedHeader");
    }
}
