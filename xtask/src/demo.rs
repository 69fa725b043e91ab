//! The embedded demo site: a small disk image, a TFTP root and a site file on
//! loopback ports, so `cargo xtask up` serves something real with no root and no
//! configuration.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The demo site file; paths are relative to the demo directory.
pub const SITE: &str = r#"# The anyboot demo site (written by `cargo xtask up`): loopback only, no root.
[site]
name = "demo"
state_dir = "state"

[[image]]
name = "demo"
path = "images/demo.raw"
description = "anyboot demo disk (64 MiB, sparse)"

[tftpd]
listen = ["127.0.0.1:6969"]
root = "tftp"

[nbd]
listen = ["127.0.0.1:10809"]

[[nbd.export]]
name = "demo"
image = "demo"
description = "the demo disk; writes go to a throwaway overlay per connection"
disk = "throwaway"

[iscsi]
listen = ["127.0.0.1:3260"]

[[iscsi.target]]
iqn = "iqn.2026-11.org.anyboot:demo"

[[iscsi.target.lun]]
lun = 0
image = "demo"
disk = "throwaway"
"#;

/// What to print once the demo is up.
pub const TRY: &str = "\
anyboot demo is up on loopback. Try, from another terminal:
  nbdinfo nbd://127.0.0.1:10809/demo           # export size, flags, block sizes
  nbdinfo --map nbd://127.0.0.1:10809/demo     # allocation map of the sparse disk
  qemu-img info nbd://127.0.0.1:10809/demo
  qemu-io -f raw -c 'read -v 0 64' nbd://127.0.0.1:10809/demo
  iscsi-inq iscsi://127.0.0.1:3260/iqn.2026-11.org.anyboot:demo/0
  tftp 127.0.0.1 6969 -c get hello.txt /tmp/hello.txt   (or: curl tftp://127.0.0.1:6969/hello.txt)
Ctrl-C stops everything.";

const DISK_SIZE: u64 = 64 << 20;

/// Creates (or refreshes) the demo site under `dir` and returns its site file.
pub fn prepare(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir.join("images"))?;
    fs::create_dir_all(dir.join("tftp/pxelinux.cfg"))?;
    fs::create_dir_all(dir.join("state"))?;
    let site = dir.join("site.toml");
    fs::write(&site, SITE).with_context(|| format!("writing {}", site.display()))?;
    fs::write(
        dir.join("tftp/hello.txt"),
        "Hello from anyboot's TFTP server.\n",
    )?;
    fs::write(
        dir.join("tftp/pxelinux.cfg/default"),
        "DEFAULT local\nLABEL local\n  LOCALBOOT 0\n",
    )?;
    let image = dir.join("images/demo.raw");
    if !image.exists() {
        write_demo_disk(&image)?;
    }
    Ok(site)
}

/// A sparse disk with an MBR boot signature, a label in the first sector and a
/// second marker at 1 MiB, so clients see data, holes and a recognisable pattern.
fn write_demo_disk(path: &Path) -> Result<()> {
    let mut f = fs::File::create(path)?;
    f.set_len(DISK_SIZE)?;
    let mut mbr = [0u8; 512];
    let label = b"anyboot demo disk\n";
    mbr[..label.len()].copy_from_slice(label);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all(&mbr)?;
    f.seek(SeekFrom::Start(1 << 20))?;
    f.write_all(&[0xa5; 64 << 10])?;
    f.sync_all()?;
    Ok(())
}
