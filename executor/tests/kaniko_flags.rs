//! Flag parity with kaniko v1.24's executor, checked against kaniko's own source (read by
//! `scripts/kaniko-flags.sh` at test time): every kaniko flag, shorthand and deprecated spelling
//! parses with a valid value, and every flag and environment variable kaniko reads has a row in
//! README.md's "kaniko flags and variables" table, a "same" row naming a test of its behaviour.
//! The table is the one list; see `kiln_testkit::kaniko`.

use clap::Parser;
use kiln_executor::cli::Options;

#[test]
fn every_kaniko_executor_flag_parses_and_is_classified() {
    kiln_testkit::kaniko::check_program("executor", |args| {
        Options::try_parse_from(
            std::iter::once("kiln-executor".to_string()).chain(args.iter().cloned()),
        )
        .map(drop)
        .map_err(|e| e.to_string())
    });
}

#[test]
fn every_kaniko_environment_variable_is_classified() {
    kiln_testkit::kaniko::check_env();
}
