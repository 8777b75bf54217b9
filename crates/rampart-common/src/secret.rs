//! [`Sensitive`]: a string that must never reach a log. Its `Debug` prints `[redacted]`, its
//! memory is zeroed on drop, and the only way to read it is the explicit [`Sensitive::expose`].

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone)]
pub struct Sensitive(SecretString);

impl Sensitive {
    pub fn new(s: impl Into<String>) -> Self {
        Sensitive(SecretString::from(s.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Sensitive {
    fn from(s: String) -> Self {
        Sensitive::new(s)
    }
}

impl Serialize for Sensitive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Sensitive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Sensitive(SecretString::deserialize(d)?))
    }
}

impl utoipa::PartialSchema for Sensitive {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Password,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Sensitive {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_4_7_sensitive_values_never_debug_print() {
        let s: Sensitive = serde_json::from_str("\"hunter2-canary\"").unwrap();
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2-canary\"");
    }
}
