//! The last desired state the agent applied, kept on disk so that after a restart the node
//! converges on it at once, even while the controller is unreachable.

use std::path::{Path, PathBuf};

use rampart_api::agent::NodeConfig;
use rampart_common::fsutil;

use crate::AgentError;

pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(dir: &Path) -> Ledger {
        Ledger {
            path: dir.join("desired.json"),
        }
    }

    pub fn load(&self) -> Result<Option<NodeConfig>, AgentError> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| AgentError::Corrupt(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AgentError::Io {
                action: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn store(&self, doc: &NodeConfig) -> Result<(), AgentError> {
        let json = serde_json::to_vec_pretty(doc).expect("serialises");
        fsutil::write_secret(&self.path, &json).map_err(|source| AgentError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        })
    }
}
