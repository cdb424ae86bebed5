//! A container's environment and command line as they are when it starts:
//! downward-API fields filled in (the pod IP exists only once the sandbox
//! does) and `$(VAR)` references expanded as Kubernetes expands them.

use crate::spec::{ContainerSpec, EnvValue, PodField, PodSpec};

/// What is known about the pod only once its sandbox exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAddresses {
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
}

/// The value of a downward-API field; an address not known yet is empty,
/// as the kubelet gives it.
pub fn field_value(pod: &PodSpec, field: PodField, addresses: &PodAddresses) -> String {
    match field {
        PodField::Name => pod.name.clone(),
        PodField::Namespace => pod.namespace.clone(),
        PodField::Uid => pod.uid.0.clone(),
        PodField::NodeName => pod.node_name.clone().unwrap_or_default(),
        PodField::PodIp => addresses.pod_ip.clone().unwrap_or_default(),
        PodField::HostIp => addresses.host_ip.clone().unwrap_or_default(),
    }
}

/// The container's variables in manifest order. Each literal value is
/// expanded against the variables before it; a name given twice keeps its
/// first place and its last value.
pub fn container_env(pod: &PodSpec, container: &ContainerSpec, addresses: &PodAddresses) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in &container.env {
        let value = match &var.value {
            EnvValue::Literal(text) => expand(text, |name| lookup(&env, name)),
            EnvValue::Field(field) => field_value(pod, *field, addresses),
        };
        match env.iter_mut().find(|(name, _)| *name == var.name) {
            Some(slot) => slot.1 = value,
            None => env.push((var.name.clone(), value)),
        }
    }
    env
}

/// `command` and `args` with `$(VAR)` expanded against `env`.
pub fn command_line(container: &ContainerSpec, env: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let expand_all = |words: &[String]| words.iter().map(|w| expand(w, |name| lookup(env, name))).collect();
    (expand_all(&container.command), expand_all(&container.args))
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Kubernetes' expansion: `$(NAME)` becomes the variable's value when it is
/// defined and stays as written when it is not; `$$` is a literal `$`; any
/// other `$` is left alone.
pub fn expand<'a>(text: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|r| r.split_once(')')) {
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse, LoadOptions};
    use std::path::Path;

    fn lookup_in<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn references_expand_escapes_collapse_and_unknowns_stay() {
        let vars = [("A", "1"), ("B", "two")];
        for (text, expanded) in [
            ("$(A)", "1"),
            ("x$(A)y$(B)z", "x1ytwoz"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$1"),
            ("cost: $5", "cost: $5"),
            ("$(A", "$(A"),
            ("end$", "end$"),
            ("$()", "$()"),
            ("ünïcode $(B)", "ünïcode two"),
        ] {
            assert_eq!(expand(text, lookup_in(&vars)), expanded, "{text}");
        }
    }

    #[test]
    fn fields_and_earlier_variables_fill_the_environment_and_the_command_line() {
        let text = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"demo"},
          "spec":{"containers":[{"name":"c","image":"x:1",
            "command":["/bin/server","--addr=$(POD_IP):$(PORT)"],
            "args":["--node=$(NODE)","$(UNSET)","$$(PORT)"],
            "env":[
              {"name":"PORT","value":"80"},
              {"name":"URL","value":"http://$(POD_IP):$(PORT)/$(LATER)"},
              {"name":"POD_IP","valueFrom":{"fieldRef":{"fieldPath":"status.podIP"}}},
              {"name":"NODE","valueFrom":{"fieldRef":{"fieldPath":"spec.nodeName"}}},
              {"name":"UID","valueFrom":{"fieldRef":{"fieldPath":"metadata.uid"}}},
              {"name":"LATER","value":"x"},
              {"name":"PORT","value":"8080"}
            ]}]}}"#;
        let options = LoadOptions { node_name: Some("node1".to_owned()) };
        let pod = parse(Path::new("web.json"), text.as_bytes(), &options).unwrap();
        let addresses = PodAddresses { pod_ip: Some("10.244.1.5".to_owned()), host_ip: None };
        let env = container_env(&pod, &pod.containers[0], &addresses);
        let expected: Vec<(String, String)> = [
            ("PORT", "8080"),
            ("URL", "http://$(POD_IP):80/$(LATER)"),
            ("POD_IP", "10.244.1.5"),
            ("NODE", "node1"),
            ("UID", pod.uid.0.as_str()),
            ("LATER", "x"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            env, expected,
            "a value sees only the variables before it; a repeated name keeps its place and takes the last value"
        );
        let (command, args) = command_line(&pod.containers[0], &env);
        assert_eq!(command, ["/bin/server", "--addr=10.244.1.5:8080"]);
        assert_eq!(args, ["--node=node1", "$(UNSET)", "$(PORT)"]);
        assert_eq!(field_value(&pod, PodField::HostIp, &addresses), "", "an unknown address is empty");
        assert_eq!(field_value(&pod, PodField::Name, &addresses), "web-node1");
    }
}
