//! The network-boot lab's scenarios (issue 9): QEMU guests boot through the
//! lab's servers — ours by default, Debian's peers with
//! `ANYBOOT_LAB_SERVERS=peers` — and report on their serial port.
//!
//! Run just the lab: `cargo xtask e2e`, or
//! `cargo test -p anyboot-tests --test lab -- --test-threads=1`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyboot_tests::lab::assets::{self, Kernel};
use anyboot_tests::lab::site::{
    self, AoeTarget, Boot, Disk, Host, IscsiTarget, LabSite, NbdExport, Profile, Variant,
};
use anyboot_tests::lab::{report_timing, Lab, Mode, SanTarget, Transport, SERVER_IP};

/// A value unique to this run, so a marker cannot come from an older run.
fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:x}{:x}", t.as_micros() & 0xffff_ffff, std::process::id())
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x77, 0x00, n]
}

fn host(name: &str, n: u8, profile: &str) -> Host {
    Host {
        name: name.to_owned(),
        mac: mac(n),
        address: Ipv4Addr::new(10, 77, 0, n),
        profile: profile.to_owned(),
        variant: None,
    }
}

/// A boot variant whose "kernel" is an iPXE script from the boot tree that
/// prints `marker` and stays (iPXE executes script images like kernels).
fn marker_variant(name: &str, label: &str, marker: &str, site: &mut LabSite) -> Variant {
    let path = format!("lab/{name}.ipxe");
    site.texts
        // `shell` waits for input, so control never returns to the host's
        // script (which could otherwise fall through to the next entry).
        .push((path.clone(), format!("#!ipxe\necho {marker}\nshell\n")));
    Variant {
        name: name.to_owned(),
        label: label.to_owned(),
        boot: Boot::Kernel {
            kernel: path,
            initrd: Vec::new(),
            cmdline: String::new(),
        },
    }
}

fn profile(name: &str, variants: Vec<Variant>) -> Profile {
    Profile {
        name: name.to_owned(),
        image: None,
        mode: Mode::Shared,
        transport: None,
        variants,
        default_variant: None,
        menu_timeout: 0,
    }
}

/// Console lines that mean the boot went wrong (iPXE's errors, and the
/// failure branch of our tftpd's generated scripts).
const IPXE_FAIL: &[&str] = &[
    "No more network devices",
    "Could not boot",
    "Boot failed",
    "Could not open SAN device",
    "anyboot: booting",
];

/// PXE: a plain PXE client is offered `undionly.kpxe` (and gets it over
/// TFTP); iPXE, known by its user class, gets the address and the per-host
/// script name instead, TFTP serves the script, iPXE runs it; a second boot
/// of the same VM gets the script again, not the iPXE binary (no loop).
#[test]
fn pxe_boots_the_per_host_script_twice_without_looping() {
    let t0 = Instant::now();
    let marker = format!("ANYBOOT-PXE-{}", nonce());
    let mut site = LabSite::default();
    let v = marker_variant("hello", "Hello", &marker, &mut site);
    site.profiles.push(profile("hello", vec![v]));
    site.hosts.push(host("pc10", 10, "hello"));
    site.hosts.push(host("pc11", 11, "hello"));
    let lab = Lab::start("pxe", site);
    // A plain PXE ROM (no user class iPXE) is offered the iPXE binary, which
    // TFTP serves unchanged.
    let env = lab.pxe_dhcp_probe(mac(11));
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some("10.77.0.11"),
        "{env:?}"
    );
    let file = env
        .get("bootfile")
        .or(env.get("boot_file"))
        .unwrap_or_else(|| panic!("no boot file offered to a PXE client: {env:?}"));
    assert!(
        file.ends_with("undionly.kpxe"),
        "a PXE BIOS client must get undionly.kpxe, got {file:?}"
    );
    let undi = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap();
    assert!(
        lab.tftp_get(file) == undi,
        "TFTP served a different undionly.kpxe"
    );
    // iPXE itself (QEMU's ROM sends user class iPXE) gets the host's script.
    let h = lab.site.host("pc10").unwrap().clone();
    for boot in 1..=2 {
        let mut vm = lab.boot("pc10");
        let log = vm.wait_for(&marker, Duration::from_secs(90), IPXE_FAIL);
        assert!(
            log.contains(&format!("hosts/{}.ipxe", h.mac_dashed())),
            "boot {boot}: iPXE did not fetch its per-host script"
        );
        assert!(
            log.contains("10.77.0.10"),
            "boot {boot}: the reserved address 10.77.0.10 was not used"
        );
        assert!(
            !log.contains("undionly.kpxe"),
            "boot {boot}: an iPXE client was handed the iPXE binary again (boot loop)"
        );
        assert_eq!(
            log.matches(&marker).count(),
            1,
            "boot {boot}: the script ran more than once"
        );
    }
    report_timing("pxe (2 boots)", &lab, t0);
}

/// PXE from UEFI firmware (OVMF's own PXE client, no user class iPXE): it is
/// offered an iPXE EFI binary over DHCP and loads it over TFTP; that iPXE
/// DHCPs again as iPXE and gets the host's script (marker), not the binary
/// again: the firmware downloads exactly one NBP.
#[test]
fn uefi_pxe_chains_to_ipxe_then_the_host_script() {
    let t0 = Instant::now();
    let marker = format!("ANYBOOT-UEFI-{}", nonce());
    let mut site = LabSite::default();
    let v = marker_variant("hello", "Hello", &marker, &mut site);
    site.profiles.push(profile("hello", vec![v]));
    site.hosts.push(host("pc12", 12, "hello"));
    let lab = Lab::start("uefi", site);
    let mut vm = lab.boot_uefi("pc12");
    let log = vm.wait_for(&marker, Duration::from_secs(180), IPXE_FAIL);
    assert_eq!(
        log.matches("NBP file downloaded successfully").count(),
        1,
        "the firmware must load exactly one iPXE binary"
    );
    assert!(log.contains("iPXE initialising devices"), "no iPXE ran");
    let h = lab.site.host("pc12").unwrap();
    assert!(
        log.contains(&format!("hosts/{}.ipxe", h.mac_dashed())),
        "iPXE did not fetch the per-host script"
    );
    assert_eq!(log.matches(&marker).count(), 1);
    report_timing("uefi pxe -> ipxe -> script", &lab, t0);
}

/// A 16 MiB disk whose first sector prints `marker`.
fn san_site(dir: &Path, marker: &str, transport: Transport) -> LabSite {
    let disk = dir.join("san.img");
    assets::write_san_disk(&disk, marker, 16 << 20);
    let mut site = LabSite::default();
    site.images.push(Disk {
        name: "san".into(),
        path: disk,
    });
    let mut p = profile(
        "san",
        vec![Variant {
            name: "disk".into(),
            label: "Boot the network disk".into(),
            boot: Boot::Sanboot,
        }],
    );
    p.image = Some("san".into());
    p.transport = Some(transport);
    p.mode = Mode::Shared;
    site.profiles.push(p);
    site.hosts.push(host("pc20", 20, "san"));
    let t = SanTarget {
        image: "san".into(),
        mode: Mode::Shared,
    };
    match transport {
        Transport::Iscsi => {
            site.iscsi.push(IscsiTarget {
                iqn: "iqn.2026-11.org.anyboot.lab:san".into(),
                lun: 0,
                disk: t,
            });
            site.chap = Some(("labuser".into(), "lab-secret-1234".into()));
        }
        Transport::Aoe => site.aoe.push(AoeTarget {
            shelf: 1,
            slot: 1,
            disk: t,
        }),
        Transport::Nbd => unreachable!("iPXE has no NBD sanboot"),
    }
    site
}

fn sanboot(transport: Transport) {
    let t0 = Instant::now();
    let marker = format!("ANYBOOT-SANBOOT-{}-{}", transport.name(), nonce());
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::start(transport.name(), san_site(dir.path(), &marker, transport));
    let mut vm = lab.boot("pc20");
    let log = vm.wait_for(&marker, Duration::from_secs(120), IPXE_FAIL);
    assert!(
        log.contains("Booting from SAN device"),
        "iPXE did not boot from its SAN device"
    );
    report_timing(&format!("sanboot {}", transport.name()), &lab, t0);
}

/// iSCSI sanboot with CHAP: iPXE logs in, reads the boot sector and runs it.
#[test]
fn iscsi_sanboot_with_chap_runs_the_boot_sector() {
    sanboot(Transport::Iscsi);
}

/// AoE sanboot (`sanboot aoe:e1.1`) of the same boot sector.
#[test]
fn aoe_sanboot_runs_the_boot_sector() {
    sanboot(Transport::Aoe);
}

/// The boot tree and disks for Linux scenarios over `transport`: Debian's
/// kernel and the lab's initramfs; two base images (copies of one ext4 file
/// system), `keep` served in persistent mode to profile `keep` (host pc30)
/// and `fresh` served in throwaway mode to profile `fresh` (hosts pc31, pc32;
/// their kernel command line gets `fresh_extra`).
fn linux_site(dir: &Path, transport: Transport, fresh_extra: &str) -> LabSite {
    let kernel: Kernel = assets::debian_kernel();
    let (base_initrd, iscsi_initrd) = assets::initramfs(&kernel);
    let mut site = LabSite::default();
    site.files
        .push(("linux/vmlinuz".into(), kernel.vmlinuz.clone()));
    site.files.push(("linux/initrd.gz".into(), base_initrd));
    site.files.push(("linux/iscsi.gz".into(), iscsi_initrd));
    let fs = dir.join("keep.ext4");
    assets::write_ext4_disk(&fs, 32);
    std::fs::copy(&fs, dir.join("fresh.ext4")).unwrap();
    for (n, (name, mode)) in [("keep", Mode::Persistent), ("fresh", Mode::Throwaway)]
        .into_iter()
        .enumerate()
    {
        site.images.push(Disk {
            name: name.into(),
            path: dir.join(format!("{name}.ext4")),
        });
        let t = SanTarget {
            image: name.into(),
            mode,
        };
        let mut initrd = vec!["linux/initrd.gz".to_owned()];
        let mut cmdline = format!(
            "console=ttyS0 quiet loglevel=3 panic=-1 anyboot.proto={} anyboot.server={SERVER_IP}",
            transport.name()
        );
        match transport {
            Transport::Nbd => {
                site.nbd.push(NbdExport {
                    name: name.into(),
                    disk: t,
                });
                cmdline += &format!(" anyboot.port={} anyboot.export={name}", site::NBD_PORT);
            }
            Transport::Iscsi => {
                let iqn = format!("iqn.2026-11.org.anyboot.lab:{name}");
                site.iscsi.push(IscsiTarget {
                    iqn: iqn.clone(),
                    lun: 0,
                    disk: t,
                });
                site.chap = Some(("labuser".into(), "lab-secret-1234".into()));
                cmdline += &format!(
                    " anyboot.port={} anyboot.export={iqn} anyboot.user=labuser anyboot.secret=lab-secret-1234",
                    site::ISCSI_PORT
                );
                initrd.push("linux/iscsi.gz".into());
            }
            Transport::Aoe => {
                let slot = n as u8 + 1;
                site.aoe.push(AoeTarget {
                    shelf: 1,
                    slot,
                    disk: t,
                });
                cmdline += &format!(" anyboot.export=e1.{slot}");
            }
        }
        if mode == Mode::Throwaway {
            cmdline += fresh_extra;
        }
        let mut p = profile(
            name,
            vec![Variant {
                name: "linux".into(),
                label: format!("Linux on the {name} disk"),
                boot: Boot::Kernel {
                    kernel: "linux/vmlinuz".into(),
                    initrd,
                    cmdline,
                },
            }],
        );
        p.image = Some(name.into());
        p.transport = Some(transport);
        p.mode = mode;
        site.profiles.push(p);
    }
    site.hosts.push(host("pc30", 30, "keep"));
    site.hosts.push(host("pc31", 31, "fresh"));
    site.hosts.push(host("pc32", 32, "fresh"));
    site
}

const LINUX_FAIL: &[&str] = &["ANYBOOT-LAB: FAIL", "Kernel panic", "Could not boot"];

/// What one Linux boot reported: the previous boot's file if it was there,
/// the id it wrote, and the files it saw.
#[derive(Debug)]
struct LinuxReport {
    found: Option<String>,
    wrote: String,
    seen: Vec<String>,
}

fn field(log: &str, key: &str) -> Option<String> {
    let tag = format!("ANYBOOT-LAB: {key}");
    log.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .split_once(&tag)
            .map(|(_, v)| v.trim().to_owned())
    })
}

fn finish_linux(vm: &mut anyboot_tests::lab::Vm<'_>) -> LinuxReport {
    let log = vm.wait_for("ANYBOOT-LAB: DONE", Duration::from_secs(240), LINUX_FAIL);
    vm.wait_exit(Duration::from_secs(30));
    parse_report(&log)
}

fn parse_report(log: &str) -> LinuxReport {
    let found = field(log, "found");
    let absent = log.contains("ANYBOOT-LAB: absent");
    assert!(
        found.is_some() != absent,
        "the guest reported neither found nor absent"
    );
    LinuxReport {
        found,
        wrote: field(log, "wrote").expect("the guest reports what it wrote"),
        seen: field(log, "seen")
            .expect("the guest lists the files")
            .split_whitespace()
            .filter(|s| *s != "end")
            .map(str::to_owned)
            .collect(),
    }
}

/// Linux on a network disk over `transport`, two rounds of two VMs booting
/// at once: pc30 on its persistent disk, pc31 on a throwaway one. Each boot
/// writes a fresh id to its root file system; in round 2 pc30 finds exactly
/// the id it wrote in round 1, pc31 finds nothing. The base images are
/// never written.
fn linux_rounds(transport: Transport) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let site = linux_site(dir.path(), transport, "");
    let digests: Vec<(std::path::PathBuf, u64)> = site
        .images
        .iter()
        .map(|i| (i.path.clone(), assets::file_digest(&i.path)))
        .collect();
    let lab = Lab::start(&format!("linux-{}", transport.name()), site);
    let mut rounds = Vec::new();
    for round in 1..=2 {
        let t = Instant::now();
        let mut keep = lab.boot("pc30");
        let mut fresh = lab.boot("pc31");
        let r = (finish_linux(&mut keep), finish_linux(&mut fresh));
        eprintln!(
            "LAB linux {} round {round}: {:.1} s",
            transport.name(),
            t.elapsed().as_secs_f64()
        );
        rounds.push(r);
    }
    let (k1, f1) = &rounds[0];
    let (k2, f2) = &rounds[1];
    assert_eq!(
        k1.found, None,
        "persistent: a new disk already had the file"
    );
    assert_eq!(f1.found, None, "throwaway: a new disk already had the file");
    assert_eq!(
        k2.found.as_deref(),
        Some(k1.wrote.as_str()),
        "persistent: the second boot must find the first boot's write"
    );
    assert_eq!(
        f2.found, None,
        "throwaway: the first boot's write must be gone after reboot"
    );
    assert_ne!(k1.wrote, k2.wrote);
    for (path, before) in digests {
        assert_eq!(
            assets::file_digest(&path),
            before,
            "the base image {} was written",
            path.display()
        );
    }
    report_timing(
        &format!(
            "linux {} persistent+throwaway (2 rounds of 2 VMs)",
            transport.name()
        ),
        &lab,
        t0,
    );
}

/// Linux attaches its root with the kernel's NBD driver (static nbd-attach).
#[test]
fn linux_root_on_nbd_persistent_and_throwaway() {
    linux_rounds(Transport::Nbd);
}

/// Linux attaches its root with iscsi_tcp (iscsistart logs in with CHAP).
#[test]
fn linux_root_on_iscsi_persistent_and_throwaway() {
    linux_rounds(Transport::Iscsi);
}

/// Linux finds its root with the kernel's AoE driver (/dev/etherd/e1.N).
#[test]
fn linux_root_on_aoe_persistent_and_throwaway() {
    linux_rounds(Transport::Aoe);
}

/// Two VMs boot the same base image at once over NBD, each with its own
/// throwaway overlay: each writes its file, holds the disk mounted while the
/// other writes, rereads the directory from the disk, and sees only its own.
#[test]
fn two_vms_share_a_base_with_private_overlays() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let site = linux_site(dir.path(), Transport::Nbd, " anyboot.hold=8");
    let base = site.image("fresh").unwrap().path.clone();
    let before = assets::file_digest(&base);
    let lab = Lab::start("two-vms", site);
    let mut a = lab.boot("pc31");
    let mut b = lab.boot("pc32");
    let ra = finish_linux(&mut a);
    let rb = finish_linux(&mut b);
    for (r, host) in [(&ra, "pc31"), (&rb, "pc32")] {
        let own = lab.site.host(host).unwrap().mac_dashed();
        assert_eq!(
            r.found, None,
            "{host}: a fresh overlay already had the file"
        );
        assert_eq!(r.seen, vec![own], "{host}: sees another VM's file");
    }
    assert_ne!(ra.wrote, rb.wrote);
    assert_eq!(
        assets::file_digest(&base),
        before,
        "the base image was written"
    );
    report_timing("two VMs at once (nbd throwaway)", &lab, t0);
}

/// A host whose profile has several variants gets an iPXE menu; the host's
/// `variant` in the inventory picks a non-default entry, which boots after
/// the menu's timeout. A second host of the profile boots the default.
#[test]
fn boot_menu_boots_the_hosts_chosen_variant() {
    let t0 = Instant::now();
    let n = nonce();
    let mut site = LabSite::default();
    let variants = vec![
        marker_variant(
            "one",
            "First-entry",
            &format!("ANYBOOT-MENU-ONE-{n}"),
            &mut site,
        ),
        marker_variant(
            "two",
            "Second-entry",
            &format!("ANYBOOT-MENU-TWO-{n}"),
            &mut site,
        ),
        marker_variant(
            "three",
            "Third-entry",
            &format!("ANYBOOT-MENU-THREE-{n}"),
            &mut site,
        ),
    ];
    let mut p = profile("menu", variants);
    p.default_variant = Some("one".into());
    p.menu_timeout = 2;
    site.profiles.push(p);
    let mut chooser = host("pc40", 40, "menu");
    chooser.variant = Some("two".into());
    site.hosts.push(chooser);
    site.hosts.push(host("pc41", 41, "menu"));
    let lab = Lab::start("menu", site);
    let mut chosen = lab.boot("pc40");
    let mut default = lab.boot("pc41");
    let log = chosen.wait_for(
        &format!("ANYBOOT-MENU-TWO-{n}"),
        Duration::from_secs(90),
        IPXE_FAIL,
    );
    for label in ["First-entry", "Second-entry", "Third-entry"] {
        assert!(log.contains(label), "pc40: the menu did not show {label}");
    }
    assert!(!log.contains(&format!("ANYBOOT-MENU-ONE-{n}")));
    assert!(!log.contains(&format!("ANYBOOT-MENU-THREE-{n}")));
    let log = default.wait_for(
        &format!("ANYBOOT-MENU-ONE-{n}"),
        Duration::from_secs(90),
        IPXE_FAIL,
    );
    assert!(log.contains("Second-entry"), "pc41: no menu shown");
    assert!(!log.contains(&format!("ANYBOOT-MENU-TWO-{n}")));
    report_timing("boot menu (2 VMs at once)", &lab, t0);
}
