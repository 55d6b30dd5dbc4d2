//! The `otaforge` command line. Thin: parse arguments, run the verb, map the outcome to an exit
//! code (0 ok, 1 a check failed, 2 usage or unexpected error).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The one async runtime: commands that talk to a network (upload) block on it; the rest
    // never touch it.
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("error: cannot start the async runtime: {e}\n"),
            );
            return ExitCode::from(2);
        }
    };
    cli::main(&rt)
}
