//! What the lab's guests boot: a hand-assembled boot sector that prints a
//! marker on COM1, SAN disks carrying it, Debian's kernel (fetched with
//! apt-get and cached), an initramfs built here (busybox, the kernel's own
//! NBD/AoE/iSCSI drivers, a static NBD attach tool, iscsistart) and ext4 root
//! disks.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::Cpio;
use super::{cache_dir, contains};
use crate::{require, run, run_ok, workspace_root};

/// Held while an asset is built into the cache: a thread mutex (cargo runs
/// the lab's tests on several threads, and two Linux scenarios starting at
/// once both found the initramfs missing and raced on its temporary file) plus
/// an flock on `lab-cache/.lock` (another test binary or `xtask bench` may
/// build at the same time). Builders check "already cached?" under it.
struct CacheGuard {
    _thread: std::sync::MutexGuard<'static, ()>,
    _file: std::fs::File,
}

fn cache_guard() -> CacheGuard {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A panicking builder leaves at worst a temporary file behind; the next
    // one overwrites it, so a poisoned lock is still usable.
    let thread = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache_dir().join(".lock"))
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor owned by `file`, alive for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock on the lab cache: {}",
        std::io::Error::last_os_error()
    );
    CacheGuard {
        _thread: thread,
        _file: file,
    }
}

/// A 512-byte MBR boot sector: real-mode code that writes `message` to the
/// first serial port (I/O port 0x3f8) with `out` and halts. The BIOS (or
/// iPXE's `sanboot`) loads it at 0000:7c00 and jumps to it.
pub fn boot_sector(message: &str) -> [u8; 512] {
    const MSG_AT: u16 = 0x17;
    #[rustfmt::skip]
    let code: [u8; MSG_AT as usize] = [
        0xfa,                   // 00: cli
        0x31, 0xc0,             // 01: xor ax, ax
        0x8e, 0xd8,             // 03: mov ds, ax
        0xfc,                   // 05: cld
        0xba, 0xf8, 0x03,       // 06: mov dx, 0x3f8
        0xbe,                   // 09: mov si, 0x7c00 + MSG_AT
        (0x7c00u16 + MSG_AT) as u8, ((0x7c00u16 + MSG_AT) >> 8) as u8,
        0xac,                   // 0c: lodsb
        0x84, 0xc0,             // 0d: test al, al
        0x74, 0x03,             // 0f: jz 0x14
        0xee,                   // 11: out dx, al
        0xeb, 0xf8,             // 12: jmp 0x0c
        0xf4,                   // 14: hlt
        0xeb, 0xfd,             // 15: jmp 0x14
    ];
    let text = format!("\r\n{message}\r\n\0");
    assert!(
        code.len() + text.len() <= 440,
        "boot sector message too long"
    );
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(&code);
    s[code.len()..code.len() + text.len()].copy_from_slice(text.as_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Writes a `size`-byte raw disk whose first sector is [`boot_sector`].
/// (iPXE fails to sanboot a 4 MiB disk without partition table; 16 MiB works.)
pub fn write_san_disk(path: &Path, message: &str, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    (&f).write_all(&boot_sector(message)).unwrap();
    f.set_len(size).unwrap();
}

/// A cheap digest of a whole file, to show a base image was not written.
pub fn file_digest(path: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(path).unwrap().hash(&mut h);
    h.finish()
}

/// An unpacked Debian kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`
    pub modules: PathBuf,
}

/// Debian's current amd64 kernel (the package `linux-image-amd64` depends
/// on), downloaded with `apt-get download` and unpacked with `dpkg-deb` into
/// the lab cache on first use.
pub fn debian_kernel() -> Kernel {
    let _building = cache_guard();
    require("apt-get", "apt");
    require("dpkg-deb", "dpkg");
    let cache = cache_dir();
    let deps = run_ok(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .unwrap_or_else(|| panic!("apt-cache depends linux-image-amd64 names no kernel:\n{deps}"))
        .to_owned();
    let version = pkg.trim_start_matches("linux-image-").to_owned();
    let root = cache.join(&pkg);
    let done = root.join(".complete");
    if !done.exists() {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).unwrap();
        let have = |d: &Path| {
            std::fs::read_dir(d).unwrap().find_map(|e| {
                let p = e.unwrap().path();
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                (n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")).then_some(p)
            })
        };
        if have(&debs).is_none() {
            eprintln!(
                "LAB: fetching {pkg} with apt-get download (once, cached in {})",
                debs.display()
            );
            run_ok(
                Command::new("apt-get")
                    .arg("download")
                    .arg(&pkg)
                    .current_dir(&debs),
            );
        }
        let deb = have(&debs).expect("apt-get download left the .deb");
        let _ = std::fs::remove_dir_all(&root);
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        std::fs::write(&done, b"").unwrap();
    }
    let k = Kernel {
        vmlinuz: root.join(format!("boot/vmlinuz-{version}")),
        modules: root.join(format!("lib/modules/{version}")),
        version,
    };
    assert!(k.vmlinuz.exists(), "{} missing", k.vmlinuz.display());
    k
}

/// The `depends=` list of a module, read from its `.modinfo` section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// `names` and every module they depend on, in a loadable order
/// (dependencies first), as paths of `.ko` files.
pub fn module_closure(kernel: &Kernel, names: &[&str]) -> Vec<PathBuf> {
    let mut all = BTreeMap::new();
    let mut stack = vec![kernel.modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p
                .file_name()
                .unwrap()
                .to_str()
                .and_then(|n| n.strip_suffix(".ko"))
            {
                all.insert(n.replace('-', "_"), p.clone());
            }
        }
    }
    fn visit(
        n: &str,
        all: &BTreeMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        out: &mut Vec<PathBuf>,
    ) {
        if !seen.insert(n.to_owned()) {
            return;
        }
        let p = all
            .get(n)
            .unwrap_or_else(|| panic!("kernel module {n} not found (built in? renamed?)"));
        for d in module_depends(&std::fs::read(p).unwrap()) {
            visit(&d, all, seen, out);
        }
        out.push(p.clone());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in names {
        visit(&n.replace('-', "_"), &all, &mut seen, &mut out);
    }
    out
}

fn source_hash(parts: &[&[u8]]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The static `nbd-attach` tool (tests/assets/nbd_attach.rs), built with
/// `rustc -C target-feature=+crt-static` and cached by source hash.
pub fn nbd_attach_tool() -> PathBuf {
    let _building = cache_guard();
    build_nbd_attach_tool()
}

fn build_nbd_attach_tool() -> PathBuf {
    let src = workspace_root().join("tests/assets/nbd_attach.rs");
    let text = std::fs::read(&src).unwrap();
    let out = cache_dir().join(format!("nbd-attach-{}", source_hash(&[&text])));
    if !out.exists() {
        let tmp = out.with_extension("tmp");
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        run_ok(
            Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(&tmp)
                .arg(&src),
        );
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// The modules the lab's init loads: NIC, block transports, ext4.
pub const GUEST_MODULES: &[&str] = &[
    "e1000",
    "nbd",
    "aoe",
    "crc32c_generic",
    "iscsi_tcp",
    "sd_mod",
    "ext4",
];

/// The guest's `/init`: attach the disk named on the kernel command line with
/// the kernel's driver, mount it, report whether the previous boot's file is
/// there, write a new one, report, power off. Lines on the console start with
/// `ANYBOOT-LAB:`.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /run /var/run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
say() { echo "ANYBOOT-LAB: $*"; }
fail() { say "FAIL $*"; sleep 1; poweroff -f; }
say "init started"
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    anyboot.proto=*) proto="${arg#*=}";;
    anyboot.server=*) server="${arg#*=}";;
    anyboot.port=*) port="${arg#*=}";;
    anyboot.export=*) export="${arg#*=}";;
    anyboot.user=*) user="${arg#*=}";;
    anyboot.secret=*) secret="${arg#*=}";;
    anyboot.hold=*) hold="${arg#*=}";;
  esac
done
while read -r m; do insmod "/lib/modules/$m" || say "insmod $m failed"; done < /modules.order
i=0; while [ ! -e /sys/class/net/eth0 ]; do i=$((i+1)); [ $i -gt 50 ] && fail "no eth0"; sleep 0.1; done
ip link set lo up; ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 20 -T 1 -s /etc/udhcpc.sh >/dev/null 2>&1 || fail "no DHCP lease"
tag=$(tr ':' '-' < /sys/class/net/eth0/address)
say "host $tag address $(ip -4 -o addr show dev eth0 | tr -s ' ' | cut -d' ' -f4) disk $proto"
case "$proto" in
  nbd)
    dev=/dev/nbd0
    nbd-attach "$server" "$port" "$export" $dev || fail "nbd-attach";;
  aoe)
    dev=/dev/etherd/$export
    i=0
    while [ ! -b $dev ]; do
      [ -e /dev/etherd/discover ] && echo > /dev/etherd/discover
      i=$((i+1)); [ $i -gt 60 ] && fail "AoE device $export not found"; sleep 0.5
    done;;
  iscsi)
    dev=/dev/sda
    iscsistart -i "iqn.2026-11.org.anyboot.lab:$tag" -t "$export" -g 1 -a "$server" -p "$port" \
      ${user:+-u "$user" -w "$secret"} || fail "iscsistart"
    i=0; while [ ! -b $dev ]; do i=$((i+1)); [ $i -gt 100 ] && fail "no $dev"; sleep 0.1; done;;
  *) fail "unknown anyboot.proto=$proto";;
esac
mount -t ext4 $dev /mnt || fail "mount $dev"
mkdir -p /mnt/lab
if [ -e "/mnt/lab/$tag" ]; then say "found $(cat /mnt/lab/$tag)"; else say "absent"; fi
id=$(cat /proc/sys/kernel/random/uuid)
echo "$id" > "/mnt/lab/$tag"; sync
say "wrote $id"
if [ -n "$hold" ]; then sleep "$hold"; sync; echo 3 > /proc/sys/vm/drop_caches; fi
say "seen $(ls /mnt/lab | tr '\n' ' ')end"
umount /mnt || fail "umount"
[ "$proto" = nbd ] && nbd-attach -d /dev/nbd0
say "DONE"
poweroff -f
"#;

const UDHCPC_SCRIPT: &str =
    "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n";

fn add_parents(c: &mut Cpio, dirs: &mut HashSet<String>, path: &str) {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(p);
        if dirs.insert(acc.clone()) {
            c.dir(&acc);
        }
    }
}

fn gzip(data: &[u8], out: &Path) {
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    run_ok(
        Command::new(require("gzip", "gzip"))
            .args(["-n", "-6", "-f"])
            .arg(&tmp),
    );
    std::fs::rename(tmp.with_extension("tmp.gz"), out).unwrap();
}

/// Builds (or reuses from the cache) the lab initramfs for `kernel`:
/// returns (base, iscsi add-on). The add-on carries `iscsistart` with its
/// shared libraries and is appended as a second initrd only where needed.
pub fn initramfs(kernel: &Kernel) -> (PathBuf, PathBuf) {
    let busybox = require("busybox", "busybox-static");
    let iscsistart = require("iscsistart", "open-iscsi");
    let _building = cache_guard();
    let tool = build_nbd_attach_tool();
    let mods = module_closure(kernel, GUEST_MODULES);
    let key = source_hash(&[
        INIT.as_bytes(),
        UDHCPC_SCRIPT.as_bytes(),
        kernel.version.as_bytes(),
        tool.to_string_lossy().as_bytes(),
    ]);
    let base = cache_dir().join(format!("initrd-base-{key}.gz"));
    let addon = cache_dir().join(format!("initrd-iscsi-{key}.gz"));
    if !base.exists() {
        let mut c = Cpio::new();
        for d in [
            "bin",
            "dev",
            "etc",
            "lib",
            "lib/modules",
            "proc",
            "sys",
            "mnt",
            "tmp",
        ] {
            c.dir(d);
        }
        c.char_dev("dev/console", 5, 1);
        c.file("bin/busybox", 0o755, &std::fs::read(&busybox).unwrap());
        c.symlink("bin/sh", "busybox");
        c.file("init", 0o755, INIT.as_bytes());
        c.file("etc/udhcpc.sh", 0o755, UDHCPC_SCRIPT.as_bytes());
        c.file("bin/nbd-attach", 0o755, &std::fs::read(&tool).unwrap());
        let mut order = String::new();
        for m in &mods {
            let n = m.file_name().unwrap().to_string_lossy().into_owned();
            c.file(
                &format!("lib/modules/{n}"),
                0o644,
                &std::fs::read(m).unwrap(),
            );
            order.push_str(&n);
            order.push('\n');
        }
        c.file("modules.order", 0o644, order.as_bytes());
        gzip(&c.finish(), &base);
    }
    if !addon.exists() {
        let mut c = Cpio::new();
        let mut dirs = HashSet::new();
        add_parents(&mut c, &mut dirs, "sbin/iscsistart");
        c.file(
            "sbin/iscsistart",
            0o755,
            &std::fs::read(&iscsistart).unwrap(),
        );
        c.symlink("bin/iscsistart", "/sbin/iscsistart");
        let ldd = run_ok(Command::new("ldd").arg(&iscsistart));
        for line in ldd.lines() {
            // "libx.so => /lib/.../libx.so (0x..)" or "/lib64/ld-linux... (0x..)"
            let path = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_owned);
            if let Some(p) = path {
                let rel = p.trim_start_matches('/').to_owned();
                add_parents(&mut c, &mut dirs, &rel);
                c.file(&rel, 0o755, &std::fs::read(&p).unwrap());
            }
        }
        for d in ["etc/iscsi", "var/lock", "run/lock"] {
            add_parents(&mut c, &mut dirs, &format!("{d}/x"));
        }
        c.file(
            "etc/iscsi/initiatorname.iscsi",
            0o644,
            b"InitiatorName=iqn.2026-11.org.anyboot.lab:init\n",
        );
        gzip(&c.finish(), &addon);
    }
    (base, addon)
}

/// Creates an ext4 file system image of `mib` MiB (no journal: the lab's
/// writes are tiny and a journal replay would only slow the guest).
pub fn write_ext4_disk(path: &Path, mib: u64) {
    let mkfs = require("mkfs.ext4", "e2fsprogs");
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    run_ok(
        Command::new(mkfs)
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-O",
                "^has_journal",
                "-L",
                "anyboot-lab",
            ])
            .arg(path),
    );
}

/// Whether `path`'s ext4 file system holds `lab/<name>` (read with debugfs
/// from the host, independently of the guest).
pub fn ext4_has_file(path: &Path, name: &str) -> bool {
    let debugfs = require("debugfs", "e2fsprogs");
    let out = run(Command::new(debugfs).args(["-R", "ls -l /lab"]).arg(path));
    contains(&out.stdout, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_has_signature_code_and_message() {
        let s = boot_sector("HELLO-LAB");
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        // mov dx, 0x3f8 and out dx, al are there; si points at the message.
        assert_eq!(&s[6..9], &[0xba, 0xf8, 0x03]);
        assert_eq!(s[0x11], 0xee);
        let si = u16::from_le_bytes([s[10], s[11]]) - 0x7c00;
        let msg = &s[usize::from(si)..];
        let end = msg.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&msg[..end], b"\r\nHELLO-LAB\r\n");
    }

    #[test]
    fn module_depends_reads_the_modinfo_list() {
        let ko = b"\x7fELF...\0license=GPL\0depends=scsi_transport_iscsi,t10-pi\0vermagic=6.1\0";
        assert_eq!(
            module_depends(ko),
            vec!["scsi_transport_iscsi".to_owned(), "t10_pi".to_owned()]
        );
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }
}
