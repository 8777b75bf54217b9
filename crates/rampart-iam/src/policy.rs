//! Validation of the security-compliance policy (`GET/PUT /v1/security-compliance`); the
//! type itself is in `rampart_api::SecurityCompliance`, with its defaults.

use rampart_api::SecurityCompliance;
use rampart_common::Error;

use crate::password::Policy;

/// Checks every field; the error names the first field out of range.
pub fn validate(p: &SecurityCompliance) -> Result<(), Error> {
    let check = |ok: bool, field: &str, msg: &str| {
        if ok {
            Ok(())
        } else {
            Err(Error::field(field, format!("{field} {msg}")))
        }
    };
    check(
        p.lockout_failure_attempts <= 100,
        "lockout_failure_attempts",
        "must be at most 100 (0 turns lockout off)",
    )?;
    check(
        (60..=86_400 * 7).contains(&p.lockout_duration_s),
        "lockout_duration_s",
        "must be between 60 and 604800",
    )?;
    check(
        p.source_failure_limit <= 100_000,
        "source_failure_limit",
        "must be at most 100000 (0 turns the per-source limit off)",
    )?;
    check(
        (60..=86_400).contains(&p.source_failure_window_s),
        "source_failure_window_s",
        "must be between 60 and 86400",
    )?;
    check(
        (8..=256).contains(&p.password_min_length),
        "password_min_length",
        "must be between 8 and 256 (the spec's floor is 8)",
    )?;
    check(
        (2..=4).contains(&p.password_min_char_classes),
        "password_min_char_classes",
        "must be between 2 and 4",
    )?;
    check(
        p.password_min_strength <= 4,
        "password_min_strength",
        "must be a zxcvbn score between 0 and 4",
    )?;
    check(
        p.unique_last_password_count <= 24,
        "unique_last_password_count",
        "must be at most 24",
    )?;
    check(
        p.minimum_password_age_days <= 30,
        "minimum_password_age_days",
        "must be at most 30",
    )?;
    check(
        p.password_expires_days <= 3650,
        "password_expires_days",
        "must be at most 3650 (0: never)",
    )?;
    check(
        p.password_expiry_warning_days <= 90,
        "password_expiry_warning_days",
        "must be at most 90",
    )?;
    check(
        (60..=86_400).contains(&p.token_expiration_s),
        "token_expiration_s",
        "must be between 60 and 86400",
    )?;
    check(
        p.token_idle_timeout_s == 0 || (60..=p.token_expiration_s).contains(&p.token_idle_timeout_s),
        "token_idle_timeout_s",
        "must be 0 (off) or between 60 and token_expiration_s",
    )?;
    for role in &p.mfa_required_roles {
        check(
            rampart_api::is_builtin_role(role),
            "mfa_required_roles",
            "must name built-in roles",
        )?;
    }
    for f in &p.password_deny_list_files {
        check(f.starts_with('/'), "password_deny_list_files", "must be absolute paths")?;
    }
    crate::net::parse_cidrs("allowed_source_cidrs", &p.allowed_source_cidrs)?;
    Ok(())
}

/// The strength rules of the policy.
pub fn password_policy(p: &SecurityCompliance) -> Policy {
    Policy {
        min_length: p.password_min_length.max(8) as usize,
        min_char_classes: p.password_min_char_classes.clamp(2, 4) as usize,
        min_strength: p.password_min_strength.min(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_1_2_1_defaults_are_valid_and_bounds_are_enforced() {
        let d = SecurityCompliance::default();
        validate(&d).unwrap();
        assert_eq!(d.password_min_length, 12);
        assert_eq!(d.lockout_failure_attempts, 5);
        assert_eq!(d.lockout_duration_s, 1800);
        assert_eq!(d.unique_last_password_count, 5);
        for (bad, field) in [
            (
                SecurityCompliance {
                    password_min_length: 7,
                    ..d.clone()
                },
                "password_min_length",
            ),
            (
                SecurityCompliance {
                    password_min_char_classes: 1,
                    ..d.clone()
                },
                "password_min_char_classes",
            ),
            (
                SecurityCompliance {
                    mfa_required_roles: vec!["wizard".into()],
                    ..d.clone()
                },
                "mfa_required_roles",
            ),
            (
                SecurityCompliance {
                    allowed_source_cidrs: vec!["10.0.0.0/33".into()],
                    ..d.clone()
                },
                "allowed_source_cidrs",
            ),
            (
                SecurityCompliance {
                    token_idle_timeout_s: 7200,
                    ..d.clone()
                },
                "token_idle_timeout_s",
            ),
        ] {
            let e = validate(&bad).unwrap_err();
            assert_eq!(e.details().unwrap()["field"], field, "{e}");
        }
    }
}
