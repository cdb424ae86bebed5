//! Kubeconfig files (`apiVersion: v1`, `kind: Config`), in client-go's
//! field spelling (`certificate-authority`, `current-context`, ...).

use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    pub current_context: String,
}

#[derive(Debug, Serialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    pub certificate_authority: String,
}

#[derive(Debug, Serialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Serialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
}

/// A kubeconfig with one cluster, one user and the context joining them.
pub fn single(cluster: &str, server: &str, ca_file: &str, user_name: &str, user: User) -> Kubeconfig {
    let context = format!("{user_name}@{cluster}");
    Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![NamedCluster {
            name: cluster.to_owned(),
            cluster: Cluster { server: server.to_owned(), certificate_authority: ca_file.to_owned() },
        }],
        users: vec![NamedUser { name: user_name.to_owned(), user }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Context { cluster: cluster.to_owned(), user: user_name.to_owned() },
        }],
        current_context: context,
    }
}
