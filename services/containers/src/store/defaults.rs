//! What an image's config contributes to a container, and how a pod's own
//! values combine with it, by Kubernetes' rules.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The defaults an image's config gives a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// As the image wrote it: `user`, `uid`, `user:group`, `uid:gid`.
    pub user: Option<String>,
}

/// Why an image's `User` could not be turned into ids.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// image user {user:?}: reading {path}
    #[error("image user {user:?}: reading {path}")]
    Read { user: String, path: PathBuf, source: io::Error },
    /// image user {user:?}: no {what} {name:?} in {path}
    #[error("image user {user:?}: no {what} {name:?} in {path}")]
    Unknown { user: String, what: &'static str, name: String, path: PathBuf },
}

impl ImageDefaults {
    /// The container's argv, as Kubernetes builds it: `command` replaces the
    /// image's Entrypoint, `args` its Cmd, and a `command` without `args`
    /// drops the image's Cmd too.
    pub fn argv(&self, command: &[String], args: &[String]) -> Vec<String> {
        match (command.is_empty(), args.is_empty()) {
            (false, _) => command.iter().chain(args).cloned().collect(),
            (true, false) => self.entrypoint.iter().chain(args).cloned().collect(),
            (true, true) => self.entrypoint.iter().chain(&self.cmd).cloned().collect(),
        }
    }

    /// The image's environment with `overrides` (`KEY=VALUE`) applied: a key
    /// set by both keeps the image's position and takes the override's value.
    pub fn env_with(&self, overrides: &[String]) -> Vec<String> {
        let key = |entry: &str| entry.split_once('=').map_or(entry, |(k, _)| k).to_owned();
        let mut env: Vec<String> = self.env.clone();
        for entry in overrides {
            match env.iter_mut().find(|e| key(e) == key(entry)) {
                Some(existing) => existing.clone_from(entry),
                None => env.push(entry.clone()),
            }
        }
        env
    }

    /// The image's `User` as (uid, gid), names looked up in the unpacked
    /// image's `/etc/passwd` and `/etc/group`. No user is root; a user
    /// without a group takes its passwd entry's group (0 for a bare uid
    /// with no entry).
    pub fn ids(&self, rootfs: &Path) -> Result<(u32, u32), UserError> {
        let Some(user) = self.user.as_deref() else { return Ok((0, 0)) };
        let (name, group) = match user.split_once(':') {
            Some((name, group)) => (name, Some(group)),
            None => (user, None),
        };
        let passwd = rootfs.join("etc/passwd");
        let passwd_entry = |field: usize, value: &str| -> Result<Option<(u32, u32)>, UserError> {
            let text = match fs::read_to_string(&passwd) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(UserError::Read { user: user.to_owned(), path: passwd.clone(), source }),
            };
            Ok(text
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[field] == value)
                .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?))))
        };
        let (uid, primary_gid) = match name.parse::<u32>() {
            Ok(uid) => (uid, passwd_entry(2, name)?.map_or(0, |(_, gid)| gid)),
            Err(_) => passwd_entry(0, name)?.ok_or_else(|| UserError::Unknown {
                user: user.to_owned(),
                what: "user",
                name: name.to_owned(),
                path: passwd.clone(),
            })?,
        };
        let gid = match group {
            None => primary_gid,
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let path = rootfs.join("etc/group");
                    let text = fs::read_to_string(&path).map_err(|source| UserError::Read {
                        user: user.to_owned(),
                        path: path.clone(),
                        source,
                    })?;
                    text.lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.len() > 2 && f[0] == group)
                        .and_then(|f| f[2].parse().ok())
                        .ok_or_else(|| UserError::Unknown {
                            user: user.to_owned(),
                            what: "group",
                            name: group.to_owned(),
                            path,
                        })?
                }
            },
        };
        Ok((uid, gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: strings(&["/entry"]),
            cmd: strings(&["--default"]),
            env: strings(&["PATH=/bin", "A=1"]),
            working_dir: None,
            user: None,
        }
    }

    #[test]
    fn argv_follows_kubernetes_command_and_args_rules() {
        let image = image();
        assert_eq!(image.argv(&[], &[]), ["/entry", "--default"]);
        assert_eq!(image.argv(&[], &strings(&["--mine"])), ["/entry", "--mine"]);
        assert_eq!(image.argv(&strings(&["/bin/sh"]), &[]), ["/bin/sh"]);
        assert_eq!(image.argv(&strings(&["/bin/sh"]), &strings(&["-c", "x"])), ["/bin/sh", "-c", "x"]);
    }

    #[test]
    fn container_env_overrides_the_images_by_key() {
        assert_eq!(image().env_with(&strings(&["A=2", "B=3"])), ["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn users_resolve_by_number_or_through_the_images_passwd_and_group() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\netcd:x:1000:1001::/var/lib/etcd:/bin/false\n",
        )
        .unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let with = |user: &str| ImageDefaults { user: Some(user.into()), ..ImageDefaults::default() }.ids(dir.path());
        assert_eq!(ImageDefaults::default().ids(dir.path()).unwrap(), (0, 0));
        assert_eq!(with("etcd").unwrap(), (1000, 1001));
        assert_eq!(with("1000").unwrap(), (1000, 1001));
        assert_eq!(with("65534").unwrap(), (65534, 0));
        assert_eq!(with("etcd:staff").unwrap(), (1000, 50));
        assert_eq!(with("7:8").unwrap(), (7, 8));
        let err = with("nobody").unwrap_err().to_string();
        assert_eq!(err, format!("image user \"nobody\": no user \"nobody\" in {}/etc/passwd", dir.path().display()));
        let err = with("etcd:wheel").unwrap_err().to_string();
        assert!(err.contains("no group \"wheel\""), "{err}");
    }
}
