//! Probing (SPEC §7.2).
