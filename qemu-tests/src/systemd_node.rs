//! The systemd node of `cargo xtask bench vs-systemd`: the files that make a
//! Debian trixie root booted by systemd into the node Kelson's PID 1 makes
//! from the same machine config. A benchmark fixture, not a product.
//!
//! Everything the node's services read is what Kelson renders itself:
//! containerd's config, the kubelet's and kube-proxy's configs and
//! kubeconfigs and the service command lines (`kelson_supervise::node`),
//! the CNI conflist (`kelson_net::cni`), the PKI files (as PID 1's
//! apply-config stage installs them) and the node sysctls (`kelson_init`).
//! What differs is the init system's own way of doing each job:
//!
//! - each supervised service becomes a unit ([`unit`]): a requirement on
//!   another service being healthy or completed becomes `Requires=` +
//!   `After=` on a unit whose type says when it is ready, and
//!   `network-ready` becomes `network-online.target`;
//! - the uplink, cbr0 and the peer routes are systemd-networkd's
//!   ([`networkd`]); the MASQUERADE rule (networkd has no equivalent of
//!   Kelson's) is a oneshot unit running the seed notes' iptables commands
//!   before `network-online.target`; the sysctls are systemd-sysctl's and
//!   br_netfilter and overlay systemd-modules-load's.
//!
//! The image also carries the harness's agent (busybox and
//! [`crate::agent_hook`]) as a unit, so the host reads both nodes through
//! the same shell on the second serial port.

use anyhow::{bail, Context, Result};
use kelson_config::MachineConfig;
use kelson_net::plan::{LinkSelector, NetPlan, UplinkMode};
use kelson_supervise::{RestartMode, ServiceSpec};
use std::fmt::Write as _;
use std::path::Path;

/// The oneshot that installs the MASQUERADE rule.
pub const NODE_NETWORK_UNIT: &str = "node-masquerade.service";
/// The unit running the harness's agent shell on /dev/ttyS1.
pub const AGENT_UNIT: &str = "bench-agent.service";
/// Where Kelson's PID 1 installs `pki.ca` and `pki.certificates.*`.
const PKI_DIR: &str = "/etc/kelson/pki";

/// How systemd learns that a service of Kelson's node is ready, which is
/// when Kelson's supervisor would call it healthy (or completed).
fn service_type(name: &str) -> Result<&'static str> {
    Ok(match name {
        // containerd tells systemd READY=1 once its socket serves, the
        // point at which Kelson's probe (a connect to the socket) passes.
        "containerd" => "notify",
        // The kubelet tells READY=1 right after it starts its healthz
        // server, the endpoint Kelson's probe reads.
        "kubelet" => "notify",
        // A one-shot: ready when it exited 0, as Kelson's `completed`.
        "sandbox-image" => "oneshot",
        // kube-proxy tells systemd nothing, and nothing waits for it.
        "kube-proxy" => "simple",
        other => bail!("no systemd unit type is known for Kelson's service {other:?}"),
    })
}

/// `arg` as one word of a unit's command line: double-quoted, with the
/// characters systemd would otherwise expand or split on escaped.
fn exec_word(arg: &str) -> String {
    let mut word = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' => word.push_str("\\\\"),
            '"' => word.push_str("\\\""),
            '\n' => word.push_str("\\n"),
            '%' => word.push_str("%%"),
            '$' => word.push_str("$$"),
            c => word.push(c),
        }
    }
    word.push('"');
    word
}

/// One `Environment=` assignment, quoted.
fn environment(key: &str, value: &str) -> String {
    let text = format!("{key}={value}");
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '%' => quoted.push_str("%%"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The unit for one of the services Kelson's supervisor runs, from the
/// same spec: command line, environment, requirements, restart and stop
/// policy, OOM score and limits.
pub fn unit(spec: &ServiceSpec) -> Result<String> {
    use kelson_supervise::Requirement;
    let kind = service_type(&spec.name)?;
    let mut after = Vec::new();
    let mut requires = Vec::new();
    let mut wants = Vec::new();
    for requirement in &spec.requires {
        match requirement {
            Requirement::Healthy(name) | Requirement::Completed(name) => {
                requires.push(format!("{name}.service"));
                after.push(format!("{name}.service"));
            }
            Requirement::Condition(condition) if condition == kelson_supervise::NETWORK_READY => {
                wants.push("network-online.target".to_owned());
                after.push("network-online.target".to_owned());
            }
            other => bail!("service {}: no systemd equivalent of the requirement {other:?}", spec.name),
        }
    }
    let mut text = String::new();
    let _ = writeln!(text, "# Kelson's {} service as a systemd unit (bench-vs-systemd fixture).", spec.name);
    let _ = writeln!(text, "[Unit]");
    let _ = writeln!(text, "Description=Kelson's {} service, as systemd runs it", spec.name);
    // Kelson's supervisor restarts for ever; systemd would give up after
    // five starts in ten seconds.
    let _ = writeln!(text, "StartLimitIntervalSec=0");
    for (key, units) in [("Wants", &wants), ("Requires", &requires), ("After", &after)] {
        if !units.is_empty() {
            let _ = writeln!(text, "{key}={}", units.join(" "));
        }
    }
    let _ = writeln!(text, "\n[Service]");
    let _ = writeln!(text, "Type={kind}");
    if kind == "oneshot" {
        let _ = writeln!(text, "RemainAfterExit=yes");
    }
    // Kelson's supervisor waits for health as long as it takes; systemd
    // would kill a unit not ready within 90 s (a Go daemon's start under
    // emulation can take longer).
    let _ = writeln!(text, "TimeoutStartSec=infinity");
    let argv: Vec<String> = spec.argv.iter().map(|a| exec_word(a)).collect();
    let _ = writeln!(text, "ExecStart={}", argv.join(" "));
    // Kelson's supervisor starts every service with a cleared environment
    // holding only PATH (the spec's, else its default) and the spec's own.
    if !spec.env.iter().any(|(key, _)| key == "PATH") {
        let _ = writeln!(text, "Environment={}", environment("PATH", kelson_supervise::DEFAULT_PATH));
    }
    for (key, value) in &spec.env {
        let _ = writeln!(text, "Environment={}", environment(key, value));
    }
    if let Some(dir) = &spec.working_dir {
        let _ = writeln!(text, "WorkingDirectory={}", dir.display());
    }
    let restart = match spec.restart.mode {
        RestartMode::Always => "always",
        RestartMode::OnFailure => "on-failure",
        RestartMode::Never => "no",
    };
    let backoff = spec.restart.backoff;
    let _ = writeln!(text, "Restart={restart}");
    let _ = writeln!(text, "RestartSec={}ms", backoff.initial.as_millis());
    if backoff.factor > 1 && backoff.cap > backoff.initial {
        // systemd's closest to doubling up to the cap: that many steps
        // from the first delay to the last.
        let mut steps = 0u32;
        let mut delay = backoff.initial;
        while delay < backoff.cap && steps < 32 {
            delay = delay.saturating_mul(backoff.factor);
            steps += 1;
        }
        let _ = writeln!(text, "RestartSteps={steps}");
        let _ = writeln!(text, "RestartMaxDelaySec={}ms", backoff.cap.as_millis());
    }
    let _ = writeln!(text, "KillSignal={}", spec.stop.signal.as_str());
    let _ = writeln!(text, "TimeoutStopSec={}ms", spec.stop.grace.as_millis());
    if spec.name == "containerd" {
        // Kelson never kills containerd's cgroup: the shims and the
        // containers they run outlive a containerd restart. Debian's own
        // containerd unit says the same.
        let _ = writeln!(text, "KillMode=process\nDelegate=yes");
    }
    if let Some(score) = spec.resources.oom_score_adj {
        let _ = writeln!(text, "OOMScoreAdjust={score}");
    }
    if let Some(bytes) = spec.resources.memory_max {
        let _ = writeln!(text, "MemoryMax={bytes}");
    }
    if let Some(weight) = spec.resources.cpu_weight {
        let _ = writeln!(text, "CPUWeight={weight}");
    }
    let _ = writeln!(text, "\n[Install]\nWantedBy=multi-user.target");
    Ok(text)
}

/// systemd-networkd's files (name, contents) for Kelson's network plan:
/// each uplink's static addresses, gateway and routes, the peer routes,
/// and cbr0 with its address and MTU. IPv6 autoconfiguration stays off,
/// as Kelson configures IPv4 only.
pub fn networkd(plan: &NetPlan) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for (i, uplink) in plan.uplinks.iter().enumerate() {
        if uplink.rename.is_some() {
            bail!("{}: renaming a link is not rendered for networkd", uplink.field);
        }
        let mut text = String::from("[Match]\n");
        match &uplink.select {
            LinkSelector::Name(name) => {
                let _ = writeln!(text, "Name={name}");
            }
            LinkSelector::Mac(mac) => {
                let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(text, "MACAddress={}", mac.join(":"));
            }
        }
        if let Some(mtu) = uplink.mtu {
            let _ = writeln!(text, "\n[Link]\nMTUBytes={mtu}");
        }
        let _ = writeln!(text, "\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no");
        let mut routes = String::new();
        match &uplink.mode {
            UplinkMode::Dhcp4 => {
                let _ = writeln!(text, "DHCP=ipv4");
            }
            UplinkMode::Static { addresses, gateway, routes: static_routes } => {
                for address in addresses {
                    let _ = writeln!(text, "Address={address}");
                }
                if let Some(gateway) = gateway {
                    let _ = writeln!(text, "Gateway={gateway}");
                }
                for route in static_routes {
                    let _ = writeln!(routes, "\n[Route]\nDestination={}\nGateway={}", route.to, route.via);
                }
            }
        }
        // Kelson adds the peer routes once the uplinks are up; they go
        // through the uplink that reaches their gateways, the first one.
        if i == 0 {
            for peer in &plan.peer_routes {
                let _ = writeln!(routes, "\n[Route]\nDestination={}\nGateway={}", peer.pod_cidr, peer.via);
            }
        }
        text.push_str(&routes);
        files.push((format!("10-uplink-{i}.network"), text));
    }
    if let Some(bridge) = &plan.bridge {
        files.push((
            format!("20-{}.netdev", bridge.name),
            format!("[NetDev]\nName={}\nKind=bridge\nMTUBytes={}\n", bridge.name, bridge.mtu),
        ));
        // No port is on cbr0 until a pod starts: configured without a
        // carrier, and "online" once configured in that state.
        files.push((
            format!("20-{}.network", bridge.name),
            format!(
                "[Match]\nName={}\n\n[Link]\nRequiredForOnline=no-carrier\n\n[Network]\nAddress={}\n\
                 ConfigureWithoutCarrier=yes\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
                bridge.name, bridge.address
            ),
        ));
    }
    Ok(files)
}

/// The oneshot that installs Kelson's MASQUERADE rule with the seed notes'
/// iptables commands, ordered before `network-online.target` (so the
/// network counts as configured only with it) and after nothing but the
/// modules, so it runs beside networkd, as Kelson runs it beside its
/// netlink steps.
pub fn masquerade_unit(plan: &NetPlan) -> Option<String> {
    let cluster = plan.cluster_cidr?;
    let chain = kelson_net::iptables::CHAIN;
    let rule = kelson_net::iptables::masquerade_rule(cluster).join(" ");
    Some(format!(
        "# Kelson's MASQUERADE rule (kelson_net::iptables) as the seed notes' commands.\n\
         [Unit]\nDescription=Node MASQUERADE rule for the pod network\nDefaultDependencies=no\n\
         After=systemd-modules-load.service\nBefore=network-online.target\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/usr/sbin/iptables -t nat -N {chain}\n\
         ExecStart=/usr/sbin/iptables -t nat -A POSTROUTING -j {chain}\n\
         ExecStart=/usr/sbin/iptables -t nat -A {chain} {rule}\n\n\
         [Install]\nWantedBy=network-online.target\n"
    ))
}

/// The unit running the agent's hook script, ordered after nothing of the
/// node's: the host must reach the guest even when a service never gets
/// ready, to say why.
pub fn agent_unit() -> String {
    format!(
        "# The benchmark harness's agent: a shell on /dev/ttyS1 (qemu-tests' agent hook).\n\
         [Unit]\nDescription=bench-vs-systemd agent shell on ttyS1\n\n[Service]\nExecStart={}\nRestart=always\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        crate::AGENT_HOOK
    )
}

/// Writes `contents` at `path` (absolute, in the guest) under `root`.
fn put(root: &Path, path: &str, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let target = root.join(path.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&target, contents).with_context(|| format!("writing {}", target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", target.display()))
}

/// Writes the systemd node's own files for `config` into `root`, an mkosi
/// extra tree: /etc (hostname, PKI, the rendered service files, the CNI
/// conflist, networkd, sysctl.d, modules-load.d, units and the preset that
/// enables them) and the agent (`busybox`, a static busybox from the host).
/// Returns the names of the units it enabled.
pub fn write_tree(config: &MachineConfig, root: &Path, busybox: &Path) -> Result<Vec<String>> {
    let Some(hostname) = config.node.hostname.clone() else {
        bail!("the machine config has no node.hostname; the systemd node needs the name Kelson's node gets");
    };
    put(root, "/etc/hostname", format!("{hostname}\n"), 0o644)?;
    if let Some(ca) = &config.pki.ca {
        put(root, &format!("{PKI_DIR}/ca.crt"), ca, 0o644)?;
    }
    for (name, pair) in &config.pki.certificates {
        put(root, &format!("{PKI_DIR}/{name}.crt"), &pair.cert, 0o644)?;
        put(root, &format!("{PKI_DIR}/{name}.key"), pair.key.expose(), 0o600)?;
    }
    let services = kelson_supervise::node::render(config, &hostname);
    for file in &services.files {
        put(root, &file.path.to_string_lossy(), &file.contents, file.mode)?;
    }
    let plan = NetPlan::from_config(&config.network).map_err(|errors| {
        let reasons: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect();
        anyhow::anyhow!("planning the machine config's network: {}", reasons.join("; "))
    })?;
    if let Some(bridge) = &plan.bridge {
        put(root, kelson_net::cni::DEFAULT_CONFLIST, format!("{:#}\n", kelson_net::cni::conflist(bridge)), 0o644)?;
    }
    for (name, text) in networkd(&plan)? {
        put(root, &format!("/etc/systemd/network/{name}"), text, 0o644)?;
    }
    let sysctls: String = kelson_init::sysctl::NODE_SYSCTLS.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    put(
        root,
        "/etc/sysctl.d/90-kelson-node.conf",
        format!("# Kelson's node sysctls (kelson_init::sysctl).\n{sysctls}"),
        0o644,
    )?;
    // The bridge sysctls exist only with br_netfilter; containerd's
    // snapshotter needs overlay. Everything else the kernel or udev loads
    // when it is used, as on any systemd node.
    put(root, "/etc/modules-load.d/kelson-node.conf", "br_netfilter\noverlay\n", 0o644)?;

    let mut enabled = vec![
        "systemd-networkd.service".to_owned(),
        "systemd-networkd.socket".to_owned(),
        "systemd-networkd-wait-online.service".to_owned(),
        "systemd-resolved.service".to_owned(),
    ];
    for spec in &services.services {
        let name = format!("{}.service", spec.name);
        put(root, &format!("/etc/systemd/system/{name}"), unit(spec)?, 0o644)?;
        enabled.push(name);
    }
    if let Some(text) = masquerade_unit(&plan) {
        put(root, &format!("/etc/systemd/system/{NODE_NETWORK_UNIT}"), text, 0o644)?;
        enabled.push(NODE_NETWORK_UNIT.to_owned());
    }
    put(root, &format!("/etc/systemd/system/{AGENT_UNIT}"), agent_unit(), 0o644)?;
    enabled.push(AGENT_UNIT.to_owned());
    let preset: String = enabled.iter().map(|u| format!("enable {u}\n")).collect();
    put(root, "/etc/systemd/system-preset/10-bench-systemd.preset", preset, 0o644)?;

    let busybox_bytes = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    put(root, crate::GUEST_BUSYBOX, busybox_bytes, 0o755)?;
    put(root, crate::AGENT_HOOK, crate::agent_hook(), 0o755)?;
    Ok(enabled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_supervise::{Requirement, NETWORK_READY};

    #[test]
    fn a_service_spec_becomes_a_unit_with_its_command_line_requirements_and_policies() {
        let mut spec = ServiceSpec::new("kubelet", ["/usr/bin/kubelet", "--config=/etc/k 1.yaml", "50%", "a\"b$c"]);
        spec.requires = vec![
            Requirement::Healthy("containerd".into()),
            Requirement::Completed("sandbox-image".into()),
            Requirement::Condition(NETWORK_READY.into()),
        ];
        spec.resources.oom_score_adj = Some(-999);
        let text = unit(&spec).unwrap();
        assert!(text.contains("Type=notify\nTimeoutStartSec=infinity\n"), "{text}");
        assert!(text.contains(r#"ExecStart="/usr/bin/kubelet" "--config=/etc/k 1.yaml" "50%%" "a\"b$$c""#), "{text}");
        assert!(text.contains("Wants=network-online.target\n"), "{text}");
        assert!(text.contains("Requires=containerd.service sandbox-image.service\n"), "{text}");
        assert!(text.contains("After=containerd.service sandbox-image.service network-online.target\n"), "{text}");
        assert!(text.contains("Restart=always\nRestartSec=1000ms\nRestartSteps=6\nRestartMaxDelaySec=60000ms\n"));
        assert!(text.contains("KillSignal=SIGTERM\nTimeoutStopSec=10000ms\n"), "{text}");
        assert!(text.contains("OOMScoreAdjust=-999\n"), "{text}");
        assert!(text.contains("Environment=\"PATH="), "{text}");
    }

    #[test]
    fn the_rendered_node_services_all_have_units_and_an_unknown_service_or_requirement_is_refused() {
        let config = MachineConfig::empty();
        let services = kelson_supervise::node::render(&config, "n1");
        let types: Vec<String> = services
            .services
            .iter()
            .map(|s| unit(s).unwrap().lines().find(|l| l.starts_with("Type=")).unwrap().to_owned())
            .collect();
        assert_eq!(types, ["Type=notify", "Type=oneshot", "Type=notify", "Type=simple"]);
        let sandbox = unit(&services.services[1]).unwrap();
        assert!(sandbox.contains("RemainAfterExit=yes\n") && sandbox.contains("Restart=on-failure\n"), "{sandbox}");
        assert!(unit(&ServiceSpec::new("etcd", ["/usr/bin/etcd"])).is_err());
        let mut spec = ServiceSpec::new("kube-proxy", ["/usr/bin/kube-proxy"]);
        spec.requires = vec![Requirement::PathExists("/run/x".into())];
        assert!(unit(&spec).unwrap_err().to_string().contains("PathExists"));
    }

    #[test]
    fn networkd_gets_the_uplink_peer_routes_and_cbr0_of_the_plan() {
        let yaml =
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  uplinks:\n    - name: eth0\n      \
                    addresses: [192.168.100.11/24]\n      gateway4: 192.168.100.1\n  podCIDR: 10.244.1.0/24\n  \
                    clusterCIDR: 10.244.0.0/16\n  mtu: 1460\n  peerRoutes:\n    - podCIDR: 10.244.0.0/24\n      \
                    via: 192.168.100.10\n";
        let config = kelson_config::parse("test", yaml).unwrap();
        let plan = NetPlan::from_config(&config.network).unwrap();
        let files = networkd(&plan).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["10-uplink-0.network", "20-cbr0.netdev", "20-cbr0.network"]);
        let uplink = &files[0].1;
        assert!(uplink.starts_with("[Match]\nName=eth0\n"), "{uplink}");
        assert!(uplink.contains("Address=192.168.100.11/24\nGateway=192.168.100.1\n"), "{uplink}");
        assert!(uplink.contains("[Route]\nDestination=10.244.0.0/24\nGateway=192.168.100.10\n"), "{uplink}");
        assert!(files[1].1.contains("Kind=bridge\nMTUBytes=1460\n"), "{}", files[1].1);
        assert!(files[2].1.contains("Address=10.244.1.1/24\n"), "{}", files[2].1);
        let masquerade = masquerade_unit(&plan).unwrap();
        assert!(
            masquerade.contains(
                "iptables -t nat -A KELSON-POSTROUTING ! -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE\n"
            ),
            "{masquerade}"
        );
    }
}
