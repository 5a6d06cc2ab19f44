//! The `fulcrum` binary: parse the command line and hand over to [`fulcrum::cli`].
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(fulcrum::cli::main());
}
