//! The site configuration: one TOML file that describes a whole boot site.
//!
//! The shared inventory (`[[image]]`, `[[profile]]`, `[[host]]`) is read by every
//! daemon; each daemon also takes its own section (`[tftpd]`, `[dhcpd]`, `[nbd]`,
//! `[iscsi]`, `[aoe]`). File types derive `Deserialize` with
//! `deny_unknown_fields`; [`Site::load`] parses, then validates cross references
//! and resolves relative paths against the file's directory. Every error names
//! the file, the key path and the problem.
//!
//! ```
//! let site = anyboot_config::Site::from_toml_str(
//!     r#"
//!     [tftpd]
//!     listen = ["127.0.0.1:6969"]
//!     root = "/srv/tftp"
//!     "#,
//!     "inline.toml".as_ref(),
//! ).unwrap();
//! assert!(site.tftpd.is_some());
//! ```

pub mod aoe;
pub mod dhcpd;
pub mod error;
pub mod inventory;
pub mod iscsi;
pub mod mac;
pub mod nbd;
pub mod site;
pub mod tftpd;

pub use error::ConfigError;
pub use inventory::Transport;
pub use inventory::{DiskModeName, Host, Image, Profile, Variant};
pub use mac::MacAddr;
pub use site::{Site, SiteSection};
