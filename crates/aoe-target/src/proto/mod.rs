//! Sans-IO AoE target core (AoE r11 sections 2-3): takes Ethernet frames, keeps
//! each target's config string, MAC mask list and reserve list, and produces
//! reply frames and storage requests. It never touches a socket, a file or a
//! clock; the driver performs [`IoRequest`]s and calls [`IoRequest::complete`].

mod core;

pub use self::core::{
    Core, CoreConfig, Counters, Iface, IoFailure, IoOp, IoRequest, Output, TargetInfo, Transmit,
    FIRMWARE_VERSION, MAX_MASKS, MAX_RESERVE,
};

#[cfg(test)]
mod tests;
