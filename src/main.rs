use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = vigil::commands::Cli::parse();
    vigil::commands::run(cli)
}
