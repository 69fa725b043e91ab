//! The lab's inventory (images, profiles with boot variants, hosts, block
//! exports) and its two renderings: the anyboot site file ([`site_toml`], the
//! one place to adapt when the daemons' config keys change) and the reference
//! iPXE scripts ([`ipxe_script`]) that the peer backend serves, following the
//! boot-tree contract `hosts/<aa-bb-cc-dd-ee-ff>.ipxe`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{PREFIX_LEN, SERVER_IP};

/// TCP port of the NBD server in the lab.
pub const NBD_PORT: u16 = 10809;
/// TCP port of the iSCSI target in the lab.
pub const ISCSI_PORT: u16 = 3260;
/// The DHCP pool for guests without a reservation.
pub const POOL: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199));

/// How a disk relates to its base image (config `disk = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Throwaway,
    Persistent,
    Shared,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Throwaway => "throwaway",
            Mode::Persistent => "persistent",
            Mode::Shared => "shared",
        }
    }
}

/// Block protocol of a profile's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Nbd,
    Iscsi,
    Aoe,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Nbd => "nbd",
            Transport::Iscsi => "iscsi",
            Transport::Aoe => "aoe",
        }
    }
}

/// `[[image]]`: a base disk image.
#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    pub path: PathBuf,
}

/// How a variant boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Kernel (and initrds) from the boot tree; paths are relative to its root.
    Kernel {
        kernel: String,
        initrd: Vec<String>,
        cmdline: String,
    },
    /// iPXE `sanboot` of the profile's disk.
    Sanboot,
}

/// `[[profile.variant]]`
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub label: String,
    pub boot: Boot,
}

/// `[[profile]]`
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub image: Option<String>,
    pub mode: Mode,
    pub transport: Option<Transport>,
    pub variants: Vec<Variant>,
    pub default_variant: Option<String>,
    pub menu_timeout: u32,
}

/// `[[host]]`
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub profile: String,
    pub variant: Option<String>,
}

impl Host {
    /// `aa-bb-cc-dd-ee-ff`, the per-host script name in the boot tree.
    pub fn mac_dashed(&self) -> String {
        mac_string(self.mac, "-")
    }

    pub fn mac_colons(&self) -> String {
        mac_string(self.mac, ":")
    }
}

/// `mac` as hex pairs joined by `sep`.
pub fn mac_string(mac: [u8; 6], sep: &str) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// A block export of one image over one transport.
#[derive(Debug, Clone)]
pub struct SanTarget {
    pub image: String,
    pub mode: Mode,
}

/// `[[nbd.export]]`
#[derive(Debug, Clone)]
pub struct NbdExport {
    pub name: String,
    pub disk: SanTarget,
}

/// `[[iscsi.target]]` with one LUN.
#[derive(Debug, Clone)]
pub struct IscsiTarget {
    pub iqn: String,
    /// The LUN in our target's config. tgtd keeps LUN 0 for its controller,
    /// so the peer backend serves the disk as LUN `lun + 1`.
    pub lun: u16,
    pub disk: SanTarget,
}

/// `[[aoe.target]]`
#[derive(Debug, Clone)]
pub struct AoeTarget {
    pub shelf: u16,
    pub slot: u8,
    pub disk: SanTarget,
}

/// The whole lab inventory.
#[derive(Debug, Clone, Default)]
pub struct LabSite {
    pub images: Vec<Disk>,
    pub profiles: Vec<Profile>,
    pub hosts: Vec<Host>,
    pub nbd: Vec<NbdExport>,
    pub iscsi: Vec<IscsiTarget>,
    pub aoe: Vec<AoeTarget>,
    /// CHAP user name and secret the iSCSI targets demand (iPXE: MD5 CHAP).
    pub chap: Option<(String, String)>,
    /// Real files of the boot tree: (path under the root, source file).
    pub files: Vec<(String, PathBuf)>,
    /// Small generated files of the boot tree: (path under the root, text).
    pub texts: Vec<(String, String)>,
}

impl LabSite {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    pub fn image(&self, name: &str) -> Option<&Disk> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Copies the boot tree's real files (and `undionly.kpxe`, `ipxe.efi`,
    /// `snponly.efi`) under `root`.
    pub fn populate_boot_tree(&self, root: &Path) {
        let undi = Path::new("/usr/lib/ipxe/undionly.kpxe");
        assert!(
            undi.exists(),
            "MISSING: {} (Debian package ipxe)",
            undi.display()
        );
        std::fs::copy(undi, root.join("undionly.kpxe")).unwrap();
        // iPXE for x86-64 UEFI PXE clients: the full build and the one that
        // drives the NIC through the firmware's SNP.
        for efi in ["ipxe.efi", "snponly.efi"] {
            std::fs::copy(Path::new("/usr/lib/ipxe").join(efi), root.join(efi)).unwrap();
        }
        for (rel, src) in &self.files {
            let dst = root.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(src, &dst)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
        }
        for (rel, text) in &self.texts {
            let dst = root.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::write(&dst, text).unwrap();
        }
    }

    /// The variant a host boots by default: the host's own choice, else the
    /// profile's default, else the first.
    pub fn default_variant<'a>(&'a self, host: &Host) -> &'a Variant {
        let p = self.profile(&host.profile).expect("host's profile exists");
        let name = host.variant.as_ref().or(p.default_variant.as_ref());
        match name {
            Some(n) => p
                .variants
                .iter()
                .find(|v| &v.name == n)
                .expect("variant exists"),
            None => &p.variants[0],
        }
    }
}

fn q(s: &str) -> String {
    // TOML basic string; the lab's strings contain no quotes or backslashes.
    assert!(!s.contains(['"', '\\']), "unexpected quote in {s:?}");
    format!("\"{s}\"")
}

/// The anyboot site file for `site`, with state under `dir` and the TFTP root
/// `tftp_root`. Everything the daemons are told lives here, so keys renamed or
/// added by the daemon branches are adapted in this one function.
pub fn site_toml(site: &LabSite, dir: &Path, tftp_root: &Path) -> String {
    let mut t = String::new();
    let w = &mut t;
    let _ = writeln!(
        w,
        "# Generated by the network-boot lab (tests/src/lab/site.rs)."
    );
    let _ = writeln!(w, "[site]\nname = \"anyboot-lab\"");
    let _ = writeln!(
        w,
        "state_dir = {}\n",
        q(&dir.join("state").display().to_string())
    );
    for i in &site.images {
        let _ = writeln!(
            w,
            "[[image]]\nname = {}\npath = {}\n",
            q(&i.name),
            q(&i.path.display().to_string())
        );
    }
    for p in &site.profiles {
        let _ = writeln!(w, "[[profile]]\nname = {}", q(&p.name));
        if let Some(img) = &p.image {
            let _ = writeln!(w, "image = {}", q(img));
        }
        let _ = writeln!(w, "disk = {}", q(p.mode.name()));
        if let Some(tr) = p.transport {
            let _ = writeln!(w, "transport = {}", q(tr.name()));
        }
        if let Some(d) = &p.default_variant {
            let _ = writeln!(w, "default_variant = {}", q(d));
        }
        let _ = writeln!(w, "menu_timeout = {}\n", p.menu_timeout);
        for v in &p.variants {
            let _ = writeln!(
                w,
                "[[profile.variant]]\nname = {}\nlabel = {}",
                q(&v.name),
                q(&v.label)
            );
            match &v.boot {
                Boot::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                } => {
                    let _ = writeln!(w, "kernel = {}", q(kernel));
                    let list: Vec<String> = initrd.iter().map(|s| q(s)).collect();
                    let _ = writeln!(w, "initrd = [{}]", list.join(", "));
                    let _ = writeln!(w, "cmdline = {}", q(cmdline));
                }
                Boot::Sanboot => {
                    let _ = writeln!(w, "sanboot = true");
                }
            }
            let _ = writeln!(w);
        }
    }
    for h in &site.hosts {
        let _ = writeln!(
            w,
            "[[host]]\nname = {}\nmac = {}\naddress = {}\nprofile = {}",
            q(&h.name),
            q(&h.mac_colons()),
            q(&h.address.to_string()),
            q(&h.profile)
        );
        if let Some(v) = &h.variant {
            let _ = writeln!(w, "variant = {}", q(v));
        }
        let _ = writeln!(w);
    }
    let net = u32::from(SERVER_IP) & (u32::MAX << (32 - PREFIX_LEN));
    let _ = writeln!(
        w,
        "[dhcpd]\ninterfaces = [{}]\n\n[[dhcpd.subnet]]\nnetwork = \"{}/{PREFIX_LEN}\"\npool_start = \"{}\"\npool_end = \"{}\"\n",
        q(super::BRIDGE),
        Ipv4Addr::from(net),
        POOL.0,
        POOL.1
    );
    let _ = writeln!(
        w,
        "[tftpd]\nlisten = [\"{SERVER_IP}:69\"]\nroot = {}\n",
        q(&tftp_root.display().to_string())
    );
    if !site.nbd.is_empty() {
        let _ = writeln!(w, "[nbd]\nlisten = [\"{SERVER_IP}:{NBD_PORT}\"]\n");
        for e in &site.nbd {
            let _ = writeln!(
                w,
                "[[nbd.export]]\nname = {}\nimage = {}\ndisk = {}\n",
                q(&e.name),
                q(&e.disk.image),
                q(e.disk.mode.name())
            );
        }
    }
    if !site.iscsi.is_empty() {
        let _ = writeln!(w, "[iscsi]\nlisten = [\"{SERVER_IP}:{ISCSI_PORT}\"]\n");
        for t in &site.iscsi {
            let _ = writeln!(w, "[[iscsi.target]]\niqn = {}", q(&t.iqn));
            if let Some((user, secret)) = &site.chap {
                // The iscsi branch's `[iscsi.target.chap]` (user, secret); iPXE
                // does MD5 CHAP and needs a secret of 12 bytes or more.
                let _ = writeln!(w, "chap = {{ user = {}, secret = {} }}", q(user), q(secret));
            }
            let _ = writeln!(
                w,
                "\n[[iscsi.target.lun]]\nlun = {}\nimage = {}\ndisk = {}\n",
                t.lun,
                q(&t.disk.image),
                q(t.disk.mode.name())
            );
        }
    }
    if !site.aoe.is_empty() {
        let _ = writeln!(w, "[aoe]\ninterfaces = [{}]\n", q(super::BRIDGE));
        for t in &site.aoe {
            let _ = writeln!(
                w,
                "[[aoe.target]]\nshelf = {}\nslot = {}\nimage = {}\ndisk = {}\n",
                t.shelf,
                t.slot,
                q(&t.disk.image),
                q(t.disk.mode.name())
            );
        }
    }
    t
}

/// The `sanboot` lines for a profile's disk, as the peer backend serves it.
fn sanboot_lines(site: &LabSite, p: &Profile) -> String {
    let image = p.image.as_deref().expect("a sanboot profile has an image");
    match p.transport.expect("a sanboot profile has a transport") {
        Transport::Iscsi => {
            let t = site
                .iscsi
                .iter()
                .find(|t| t.disk.image == image)
                .expect("an iSCSI target for the profile's image");
            let mut s = String::new();
            if let Some((user, secret)) = &site.chap {
                let _ = writeln!(s, "set username {user}\nset password {secret}");
            }
            // iscsi:<server>:<protocol>:<port>:<lun>:<iqn>; tgtd's disk is LUN+1.
            let _ = writeln!(
                s,
                "sanboot iscsi:{SERVER_IP}::{ISCSI_PORT}:{}:{}",
                t.lun + 1,
                t.iqn
            );
            s
        }
        Transport::Aoe => {
            let t = site
                .aoe
                .iter()
                .find(|t| t.disk.image == image)
                .expect("an AoE target for the profile's image");
            format!("sanboot aoe:e{}.{}\n", t.shelf, t.slot)
        }
        Transport::Nbd => panic!("iPXE cannot sanboot NBD"),
    }
}

fn variant_lines(site: &LabSite, p: &Profile, v: &Variant) -> String {
    match &v.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            // Absolute paths: a relative one would resolve against hosts/.
            let mut s = format!("kernel /{kernel} {cmdline}\n");
            for i in initrd {
                let _ = writeln!(s, "initrd /{i}");
            }
            s.push_str("boot\n");
            s
        }
        Boot::Sanboot => sanboot_lines(site, p),
    }
}

/// The reference per-host iPXE script (served by the peer backend at
/// `hosts/<mac>.ipxe`): a menu of the profile's variants with the host's or
/// profile's default and timeout, or the single variant directly.
pub fn ipxe_script(site: &LabSite, host: &Host) -> String {
    let p = site.profile(&host.profile).expect("host's profile exists");
    let default = site.default_variant(host);
    let mut s = format!(
        "#!ipxe\necho anyboot lab: host {} profile {}\n",
        host.name, p.name
    );
    if p.variants.len() > 1 && p.menu_timeout > 0 {
        let _ = writeln!(s, "menu Boot {} ({})", host.name, p.name);
        for v in &p.variants {
            let _ = writeln!(s, "item {} {}", v.name, v.label);
        }
        let _ = writeln!(
            s,
            "choose --default {} --timeout {} selected || goto {}\ngoto ${{selected}}",
            default.name,
            p.menu_timeout * 1000,
            default.name
        );
        for v in &p.variants {
            // `exit` keeps a returning entry from falling into the next one.
            let _ = write!(s, ":{}\n{}exit 1\n", v.name, variant_lines(site, p, v));
        }
    } else {
        s.push_str(&variant_lines(site, p, default));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn menu_site() -> LabSite {
        let v = |n: &str| Variant {
            name: n.into(),
            label: format!("Entry {n}"),
            boot: Boot::Kernel {
                kernel: format!("lab/{n}.ipxe"),
                initrd: vec!["linux/initrd.gz".into()],
                cmdline: "console=ttyS0".into(),
            },
        };
        LabSite {
            profiles: vec![Profile {
                name: "menu".into(),
                image: None,
                mode: Mode::Shared,
                transport: None,
                variants: vec![v("one"), v("two")],
                default_variant: Some("one".into()),
                menu_timeout: 3,
            }],
            hosts: vec![Host {
                name: "pc".into(),
                mac: [0x52, 0x54, 0, 0x77, 0, 9],
                address: Ipv4Addr::new(10, 77, 0, 9),
                profile: "menu".into(),
                variant: Some("two".into()),
            }],
            ..LabSite::default()
        }
    }

    #[test]
    fn script_has_a_menu_with_the_hosts_default_and_absolute_paths() {
        let site = menu_site();
        let s = ipxe_script(&site, &site.hosts[0]);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("item one Entry one\nitem two Entry two\n"));
        assert!(s.contains("choose --default two --timeout 3000 selected"));
        assert!(s.contains(
            ":two\nkernel /lab/two.ipxe console=ttyS0\ninitrd /linux/initrd.gz\nboot\nexit 1\n"
        ));
    }

    #[test]
    fn site_toml_names_every_section() {
        let mut site = menu_site();
        site.images.push(Disk {
            name: "base".into(),
            path: "/x/base.img".into(),
        });
        site.nbd.push(NbdExport {
            name: "root".into(),
            disk: SanTarget {
                image: "base".into(),
                mode: Mode::Throwaway,
            },
        });
        let t = site_toml(&site, Path::new("/lab"), Path::new("/lab/tftp"));
        for needle in [
            "[site]",
            "state_dir = \"/lab/state\"",
            "[[image]]\nname = \"base\"",
            "default_variant = \"one\"",
            "menu_timeout = 3",
            "mac = \"52:54:00:77:00:09\"",
            "variant = \"two\"",
            "interfaces = [\"br0\"]",
            "network = \"10.77.0.0/24\"",
            "listen = [\"10.77.0.1:69\"]",
            "[[nbd.export]]\nname = \"root\"\nimage = \"base\"\ndisk = \"throwaway\"",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
        }
    }
}
