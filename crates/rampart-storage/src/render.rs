//! What a node sends QEMU's monitor (QMP) to give a running VM a volume, in order:
//!
//! 1. `object-add` of a `secret` holding the volume's passphrase (base64, over the VM's private
//!    QMP socket: never in argv, a file or a log) — [`secret_object_add`];
//! 2. `object-add` of the volume type's `throttle-group` (IOPS and bandwidth limits), if any;
//! 3. `blockdev-add` of the encrypted qcow2 node over its file, wrapped in a `throttle` filter
//!    node when the type has limits — [`blockdev_add`];
//! 4. `device_add` of a `virtio-blk-pci` device on that node — [`device_add`].
//!
//! Detaching is the reverse ([`detach_commands`]). Every value is a struct serialised by serde,
//! so the JSON is byte-stable (golden tests) whatever map ordering the build's `serde_json` has.

use base64::Engine;
use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

pub use rampart_api::storage::{Qos, VolumeType};

/// Names of the QMP objects of one attached volume: derived from the volume id so that a node
/// can always find (and remove) what it added, even after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    pub secret: String,
    pub throttle_group: String,
    pub format: String,
    pub top: String,
    pub device: String,
    /// The guest-visible serial (virtio-blk takes at most 20 bytes).
    pub serial: String,
}

impl NodeNames {
    pub fn for_volume(volume: Uuid, throttled: bool) -> NodeNames {
        let s = volume.simple().to_string();
        NodeNames::for_short(&s[..16], throttled)
    }

    /// The names of a volume known by its short id only (found in a running QEMU after a
    /// restart): the first 16 hex digits of its id.
    pub fn for_short(short: &str, throttled: bool) -> NodeNames {
        let format = format!("vol-{short}");
        NodeNames {
            secret: format!("sec-{short}"),
            throttle_group: format!("tg-{short}"),
            top: if throttled {
                format!("thr-{short}")
            } else {
                format.clone()
            },
            format,
            device: format!("dev-{short}"),
            serial: format!("vol-{short}"),
        }
    }
}

/// One QMP command: `execute` and `arguments`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QmpCommand {
    pub execute: &'static str,
    pub arguments: Value,
}

/// The `object-add` of a volume's passphrase. It carries the secret, so it is [`Sensitive`]:
/// the JSON text of the whole command, to be parsed and sent by the QMP client and dropped.
pub fn secret_object_add(names: &NodeNames, passphrase: &Sensitive) -> Sensitive {
    let data = base64::engine::general_purpose::STANDARD.encode(passphrase.expose().as_bytes());
    let cmd = json!({
        "execute": "object-add",
        "arguments": {"qom-type": "secret", "id": names.secret, "format": "base64", "data": data}
    });
    Sensitive::new(cmd.to_string())
}

#[derive(Serialize)]
struct ThrottleLimits {
    #[serde(rename = "iops-total", skip_serializing_if = "Option::is_none")]
    iops_total: Option<u64>,
    #[serde(rename = "iops-read", skip_serializing_if = "Option::is_none")]
    iops_read: Option<u64>,
    #[serde(rename = "iops-write", skip_serializing_if = "Option::is_none")]
    iops_write: Option<u64>,
    #[serde(rename = "bps-total", skip_serializing_if = "Option::is_none")]
    bps_total: Option<u64>,
    #[serde(rename = "bps-read", skip_serializing_if = "Option::is_none")]
    bps_read: Option<u64>,
    #[serde(rename = "bps-write", skip_serializing_if = "Option::is_none")]
    bps_write: Option<u64>,
    #[serde(rename = "iops-total-max", skip_serializing_if = "Option::is_none")]
    iops_total_max: Option<u64>,
    #[serde(rename = "bps-total-max", skip_serializing_if = "Option::is_none")]
    bps_total_max: Option<u64>,
}

#[derive(Serialize)]
struct ThrottleGroupArgs<'a> {
    #[serde(rename = "qom-type")]
    qom_type: &'static str,
    id: &'a str,
    limits: ThrottleLimits,
}

/// The `object-add` of the type's throttle group, or `None` for an unlimited type.
pub fn throttle_group_add(names: &NodeNames, qos: &Qos) -> Option<QmpCommand> {
    if qos.is_unlimited() {
        return None;
    }
    let args = ThrottleGroupArgs {
        qom_type: "throttle-group",
        id: &names.throttle_group,
        limits: ThrottleLimits {
            iops_total: qos.iops_total,
            iops_read: qos.iops_read,
            iops_write: qos.iops_write,
            bps_total: qos.bps_total,
            bps_read: qos.bps_read,
            bps_write: qos.bps_write,
            iops_total_max: qos.iops_total_max,
            bps_total_max: qos.bps_total_max,
        },
    };
    Some(QmpCommand {
        execute: "object-add",
        arguments: serde_json::to_value(args).expect("throttle group serialises"),
    })
}

#[derive(Serialize)]
struct Cache {
    direct: bool,
    #[serde(rename = "no-flush")]
    no_flush: bool,
}

#[derive(Serialize)]
struct FileNode<'a> {
    driver: &'static str,
    filename: &'a str,
    aio: &'static str,
    cache: Cache,
}

#[derive(Serialize)]
struct Encrypt<'a> {
    format: &'static str,
    #[serde(rename = "key-secret")]
    key_secret: &'a str,
}

#[derive(Serialize)]
struct Qcow2Node<'a> {
    #[serde(rename = "node-name")]
    node_name: &'a str,
    driver: &'static str,
    #[serde(rename = "read-only")]
    read_only: bool,
    discard: &'static str,
    cache: Cache,
    #[serde(skip_serializing_if = "Option::is_none")]
    encrypt: Option<Encrypt<'a>>,
    /// Always `null`: a volume's qcow2 header must never make QEMU open another host file
    /// (OSSA-2024-001, and 11.4: another VM's volume).
    backing: Option<()>,
    file: FileNode<'a>,
}

#[derive(Serialize)]
struct ThrottleNode<'a> {
    #[serde(rename = "node-name")]
    node_name: &'a str,
    driver: &'static str,
    #[serde(rename = "throttle-group")]
    throttle_group: &'a str,
    file: &'a str,
}

/// How a volume is opened for a VM (from [`crate::backend::StorageBackend::open`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSpec {
    pub volume: Uuid,
    pub path: String,
    pub encrypted: bool,
    pub read_only: bool,
}

/// The `blockdev-add` commands: the qcow2 node (with its file child, LUKS through the secret
/// object), then the throttle filter on top of it if the type is limited.
pub fn blockdev_add(names: &NodeNames, open: &OpenSpec, qos: &Qos) -> Vec<QmpCommand> {
    let cache = || Cache {
        direct: true,
        no_flush: false,
    };
    let node = Qcow2Node {
        node_name: &names.format,
        driver: "qcow2",
        read_only: open.read_only,
        discard: "unmap",
        cache: cache(),
        encrypt: open.encrypted.then_some(Encrypt {
            format: "luks",
            key_secret: &names.secret,
        }),
        backing: None,
        file: FileNode {
            driver: "file",
            filename: &open.path,
            aio: "threads",
            cache: cache(),
        },
    };
    let mut out = vec![QmpCommand {
        execute: "blockdev-add",
        arguments: serde_json::to_value(node).expect("blockdev serialises"),
    }];
    if !qos.is_unlimited() {
        let t = ThrottleNode {
            node_name: &names.top,
            driver: "throttle",
            throttle_group: &names.throttle_group,
            file: &names.format,
        };
        out.push(QmpCommand {
            execute: "blockdev-add",
            arguments: serde_json::to_value(t).expect("throttle node serialises"),
        });
    }
    out
}

#[derive(Serialize)]
struct DeviceArgs<'a> {
    driver: &'static str,
    id: &'a str,
    drive: &'a str,
    serial: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bus: Option<&'a str>,
}

/// The `device_add` of a hot-plugged virtio-blk (q35: a PCIe root port given as `bus`, since
/// the root complex itself takes no hot-plug).
pub fn device_add(names: &NodeNames, bus: Option<&str>) -> QmpCommand {
    let args = DeviceArgs {
        driver: "virtio-blk-pci",
        id: &names.device,
        drive: &names.top,
        serial: &names.serial,
        bus,
    };
    QmpCommand {
        execute: "device_add",
        arguments: serde_json::to_value(args).expect("device serialises"),
    }
}

/// The attach sequence after the secret: throttle group, blockdev nodes, device.
pub fn attach_commands(names: &NodeNames, open: &OpenSpec, qos: &Qos, bus: Option<&str>) -> Vec<QmpCommand> {
    let mut v: Vec<QmpCommand> = throttle_group_add(names, qos).into_iter().collect();
    v.extend(blockdev_add(names, open, qos));
    v.push(device_add(names, bus));
    v
}

/// Detach: the device first (the guest lets go; the caller waits for `DEVICE_DELETED`), then
/// the nodes top-down, the throttle group and the secret.
pub fn detach_commands(names: &NodeNames, throttled: bool) -> Vec<QmpCommand> {
    let mut v = vec![QmpCommand {
        execute: "device_del",
        arguments: json!({"id": names.device}),
    }];
    if throttled {
        v.push(QmpCommand {
            execute: "blockdev-del",
            arguments: json!({"node-name": names.top}),
        });
    }
    v.push(QmpCommand {
        execute: "blockdev-del",
        arguments: json!({"node-name": names.format}),
    });
    if throttled {
        v.push(QmpCommand {
            execute: "object-del",
            arguments: json!({"id": names.throttle_group}),
        });
    }
    v.push(QmpCommand {
        execute: "object-del",
        arguments: json!({"id": names.secret}),
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> Uuid {
        Uuid::parse_str("5d1c6f0e-8c2b-4a7e-9f3d-0123456789ab").unwrap()
    }

    #[track_caller]
    fn golden(name: &str, text: &str) {
        rampart_common::testing::golden(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(name),
            text,
        );
    }

    fn lines(cmds: &[QmpCommand]) -> String {
        cmds.iter().map(|c| serde_json::to_string(c).unwrap() + "\n").collect()
    }

    #[test]
    fn attach_of_a_limited_encrypted_volume_golden() {
        let qos = Qos {
            iops_total: Some(500),
            iops_total_max: Some(1000),
            bps_read: Some(50 << 20),
            bps_write: Some(20 << 20),
            ..Qos::default()
        };
        qos.validate().unwrap();
        let names = NodeNames::for_volume(vol(), true);
        let open = OpenSpec {
            volume: vol(),
            path: "/var/lib/rampart/pools/local/volumes/5d1c6f0e-8c2b-4a7e-9f3d-0123456789ab.qcow2".into(),
            encrypted: true,
            read_only: false,
        };
        let mut text = lines(&attach_commands(&names, &open, &qos, Some("hp0")));
        text.push_str(&lines(&detach_commands(&names, true)));
        golden("attach-limited-encrypted.jsonl", &text);
    }

    #[test]
    fn attach_of_an_unlimited_read_only_volume_golden() {
        let names = NodeNames::for_volume(vol(), false);
        let open = OpenSpec {
            volume: vol(),
            path: "/pool/v.qcow2".into(),
            encrypted: false,
            read_only: true,
        };
        let cmds = attach_commands(&names, &open, &Qos::default(), None);
        assert_eq!(cmds.len(), 2, "no throttle group, no filter node");
        assert!(cmds[0].arguments.get("encrypt").is_none());
        assert_eq!(cmds[1].arguments["drive"], names.format);
        let mut text = lines(&cmds);
        text.push_str(&lines(&detach_commands(&names, false)));
        golden("attach-unlimited-plain.jsonl", &text);
    }

    #[test]
    fn spec_12_3_2_2_the_secret_is_base64_in_qmp_and_redacted_in_debug() {
        let names = NodeNames::for_volume(vol(), false);
        let cmd = secret_object_add(&names, &Sensitive::new("canary-passphrase"));
        assert_eq!(format!("{cmd:?}"), "[redacted]");
        let v: Value = serde_json::from_str(cmd.expose()).unwrap();
        assert_eq!(v["arguments"]["qom-type"], "secret");
        assert_eq!(v["arguments"]["format"], "base64");
        assert_eq!(v["arguments"]["data"], "Y2FuYXJ5LXBhc3NwaHJhc2U=");
        assert!(!cmd.expose().contains("canary"));
        // The other commands never carry it.
        let open = OpenSpec {
            volume: vol(),
            path: "/p".into(),
            encrypted: true,
            read_only: false,
        };
        let all = lines(&attach_commands(&names, &open, &Qos::default(), None));
        assert!(!all.contains("Y2FuYXJ5") && !all.contains("canary"));
        assert!(all.contains(&format!("\"key-secret\":\"{}\"", names.secret)));
    }

    #[test]
    fn qos_rules_match_qemus() {
        assert!(
            Qos {
                iops_total: Some(1),
                iops_read: Some(1),
                ..Qos::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Qos {
                bps_total_max: Some(10),
                ..Qos::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Qos {
                iops_write: Some(0),
                ..Qos::default()
            }
            .validate()
            .is_err()
        );
        let names = NodeNames::for_volume(vol(), false);
        assert_eq!(names.serial.len(), 20);
        assert!(throttle_group_add(&names, &Qos::default()).is_none());
        let t: VolumeType = serde_json::from_str(r#"{"name":"fast"}"#).unwrap();
        assert!(t.encrypted, "encrypted unless said otherwise");
    }
}
