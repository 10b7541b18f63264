//! Byte sizes (`"4GiB"`, `"64MiB"`, `65536`) and durations (`"10s"`, `"250ms"`) as
//! they appear in configuration.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written as an integer or with a unit: `B`, `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024) or `kB`, `MB`, `GB`, `TB` (powers of 1000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("KB", 1_000),
    ("B", 1),
];

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(t.len());
        let (num, unit) = (t[..split].replace('_', ""), t[split..].trim());
        if num.is_empty() {
            return Err(format!(
                "invalid size {s:?}: expected a number such as \"64MiB\""
            ));
        }
        let mult = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(unit) && (u.len() > 1 || unit == "B" || unit == "b"))
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    format!("invalid size {s:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")
                })?
        };
        let bytes = if num.contains('.') {
            let v: f64 = num
                .parse()
                .map_err(|_| format!("invalid size {s:?}: {num:?} is not a number"))?;
            let b = v * mult as f64;
            if !b.is_finite() || b < 0.0 || b > u64::MAX as f64 {
                return Err(format!("invalid size {s:?}: out of range"));
            }
            b.round() as u64
        } else {
            let v: u64 = num
                .parse()
                .map_err(|_| format!("invalid size {s:?}: {num:?} is not a whole number"))?;
            v.checked_mul(mult)
                .ok_or_else(|| format!("invalid size {s:?}: out of range"))?
        };
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in UNITS.iter().filter(|(u, _)| u.ends_with("iB")) {
            if self.0 >= *mult && self.0.is_multiple_of(*mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as `"10s"`, `"250ms"`, `"1m 30s"` (humantime), or `0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"250ms\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: give a unit, e.g. \"{v}s\" or \"{v}ms\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                self.visit_u64(
                    u64::try_from(v).map_err(|_| E::custom("duration must not be negative"))?,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                if v.trim() == "0" {
                    return Ok(Dur(Duration::ZERO));
                }
                humantime::parse_duration(v.trim())
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("4GiB").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("64 MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("64mib").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("1.5GiB").unwrap().0, 3 << 29);
        assert_eq!(ByteSize::parse("10MB").unwrap().0, 10_000_000);
        assert_eq!(ByteSize::parse("65536").unwrap().0, 65536);
        assert_eq!(ByteSize::parse("1_000B").unwrap().0, 1000);
        assert!(ByteSize::parse("4XB").unwrap_err().contains("unknown unit"));
        assert!(ByteSize::parse("GiB").is_err());
        assert!(ByteSize::parse("99999999999TiB")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn sizes_print_in_the_largest_exact_binary_unit() {
        assert_eq!(ByteSize(4 << 30).to_string(), "4GiB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }

    #[test]
    fn durations_parse_and_print() {
        let d: Dur = serde_json::from_str("\"250ms\"").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        let d: Dur = serde_json::from_str("\"1m 30s\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        let d: Dur = serde_json::from_str("0").unwrap();
        assert_eq!(d.0, Duration::ZERO);
        assert!(serde_json::from_str::<Dur>("5")
            .unwrap_err()
            .to_string()
            .contains("give a unit"));
        assert_eq!(
            serde_json::to_string(&Dur(Duration::from_secs(90))).unwrap(),
            "\"1m 30s\""
        );
    }
}

/// A destination's URL, parsed once when the configuration is read: `http://` or
/// `https://` and a host; a bare `host:port` means `http://host:port`. Shown (and
/// written back) as it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    raw: String,
    uri: http::Uri,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let raw = s.trim();
        let full = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        let uri: http::Uri = full.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("the scheme must be http:// or https://".into()),
        }
        if uri.host().is_none() {
            return Err("the URL has no host".into());
        }
        Ok(Self {
            raw: raw.to_string(),
            uri,
        })
    }

    /// As it was given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    pub fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Endpoint::parse(&s).map_err(|e| de::Error::custom(format!("{s:?}: {e}")))
    }
}

/// A listen address (`"127.0.0.1:4317"`, `"[::1]:4317"`, port 0 for any free
/// port); `""` turns the listener off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl Listen {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Ok(Self(None));
        }
        t.parse().map(|a| Self(Some(a))).map_err(|_| {
            format!("{s:?} is not an address like \"127.0.0.1:4317\" (or \"\" to turn it off)")
        })
    }

    /// The address, or `None` when off.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.0
    }

    pub fn is_off(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => Ok(()),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Listen::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod listen_tests {
    use super::Listen;

    #[test]
    fn parses_addresses_and_off() {
        assert_eq!(
            Listen::parse("127.0.0.1:4317").unwrap().addr(),
            Some("127.0.0.1:4317".parse().unwrap())
        );
        assert_eq!(Listen::parse("[::1]:0").unwrap().to_string(), "[::1]:0");
        assert!(Listen::parse("").unwrap().is_off());
        assert_eq!(Listen::parse("").unwrap().to_string(), "");
        let e = Listen::parse("localhost").unwrap_err();
        assert!(e.contains("\"localhost\" is not an address"), "{e}");
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::Endpoint;

    #[test]
    fn endpoints_are_parsed_once_and_shown_as_given() {
        let e = Endpoint::parse("collector:4317").unwrap();
        assert_eq!(e.uri().to_string(), "http://collector:4317/");
        assert_eq!(e.to_string(), "collector:4317");
        assert!(!e.is_https());
        assert!(Endpoint::parse("HTTPS://c:443/v1/traces")
            .unwrap()
            .is_https());
        assert_eq!(
            Endpoint::parse("ftp://c").unwrap_err(),
            "the scheme must be http:// or https://"
        );
        assert!(Endpoint::parse("http://").is_err());
        assert!(Endpoint::parse("http://a b")
            .unwrap_err()
            .starts_with("not a URL"));
    }
}
