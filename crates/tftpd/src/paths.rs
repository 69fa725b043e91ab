//! Request names to files: only what lies under the root is served. Backslashes
//! become slashes, remap rules rewrite the name, then `..`, absolute names and
//! NUL bytes are refused; the real path is resolved (symlinks included) and must
//! stay under the root and be a regular file. Names with no real file fall back
//! to the virtual boot tree.

use std::path::{Path, PathBuf};

use anyboot_boot_tree::BootTree;
use bytes::Bytes;

use crate::config::RemapRule;

/// Why a name is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// TFTP error 2 / HTTP 403.
    AccessViolation(&'static str),
    /// TFTP error 1 / HTTP 404.
    NotFound,
}

/// What a name resolved to.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file under the root (canonical path and metadata).
    Real(PathBuf, std::fs::Metadata),
    /// A generated file of the boot tree.
    Virtual(Bytes),
}

/// Normalises a requested name into a relative `/`-separated path.
pub fn sanitize(name: &[u8], remap: &[RemapRule]) -> Result<String, Refusal> {
    if name.contains(&0) {
        return Err(Refusal::AccessViolation("NUL byte in name"));
    }
    let name =
        std::str::from_utf8(name).map_err(|_| Refusal::AccessViolation("name is not UTF-8"))?;
    let mut name = name.replace('\\', "/");
    for rule in remap {
        if rule.pattern.is_match(&name) {
            if rule.deny {
                return Err(Refusal::AccessViolation("refused by a remap rule"));
            }
            name = rule
                .pattern
                .replace_all(&name, rule.replace.as_str())
                .into_owned();
            if rule.stop {
                break;
            }
        }
    }
    if name.contains('\0') {
        return Err(Refusal::AccessViolation("NUL byte in name"));
    }
    if name.starts_with('/') {
        return Err(Refusal::AccessViolation("absolute path"));
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(Refusal::AccessViolation("`..` in path")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(Refusal::AccessViolation("empty name"));
    }
    Ok(parts.join("/"))
}

/// Resolves a sanitized name: the real file under `root` (canonical) first,
/// then the boot tree.
pub fn resolve(root: &Path, tree: &BootTree, rel: &str) -> Result<Resolved, Refusal> {
    let candidate = root.join(rel);
    match std::fs::canonicalize(&candidate) {
        Ok(real) => {
            if !real.starts_with(root) {
                return Err(Refusal::AccessViolation("symlink leaves the root"));
            }
            let meta =
                std::fs::metadata(&real).map_err(|_| Refusal::AccessViolation("cannot stat"))?;
            if !meta.is_file() {
                // Directories, devices, FIFOs, sockets.
                return Err(Refusal::AccessViolation("not a regular file"));
            }
            Ok(Resolved::Real(real, meta))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tree
            .get(rel)
            .cloned()
            .map(Resolved::Virtual)
            .ok_or(Refusal::NotFound),
        Err(_) => Err(Refusal::AccessViolation("cannot resolve")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn sanitize_refuses_escapes_and_normalises() {
        assert_eq!(sanitize(b"a//./b\\c", &[]).unwrap(), "a/b/c");
        for bad in [
            &b"../etc/passwd"[..],
            b"/etc/passwd",
            b"a/../../x",
            b"..\\x",
            b"\\x",
            b"",
            b"./",
        ] {
            assert!(
                matches!(sanitize(bad, &[]), Err(Refusal::AccessViolation(_))),
                "{bad:?}"
            );
        }
        assert!(sanitize(b"a\0b", &[]).is_err());
        assert!(sanitize(&[0xff, 0x41], &[]).is_err());
    }

    #[test]
    fn remap_rules_rewrite_stop_and_deny() {
        let rules = vec![
            RemapRule {
                pattern: Regex::new("^/").unwrap(),
                replace: String::new(),
                stop: false,
                deny: false,
            },
            RemapRule {
                pattern: Regex::new(r"(?i)^boot/(.*)$").unwrap(),
                replace: "efi/$1".into(),
                stop: true,
                deny: false,
            },
            RemapRule {
                pattern: Regex::new("secret").unwrap(),
                replace: String::new(),
                stop: false,
                deny: true,
            },
        ];
        assert_eq!(
            sanitize(b"\\BOOT\\grubx64.efi", &rules).unwrap(),
            "efi/grubx64.efi"
        );
        // `stop` ended processing before the deny rule.
        assert_eq!(sanitize(b"boot/secret", &rules).unwrap(), "efi/secret");
        assert!(sanitize(b"my/secret", &rules).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn resolve_refuses_symlinks_out_devices_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x"), b"secret").unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("ok"), b"hi").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), root.join("link-out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("dir-out")).unwrap();
        std::os::unix::fs::symlink("ok", root.join("link-in")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        let tree = BootTree::empty();
        assert!(matches!(
            resolve(&root, &tree, "ok"),
            Ok(Resolved::Real(..))
        ));
        assert!(matches!(
            resolve(&root, &tree, "link-in"),
            Ok(Resolved::Real(..))
        ));
        for bad in ["link-out", "dir-out/x", "zero", "sub"] {
            assert!(
                matches!(resolve(&root, &tree, bad), Err(Refusal::AccessViolation(_))),
                "{bad}"
            );
        }
        assert_eq!(
            resolve(&root, &tree, "nope").unwrap_err(),
            Refusal::NotFound
        );
    }
}
