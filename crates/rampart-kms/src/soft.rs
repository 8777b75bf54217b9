//! A software stand-in for the HSM, for fast tests of the layers above. It exists only in
//! tests and with the `insecure-software-backend` feature, is a separate type that no
//! configuration can select, marks its material with its own format byte (refused by the
//! PKCS#11 backend) and reports [`BackendKind::InsecureSoftware`] so a health or conformance
//! check can flag it. Root keys live in process memory; cryptography is ring's AES-256-GCM.

use std::collections::HashMap;
use std::sync::Mutex;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::backend::{BackendKind, KeyBackend};
use crate::envelope::{MaterialId, NONCE_LEN, WRAP_FORMAT_INSECURE_SOFTWARE, WrappedKey, material_aad};
use crate::error::HsmError;

pub struct InsecureSoftwareBackend {
    rng: SystemRandom,
    roots: Mutex<HashMap<Uuid, Zeroizing<[u8; 32]>>>,
}

impl std::fmt::Debug for InsecureSoftwareBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InsecureSoftwareBackend")
    }
}

impl Default for InsecureSoftwareBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn aead_key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES key"))
}

fn seal(key: &[u8], nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = plaintext.to_vec();
    aead_key(key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
        .expect("AES-GCM seal");
    buf
}

fn open(key: &[u8], nonce: &[u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = aead_key(key)
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

impl InsecureSoftwareBackend {
    pub fn new() -> Self {
        InsecureSoftwareBackend {
            rng: SystemRandom::new(),
            roots: Mutex::new(HashMap::new()),
        }
    }

    fn root(&self, project: Uuid) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        self.roots
            .lock()
            .expect("roots lock")
            .get(&project)
            .cloned()
            .ok_or(HsmError::RootKeyMissing { project })
    }

    fn unwrap(&self, id: &MaterialId, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        match wrapped.format() {
            Some(WRAP_FORMAT_INSECURE_SOFTWARE) => {}
            Some(format) => return Err(HsmError::WrappedKeyFormat { format }),
            None => return Err(HsmError::WrappedKeyInvalid),
        }
        let (nonce, sealed) = wrapped.parts().ok_or(HsmError::WrappedKeyInvalid)?;
        open(self.root(id.project)?.as_ref(), &nonce, &material_aad(id), sealed).ok_or(HsmError::WrappedKeyInvalid)
    }

    /// The plaintext material of a version: only tests may look (here and, with feature
    /// `testing`, rampart-db's dump test), to prove it is stored nowhere.
    #[cfg(any(test, feature = "testing"))]
    pub fn reveal_for_test(&self, id: &MaterialId, wrapped: &WrappedKey) -> Zeroizing<Vec<u8>> {
        self.unwrap(id, wrapped).expect("unwrap")
    }
}

impl KeyBackend for InsecureSoftwareBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::InsecureSoftware
    }

    fn ensure_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        let mut roots = self.roots.lock().expect("roots lock");
        if let std::collections::hash_map::Entry::Vacant(slot) = roots.entry(project) {
            let mut k = Zeroizing::new([0u8; 32]);
            self.rng
                .fill(k.as_mut())
                .map_err(|_| HsmError::Config("random source".into()))?;
            slot.insert(k);
        }
        Ok(())
    }

    fn destroy_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        self.roots.lock().expect("roots lock").remove(&project);
        Ok(())
    }

    fn generate_key_material(&self, id: &MaterialId) -> Result<WrappedKey, HsmError> {
        let root = self.root(id.project)?;
        let mut material = Zeroizing::new([0u8; 32]);
        let mut nonce = [0u8; NONCE_LEN];
        self.random(material.as_mut())?;
        self.random(&mut nonce)?;
        let sealed = seal(root.as_ref(), &nonce, &material_aad(id), material.as_ref());
        Ok(WrappedKey::new(WRAP_FORMAT_INSECURE_SOFTWARE, &nonce, &sealed))
    }

    fn encrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let key = self.unwrap(id, wrapped)?;
        Ok(seal(&key, nonce, aad, plaintext))
    }

    fn decrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let key = self.unwrap(id, wrapped)?;
        open(&key, nonce, aad, sealed).ok_or(HsmError::AuthenticationFailed)
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.rng.fill(out).map_err(|_| HsmError::Config("random source".into()))
    }

    fn forget(&self, _: &[MaterialId]) {}
}
