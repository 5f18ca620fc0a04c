//! The broker service through the real CLI and library.
