//! The application layer: one module per capability, each public function one use case
//! (Omicron's `nexus/src/app` is the model).
//!
//! A use case takes the shared state, the authenticated [`crate::auth::Principal`] and typed
//! input (the request types of `rampart-api`), and always walks the same short path:
//!
//! 1. **Lookup and authorize**: one function per resource kind (`instance(state, principal,
//!    project, id, action)`, …) fetches the row and asks Cedar; what the caller may not see is
//!    404 (`no such …`), what it may see but not do is 403.
//! 2. **Validate** the input against the domain crates' pure rules.
//! 3. **One transaction**: every row it changes and the re-rendered documents of the nodes
//!    that must apply the change ([`crate::publish`]), committed together; then the long polls
//!    are woken.
//! 4. **Its audit event**: the use case declares its operation (`pub const …: Operation` next to
//!    its function; its route binds it, see `crate::routes`), whose record is written by the
//!    audit layer around the call (a `pending` record before the use case runs, the completion
//!    after); the use case adds
//!    what only it knows (the target it created or resolved, the details an auditor needs)
//!    through [`crate::audit::note_detail`] and friends.
//!
//! It returns the API view; route handlers (`crate::routes`) only parse, call and render, and
//! never touch the database.

pub mod agent;
pub mod assignments;
pub mod audit;
pub mod certificates;
pub mod compute;
pub mod conformance;
pub mod groups;
pub mod ha;
pub mod ha_fence;
pub mod identity;
pub mod keys;
pub mod network;
pub mod nodes;
pub mod roles;
pub mod sessions;
pub mod volumes;
