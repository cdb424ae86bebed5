#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The manifest corpus: kubeadm-shaped master manifests that must map
//! without loss, and broken manifests with the exact errors they give.

use kelson_pods::manifest::{load, LoadOptions};
use kelson_pods::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn corpus(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests").join(kind).join(name)
}

fn node() -> LoadOptions {
    LoadOptions { node_name: Some("Node1".to_owned()) }
}

fn good(name: &str) -> PodSpec {
    let path = corpus("good", name);
    load(&path, &node()).unwrap_or_else(|e| panic!("{e}"))
}

fn raw(name: &str) -> Value {
    let text = std::fs::read_to_string(corpus("good", name)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every field the issue lists, compared between the raw document and the
/// mapped spec, for each container: nothing written is dropped.
fn assert_nothing_lost(name: &str) {
    let doc = raw(name);
    let pod = good(name);
    let spec = &doc["spec"];
    assert_eq!(pod.host_network, spec["hostNetwork"].as_bool().unwrap_or(false), "{name}");
    assert_eq!(pod.priority_class_name.as_deref(), spec["priorityClassName"].as_str(), "{name}");
    assert_eq!(pod.volumes.len(), spec["volumes"].as_array().map_or(0, Vec::len), "{name}");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let mapped = pod.volume(v["name"].as_str().unwrap()).unwrap();
        if let Some(host) = v.get("hostPath") {
            let VolumeSource::HostPath { path, kind } = &mapped.source else { panic!("{mapped:?}") };
            assert_eq!(path, Path::new(host["path"].as_str().unwrap()));
            assert_eq!(Some(*kind), HostPathType::from_manifest(host["type"].as_str().unwrap_or("")));
        }
    }
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(pod.containers.len(), containers.len());
    for (c, mapped) in containers.iter().zip(&pod.containers) {
        assert_eq!(mapped.name, c["name"].as_str().unwrap());
        assert_eq!(mapped.image, c["image"].as_str().unwrap());
        assert_eq!(mapped.command, strings(&c["command"]), "{name}");
        assert_eq!(mapped.args, strings(&c["args"]), "{name}");
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        assert_eq!(mapped.mounts.len(), mounts.len());
        for (m, mm) in mounts.iter().zip(&mapped.mounts) {
            assert_eq!(mm.volume, m["name"].as_str().unwrap());
            assert_eq!(mm.mount_path, Path::new(m["mountPath"].as_str().unwrap()));
            assert_eq!(mm.read_only, m["readOnly"].as_bool().unwrap_or(false));
        }
        for (field, probe) in [
            ("livenessProbe", &mapped.liveness),
            ("readinessProbe", &mapped.readiness),
            ("startupProbe", &mapped.startup),
        ] {
            let Some(raw) = c.get(field) else {
                assert!(probe.is_none());
                continue;
            };
            let probe = probe.as_ref().unwrap();
            let n = |k: &str, d: u64| raw.get(k).and_then(Value::as_u64).unwrap_or(d);
            assert_eq!(probe.initial_delay, secs(n("initialDelaySeconds", 0)), "{name} {field}");
            assert_eq!(probe.period, secs(n("periodSeconds", 10)), "{name} {field}");
            assert_eq!(probe.timeout, secs(n("timeoutSeconds", 1)), "{name} {field}");
            assert_eq!(u64::from(probe.failure_threshold), n("failureThreshold", 3), "{name} {field}");
            let http = &raw["httpGet"];
            let ProbeAction::HttpGet { host, port, path, scheme, .. } = &probe.action else { panic!("{probe:?}") };
            assert_eq!(host.as_deref(), http["host"].as_str());
            assert_eq!(Some(path.as_str()), http["path"].as_str());
            assert_eq!(*scheme == HttpScheme::Https, http["scheme"] == "HTTPS");
            if let Some(number) = http["port"].as_u64() {
                assert_eq!(u64::from(*port), number);
            }
        }
    }
}

#[test]
fn the_four_kubeadm_master_manifests_map_without_loss() {
    for name in ["etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml"] {
        assert_nothing_lost(name);
        let pod = good(name);
        assert_eq!(pod.namespace, "kube-system");
        assert!(pod.host_network);
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
        assert_eq!(pod.priority, Some(2_000_001_000));
        assert_eq!(pod.restart_policy, RestartPolicy::Always);
        assert_eq!(pod.termination_grace_period, secs(30));
        assert_eq!(pod.labels["tier"], "control-plane");
        assert_eq!(pod.node_name.as_deref(), Some("Node1"));
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(
            c.security.seccomp,
            Some(Seccomp::RuntimeDefault),
            "the pod's seccomp profile reaches the container"
        );
        assert_eq!(c.startup.as_ref().unwrap().failure_threshold, 24);
        assert_eq!(c.liveness.as_ref().unwrap().failure_threshold, 8);
        assert_eq!(c.command[0], pod.manifest_name);
        assert_eq!(pod.uid.0.len(), 32);
    }
}

#[test]
fn etcd_maps_to_its_resources_volumes_and_probes() {
    let pod = good("etcd.yaml");
    assert_eq!(pod.name, "etcd-node1", "static pods are named after the node, lower-cased");
    assert_eq!(pod.manifest_name, "etcd");
    assert_eq!(pod.full_name(), "kube-system_etcd-node1");
    assert_eq!(pod.annotations["kubeadm.kubernetes.io/etcd.advertise-client-urls"], "https://10.0.0.10:2379");
    let etcd = pod.container("etcd").unwrap();
    assert_eq!(etcd.image, "registry.k8s.io/etcd:3.5.15-0");
    assert_eq!(etcd.command.len(), 19);
    assert_eq!(etcd.command[4], "--data-dir=/var/lib/etcd");
    assert_eq!(etcd.resources.cpu_request_millis, Some(100));
    assert_eq!(etcd.resources.memory_request_bytes, Some(100 << 20));
    assert_eq!(etcd.resources.cpu_limit_millis, None);
    let cg = etcd.resources.cgroup();
    assert_eq!(
        (cg.cpu_weight, cg.cpu_max(), cg.memory_max(), cg.memory_min),
        (4, "max 100000".to_owned(), "max".to_owned(), Some(104_857_600))
    );
    assert_eq!(
        pod.volume("etcd-data").unwrap().source,
        VolumeSource::HostPath { path: "/var/lib/etcd".into(), kind: HostPathType::DirectoryOrCreate }
    );
    assert_eq!(
        etcd.liveness,
        Some(ProbeSpec {
            action: ProbeAction::HttpGet {
                host: Some("127.0.0.1".to_owned()),
                port: 2381,
                path: "/livez".to_owned(),
                scheme: HttpScheme::Http,
                headers: vec![],
            },
            initial_delay: secs(10),
            period: secs(10),
            timeout: secs(15),
            success_threshold: 1,
            failure_threshold: 8,
            termination_grace_period: None,
        })
    );
    let readiness = etcd.readiness.as_ref().unwrap();
    assert_eq!((readiness.initial_delay, readiness.period, readiness.failure_threshold), (secs(0), secs(1), 3));
}

#[test]
fn the_apiserver_probes_use_its_named_port_over_https() {
    let pod = good("kube-apiserver.yaml");
    let c = &pod.containers[0];
    assert_eq!(
        c.ports,
        vec![PortSpec {
            name: Some("probe-port".to_owned()),
            container_port: 6443,
            host_port: Some(6443),
            host_ip: None,
            protocol: Protocol::Tcp
        }]
    );
    for probe in [&c.liveness, &c.readiness, &c.startup] {
        let ProbeAction::HttpGet { host, port, scheme, .. } = &probe.as_ref().unwrap().action else { panic!() };
        assert_eq!((host.as_deref(), *port, *scheme), (Some("10.0.0.10"), 6443, HttpScheme::Https));
    }
    assert_eq!(c.resources.cpu_request_millis, Some(250));
    assert_eq!(c.resources.cgroup().cpu_weight, 10);
    assert_eq!(c.mounts.iter().filter(|m| m.read_only).count(), 5);
    assert_eq!(c.command.len(), 28);
}

#[test]
fn the_controller_manager_and_scheduler_mount_their_kubeconfig_files() {
    let cm = good("kube-controller-manager.yaml");
    assert_eq!(
        cm.volume("kubeconfig").unwrap().source,
        VolumeSource::HostPath {
            path: "/etc/kubernetes/controller-manager.conf".into(),
            kind: HostPathType::FileOrCreate
        }
    );
    let flex = cm.containers[0].mounts.iter().find(|m| m.volume == "flexvolume-dir").unwrap();
    assert!(!flex.read_only);
    assert_eq!(cm.containers[0].resources.cpu_request_millis, Some(200));
    assert_eq!(cm.containers[0].resources.cgroup().cpu_weight, 8);
    let ProbeAction::HttpGet { host, port, scheme, path, .. } = &cm.containers[0].liveness.as_ref().unwrap().action
    else {
        panic!()
    };
    assert_eq!(
        (host.as_deref(), *port, *scheme, path.as_str()),
        (Some("127.0.0.1"), 10257, HttpScheme::Https, "/healthz")
    );

    let sched = good("kube-scheduler.yaml");
    assert_eq!(
        sched.containers[0].mounts,
        vec![MountSpec {
            volume: "kubeconfig".to_owned(),
            mount_path: "/etc/kubernetes/scheduler.conf".into(),
            read_only: true,
            sub_path: None
        }]
    );
    assert_eq!(sched.containers[0].resources.cpu_request_millis, Some(100));
    let ProbeAction::HttpGet { port, scheme, .. } = &sched.containers[0].liveness.as_ref().unwrap().action else {
        panic!()
    };
    assert_eq!((*port, *scheme), (10259, HttpScheme::Https));
}

#[test]
fn every_mapped_field_of_a_pod_using_them_all_survives() {
    let pod = load(&corpus("good", "everything.yaml"), &LoadOptions::default()).unwrap();
    assert_eq!((pod.name.as_str(), pod.namespace.as_str(), pod.node_name.as_deref()), ("web", "demo", None));
    assert_eq!(pod.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(pod.termination_grace_period, secs(5));
    assert!(pod.host_pid && !pod.host_network && !pod.host_ipc);
    let server = pod.container("server").unwrap();
    assert_eq!(server.image_pull_policy, PullPolicy::Always, "no tag means latest, pulled always");
    assert_eq!(server.command, ["/bin/server"]);
    assert_eq!(server.args, ["--port=$(PORT)", "--name=$(POD_NAME)"]);
    assert_eq!(server.working_dir.as_deref(), Some(Path::new("/srv")));
    let env: Vec<(&str, &EnvValue)> = server.env.iter().map(|e| (e.name.as_str(), &e.value)).collect();
    assert_eq!(
        env,
        [
            ("PORT", &EnvValue::Literal("8080".to_owned())),
            ("EMPTY", &EnvValue::Literal(String::new())),
            ("POD_NAME", &EnvValue::Field(PodField::Name)),
            ("POD_NAMESPACE", &EnvValue::Field(PodField::Namespace)),
            ("POD_UID", &EnvValue::Field(PodField::Uid)),
            ("NODE", &EnvValue::Field(PodField::NodeName)),
            ("POD_IP", &EnvValue::Field(PodField::PodIp)),
            ("HOST_IP", &EnvValue::Field(PodField::HostIp)),
        ]
    );
    assert_eq!(
        server.ports[1],
        PortSpec {
            name: None,
            container_port: 5353,
            host_port: Some(53),
            host_ip: Some("127.0.0.1".to_owned()),
            protocol: Protocol::Udp
        }
    );
    assert_eq!(
        server.mounts[2],
        MountSpec {
            volume: "config".to_owned(),
            mount_path: "/etc/web/web.conf".into(),
            read_only: true,
            sub_path: Some("web.conf".into())
        }
    );
    assert_eq!(
        pod.volume("cache").unwrap().source,
        VolumeSource::EmptyDir { medium: StorageMedium::Default, size_limit: None }
    );
    assert_eq!(
        pod.volume("scratch").unwrap().source,
        VolumeSource::EmptyDir { medium: StorageMedium::Memory, size_limit: Some(16 << 20) }
    );
    assert_eq!(
        pod.volume("config").unwrap().source,
        VolumeSource::HostPath { path: "/etc/web".into(), kind: HostPathType::Unchecked }
    );
    assert_eq!(
        server.resources,
        Resources {
            cpu_request_millis: Some(500),
            cpu_limit_millis: Some(1000),
            memory_request_bytes: Some(64 << 20),
            memory_limit_bytes: Some(128 << 20),
            ephemeral_storage_request_bytes: Some(1 << 30),
            ephemeral_storage_limit_bytes: Some(1 << 30),
        },
        "an unset request takes its limit"
    );
    let cg = server.resources.cgroup();
    assert_eq!(
        (cg.cpu_weight, cg.cpu_max(), cg.memory_max(), cg.memory_min),
        (20, "100000 100000".to_owned(), "134217728".to_owned(), Some(64 << 20))
    );
    assert_eq!(
        server.security,
        SecurityContext {
            privileged: false,
            capabilities_add: vec!["NET_BIND_SERVICE".to_owned(), "NET_RAW".to_owned()],
            capabilities_drop: vec!["ALL".to_owned()],
            run_as_user: Some(33),
            run_as_group: Some(1000),
            run_as_non_root: false,
            read_only_root_filesystem: true,
            allow_privilege_escalation: Some(false),
            supplemental_groups: vec![44],
            seccomp: Some(Seccomp::Localhost("profiles/web.json".to_owned())),
        },
        "the container's runAsUser wins, the pod's runAsGroup fills in"
    );
    assert_eq!(server.liveness.as_ref().unwrap().action, ProbeAction::TcpSocket { host: None, port: 8080 });
    let readiness = server.readiness.as_ref().unwrap();
    assert_eq!(
        readiness.action,
        ProbeAction::HttpGet {
            host: None,
            port: 8080,
            path: "/".to_owned(),
            scheme: HttpScheme::Http,
            headers: vec![("X-Probe".to_owned(), "kelson".to_owned())]
        }
    );
    assert_eq!((readiness.success_threshold, readiness.timeout, readiness.period), (2, secs(1), secs(10)));
    let startup = server.startup.as_ref().unwrap();
    assert_eq!(startup.action, ProbeAction::Exec { command: vec!["cat".to_owned(), "/tmp/started".to_owned()] });
    assert_eq!(
        (startup.failure_threshold, startup.period, startup.termination_grace_period),
        (30, secs(2), Some(secs(3)))
    );

    let sidecar = pod.container("sidecar").unwrap();
    assert_eq!(sidecar.image_pull_policy, PullPolicy::Never);
    assert!(sidecar.tty && sidecar.stdin);
    assert_eq!(
        (sidecar.resources.cpu_request_millis, sidecar.resources.memory_request_bytes),
        (Some(250), Some(32 << 20))
    );
    assert_eq!(sidecar.security.run_as_user, Some(1000), "the pod's runAsUser applies where the container has none");
}

#[test]
fn a_json_manifest_loads_with_kubernetes_defaults() {
    let pod = load(&corpus("good", "minimal.json"), &LoadOptions::default()).unwrap();
    assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("default", "pause"));
    assert_eq!(pod.restart_policy, RestartPolicy::Always);
    assert_eq!(pod.termination_grace_period, secs(30));
    assert!(!pod.host_network);
    let c = &pod.containers[0];
    assert_eq!(c.resources.cgroup().cpu_weight, 1);
    assert_eq!(c.security, SecurityContext::default());
}

#[test]
fn the_uid_follows_the_pod_not_the_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.yaml");
    let original = std::fs::read_to_string(corpus("good", "etcd.yaml")).unwrap();
    let uid = |text: &str, options: &LoadOptions| {
        std::fs::write(&path, text).unwrap();
        load(&path, options).unwrap().uid
    };
    let first = uid(&original, &node());
    assert_eq!(uid(&original, &node()), first, "the same manifest keeps its UID");
    assert_eq!(uid(&format!("# a comment\n{original}\n\n"), &node()), first, "comments and blank lines change nothing");
    assert_ne!(
        uid(&original.replace("--snapshot-count=10000", "--snapshot-count=5000"), &node()),
        first,
        "an edited argument is a new pod"
    );
    assert_ne!(
        uid(&original, &LoadOptions { node_name: Some("node2".to_owned()) }),
        first,
        "another node, another pod"
    );
    let moved = dir.path().join("etcd2.yaml");
    std::fs::write(&moved, &original).unwrap();
    assert_ne!(load(&moved, &node()).unwrap().uid, first, "another file, another pod");
}

/// Each broken manifest and every line of the error it must give (without
/// the file name, which starts each line).
const BROKEN: &[(&str, &[&str])] = &[
    ("api-version.yaml", &[r#"apiVersion: is "v2"; a Pod's is v1"#]),
    ("bad-memory.yaml", &[r#"spec.containers[0].resources.limits.memory: "1Gb" is not a quantity (a number with an optional suffix such as m, k, M, Gi or e3)"#]),
    ("deployment.yaml", &[r#"kind: is "Deployment"; only a Pod can be a static pod"#]),
    ("empty.yaml", &["document: is empty"]),
    ("env-number.yaml", &["spec.containers[0].env[0].value: invalid type: integer `8080`, expected a string"]),
    ("env.yaml", &[
        "spec.containers[0].envFrom: envFrom reads ConfigMaps or Secrets, which static pods cannot use",
        "spec.containers[0].env[0].valueFrom: ConfigMaps and Secrets cannot be used by static pods; use fieldRef or a literal value",
        r#"spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: "spec.serviceAccountName" is not available to a static pod; use one of metadata.name, metadata.namespace, metadata.uid, spec.nodeName, status.podIP, status.hostIP"#,
        r#"spec.containers[0].env[2].name: "A=B" must be printable ASCII without '='"#,
    ]),
    ("host-port.yaml", &["spec.containers[0].ports[1].hostPort: is 53; with hostNetwork it must equal containerPort 5353"]),
    ("list.yaml", &["document: is not a mapping of fields"]),
    ("names.yaml", &[
        r#"metadata.name: "Etcd_1" is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters, each part starting and ending with a letter or digit)"#,
        r#"spec.containers[1].name: "etcd" is used by another container of this pod"#,
        "spec.containers[1].image: is required",
        r#"spec.containers[2].name: "Second" is not a DNS label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"#,
        r#"spec.containers[2].image: "etcd :1" contains whitespace"#,
    ]),
    ("no-containers.yaml", &["spec.containers: at least one container is required"]),
    ("policies.yaml", &[
        r#"spec.restartPolicy: "Sometimes" is not one of Always, OnFailure, Never"#,
        "spec.terminationGracePeriodSeconds: is -1; must be at least 0",
        r#"spec.containers[0].imagePullPolicy: "Maybe" is not one of Always, IfNotPresent, Never"#,
    ]),
    ("probes.yaml", &[
        r#"spec.containers[0].livenessProbe.httpGet.port: "probe-port" is not the name of one of this container's ports"#,
        "spec.containers[0].livenessProbe.successThreshold: is 2; must be 1 for a liveness or startup probe",
        "spec.containers[0].readinessProbe: a probe needs exactly one of exec, httpGet, tcpSocket (found httpGet, tcpSocket)",
        "spec.containers[0].startupProbe.grpc: grpc probes are not supported; use httpGet, tcpSocket or exec",
        "spec.containers[0].startupProbe.periodSeconds: is -5; must not be negative",
    ]),
    ("resources-security.yaml", &[
        r#"spec.containers[0].resources.requests[nvidia.com/gpu]: resource "nvidia.com/gpu" is not supported; use cpu, memory, ephemeral-storage"#,
        "spec.containers[0].resources.requests.cpu: 2 is more than the limit 500m",
        "spec.containers[0].resources.requests.memory: 1Gi is more than the limit 512Mi",
        "spec.containers[0].securityContext.runAsUser: -1 is not a user or group ID (0-2147483647)",
        "spec.containers[0].securityContext.allowPrivilegeEscalation: cannot be false for a privileged container",
        r#"spec.containers[0].securityContext.capabilities.add[0]: "NET_ADMINN" is not a Linux capability"#,
    ]),
    ("syntax.json", &["line 3 column 26: expected value"]),
    ("syntax.yaml", &["line 5 column 2: while parsing a block mapping, did not find expected key"]),
    ("two-documents.yaml", &["line 8 column 1: a second YAML document starts here; a manifest holds exactly one Pod"]),
    ("volumes.yaml", &[
        r#"spec.volumes[0].hostPath.type: "Dir" is not one of "", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"#,
        r#"spec.volumes[1].configMap: volume "config" is a configMap volume; only hostPath and emptyDir volumes are supported"#,
        r#"spec.volumes[2]: volume "nothing" has no source; Kelson supports hostPath and emptyDir"#,
        r#"spec.volumes[3].hostPath.path: "var/lib/etcd" is not an absolute path"#,
        r#"spec.volumes[4].emptyDir.medium: "HugePages" is not supported; use "" (disk) or Memory"#,
        r#"spec.containers[0].volumeMounts[0].name: "etcd-data" is not a volume of this pod"#,
        r#"spec.containers[0].volumeMounts[1].mountPath: "etc/kubernetes/pki" is not an absolute path"#,
        "spec.containers[0].volumeMounts[2].subPath: ../escape must be a relative path without '..'",
    ]),
    ("wrong-type.yaml", &[r#"spec.containers[0].ports[0].containerPort: invalid type: string "client", expected i32"#]),
];

#[test]
fn each_broken_manifest_gives_its_exact_errors_naming_file_and_field() {
    let mut listed: Vec<&str> = BROKEN.iter().map(|(name, _)| *name).collect();
    listed.sort_unstable();
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus("bad", ""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(listed, on_disk, "every broken manifest has its expected errors listed");
    for (name, lines) in BROKEN {
        let path = corpus("bad", name);
        let err = load(&path, &node()).expect_err(name);
        assert_eq!(err.file(), path);
        let expected: Vec<String> = lines.iter().map(|l| format!("{}: {l}", path.display())).collect();
        assert_eq!(err.to_string(), expected.join("\n"), "{name}");
        assert_eq!(err.errors().len(), lines.len(), "{name}");
    }
}

#[test]
fn an_unreadable_manifest_names_the_file() {
    let path = corpus("bad", "no-such-file.yaml");
    let err = load(&path, &node()).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: cannot be read: No such file or directory (os error 2)", path.display()));
}

#[test]
fn manifest_names_exclude_hidden_files_and_editor_leftovers() {
    for name in ["etcd.yaml", "etcd.yml", "etcd.json", "a.b.yaml"] {
        assert!(manifest::is_manifest_name(name), "{name}");
    }
    for name in
        [".etcd.yaml.swp", ".etcd.yaml", "etcd.yaml~", "etcd.yaml.bak", "etcd", ".yaml", "4913", ".etcd.yaml.tmp.1.0"]
    {
        assert!(!manifest::is_manifest_name(name), "{name}");
    }
}

#[test]
fn the_corpus_has_no_unknown_fields_and_typos_are_named_as_ignored() {
    for name in [
        "etcd.yaml",
        "kube-apiserver.yaml",
        "kube-controller-manager.yaml",
        "kube-scheduler.yaml",
        "everything.yaml",
        "minimal.json",
    ] {
        let pod = load(&corpus("good", name), &node()).unwrap();
        let unknown: Vec<_> = pod.warnings.iter().filter(|w| w.reason.starts_with("unknown field")).collect();
        assert!(unknown.is_empty(), "{name}: {unknown:?}");
    }
    // kubeadm's manifests ask for nothing Kelson leaves undone.
    for name in ["etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml"] {
        let pod = load(&corpus("good", name), &node()).unwrap();
        assert_eq!(pod.warnings, [], "{name}");
    }
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  creationTimestamp: null\n  labelz: {a: b}\n\
                spec:\n  containers:\n  - name: web\n    image: web:1\n    imagePullPolice: Never\n    \
                resources: {limits: {cpu: 1}}\n    ports:\n    - {containerPort: 80, nmae: http}\n  hostNetwrok: true\nstatus: {}\n";
    let pod = manifest::parse(Path::new("typos.yaml"), text.as_bytes(), &LoadOptions::default()).unwrap();
    let warnings: Vec<String> = pod.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "metadata.labelz: unknown field, ignored",
            "spec.containers[0].imagePullPolice: unknown field, ignored",
            "spec.containers[0].ports[0].nmae: unknown field, ignored",
            "spec.hostNetwrok: unknown field, ignored",
        ]
    );
    assert!(!pod.host_network, "an ignored field has no effect");
}
