//! Compute logic used outside the compute routes: the compute section of node documents
//! ([`crate::publish`]), what agents report (`routes/agent.rs`), NIC conflicts
//! (`routes/network.rs`), and the background tasks ([`crate::reconcile`]). It lives in
//! [`crate::app::compute`]; these are its stable paths.

pub use crate::app::compute::desired::node_compute;
pub use crate::app::compute::evaluation::{evaluate_alarms, rule_of};
pub use crate::app::compute::monitoring::prune_metrics;
pub use crate::app::compute::nics::{NicPlan, plan_nics, plug_nics, port_in_use, unplug_nics};
pub use crate::app::compute::records::{json_list, policy};
pub use crate::app::compute::scheduling::schedule;
pub use crate::app::compute::status::{CONSOLE_MAX_BYTES, record_status};
pub use crate::app::compute::webhooks::{send_webhooks, webhook_policy};
