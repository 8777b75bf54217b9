//! Random numbers come from the token (spec 13.3-7). Alone in its test binary because it
//! finalizes the PKCS#11 module, which is shared by every test of a process.

use rampart_kms::KeyBackend;
use rampart_kms::error::HsmError;
use rampart_kms::pkcs11::load_module;
use rampart_kms::testutil::{backend, module_path};

#[test]
fn spec_13_3_7_random_comes_from_the_token() {
    let Some(b) = backend() else { return };
    let (mut first, mut second) = ([0u8; 32], [0u8; 32]);
    b.random(&mut first).unwrap();
    b.random(&mut second).unwrap();
    assert_ne!(first, [0u8; 32]);
    assert_ne!(first, second);
    b.check_mechanisms().unwrap();

    // With the module finalized, C_GenerateRandom is the one way to random bytes that is gone:
    // if any of them came from the operating system or a software fallback, this would still
    // succeed. It must fail closed and leave the buffer untouched.
    load_module(&module_path()).unwrap().finalize().unwrap();
    let mut after = [0u8; 32];
    let e = b.random(&mut after).unwrap_err();
    assert!(matches!(e, HsmError::Unavailable { .. }), "{e:?}");
    assert_eq!(after, [0u8; 32], "no byte came from elsewhere");
}
