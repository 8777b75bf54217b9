//! Control-plane backup and restore (spec 14.2-1, 14.2-2): one file holding everything needed
//! to rebuild a controller — a consistent copy of the database (made by the caller through
//! the database: SQLite `VACUUM INTO` or `pg_dump`), the configuration file, and the data
//! directory's CA and TLS material, HSM token, audit keys and forwarding queue — as a tar
//! archive with a manifest, encrypted to an operator passphrase ([`envelope`]).
//!
//! Consistency while the controller runs: the database copy is taken first, then the files;
//! a key or CA created in between is then in the files but not referenced by the database
//! (harmless), never the reverse. The files are read until two successive reads of the whole
//! set agree, so a SoftHSM token or queue being written is not caught half way.

pub mod envelope;
pub mod layout;
pub mod manifest;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub use envelope::{EnvelopeError, Header, KdfParams};
pub use manifest::{DbBackend, FileEntry, Manifest};

/// File names of backups: `rampart-system-<UTC timestamp>.rsbk`, sorting by time.
pub const FILE_PREFIX: &str = "rampart-system-";
pub const FILE_SUFFIX: &str = ".rsbk";
/// Shortest passphrase accepted for a new backup.
pub const MIN_PASSPHRASE_LEN: usize = 12;
/// Largest manifest read (a forged archive cannot make the restore allocate more).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Rounds of reading the data directory's files before giving up on a stable set.
const STABLE_READ_ATTEMPTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SystemBackupError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    #[error("the archive inside the backup is not valid: {0}")]
    Archive(String),
    #[error("{path} in the backup does not match its manifest (size or SHA-256 differ)")]
    Mismatch { path: String },
    #[error("{path} is listed in the manifest but missing from the archive")]
    Missing { path: String },
    #[error("the archive holds {path}, which its manifest does not list")]
    Unexpected { path: String },
    #[error("{0} exists and is not empty: restore only into a new or empty directory")]
    TargetNotEmpty(PathBuf),
    #[error("{0} already exists: refusing to overwrite it")]
    Exists(PathBuf),
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error(
        "the files of {dir} kept changing across {STABLE_READ_ATTEMPTS} reads; retry when the controller is less busy"
    )]
    Unstable { dir: PathBuf },
}

type Result<T, E = SystemBackupError> = std::result::Result<T, E>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SystemBackupError {
    let path = path.to_path_buf();
    move |source| SystemBackupError::Io { action, path, source }
}

/// An I/O error of the decrypting reader becomes the envelope error it carries.
fn read_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SystemBackupError {
    let path = path.to_path_buf();
    move |e| {
        if envelope::envelope_error(&e).is_some() {
            let inner = e.into_inner().expect("checked above");
            SystemBackupError::Envelope(*inner.downcast::<EnvelopeError>().expect("checked above"))
        } else {
            SystemBackupError::Io {
                action,
                path,
                source: e,
            }
        }
    }
}

/// Reads a passphrase file: the first line, without its line end. `for_new_backup` enforces
/// [`MIN_PASSPHRASE_LEN`].
pub fn read_passphrase(path: &Path, for_new_backup: bool) -> Result<Zeroizing<Vec<u8>>> {
    let raw = Zeroizing::new(std::fs::read(path).map_err(io_err("read the passphrase file", path))?);
    let line = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(SystemBackupError::Passphrase(format!(
            "{} is empty (its first line is the passphrase)",
            path.display()
        )));
    }
    if for_new_backup && line.len() < MIN_PASSPHRASE_LEN {
        return Err(SystemBackupError::Passphrase(format!(
            "the passphrase in {} is shorter than {MIN_PASSPHRASE_LEN} characters",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// The database copy the caller made, in a private staging file.
#[derive(Debug, Clone)]
pub struct DatabaseCopy {
    pub backend: DbBackend,
    pub file: PathBuf,
    pub schema_version: i64,
}

pub struct CreateOptions<'a> {
    pub data_dir: &'a Path,
    pub database: DatabaseCopy,
    /// The SQLite file relative to the data directory when it lies inside it (left out: the
    /// database comes from [`CreateOptions::database`]).
    pub sqlite_in_data_dir: Option<PathBuf>,
    /// A backup directory inside the data directory, relative to it (left out).
    pub backup_dir_in_data_dir: Option<PathBuf>,
    /// The configuration file's text (TOML), restored as `rampart.toml`.
    pub config: Option<Vec<u8>>,
    pub passphrase: &'a [u8],
    pub kdf: KdfParams,
    pub out: &'a Path,
    pub now: OffsetDateTime,
}

/// The name of a backup made at `now`.
pub fn file_name(now: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:3]Z");
    let ts = now
        .to_offset(time::UtcOffset::UTC)
        .format(&f)
        .expect("a UTC time formats");
    format!("{FILE_PREFIX}{ts}{FILE_SUFFIX}")
}

/// Files up to this size are held in memory between their reads; larger ones (a forwarding
/// queue segment) are hashed as they are read and streamed again into the archive, checked
/// against the same hash.
const INLINE_MAX: u64 = 1 << 20;

struct Collected {
    rel: String,
    size: u64,
    sha256: String,
    mode: u32,
    /// The content of a small file; `None`: read again from the data directory.
    bytes: Option<Vec<u8>>,
}

/// Every backed-up regular file under `dir`, by relative path. Symbolic links and special
/// files are not state Rampart writes: they are skipped (and logged).
fn collect_once(
    root: &Path,
    skip: &dyn Fn(&Path) -> bool,
    out: &mut BTreeMap<String, Collected>,
    dir: &Path,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir != root => return Ok(()),
        Err(e) => return Err(io_err("read the directory", dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_err("read the directory", dir))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("under root").to_path_buf();
        if skip(&rel) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed between the listing and now (a rotated queue segment): not state any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("inspect", &path)(e)),
        };
        if meta.is_dir() {
            collect_once(root, skip, out, &path)?;
        } else if meta.is_file() {
            let Some(rel_str) = rel.to_str().filter(|s| manifest::safe_path(s)) else {
                tracing::warn!(path = %path.display(), "not backed up: the name is not plain UTF-8");
                continue;
            };
            let (size, sha256, bytes) = if meta.len() <= INLINE_MAX {
                match std::fs::read(&path) {
                    Ok(b) => (b.len() as u64, sha256_hex(&b), Some(b)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("read", &path)(e)),
                }
            } else {
                match sha256_file(&path) {
                    Ok((n, h)) => (n, h, None),
                    Err(SystemBackupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            };
            out.insert(
                rel_str.to_string(),
                Collected {
                    rel: rel_str.to_string(),
                    size,
                    sha256,
                    mode: meta.permissions().mode() & 0o777,
                    bytes,
                },
            );
        } else {
            tracing::warn!(path = %path.display(), "not backed up: not a regular file");
        }
    }
    Ok(())
}

/// The file set read until two successive reads agree.
fn collect_stable(root: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<Vec<Collected>> {
    let read = || -> Result<BTreeMap<String, Collected>> {
        let mut m = BTreeMap::new();
        collect_once(root, skip, &mut m, root)?;
        Ok(m)
    };
    let same = |a: &BTreeMap<String, Collected>, b: &BTreeMap<String, Collected>| {
        a.len() == b.len()
            && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
                ka == kb && va.sha256 == vb.sha256 && va.size == vb.size && va.mode == vb.mode
            })
    };
    let mut prev = read()?;
    for _ in 0..STABLE_READ_ATTEMPTS {
        let next = read()?;
        if same(&prev, &next) {
            return Ok(next.into_values().collect());
        }
        prev = next;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(SystemBackupError::Unstable {
        dir: root.to_path_buf(),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(io_err("read", path))?;
    let mut h = HashingWriter::default();
    let n = io::copy(&mut f, &mut h).map_err(io_err("read", path))?;
    Ok((n, hex::encode(h.0.finalize())))
}

#[derive(Default)]
struct HashingWriter(Sha256);

impl Write for HashingWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tar_header(size: u64, mode: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime.max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes `out` (atomically: a temporary file in the same directory, synced, then renamed;
/// mode 0600) and returns its manifest.
pub fn create(opts: CreateOptions<'_>) -> Result<Manifest> {
    if opts.passphrase.len() < MIN_PASSPHRASE_LEN {
        return Err(SystemBackupError::Passphrase(format!(
            "shorter than {MIN_PASSPHRASE_LEN} characters"
        )));
    }
    if opts.out.exists() {
        return Err(SystemBackupError::Exists(opts.out.to_path_buf()));
    }
    let sqlite = opts.sqlite_in_data_dir.clone();
    let backup_dir = opts.backup_dir_in_data_dir.clone();
    let out_rel = opts.out.strip_prefix(opts.data_dir).ok().map(Path::to_path_buf);
    let skip = |rel: &Path| {
        layout::classify(rel, sqlite.as_deref(), backup_dir.as_deref()).is_some()
            || out_rel.as_deref().is_some_and(|o| rel == o)
            || rel.to_string_lossy().contains(".tmp-")
    };
    let files = collect_stable(opts.data_dir, &skip)?;
    let config = opts.config.as_deref();
    let (db_size, db_sha) = sha256_file(&opts.database.file)?;
    let db_path = match opts.database.backend {
        DbBackend::Sqlite => manifest::SQLITE_PATH,
        DbBackend::Postgres => manifest::PGDUMP_PATH,
    };

    let mut entries = vec![FileEntry {
        path: db_path.to_string(),
        size: db_size,
        sha256: db_sha,
        mode: 0o600,
    }];
    if let Some(c) = &config {
        entries.push(FileEntry {
            path: manifest::CONFIG_PATH.to_string(),
            size: c.len() as u64,
            sha256: sha256_hex(c),
            mode: 0o600,
        });
    }
    for f in &files {
        entries.push(FileEntry {
            path: format!("{}{}", manifest::DATA_PREFIX, f.rel),
            size: f.size,
            sha256: f.sha256.clone(),
            mode: f.mode,
        });
    }
    let m = Manifest {
        format: manifest::MANIFEST_FORMAT,
        rampart_version: rampart_common::VERSION.to_string(),
        created_at: opts
            .now
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a time formats"),
        source_data_dir: opts.data_dir.display().to_string(),
        database: manifest::DatabaseEntry {
            backend: opts.database.backend,
            schema_version: opts.database.schema_version,
            path: db_path.to_string(),
        },
        files: entries,
    };
    m.check().map_err(SystemBackupError::Archive)?;
    let manifest_json = serde_json::to_vec_pretty(&m).expect("the manifest serialises");

    let dir = opts
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        opts.out.file_name().and_then(|n| n.to_str()).unwrap_or("backup"),
        hex::encode(rand_bytes::<6>())
    ));
    let result = (|| -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let mtime = opts.now.unix_timestamp();
        let enc = envelope::EncryptWriter::new(
            io::BufWriter::new(file),
            opts.passphrase,
            opts.kdf,
            envelope::DEFAULT_CHUNK,
            mtime,
        )
        .map_err(read_err("write", &tmp))?;
        let mut tar = tar::Builder::new(enc);
        let w = io_err("write", &tmp);
        let append = |tar: &mut tar::Builder<_>, path: &str, mode: u32, size: u64, data: &mut dyn Read| {
            let mut h = tar_header(size, mode, mtime);
            tar.append_data(&mut h, path, data)
        };
        (|| -> io::Result<()> {
            append(
                &mut tar,
                manifest::MANIFEST_PATH,
                0o600,
                manifest_json.len() as u64,
                &mut &manifest_json[..],
            )?;
            let mut db = std::fs::File::open(&opts.database.file)?;
            append(&mut tar, db_path, 0o600, db_size, &mut db)?;
            if let Some(c) = config {
                append(&mut tar, manifest::CONFIG_PATH, 0o600, c.len() as u64, &mut &c[..])?;
            }
            for f in &files {
                let path = format!("{}{}", manifest::DATA_PREFIX, f.rel);
                match &f.bytes {
                    Some(b) => append(&mut tar, &path, f.mode, f.size, &mut &b[..])?,
                    None => {
                        let file = std::fs::File::open(opts.data_dir.join(&f.rel))?;
                        let mut tee = TeeHash {
                            inner: &mut file.take(f.size),
                            hash: Sha256::new(),
                            n: 0,
                        };
                        append(&mut tar, &path, f.mode, f.size, &mut tee)?;
                        if hex::encode(tee.hash.finalize()) != f.sha256 {
                            return Err(io::Error::other(format!(
                                "{} changed while it was being backed up; retry",
                                f.rel
                            )));
                        }
                    }
                }
            }
            let enc = tar.into_inner()?;
            let buf = enc.finish()?;
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })()
        .map_err(w)?;
        std::fs::rename(&tmp, opts.out).map_err(io_err("rename into place", opts.out))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| m)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Only names temporary files; a failing random source leaves them predictable, not unsafe
    // (they are created with create_new).
    let _ = getrandom::fill(&mut b);
    b
}

/// Reads a backup through, calling `sink` for each entry after the manifest with its entry in
/// the manifest and its content; checks every size and SHA-256, that nothing is missing or
/// extra, and that the encrypted stream ends properly.
fn walk(
    file: &Path,
    passphrase: &[u8],
    sink: &mut dyn FnMut(&FileEntry, &mut dyn Read) -> Result<()>,
) -> Result<Manifest> {
    let f = std::fs::File::open(file).map_err(io_err("open", file))?;
    let mut dec = envelope::DecryptReader::new(io::BufReader::new(f), passphrase).map_err(read_err("read", file))?;
    let mut ar = tar::Archive::new(&mut dec);
    let inner = (|| -> Result<Manifest> {
        let bad = |m: String| SystemBackupError::Archive(m);
        let mut entries = ar.entries().map_err(read_err("read", file))?;
        let mut first = match entries.next() {
            Some(e) => e.map_err(read_err("read", file))?,
            None => return Err(bad("it is empty".into())),
        };
        if first.path_bytes().as_ref() != manifest::MANIFEST_PATH.as_bytes() {
            return Err(bad("it does not start with its manifest".into()));
        }
        if first.size() > MAX_MANIFEST_BYTES {
            return Err(bad("the manifest is too large".into()));
        }
        let mut json = Vec::new();
        first.read_to_end(&mut json).map_err(read_err("read", file))?;
        let m: Manifest = serde_json::from_slice(&json).map_err(|e| bad(format!("manifest: {e}")))?;
        m.check().map_err(|e| bad(format!("manifest: {e}")))?;
        let mut seen = std::collections::BTreeSet::new();
        for e in entries {
            let mut e = e.map_err(read_err("read", file))?;
            let path = String::from_utf8_lossy(&e.path_bytes()).to_string();
            let Some(want) = m.entry(&path) else {
                return Err(SystemBackupError::Unexpected { path });
            };
            if !seen.insert(path.clone()) || e.header().entry_type() != tar::EntryType::Regular {
                return Err(bad(format!("{path} appears twice or is not a regular file")));
            }
            let mut tee = TeeHash {
                inner: &mut e,
                hash: Sha256::new(),
                n: 0,
            };
            sink(want, &mut tee)?;
            io::copy(&mut tee, &mut io::sink()).map_err(read_err("read", file))?;
            if tee.n != want.size || hex::encode(tee.hash.finalize()) != want.sha256 {
                return Err(SystemBackupError::Mismatch { path });
            }
        }
        if let Some(f) = m.files.iter().find(|f| !seen.contains(&f.path)) {
            return Err(SystemBackupError::Missing { path: f.path.clone() });
        }
        Ok(m)
    })();
    let m = inner?;
    // The end of the stream is authenticated by its final chunk: read it.
    io::copy(&mut dec, &mut io::sink()).map_err(read_err("read", file))?;
    Ok(m)
}

struct TeeHash<'a> {
    inner: &'a mut dyn Read,
    hash: Sha256,
    n: u64,
}

impl Read for TeeHash<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Decrypts the whole backup and checks every entry against the manifest, writing nothing.
pub fn verify(file: &Path, passphrase: &[u8]) -> Result<Manifest> {
    walk(file, passphrase, &mut |_, _| Ok(()))
}

/// Where an archive entry goes in the restored data directory.
pub fn restore_target(archive_path: &str) -> Option<String> {
    match archive_path {
        manifest::SQLITE_PATH => Some("rampart.db".into()),
        manifest::PGDUMP_PATH => Some("rampart.pgdump".into()),
        manifest::CONFIG_PATH => Some("rampart.toml".into()),
        p => p.strip_prefix(manifest::DATA_PREFIX).map(str::to_string),
    }
}

/// Restores into `target`, which must not exist or be empty. Everything is written to a
/// private directory beside it and moved into place only once the whole file has been
/// authenticated and every entry checked: a wrong passphrase, a damaged or truncated file
/// leaves nothing behind.
pub fn restore(file: &Path, passphrase: &[u8], target: &Path) -> Result<Manifest> {
    let target_was_empty_dir = match std::fs::read_dir(target) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(SystemBackupError::TargetNotEmpty(target.to_path_buf()));
            }
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(SystemBackupError::TargetNotEmpty(target.to_path_buf()));
        }
        Err(e) => return Err(io_err("read the directory", target)(e)),
    };
    let parent = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("restore");
    let staging = parent.join(format!(".{name}.restore-{}", hex::encode(rand_bytes::<6>())));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io_err("create", &staging))?;
    }
    let result = (|| -> Result<Manifest> {
        let m = walk(file, passphrase, &mut |entry, content| {
            let rel = restore_target(&entry.path).ok_or_else(|| SystemBackupError::Unexpected {
                path: entry.path.clone(),
            })?;
            let dest = staging.join(&rel);
            if let Some(d) = dest.parent() {
                rampart_common::fsutil::ensure_private_dir(d).map_err(io_err("create", d))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(entry.mode & 0o700)
                .open(&dest)
                .map_err(io_err("create", &dest))?;
            io::copy(content, &mut f).map_err(read_err("write", &dest))?;
            f.sync_all().map_err(io_err("write", &dest))?;
            Ok(())
        })?;
        if target_was_empty_dir {
            std::fs::remove_dir(target).map_err(io_err("replace", target))?;
        }
        std::fs::rename(&staging, target).map_err(io_err("move into place", target))?;
        Ok(m)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// One backup file of a directory, from its plain header (no passphrase needed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub path: PathBuf,
    pub size: u64,
    /// Unix seconds, from the header.
    pub created_at: i64,
    pub format_version: u16,
}

/// The backups in `dir`, oldest first; files that are not backups are ignored.
pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("read the directory", dir))? {
        let entry = entry.map_err(io_err("read the directory", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let Ok(h) = Header::read_from(&mut f) else { continue };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        out.push(Listed {
            path,
            size,
            created_at: h.created_at,
            format_version: h.version,
        });
    }
    out.sort_by(|a, b| (a.created_at, &a.path).cmp(&(b.created_at, &b.path)));
    Ok(out)
}

/// The backups to delete to keep the newest `keep` (pure; `listed` oldest first). Only files
/// named like Rampart's periodic backups are ever pruned.
pub fn to_prune(listed: &[Listed], keep: usize) -> Vec<PathBuf> {
    let ours: Vec<&Listed> = listed
        .iter()
        .filter(|l| {
            l.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX))
        })
        .collect();
    let extra = ours.len().saturating_sub(keep);
    ours[..extra].iter().map(|l| l.path.clone()).collect()
}

/// Deletes the backups beyond the newest `keep` in `dir`; the paths deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let doomed = to_prune(&list(dir)?, keep);
    for p in &doomed {
        std::fs::remove_file(p).map_err(io_err("delete", p))?;
    }
    Ok(doomed)
}

/// Copies a finished backup into `dir` atomically (temporary name, synced, renamed).
pub fn copy_to(file: &Path, dir: &Path) -> Result<PathBuf> {
    rampart_common::fsutil::ensure_private_dir(dir).map_err(io_err("create", dir))?;
    let name = file
        .file_name()
        .ok_or_else(|| SystemBackupError::Archive("no file name".into()))?;
    let dest = dir.join(name);
    if dest.exists() {
        return Err(SystemBackupError::Exists(dest));
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(rand_bytes::<6>())
    ));
    let result = (|| -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut src = std::fs::File::open(file).map_err(io_err("read", file))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        io::copy(&mut src, &mut out).map_err(io_err("write", &tmp))?;
        out.sync_all().map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}

#[cfg(test)]
mod tests;
