use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = vigil::cli::Cli::parse();
    vigil::cli::run(cli)
}
