use clap::Parser;

fn main() -> std::process::ExitCode {
    encdec::cli::serve::drop_empty_env_vars();
    let cli = encdec::cli::Cli::parse();
    match encdec::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
