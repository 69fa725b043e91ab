//! The peer backend of the lab: the same inventory served by Debian's
//! daemons, so the lab (namespace, bridge, taps, QEMU, iPXE, guests) is proven
//! independently of ours. dnsmasq does DHCP (iPXE detected by user class
//! `iPXE`, per-host script names) and TFTP of a tree holding the reference
//! per-host scripts; nbd-server, tgtd (CHAP) and vblade serve the disks.
//!
//! Disk modes: nbd-server's `copyonwrite` gives each connection a private
//! overlay (throwaway). tgtd and vblade have no overlays; they serve a copy of
//! the base made when the lab starts (persistent for the lab's lifetime), and
//! for throwaway that copy is rewritten from the base before each boot of a
//! host of that image (so two hosts must not share a throwaway iSCSI/AoE image
//! at the same time with the peers).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::site::{self, ipxe_script, Mode, SanTarget};
use super::{Lab, Server, BRIDGE, SERVER_IP};
use crate::{require, run};

/// The file a peer serves for `t`: the base itself for shared and throwaway
/// over NBD (nbd-server keeps the overlay), else a private copy.
fn backing_file(lab: &Lab, t: &SanTarget, copy_tag: &str, cow_capable: bool) -> PathBuf {
    let base = &lab
        .site
        .image(&t.image)
        .unwrap_or_else(|| panic!("no image {}", t.image))
        .path;
    match t.mode {
        Mode::Shared => base.clone(),
        Mode::Throwaway if cow_capable => base.clone(),
        Mode::Throwaway | Mode::Persistent => {
            let p = lab.path(&format!("peer-{copy_tag}.img"));
            std::fs::copy(base, &p).unwrap();
            if t.mode == Mode::Throwaway {
                // tgtd and vblade have no overlays: the lab rewrites this copy
                // from the base (in place, so the open file sees it) before
                // each boot of a host of this image.
                eprintln!("LAB peers: {copy_tag}: throwaway emulated by a fresh copy per boot");
                lab.peer_fresh
                    .lock()
                    .unwrap()
                    .push((t.image.clone(), base.clone(), p.clone()));
            }
            p
        }
    }
}

/// Writes the peer configs and starts dnsmasq and the needed block servers.
pub fn start(lab: &Lab) -> Vec<Server> {
    let mut servers = Vec::new();
    let root = lab.tftp_root();
    std::fs::create_dir_all(root.join("hosts")).unwrap();
    for h in &lab.site.hosts {
        let script = ipxe_script(&lab.site, h);
        std::fs::write(root.join(format!("hosts/{}.ipxe", h.mac_dashed())), script).unwrap();
    }
    std::fs::write(
        root.join("boot.ipxe"),
        "#!ipxe\necho anyboot lab: unknown host ${mac}\nexit\n",
    )
    .unwrap();

    // dnsmasq: DHCP + TFTP, no DNS.
    let dnsmasq = require("dnsmasq", "dnsmasq");
    let mut c = String::new();
    let _ = writeln!(
        c,
        "port=0\ninterface={BRIDGE}\nbind-interfaces\nlog-facility=-\nlog-dhcp\npid-file=\nuser=root"
    );
    let _ = writeln!(
        c,
        "dhcp-range={},{},255.255.255.0,1h\ndhcp-leasefile={}",
        site::POOL.0,
        site::POOL.1,
        lab.path("dnsmasq.leases").display()
    );
    // Plain PXE: BIOS gets undionly.kpxe, x86-64 UEFI (arch 7) ipxe.efi (the
    // defaults of our dhcpd).
    let _ = writeln!(
        c,
        "dhcp-userclass=set:ipxe,iPXE\ndhcp-match=set:efi64,option:client-arch,7\n\
         dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\ndhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi"
    );
    for (i, h) in lab.site.hosts.iter().enumerate() {
        let _ = writeln!(
            c,
            "dhcp-host={},{},set:h{i}\ndhcp-boot=tag:ipxe,tag:h{i},hosts/{}.ipxe",
            h.mac_colons(),
            h.address,
            h.mac_dashed()
        );
    }
    let _ = writeln!(c, "dhcp-boot=tag:ipxe,tag:!known,boot.ipxe");
    let _ = writeln!(c, "enable-tftp\ntftp-root={}", root.display());
    let conf = lab.path("dnsmasq.conf");
    std::fs::write(&conf, c).unwrap();
    let mut cmd = lab.ns.command(dnsmasq);
    cmd.arg("--no-daemon")
        .arg(format!("--conf-file={}", conf.display()));
    servers.push(Server::spawn("dnsmasq", &mut cmd, &lab.path("dnsmasq.log")));

    if !lab.site.nbd.is_empty() {
        let nbd = require("nbd-server", "nbd-server");
        let mut c = format!(
            "[generic]\nlistenaddr = {SERVER_IP}\nport = {}\nallowlist = true\n",
            site::NBD_PORT
        );
        for e in &lab.site.nbd {
            let file = backing_file(lab, &e.disk, &format!("nbd-{}", e.name), true);
            let _ = writeln!(c, "[{}]\nexportname = {}", e.name, file.display());
            if e.disk.mode == Mode::Throwaway {
                let _ = writeln!(c, "copyonwrite = true");
            }
        }
        let conf = lab.path("nbd-server.conf");
        std::fs::write(&conf, c).unwrap();
        // Without -d it forks per client (with -d it serves one and exits).
        let pidfile = lab.path("nbd-server.pid");
        let mut cmd = lab.ns.command(nbd);
        cmd.arg("-C").arg(&conf).arg("-p").arg(&pidfile);
        servers.push(Server::spawn_forking(
            "nbd-server",
            &mut cmd,
            &lab.path("nbd-server.log"),
            &pidfile,
        ));
    }

    if !lab.site.iscsi.is_empty() {
        let tgtd = require("tgtd", "tgt");
        let tgtadm = require("tgtadm", "tgt");
        // A private management port: other tests may run their own tgtd.
        // (tgtadm accepts 0..=32767), distinct per lab of this process too.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ctl = (1000 + (std::process::id() * 16 + n) % 30000).to_string();
        let mut cmd = lab.ns.command(&tgtd);
        cmd.args(["-f", "-C", &ctl]);
        servers.push(Server::spawn("tgtd", &mut cmd, &lab.path("tgtd.log")));
        let adm = |args: &[&str]| {
            let start = Instant::now();
            loop {
                let out = run(Command::new(&tgtadm)
                    .args(["-C", &ctl, "--lld", "iscsi"])
                    .args(args));
                if out.status.success() {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "tgtadm {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        for (i, t) in lab.site.iscsi.iter().enumerate() {
            let tid = (i + 1).to_string();
            let lun = (t.lun + 1).to_string();
            let file = backing_file(lab, &t.disk, &format!("iscsi-{tid}"), false);
            adm(&[
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                &tid,
                "--targetname",
                &t.iqn,
            ]);
            adm(&[
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                &tid,
                "--lun",
                &lun,
                "--backing-store",
                &file.display().to_string(),
            ]);
            adm(&[
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                &tid,
                "--initiator-address",
                "ALL",
            ]);
            if let Some((user, secret)) = &lab.site.chap {
                if i == 0 {
                    adm(&[
                        "--mode",
                        "account",
                        "--op",
                        "new",
                        "--user",
                        user,
                        "--password",
                        secret,
                    ]);
                }
                adm(&[
                    "--mode", "account", "--op", "bind", "--tid", &tid, "--user", user,
                ]);
            }
        }
    }

    for (i, t) in lab.site.aoe.iter().enumerate() {
        let vblade = require("vblade", "vblade");
        let file = backing_file(lab, &t.disk, &format!("aoe-{i}"), false);
        let mut cmd = lab.ns.command(vblade);
        cmd.arg(t.shelf.to_string())
            .arg(t.slot.to_string())
            .arg(BRIDGE)
            .arg(&file);
        servers.push(Server::spawn(
            &format!("vblade-{i}"),
            &mut cmd,
            &lab.path(&format!("vblade-{i}.log")),
        ));
    }
    servers
}
