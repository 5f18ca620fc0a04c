//! A config client for services: get with a default, scan into a struct, read secrets.
