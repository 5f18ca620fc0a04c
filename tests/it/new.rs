//! `micro new`: a scaffolded service builds, runs and answers.
