//! Network-boot decisions: which boot file, server, vendor class and root path a
//! client gets (RFC 2132 §9.4-9.5, RFC 4578 §2, PXE 2.1 §2.4, UEFI 2.5 §24.7 HTTP
//! boot), including iPXE detection so a chainloaded iPXE gets its script and not
//! the iPXE binary again.

use std::net::Ipv4Addr;

use anyboot_config::dhcpd::DhcpBoot;
use anyboot_wire::dhcp::{self, ClientArch, VendorClass};

use crate::config::{Config, HostEntry, Subnet};

/// What a request says about the client's boot firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootRequest {
    /// Option 93 (first entry), if present and well-formed.
    pub arch: Option<ClientArch>,
    /// Option 60, if present.
    pub vendor: Option<VendorClass>,
    /// User class `iPXE` (option 77) or iPXE's encapsulated options (175).
    pub ipxe: bool,
    /// Option 97 verbatim (echoed in replies).
    pub uuid: Option<Vec<u8>>,
}

impl BootRequest {
    /// Reads the boot-related options of a checked packet.
    pub fn from_packet(p: &dhcp::Packet<&[u8]>) -> Self {
        let mut b = BootRequest::default();
        for (c, v) in p.options().filter_map(Result::ok) {
            match c {
                dhcp::code::CLIENT_ARCH => b.arch = ClientArch::parse(v).ok(),
                dhcp::code::VENDOR_CLASS => b.vendor = Some(VendorClass::parse(v)),
                dhcp::code::USER_CLASS => b.ipxe |= dhcp::user_class_is_ipxe(v),
                dhcp::code::IPXE_ENCAP => b.ipxe = true,
                dhcp::code::CLIENT_UUID => b.uuid = Some(v.to_vec()),
                _ => {}
            }
        }
        b
    }

    /// A PXE or UEFI HTTP boot ROM, or iPXE: a client that wants a boot file.
    pub fn is_boot_client(&self) -> bool {
        self.ipxe
            || matches!(
                self.vendor,
                Some(VendorClass::PxeClient | VendorClass::HttpClient)
            )
            || self.arch.is_some()
    }
}

/// Boot fields and options for a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootReply {
    /// `siaddr` (next server).
    pub next_server: Option<Ipv4Addr>,
    /// Option 66 (and `sname`).
    pub server_name: Option<String>,
    /// `file` and option 67.
    pub file: Option<String>,
    /// Option 60 in the reply: `PXEClient` or `HTTPClient`.
    pub vendor_class: Option<&'static str>,
    /// Option 43.
    pub vendor_options: Option<Vec<u8>>,
    /// Option 17.
    pub root_path: Option<String>,
    /// Option 97, echoed.
    pub uuid: Option<Vec<u8>>,
}

/// Boot settings in effect for one client: profile, then subnet, then section,
/// then built-in defaults.
struct Layers<'a> {
    layers: [Option<&'a DhcpBoot>; 3],
}

impl<'a> Layers<'a> {
    fn pick<T: Clone + 'a>(&self, f: impl Fn(&'a DhcpBoot) -> Option<&'a T>) -> Option<T> {
        self.layers.iter().flatten().find_map(|b| f(b)).cloned()
    }
}

/// `aa-bb-cc-dd-ee-ff`, the per-host script name the tftpd boot tree uses.
pub fn mac_dashed(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("-")
}

fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Decides the boot answer for `req`, or `None` when the client is not a boot
/// client (or asks for something this site cannot serve, e.g. HTTP boot
/// without an HTTP base URL).
pub fn decide(
    cfg: &Config,
    subnet: Option<&Subnet>,
    host: Option<&HostEntry>,
    chaddr: &[u8],
    server_id: Ipv4Addr,
    req: &BootRequest,
) -> Option<BootReply> {
    if !req.is_boot_client() {
        return None;
    }
    let l = Layers {
        layers: [
            host.map(|h| &h.boot),
            subnet.map(|s| &s.boot),
            Some(&cfg.boot),
        ],
    };
    let tftp = l.pick(|b| b.tftp_server.as_ref()).unwrap_or(server_id);
    let http_base = l.pick(|b| b.http_base.as_ref());
    let mut out = BootReply {
        uuid: req.uuid.clone(),
        root_path: host
            .and_then(|h| h.root_path.as_ref())
            .map(|r| r.replace("{server}", &server_id.to_string())),
        ..BootReply::default()
    };

    if req.ipxe {
        // Already running iPXE: hand out the script, never the binary again.
        let script = match host {
            Some(h) if h.has_script => {
                // The host's script does the `sanboot` itself (with CHAP
                // credentials when the target wants them). Given a root path
                // too, iPXE would hook that disk before running the script,
                // without credentials, and fail the whole boot.
                out.root_path = None;
                format!("hosts/{}.ipxe", mac_dashed(chaddr))
            }
            _ => l
                .pick(|b| b.unknown_host_script.as_ref())
                .unwrap_or_else(|| "boot.ipxe".to_owned()),
        };
        match &http_base {
            Some(base) => out.file = Some(join_url(base, &script)),
            None => {
                out.file = Some(script);
                out.next_server = Some(tftp);
                out.server_name = Some(tftp.to_string());
            }
        }
        return Some(out);
    }

    // PXE ROMs that predate option 93 are BIOS ROMs (RFC 4578 §2.1).
    let arch = req.arch.unwrap_or(ClientArch::BiosX86);
    let file = match arch {
        ClientArch::BiosX86 => l
            .pick(|b| b.bios.as_ref())
            .unwrap_or_else(|| "undionly.kpxe".into()),
        ClientArch::EfiX64 | ClientArch::HttpX64 => l
            .pick(|b| b.efi_x64.as_ref())
            .unwrap_or_else(|| "ipxe.efi".into()),
        ClientArch::EfiIa32 | ClientArch::HttpIa32 => l
            .pick(|b| b.efi_ia32.as_ref())
            .unwrap_or_else(|| "ipxe-i386.efi".into()),
        ClientArch::EfiArm64 | ClientArch::HttpArm64 => l
            .pick(|b| b.efi_arm64.as_ref())
            .unwrap_or_else(|| "ipxe-arm64.efi".into()),
        ClientArch::Unknown(_) => return None,
    };
    if arch.is_http() || req.vendor == Some(VendorClass::HttpClient) {
        // UEFI HTTP boot takes a URL and needs option 60 `HTTPClient` back.
        let base = http_base?;
        out.file = Some(join_url(&base, &file));
        out.vendor_class = Some("HTTPClient");
        return Some(out);
    }
    out.file = Some(file);
    out.next_server = Some(tftp);
    out.server_name = Some(tftp.to_string());
    if req.vendor == Some(VendorClass::PxeClient) {
        out.vendor_class = Some("PXEClient");
        out.vendor_options = Some(dhcp::PXE_VENDOR_OPTIONS.to_vec());
    }
    Some(out)
}
