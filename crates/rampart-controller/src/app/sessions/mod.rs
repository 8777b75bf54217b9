//! Sessions and a user's own credentials: login (password, second factor, application
//! credential), browser sessions, logout, password change, TOTP enrolment, recovery codes and
//! application credentials. `verify` holds the account rules every check of a secret goes
//! through (throttle, sources, lockout, validity, second factor).

pub mod credentials;
pub mod login;
pub mod mfa;
pub mod password;
pub mod verify;
