//! A broker client for services: publish, and subscribe with a handler.
