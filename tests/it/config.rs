//! The config service through the real CLI and library.
