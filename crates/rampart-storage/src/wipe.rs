//! The verified wipe (12.3.4-1/3): what is overwritten, in which order, how it is proven, and the
//! report that says so.
//!
//! An encrypted volume is first **crypto-erased**: the LUKS header and every keyslot area (the
//! only places the volume's master key exists, wrapped by the passphrase) are overwritten and
//! read back, so the data is unreadable from that moment on, even if the machine dies during the
//! rest. Then the data area is zeroed (every allocated extent of the file, in place) and checked
//! by reading back a random sample of blocks. An unencrypted volume has nothing to erase by
//! key: it gets the zero pass and a **full** read-back. Only a verified report lets a volume go
//! `deleted` and its space be released.

use serde::{Deserialize, Serialize};

pub use rampart_api::storage::{WipeMethod, WipeReport};

/// Where the LUKS header and its keyslots sit inside a qcow2 file: qcow2 header extension
/// `0x0537be77` ("full disk encryption header pointer"), offset and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoHeader {
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 file")]
    NotQcow2,
    #[error("qcow2 header truncated or malformed: {0}")]
    Malformed(&'static str),
}

/// qcow2 `crypt_method`: 0 none, 1 AES (legacy, refused by Rampart), 2 LUKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptMethod {
    None,
    LegacyAes,
    Luks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    pub version: u32,
    /// Virtual size in bytes (header offset 24).
    pub size: u64,
    pub crypt: CryptMethod,
    pub crypto_header: Option<CryptoHeader>,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
const EXT_FDE_HEADER: u32 = 0x0537_be77;
/// The LUKS v1 magic: must be absent from the header area after a crypto-erase.
pub const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

fn be32(b: &[u8], at: usize) -> Result<u32, Qcow2Error> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
        .ok_or(Qcow2Error::Malformed("short header"))
}

fn be64(b: &[u8], at: usize) -> Result<u64, Qcow2Error> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
        .ok_or(Qcow2Error::Malformed("short header"))
}

/// Parses the start of a qcow2 file (its first cluster is enough: the header and its
/// extensions live there) per QEMU's `docs/interop/qcow2.rst`.
pub fn parse_qcow2_header(b: &[u8]) -> Result<Qcow2Info, Qcow2Error> {
    if b.len() < 72 || &b[..4] != QCOW2_MAGIC {
        return Err(Qcow2Error::NotQcow2);
    }
    let version = be32(b, 4)?;
    let size = be64(b, 24)?;
    let crypt = match be32(b, 32)? {
        0 => CryptMethod::None,
        1 => CryptMethod::LegacyAes,
        2 => CryptMethod::Luks,
        _ => return Err(Qcow2Error::Malformed("unknown crypt_method")),
    };
    let mut at = match version {
        2 => 72usize,
        3 => be32(b, 100)? as usize,
        _ => return Err(Qcow2Error::Malformed("unknown version")),
    };
    let mut crypto_header = None;
    // Extensions: type, length, data padded to 8 bytes; type 0 ends the list.
    for _ in 0..64 {
        let kind = be32(b, at)?;
        if kind == 0 {
            break;
        }
        let len = be32(b, at + 4)? as usize;
        if kind == EXT_FDE_HEADER {
            if len < 16 {
                return Err(Qcow2Error::Malformed("short encryption header pointer"));
            }
            crypto_header = Some(CryptoHeader {
                offset: be64(b, at + 8)?,
                length: be64(b, at + 16)?,
            });
        }
        at = at
            .checked_add(8 + len.div_ceil(8) * 8)
            .ok_or(Qcow2Error::Malformed("extension length"))?;
    }
    if crypt == CryptMethod::Luks && crypto_header.is_none() {
        return Err(Qcow2Error::Malformed("LUKS without its header pointer"));
    }
    Ok(Qcow2Info {
        version,
        size,
        crypt,
        crypto_header,
    })
}

/// A byte range of the volume file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

/// The steps of one wipe, planned from the file's header and its allocated extents before
/// anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipePlan {
    pub method: WipeMethod,
    /// Crypto-erase: overwritten first, then read back entirely.
    pub header: Option<Extent>,
    /// Every allocated extent, zeroed in place.
    pub data: Vec<Extent>,
    /// Blocks read back after the zero pass (the whole `data` for unencrypted volumes).
    pub verify: Vec<Extent>,
}

impl WipePlan {
    pub fn bytes(&self) -> u64 {
        self.data.iter().map(|e| e.length).sum()
    }
}

/// Block size of a verification read.
pub const SAMPLE_BLOCK: u64 = 64 * 1024;

/// Plans a wipe. `sample_seed` drives which blocks are read back (random per wipe, so that a
/// backend cannot "pass" by zeroing only the blocks it knows will be checked); `samples` bounds
/// their number for encrypted volumes.
pub fn plan_wipe(info: &Qcow2Info, data: Vec<Extent>, samples: usize, sample_seed: u64) -> WipePlan {
    let encrypted = info.crypt == CryptMethod::Luks;
    let header = info.crypto_header.map(|h| Extent {
        offset: h.offset,
        length: h.length,
    });
    let verify = if encrypted {
        sample_blocks(&data, samples, sample_seed)
    } else {
        data.clone()
    };
    WipePlan {
        method: if encrypted {
            WipeMethod::CryptoEraseAndZero
        } else {
            WipeMethod::ZeroFullVerify
        },
        header: if encrypted { header } else { None },
        data,
        verify,
    }
}

/// `n` blocks of [`SAMPLE_BLOCK`] spread over the extents (a splitmix64 sequence from `seed`),
/// always including the first and last block of the data so the ends are never skipped.
pub fn sample_blocks(data: &[Extent], n: usize, seed: u64) -> Vec<Extent> {
    let total: u64 = data.iter().map(|e| e.length).sum();
    if total == 0 || n == 0 {
        return Vec::new();
    }
    let mut picks = vec![0u64, total.saturating_sub(1)];
    let mut s = seed;
    while picks.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        picks.push(z % total);
    }
    let mut out: Vec<Extent> = picks
        .into_iter()
        .map(|logical| {
            // Map a position in the concatenated extents back to the file.
            let mut rest = logical;
            for e in data {
                if rest < e.length {
                    let block_start = rest - rest % SAMPLE_BLOCK;
                    let len = SAMPLE_BLOCK.min(e.length - block_start);
                    return Extent {
                        offset: e.offset + block_start,
                        length: len,
                    };
                }
                rest -= e.length;
            }
            unreachable!("logical < total")
        })
        .collect();
    out.sort_by_key(|e| e.offset);
    out.dedup();
    out
}

/// Whether a read-back buffer proves the crypto-erase: all zeros, hence no LUKS magic either.
pub fn header_erased(buf: &[u8]) -> bool {
    buf.iter().all(|b| *b == 0)
}

/// Offset of the first non-zero byte, for a failed verification's message.
pub fn first_nonzero(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    /// A qcow2 v3 header as `qemu-img create -o encrypt.format=luks` writes it (fields that
    /// matter here only), with the FDE pointer after a feature-table extension.
    fn header(crypt: u32, fde: Option<(u64, u64)>) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[..4].copy_from_slice(QCOW2_MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        b[32..36].copy_from_slice(&crypt.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        let mut at = 112;
        // Feature name table, 3 bytes of data padded to 8.
        b[at..at + 4].copy_from_slice(&0x6803_f857u32.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&3u32.to_be_bytes());
        at += 16;
        if let Some((off, len)) = fde {
            b[at..at + 4].copy_from_slice(&EXT_FDE_HEADER.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&16u32.to_be_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&len.to_be_bytes());
        }
        b
    }

    #[test]
    fn finds_the_luks_header_in_a_qcow2_header() {
        let info = parse_qcow2_header(&header(2, Some((0x30000, 0x1f0000)))).unwrap();
        assert_eq!((info.crypt, info.size), (CryptMethod::Luks, 64 << 20));
        assert_eq!(
            info.crypto_header,
            Some(CryptoHeader {
                offset: 0x30000,
                length: 0x1f0000
            })
        );
        let plain = parse_qcow2_header(&header(0, None)).unwrap();
        assert_eq!((plain.crypt, plain.crypto_header), (CryptMethod::None, None));
        assert_eq!(
            parse_qcow2_header(&header(2, None)).unwrap_err(),
            Qcow2Error::Malformed("LUKS without its header pointer")
        );
        assert_eq!(parse_qcow2_header(b"LUKS\xba\xbe").unwrap_err(), Qcow2Error::NotQcow2);
        let mut trunc = header(2, Some((1, 2)));
        trunc.truncate(130);
        assert!(parse_qcow2_header(&trunc).is_err());
    }

    #[test]
    fn spec_12_3_4_1_encrypted_wipes_erase_the_header_and_sample_unencrypted_read_all() {
        let data = vec![
            Extent {
                offset: 0,
                length: 1 << 20,
            },
            Extent {
                offset: 8 << 20,
                length: 3 << 20,
            },
        ];
        let luks = parse_qcow2_header(&header(2, Some((0x30000, 0x1f0000)))).unwrap();
        let p = plan_wipe(&luks, data.clone(), 16, 7);
        assert_eq!(p.method, WipeMethod::CryptoEraseAndZero);
        assert_eq!(
            p.header,
            Some(Extent {
                offset: 0x30000,
                length: 0x1f0000
            })
        );
        assert_eq!(p.bytes(), 4 << 20);
        assert!(p.verify.len() <= 16 && p.verify.len() >= 8, "{:?}", p.verify);
        assert_eq!(p.verify[0].offset, 0, "first block always read");
        assert_eq!(
            p.verify.last().unwrap().offset,
            (11 << 20) - SAMPLE_BLOCK,
            "last block always read"
        );
        for v in &p.verify {
            assert!(
                data.iter()
                    .any(|e| v.offset >= e.offset && v.offset + v.length <= e.offset + e.length),
                "{v:?}"
            );
        }
        assert_ne!(
            sample_blocks(&data, 16, 7),
            sample_blocks(&data, 16, 8),
            "the seed changes the sample"
        );
        let plain = parse_qcow2_header(&header(0, None)).unwrap();
        let p = plan_wipe(&plain, data.clone(), 16, 7);
        assert_eq!((p.method, p.header), (WipeMethod::ZeroFullVerify, None));
        assert_eq!(p.verify, data, "unencrypted volumes are read back entirely");
        assert!(sample_blocks(&[], 4, 1).is_empty());
    }

    #[test]
    fn wipe_report_serialises_as_api_md_says() {
        let r = WipeReport {
            volume: Uuid::parse_str("5d1c6f0e-8c2b-4a7e-9f3d-0123456789ab").unwrap(),
            method: WipeMethod::CryptoEraseAndZero,
            verified: true,
            bytes: 1_073_741_824,
            started_at: datetime!(2026-12-07 17:00:00 UTC),
            finished_at: datetime!(2026-12-07 17:00:09.5 UTC),
            requested_by: "alice".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"volume":"5d1c6f0e-8c2b-4a7e-9f3d-0123456789ab","method":"crypto_erase_and_zero","verified":true,"bytes":1073741824,"started_at":"2026-12-07T17:00:00Z","finished_at":"2026-12-07T17:00:09.5Z","requested_by":"alice"}"#
        );
        assert_eq!(serde_json::from_str::<WipeReport>(&text).unwrap(), r);
        assert!(header_erased(&[0; 10]));
        assert!(!header_erased(b"\0\0LUKS\xba\xbe"));
        assert_eq!(first_nonzero(b"\0\0x"), Some(2));
    }
}
