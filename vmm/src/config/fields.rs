//! Deserializing rules that Firecracker's bodies and config files need:
//! an explicit `null` means the field's default, and the fields of
//! features brique lacks are accepted only where they ask for nothing
//! (null, an empty list, or the one value that means "none"), and refused
//! otherwise with a message that names the feature.

use serde::{Deserialize, Deserializer};

/// `#[serde(default, deserialize_with = "null_is_default")]`: the field
/// may be absent or `null`, and both mean its default.
pub fn null_is_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A field or section of a feature brique lacks, given as nothing: it
/// holds no value, and is never written back out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Absent;

/// Accepts `value` if it asks for nothing (`null`, or one of `nothing`),
/// and otherwise refuses it as `what`, which brique lacks.
fn nothing_or_refuse<E: serde::de::Error>(
    value: serde_json::Value,
    nothing: &[serde_json::Value],
    what: &str,
) -> Result<Absent, E> {
    if value.is_null() || nothing.contains(&value) {
        Ok(Absent)
    } else {
        Err(E::custom(format!(
            "{what} is not supported by brique: leave it out or null"
        )))
    }
}

/// Defines a `deserialize_with` function for an [`Absent`] field of a
/// feature brique lacks, that also accepts the listed JSON values.
macro_rules! absent_field {
    ($(#[$doc:meta])* $name:ident, $what:literal $(, $nothing:expr)*) => {
        $(#[$doc])*
        pub fn $name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Absent, D::Error> {
            let value = serde_json::Value::deserialize(deserializer)?;
            nothing_or_refuse(value, &[$($nothing),*], $what)
        }
    };
}

absent_field!(
    /// `balloon` (config file).
    balloon,
    "the balloon device (section balloon)"
);
absent_field!(
    /// `cpu-config` (config file): custom CPU templates.
    cpu_config,
    "custom CPU templates (section cpu-config)"
);
absent_field!(
    /// `mmds-config` (config file).
    mmds_config,
    "MMDS, the microVM metadata service (section mmds-config)"
);
absent_field!(
    /// `memory-hotplug` (config file).
    memory_hotplug,
    "memory hotplug (section memory-hotplug)"
);
absent_field!(
    /// `pmem` (config file): also accepted as an empty list.
    pmem,
    "virtio-pmem devices (section pmem)",
    serde_json::json!([])
);
absent_field!(
    /// `machine-config.cpu_template`: also accepted as "None".
    cpu_template,
    "CPU templates (cpu_template other than \"None\")",
    serde_json::json!("None")
);
absent_field!(
    /// `machine-config.gdb_socket_path`.
    gdb_socket_path,
    "the GDB server (gdb_socket_path)"
);
absent_field!(
    /// `drives[].socket`: a vhost-user block backend.
    vhost_user_socket,
    "vhost-user block devices (socket)"
);
absent_field!(
    /// `PUT /snapshot/load`'s `huge_pages`: also accepted as "None".
    snapshot_huge_pages,
    "restoring into huge pages (huge_pages other than \"None\")",
    serde_json::json!("None")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default, deserialize_with = "null_is_default")]
        flag: bool,
        #[serde(default, deserialize_with = "null_is_default")]
        list: Vec<u8>,
        #[serde(default, deserialize_with = "cpu_template")]
        cpu_template: Absent,
        #[serde(default, deserialize_with = "pmem")]
        pmem: Absent,
        #[serde(default, deserialize_with = "balloon")]
        balloon: Absent,
    }

    fn parse(json: &str) -> Result<Sample, String> {
        serde_json::from_str(json).map_err(|err| err.to_string())
    }

    #[test]
    fn nulls_mean_the_default() {
        let sample = parse(r#"{"flag": null, "list": null}"#).unwrap();
        assert!(!sample.flag);
        assert!(sample.list.is_empty());
        let sample = parse(r#"{"flag": true, "list": [1, 2]}"#).unwrap();
        assert!(sample.flag);
        assert_eq!(sample.list, vec![1, 2]);
        assert!(parse(r#"{"flag": "yes"}"#).is_err());
    }

    #[test]
    fn absent_features_take_nothing_but_their_none() {
        for json in [
            "{}",
            r#"{"cpu_template": null, "pmem": null, "balloon": null}"#,
            r#"{"cpu_template": "None", "pmem": []}"#,
        ] {
            let sample = parse(json).unwrap();
            assert_eq!(
                (sample.cpu_template, sample.pmem, sample.balloon),
                (Absent, Absent, Absent),
                "{json}"
            );
        }
        for (json, named) in [
            (r#"{"cpu_template": "T2"}"#, "CPU templates"),
            (r#"{"pmem": [{"id": "p0"}]}"#, "virtio-pmem"),
            (r#"{"balloon": {"amount_mib": 0}}"#, "balloon device"),
            (r#"{"balloon": {}}"#, "balloon device"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(named), "{json}: {err}");
            assert!(err.contains("not supported by brique"), "{json}: {err}");
        }
    }
}
