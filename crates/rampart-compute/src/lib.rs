//! Rampart compute: image integrity (12.1-1), the QEMU driver (render, accel choice, QMP,
//! real and fake hypervisors), VM confinement (11.1, 11.2, 11.4, 9.1-1f), the NoCloud config
//! drive (12.1-2), monitoring (12.1-5) and threshold alarms (12.1-6).
//!
//! Pure halves (render, plan, evaluate) are golden- and unit-tested; the thin executors
//! (`driver::QemuDriver`, `confine::VmCgroup`, `configdrive::build_iso`) are tested for real
//! as root in `tests/privileged.rs`.

pub mod alarm;
pub mod configdrive;
pub mod confine;
pub mod driver;
pub mod ha;
pub mod image;
pub mod inspect;
pub mod monitor;
pub mod qemu;
pub mod qmp;
pub mod tap;
pub mod webhook;
