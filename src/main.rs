//! The `chatapp-kommo-sync` binary: a thin shell over the library's CLI.

fn main() -> std::process::ExitCode {
    chatapp_kommo_sync::cli::main()
}
