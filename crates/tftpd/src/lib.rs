//! anyboot-tftpd: TFTP server with option negotiation and windowsize, plus HTTP for the same boot tree.

pub mod proto;
