//! The Debian packages that tests and benchmarks need, and installing them.

use std::process::Command;

use anyhow::{bail, Result};

/// (package, a command it provides, why we need it)
pub type Requirement = (&'static str, &'static str, &'static str);

/// Everything the test suite and the benchmarks run against.
pub const TEST: &[Requirement] = &[
    (
        "iproute2",
        "ip",
        "network namespaces and veth pairs for e2e tests",
    ),
    ("qemu-utils", "qemu-img", "NBD client: qemu-img/qemu-io"),
    ("libnbd-bin", "nbdinfo", "NBD clients: nbdinfo, nbdcopy"),
    ("nbdkit", "nbdkit", "NBD peer server (benchmarks)"),
    ("nbd-server", "nbd-server", "NBD peer server (benchmarks)"),
    ("fio", "fio", "NBD load and verify (nbd engine)"),
    (
        "gnutls-bin",
        "certtool",
        "test certificates for NBD over TLS",
    ),
    ("tftp-hpa", "tftp", "TFTP client"),
    ("atftp", "atftp", "TFTP client"),
    ("curl", "curl", "TFTP and HTTP client"),
    ("busybox-static", "busybox", "busybox tftp and udhcpc"),
    ("tftpd-hpa", "in.tftpd", "TFTP peer server (benchmarks)"),
    (
        "dnsmasq",
        "dnsmasq",
        "TFTP and DHCP peer server (benchmarks)",
    ),
    ("isc-dhcp-client", "dhclient", "DHCP client"),
    ("udhcpc", "udhcpc", "DHCP client"),
    ("kea-admin", "perfdhcp", "DHCP load generator"),
    (
        "kea-dhcp4-server",
        "kea-dhcp4",
        "DHCP peer server (benchmarks)",
    ),
    ("tshark", "tshark", "dissector checks of our packets"),
    (
        "libiscsi-bin",
        "iscsi-test-cu",
        "iSCSI clients and conformance suite",
    ),
    ("tgt", "tgtd", "iSCSI peer target (benchmarks)"),
    ("vblade", "vblade", "AoE reference target"),
    ("aoetools", "aoeping", "AoE clients: aoeping, aoecfg"),
    (
        "qemu-system-x86",
        "qemu-system-x86_64",
        "network-boot lab VMs",
    ),
    ("ipxe-qemu", "", "iPXE ROMs for the lab VMs"),
    (
        "ipxe",
        "",
        "undionly.kpxe and ipxe.lkrn: the lab's boot tree, iPXE as an iSCSI initiator",
    ),
    ("qemu-block-extra", "", "qemu iscsi:// block driver"),
    (
        "strace",
        "strace",
        "images: syscall order of overlay flushes",
    ),
    (
        "open-iscsi",
        "iscsistart",
        "iSCSI login in the lab's Linux initramfs",
    ),
    (
        "e2fsprogs",
        "mkfs.ext4",
        "root file systems of the lab's Linux guests",
    ),
    ("ovmf", "", "UEFI firmware for the lab's UEFI PXE boot"),
];

fn has_command(cmd: &str) -> bool {
    [
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join(cmd).exists())
}

fn has_package(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn missing(reqs: &[Requirement]) -> Vec<&Requirement> {
    reqs.iter()
        .filter(|(pkg, cmd, _)| {
            if cmd.is_empty() {
                !has_package(pkg)
            } else {
                !has_command(cmd)
            }
        })
        .collect()
}

/// Checks every requirement; installs the missing ones with apt-get when allowed
/// and running as root, else fails naming them.
pub fn ensure(reqs: &[Requirement], install: bool) -> Result<()> {
    let first = missing(reqs);
    if first.is_empty() {
        eprintln!("xtask: all {} test packages are present", reqs.len());
        return Ok(());
    }
    for (pkg, _, why) in &first {
        eprintln!("xtask: missing Debian package {pkg:<18} ({why})");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !install || !root {
        bail!(
            "{} Debian package(s) missing; install them with: sudo apt-get install {}",
            first.len(),
            first.iter().map(|r| r.0).collect::<Vec<_>>().join(" ")
        );
    }
    crate::run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    // Installing can remove what was there: Debian's qemu-block-extra and
    // qemu-system-x86 make apt replace a newer backported qemu-utils, which
    // --no-install-recommends does not bring back. So check again and install
    // whatever went missing, once.
    let mut todo = first;
    for _ in 0..2 {
        if todo.is_empty() {
            return Ok(());
        }
        eprintln!("xtask: installing {} package(s) with apt-get", todo.len());
        crate::run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(todo.iter().map(|r| r.0)),
        )?;
        todo = missing(reqs);
        for (pkg, _, why) in &todo {
            eprintln!("xtask: after installing, still missing {pkg:<18} ({why})");
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    bail!(
        "apt-get could not provide: {}",
        todo.iter().map(|r| r.0).collect::<Vec<_>>().join(" ")
    )
}
