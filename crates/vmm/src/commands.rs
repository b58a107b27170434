//! The control socket's commands, typed: every command a VM answers, with
//! its arguments as a serde struct (unknown or mistyped arguments are
//! errors, as in QEMU). Names and argument names are QMP's where QMP has
//! the command.

use crate::control::{CommandError, ErrorClass};
use godwit_migration::{Mode, Params, Strategy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// One command with its arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `query-status`: running or paused.
    QueryStatus,
    /// `query-version`: Godwit's version in QEMU's shape.
    QueryVersion,
    /// `query-commands`: the names of the commands below.
    QueryCommands,
    /// `stop`: pause the VM.
    Stop,
    /// `cont`: resume it.
    Cont,
    /// `snapshot`: save state and RAM to a file.
    Snapshot(SnapshotArgs),
    /// `balloon`: memory the guest should keep, in bytes (as QMP).
    Balloon(BalloonArgs),
    /// `query-balloon`.
    QueryBalloon,
    /// `migrate`: start an outgoing migration (or resume a paused one).
    Migrate(MigrateArgs),
    /// `migrate-set-parameters`.
    MigrateSetParameters(MigrationParameters),
    /// `query-migrate-parameters`.
    QueryMigrateParameters,
    /// `query-migrate`: status, live counters, then the report.
    QueryMigrate,
    /// `migrate-cancel`.
    MigrateCancel,
    /// `migrate-start-postcopy`: switch a pre-copy or hybrid migration.
    MigrateStartPostcopy,
    /// `calc-dirty-rate`: count the pages the guest writes over a window
    /// (its writable working set), from the dirty log.
    CalcDirtyRate(CalcDirtyRateArgs),
    /// `query-dirty-rate`: the last measurement.
    QueryDirtyRate,
    /// `quit`: end the VM.
    Quit,
}

/// Every command name, for `query-commands` and for telling an unknown
/// command from bad arguments.
pub const COMMAND_NAMES: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "query-version",
    "query-commands",
    "stop",
    "cont",
    "snapshot",
    "balloon",
    "query-balloon",
    "migrate",
    "migrate-set-parameters",
    "query-migrate-parameters",
    "query-migrate",
    "migrate-cancel",
    "migrate-start-postcopy",
    "calc-dirty-rate",
    "query-dirty-rate",
    "quit",
];

/// `calc-dirty-rate` arguments (QMP's names).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CalcDirtyRateArgs {
    /// The window, seconds (1 to 60).
    pub calc_time: u64,
}

/// `snapshot` arguments.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotArgs {
    /// Where to write the snapshot.
    pub path: PathBuf,
}

/// `balloon` arguments.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonArgs {
    /// Bytes of RAM the guest should keep.
    pub value: u64,
}

/// `migrate` arguments: QEMU's `uri` and `resume`, and any migration
/// parameter for this migration only.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MigrateArgs {
    /// `tcp:HOST:PORT` (or plain `HOST:PORT`).
    pub uri: String,
    /// Reconnect a post-copy whose link broke.
    pub resume: bool,
    /// Parameters for this migration on top of the VM's.
    pub params: MigrationParameters,
}

impl MigrateArgs {
    /// The destination's `HOST:PORT`.
    pub fn address(&self) -> &str {
        self.uri.strip_prefix("tcp:").unwrap_or(&self.uri)
    }
}

/// Migration parameters as `migrate-set-parameters` takes them (QMP names;
/// every one optional: absent ones keep their value).
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MigrationParameters {
    /// `stop-and-copy`, `precopy`, `postcopy` or `hybrid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `none`, `forward`, `dual`, `multi-pivot[:K]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepaging: Option<String>,
    /// Bytes per second, 0 = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Pre-copy's downtime target, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Most pre-copy rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u64>,
    /// Hybrid: pre-copy rounds before post-copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hybrid_rounds: Option<u64>,
    /// How long the destination watches the guest after completion, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_window_ms: Option<u64>,
    /// Ask the guest for free page hints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_page_hints: Option<bool>,
    /// TLS identity folder (`godwit tls-gen`); empty string: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_creds: Option<String>,
    /// Plain TCP, explicitly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_plain: Option<bool>,
    /// Post-copy: push the vCPUs' last-used pages first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_pages_first: Option<bool>,
    /// Post-copy: also send the vCPUs' pages before the pause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_pages_ahead: Option<bool>,
    /// Pre-copy: throttle the vCPUs while the guest outruns the link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
    /// Post-copy: resume the VM here from the destination's last
    /// checkpoint if the destination is silent this long, ms; 0: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_timeout: Option<u64>,
    /// With failover: ms between the destination's checkpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<u64>,
    /// Compression of the bulk page transfer: `none`, `lz4` or `zstd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// Connections the bulk page transfer is spread over (QEMU's
    /// `multifd-channels`), 1 to 16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u64>,
}

impl MigrationParameters {
    /// Applies the parameters that are set to `p`; on error `p` is unchanged.
    pub fn apply(&self, p: &mut Params) -> Result<(), CommandError> {
        let mut n = p.clone();
        if let Some(m) = &self.mode {
            n.mode = m.parse::<Mode>().map_err(CommandError::generic)?;
        }
        if let Some(s) = &self.prepaging {
            n.prepaging = s
                .parse::<Strategy>()
                .map_err(|e| CommandError::generic(e.to_string()))?;
        }
        if let Some(v) = self.max_bandwidth {
            n.max_bandwidth = v;
        }
        if let Some(v) = self.downtime_limit {
            n.downtime_limit_ms = v.max(1);
        }
        if let Some(v) = self.max_rounds {
            n.max_rounds = v.clamp(1, 10_000) as u32;
        }
        if let Some(v) = self.hybrid_rounds {
            n.hybrid_rounds = v.clamp(1, 10_000) as u32;
        }
        if let Some(v) = self.after_window_ms {
            n.after_window_ms = v.min(60_000);
        }
        if let Some(v) = self.free_page_hints {
            n.free_page_hints = v;
        }
        if let Some(s) = &self.tls_creds {
            n.tls_creds = (!s.is_empty()).then(|| PathBuf::from(s));
        }
        if let Some(v) = self.tls_plain {
            n.tls_plain = v;
        }
        if let Some(v) = self.hot_pages_first {
            n.hot_pages_first = v;
        }
        if let Some(v) = self.hot_pages_ahead {
            n.hot_pages_ahead = v;
        }
        if let Some(v) = self.auto_converge {
            n.auto_converge = v;
        }
        if let Some(v) = self.failover_timeout {
            n.failover_ms = v;
        }
        if let Some(v) = self.checkpoint_interval {
            n.checkpoint_ms = v;
        }
        if let Some(c) = &self.compress {
            n.compress = c.parse().map_err(CommandError::generic)?;
        }
        if let Some(v) = self.channels {
            let max = godwit_migration::MAX_CHANNELS;
            if !(1..=u64::from(max)).contains(&v) {
                return Err(CommandError::generic(format!(
                    "channels must be 1 to {max}, not {v}"
                )));
            }
            n.channels = v as u32;
        }
        *p = n;
        Ok(())
    }
}

fn args_of<T: DeserializeOwned>(name: &str, args: &Map<String, Value>) -> Result<T, CommandError> {
    serde_json::from_value(Value::Object(args.clone()))
        .map_err(|e| CommandError::generic(format!("invalid arguments for {name}: {e}")))
}

fn no_args(name: &str, args: &Map<String, Value>) -> Result<(), CommandError> {
    match args.keys().next() {
        None => Ok(()),
        Some(k) => Err(CommandError::generic(format!(
            "invalid arguments for {name}: parameter '{k}' is unexpected"
        ))),
    }
}

impl Command {
    /// Parses a command by name with its `arguments` object.
    pub fn parse(name: &str, args: &Map<String, Value>) -> Result<Command, CommandError> {
        let unit = |c: Command| no_args(name, args).map(|()| c);
        match name {
            "query-status" => unit(Command::QueryStatus),
            "query-version" => unit(Command::QueryVersion),
            "query-commands" => unit(Command::QueryCommands),
            "stop" => unit(Command::Stop),
            "cont" => unit(Command::Cont),
            "snapshot" => Ok(Command::Snapshot(args_of(name, args)?)),
            "balloon" => Ok(Command::Balloon(args_of(name, args)?)),
            "query-balloon" => unit(Command::QueryBalloon),
            "calc-dirty-rate" => {
                let a: CalcDirtyRateArgs = args_of(name, args)?;
                if !(1..=60).contains(&a.calc_time) {
                    return Err(CommandError::generic(format!(
                        "calc-time {} must be 1 to 60 seconds",
                        a.calc_time
                    )));
                }
                Ok(Command::CalcDirtyRate(a))
            }
            "query-dirty-rate" => unit(Command::QueryDirtyRate),
            "migrate" => {
                let mut rest = args.clone();
                let uri = match rest.remove("uri") {
                    Some(Value::String(s)) => s,
                    _ => {
                        return Err(CommandError::generic(
                            "invalid arguments for migrate: 'uri' (a string, tcp:HOST:PORT) is required",
                        ))
                    }
                };
                let resume = match rest.remove("resume") {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => {
                        return Err(CommandError::generic(
                            "invalid arguments for migrate: 'resume' must be true or false",
                        ))
                    }
                };
                Ok(Command::Migrate(MigrateArgs {
                    uri,
                    resume,
                    params: args_of(name, &rest)?,
                }))
            }
            "migrate-set-parameters" => Ok(Command::MigrateSetParameters(args_of(name, args)?)),
            "query-migrate-parameters" => unit(Command::QueryMigrateParameters),
            "query-migrate" => unit(Command::QueryMigrate),
            "migrate-cancel" => unit(Command::MigrateCancel),
            "migrate-start-postcopy" => unit(Command::MigrateStartPostcopy),
            "quit" => unit(Command::Quit),
            _ => Err(CommandError::new(
                ErrorClass::CommandNotFound,
                format!("The command {name} has not been found"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_migration::wire::Codec;
    use serde_json::json;

    fn parse(name: &str, args: Value) -> Result<Command, CommandError> {
        let Value::Object(m) = args else { panic!() };
        Command::parse(name, &m)
    }

    #[test]
    fn typed_arguments() {
        assert_eq!(parse("stop", json!({})), Ok(Command::Stop));
        assert!(parse("stop", json!({"now": true})).is_err());
        assert_eq!(
            parse("balloon", json!({"value": 5})),
            Ok(Command::Balloon(BalloonArgs { value: 5 }))
        );
        assert!(parse("balloon", json!({"value": "5"})).is_err());
        assert!(parse("balloon", json!({})).is_err());
        assert_eq!(
            parse("calc-dirty-rate", json!({"calc-time": 5})),
            Ok(Command::CalcDirtyRate(CalcDirtyRateArgs { calc_time: 5 }))
        );
        assert!(parse("calc-dirty-rate", json!({"calc-time": 0})).is_err());
        assert!(parse("calc-dirty-rate", json!({"calc-time": 61})).is_err());
        assert!(parse("calc-dirty-rate", json!({})).is_err());
        assert_eq!(
            parse("query-dirty-rate", json!({})),
            Ok(Command::QueryDirtyRate)
        );
        let e = parse("migrate-set-parameters", json!({"max-bandwith": 1})).unwrap_err();
        assert!(e.desc.contains("max-bandwith"), "{e}");
        let Ok(Command::Migrate(m)) = parse(
            "migrate",
            json!({"uri": "tcp:10.0.0.2:4444", "mode": "postcopy"}),
        ) else {
            panic!()
        };
        assert_eq!(m.address(), "10.0.0.2:4444");
        assert_eq!(m.params.mode.as_deref(), Some("postcopy"));
        assert!(parse("migrate", json!({})).is_err());
        let e = parse("query-balon", json!({})).unwrap_err();
        assert_eq!(e.class, ErrorClass::CommandNotFound);
        for &n in COMMAND_NAMES {
            if n != "qmp_capabilities" {
                let e = parse(n, json!({})).err();
                assert!(
                    e.is_none_or(|e| e.class != ErrorClass::CommandNotFound),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn parameters_apply_all_or_nothing() {
        let mut p = Params::default();
        let bad = MigrationParameters {
            max_bandwidth: Some(7),
            mode: Some("sideways".into()),
            ..Default::default()
        };
        assert!(bad.apply(&mut p).is_err());
        assert_eq!(p.max_bandwidth, Params::default().max_bandwidth);
        let good = MigrationParameters {
            max_bandwidth: Some(7),
            mode: Some("precopy".into()),
            downtime_limit: Some(0),
            ..Default::default()
        };
        good.apply(&mut p).unwrap();
        assert_eq!(
            (p.max_bandwidth, p.mode, p.downtime_limit_ms),
            (7, Mode::Precopy, 1)
        );
        let gzip = MigrationParameters {
            compress: Some("gzip".into()),
            max_bandwidth: Some(9),
            ..Default::default()
        };
        let e = gzip.apply(&mut p).unwrap_err();
        assert!(format!("{e:?}").contains("gzip"), "{e:?}");
        assert_eq!((p.max_bandwidth, p.compress), (7, Codec::None));
        let zstd = MigrationParameters {
            compress: Some("zstd".into()),
            ..Default::default()
        };
        zstd.apply(&mut p).unwrap();
        assert_eq!(p.compress, Codec::Zstd);
        for bad in [0, 17] {
            let c = MigrationParameters {
                channels: Some(bad),
                ..Default::default()
            };
            let e = format!("{:?}", c.apply(&mut p).unwrap_err());
            assert!(e.contains("channels must be 1 to 16"), "{e}");
        }
        let four = MigrationParameters {
            channels: Some(4),
            ..Default::default()
        };
        four.apply(&mut p).unwrap();
        assert_eq!(p.channels, 4);
    }
}
