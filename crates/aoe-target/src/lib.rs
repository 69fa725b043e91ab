//! anyboot-aoe-target: ATA over Ethernet (AoE revision 11) target.
pub mod proto;
