//! The attack suite: every finding of the attack run against `micro server` (issue 10), replayed through the real
//! binary and real sockets, and the checks that held (forged JWTs, foreign tokens, cross-namespace access), so that
//! they keep holding. `docs/security.md` describes the threat model and how each finding is prevented.

mod edge;
mod fuzz;
mod leaks;
mod registry;
mod runtime;
mod tokens;
