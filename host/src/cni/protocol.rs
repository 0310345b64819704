//! The invocation as the container runtime makes it: `CNI_*` variables, and
//! the spec versions this plugin speaks.

use super::error::{CniError, Code, quoted};

/// Spec versions whose results this plugin can write, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(text: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == text)
    }

    pub fn supported() -> Vec<&'static str> {
        CniVersion::ALL.iter().map(|v| v.as_str()).collect()
    }
}

/// What the runtime asks: VERSION needs no network configuration, every
/// other command concerns one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Version,
    Network(NetworkCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkCommand {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

const COMMANDS: [(&str, Command); 6] = [
    ("ADD", Command::Network(NetworkCommand::Add)),
    ("DEL", Command::Network(NetworkCommand::Del)),
    ("CHECK", Command::Network(NetworkCommand::Check)),
    ("GC", Command::Network(NetworkCommand::Gc)),
    ("STATUS", Command::Network(NetworkCommand::Status)),
    ("VERSION", Command::Version),
];

impl Command {
    /// As `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        COMMANDS
            .iter()
            .find(|(_, command)| *command == self)
            .map_or("", |(text, _)| text)
    }

    fn parse(text: &str) -> Option<Command> {
        COMMANDS
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, command)| *command)
    }

    /// The variables the spec requires for this command.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Network(NetworkCommand::Add | NetworkCommand::Check) => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Network(NetworkCommand::Del) => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Network(NetworkCommand::Gc | NetworkCommand::Status) => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// The pod a container belongs to, from `CNI_ARGS` (Kubernetes runtimes set
/// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Empty for the commands that concern no container (GC, STATUS, VERSION).
    pub container_id: String,
    pub ifname: String,
    /// The container's network namespace (a path); DEL may not have one.
    pub netns: String,
    pub pod: PodArgs,
}

/// Reads the invocation from the environment (`get` is `std::env::var`).
pub fn parse_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
    let var = |key: &str| get(key).filter(|value| !value.is_empty());
    let invalid = |msg: String| CniError::new(Code::InvalidEnvironment, msg);
    let command_text = var("CNI_COMMAND")
        .ok_or_else(|| invalid("required env variables [CNI_COMMAND] missing".into()))?;
    let command = Command::parse(&command_text)
        .ok_or_else(|| invalid(format!("unknown CNI_COMMAND: {}", quoted(&command_text))))?;
    let missing: Vec<&str> = command
        .required()
        .iter()
        .copied()
        .filter(|key| var(key).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    let container_id = var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = var("CNI_IFNAME").unwrap_or_default();
    if !container_id.is_empty() {
        validate_container_id(&container_id).map_err(invalid)?;
    }
    if !ifname.is_empty() {
        validate_ifname(&ifname).map_err(invalid)?;
    }
    let pod = parse_args(&var("CNI_ARGS").unwrap_or_default()).map_err(invalid)?;
    Ok(Invocation {
        command,
        container_id,
        ifname,
        netns: var("CNI_NETNS").unwrap_or_default(),
        pod,
    })
}

/// The spec version a command first appeared in: CHECK in 0.4.0, GC and
/// STATUS in 1.1.0. A config of an older version may not ask for it.
pub fn check_command_version(command: NetworkCommand, config: CniVersion) -> Result<(), CniError> {
    let needed = match command {
        NetworkCommand::Add | NetworkCommand::Del => return Ok(()),
        NetworkCommand::Check => CniVersion::V0_4_0,
        NetworkCommand::Gc | NetworkCommand::Status => CniVersion::V1_1_0,
    };
    if config >= needed {
        return Ok(());
    }
    Err(CniError::new(
        Code::IncompatibleVersion,
        format!(
            "config version {} does not allow {}; it needs {}",
            config.as_str(),
            Command::Network(command).as_str(),
            needed.as_str()
        ),
    ))
}

/// The same rule as libcni: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid characters in CNI_CONTAINERID {}",
            quoted(id)
        ))
    }
}

/// The same rule as libcni: a Linux interface name.
fn validate_ifname(name: &str) -> Result<(), String> {
    if name.len() > 15 {
        return Err(format!(
            "CNI_IFNAME {} is longer than 15 characters",
            quoted(name)
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!(
            "CNI_IFNAME {} is not a valid interface name",
            quoted(name)
        ));
    }
    Ok(())
}

/// `CNI_ARGS` is `KEY=VALUE;KEY=VALUE`; keys other than the pod's are ignored.
fn parse_args(text: &str) -> Result<PodArgs, String> {
    let mut pod = PodArgs::default();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            format!(
                "CNI_ARGS: invalid pair {}, expected KEY=VALUE",
                quoted(pair)
            )
        })?;
        let slot = match key {
            "K8S_POD_NAMESPACE" => &mut pod.namespace,
            "K8S_POD_NAME" => &mut pod.name,
            "K8S_POD_UID" => &mut pod.uid,
            _ => continue,
        };
        *slot = Some(value.to_string()).filter(|v| !v.is_empty());
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    #[test]
    fn add_needs_its_variables() {
        let error = parse_env(&env(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/opt")])).unwrap_err();
        assert_eq!(error.code, Code::InvalidEnvironment);
        assert_eq!(
            error.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        let gc = parse_env(&env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt")])).unwrap();
        assert_eq!(gc.command, Command::Network(NetworkCommand::Gc));
        assert!(parse_env(&env(&[("CNI_COMMAND", "VERSION")])).is_ok());
        let unknown = parse_env(&env(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!(unknown.msg, "unknown CNI_COMMAND: \"FROB\"");
    }

    /// An ADD with every variable set, these three as given.
    fn add(id: &str, ifname: &str, args: &str) -> Result<Invocation, CniError> {
        parse_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/proc/1/ns/net"),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", args),
        ]))
    }

    #[test]
    fn pod_args_are_read() {
        let invocation = add(
            "abc-1.2_3",
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
        )
        .unwrap();
        assert_eq!(
            invocation.pod,
            PodArgs {
                namespace: Some("web".into()),
                name: Some("web-0".into()),
                uid: Some("u-1".into()),
            }
        );
    }

    #[rstest]
    #[case::container_id_that_is_a_path("../x", "eth0", "")]
    #[case::container_id_starting_with_a_dash("-x", "eth0", "")]
    #[case::ifname_with_a_slash("x", "eth/0", "")]
    #[case::ifname_too_long("x", "a-very-long-interface", "")]
    #[case::pod_arg_without_a_value("x", "eth0", "K8S_POD_NAME")]
    fn bad_names_and_args_are_refused(#[case] id: &str, #[case] ifname: &str, #[case] args: &str) {
        let error = add(id, ifname, args).unwrap_err();
        assert_eq!(error.code, Code::InvalidEnvironment);
    }

    #[test]
    fn a_huge_bad_container_id_is_echoed_only_in_part() {
        let huge = format!("/{}", "x".repeat(1 << 20));
        let error = add(&huge, "eth0", "").unwrap_err();
        assert!(error.msg.len() < 200, "{} bytes", error.msg.len());
        assert!(error.msg.ends_with('…'), "{}", error.msg);
    }
}
