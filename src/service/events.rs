//! An events client for services: publish, and consume with acknowledgements.
