//! ATA taskfile and IDENTIFY DEVICE data as carried by AoE command 0 (ATA/ATAPI-8).
