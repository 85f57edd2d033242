//! Representation metrics (SPEC §7.3).
