//! The `otaforge` command line. Thin: parse arguments, run the verb, map the outcome to an exit
//! code (0 ok, 1 a check failed, 2 usage or unexpected error).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
