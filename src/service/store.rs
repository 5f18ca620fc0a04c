//! A store client for services: typed records over serde.
