//! A VM's taps. The network driver creates each one in the VPC's namespace, plugged into the
//! subnet's bridge and guarded by the port's rules; it does not know which uid the VM runs as.
//! Before QEMU starts, [`claim`] waits for the tap (bounded: the VM starts only once its tap
//! exists) and makes it the VM's own: owner and group are the VM's uid, so QEMU, with no
//! capabilities, can open it by name, and the QEMU of another VM in the same VPC cannot.
//!
//! The kernel sets a tap's owner only through an open queue (`TUNSETOWNER`) and `ip tuntap
//! add` refuses an existing device, so a tap without the right owner is made again with it,
//! and put back on its bridge and up, in one `ip -batch`. Guard rules and sets name the device,
//! so they hold for the new one; the network loop sees the same layout and changes nothing.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {tap} did not appear in network namespace {netns} within {waited:?}")]
    Missing {
        tap: String,
        netns: String,
        waited: Duration,
    },
    #[error("{tap} in network namespace {netns} is not a tap: {what}")]
    NotATap { tap: String, netns: String, what: String },
    #[error("cannot give tap {tap} in {netns} to the VM: {detail}")]
    Claim { tap: String, netns: String, detail: String },
}

/// What `ip -d -j link show` says about a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapState {
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub master: Option<String>,
    pub up: bool,
}

/// Reads one link of `ip -d -j link show dev X`; `Err` names what else it is.
pub fn parse_link(json: &str) -> Result<Option<TapState>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("unreadable ip output: {e}"))?;
    let Some(link) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let info = &link["linkinfo"];
    let kind = info["info_kind"].as_str().unwrap_or("");
    let ty = info["info_data"]["type"].as_str().unwrap_or("");
    if kind != "tun" || ty != "tap" {
        return Err(format!("kind {kind:?} type {ty:?}"));
    }
    let id = |k: &str| info["info_data"][k].as_u64().and_then(|n| u32::try_from(n).ok());
    Ok(Some(TapState {
        owner: id("user"),
        group: id("group"),
        master: link["master"].as_str().map(str::to_string),
        up: link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP"))),
    }))
}

/// The `ip -batch` lines that make `tap` again, owned by `uid`, where it was.
pub fn reclaim_batch(tap: &str, uid: u32, state: &TapState) -> String {
    let mut s = format!("tuntap del dev {tap} mode tap\ntuntap add dev {tap} mode tap user {uid} group {uid}\n");
    if let Some(m) = &state.master {
        s.push_str(&format!("link set dev {tap} master {m}\n"));
    }
    if state.up {
        s.push_str(&format!("link set dev {tap} up\n"));
    }
    s
}

async fn ip(netns: &str, args: &[&str], stdin: Option<&str>) -> Result<(bool, String), String> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.arg("-n").arg(netns).args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("running ip: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("writing to ip: {e}"))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "ip did not answer within 10 s".to_string())?
        .map_err(|e| format!("running ip: {e}"))?;
    let text = if out.status.success() { out.stdout } else { out.stderr };
    Ok((out.status.success(), String::from_utf8_lossy(&text).into_owned()))
}

/// Waits up to `within` for `tap` in `netns`, then makes it owned by `uid` (see the module).
pub async fn claim(netns: &str, tap: &str, uid: u32, within: Duration) -> Result<(), TapError> {
    let started = tokio::time::Instant::now();
    let claim_err = |detail: String| TapError::Claim {
        tap: tap.into(),
        netns: netns.into(),
        detail,
    };
    let mut remade = 0;
    loop {
        let (ok, out) = ip(netns, &["-d", "-j", "link", "show", "dev", tap], None)
            .await
            .map_err(claim_err)?;
        let state = if ok {
            parse_link(&out).map_err(|what| TapError::NotATap {
                tap: tap.into(),
                netns: netns.into(),
                what,
            })?
        } else {
            None
        };
        match state {
            Some(s) if s.owner == Some(uid) && s.group == Some(uid) => return Ok(()),
            // Made again at most twice: the network loop may repair it at the same moment.
            Some(s) if remade < 2 => {
                remade += 1;
                let (ok, out) = ip(netns, &["-batch", "-"], Some(&reclaim_batch(tap, uid, &s)))
                    .await
                    .map_err(claim_err)?;
                if !ok {
                    tracing::warn!(tap, netns, error = %out.trim(), "cannot give the tap to the VM yet");
                }
                continue;
            }
            Some(_) => return Err(claim_err("the tap keeps changing".into())),
            None if started.elapsed() >= within => {
                return Err(TapError::Missing {
                    tap: tap.into(),
                    netns: netns.into(),
                    waited: within,
                });
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_owner_master_and_state_of_a_tap() {
        let j = r#"[{"ifname":"tp1","flags":["BROADCAST","MULTICAST","UP"],"master":"rb1",
            "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false,"persist":true,"user":2100000123,"group":2100000123}}}]"#;
        assert_eq!(
            parse_link(j).unwrap(),
            Some(TapState {
                owner: Some(2_100_000_123),
                group: Some(2_100_000_123),
                master: Some("rb1".into()),
                up: true
            })
        );
        let unowned =
            r#"[{"ifname":"tp1","flags":["BROADCAST"],"linkinfo":{"info_kind":"tun","info_data":{"type":"tap"}}}]"#;
        let s = parse_link(unowned).unwrap().unwrap();
        assert_eq!((s.owner, s.master.as_deref(), s.up), (None, None, false));
        assert!(parse_link("[]").unwrap().is_none());
        let veth = r#"[{"ifname":"tp1","linkinfo":{"info_kind":"veth"}}]"#;
        assert!(parse_link(veth).is_err());
    }

    #[test]
    fn reclaim_puts_the_tap_back_where_it_was() {
        let s = TapState {
            owner: None,
            group: None,
            master: Some("rbab".into()),
            up: true,
        };
        assert_eq!(
            reclaim_batch("tpx", 7, &s),
            "tuntap del dev tpx mode tap\ntuntap add dev tpx mode tap user 7 group 7\n\
             link set dev tpx master rbab\nlink set dev tpx up\n"
        );
        let down = TapState {
            master: None,
            up: false,
            ..s
        };
        assert_eq!(
            reclaim_batch("tpx", 7, &down),
            "tuntap del dev tpx mode tap\ntuntap add dev tpx mode tap user 7 group 7\n"
        );
    }
}
